# -*- test-case-name: tests.access.test_plainindex -*-
"""
Tests for L{qutemail.access.plainindex}: what the delivery process indexes
and what it leaves to the server.
"""

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.fetchindex import indexEntry
from qutemail.access.fetchindex import ENVELOPE
from qutemail.access.imapmessage import indexPlainFiles
from qutemail.access.imapmime import scanMessage
from qutemail.access.plainindex import WHOLE_READ_BYTES, indexSmallPlain, readWhole

PLAIN = b"From: A <a@x.test>\nSubject: hello\n\nbody\n"


class PlainIndexTests(SynchronousTestCase):
    """
    L{indexSmallPlain} and L{readWhole}.
    """

    def write(self, name: str, content: bytes) -> str:
        """
        @return: the path of a new file holding C{content}.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_smallPlainIndexed(self) -> None:
        """
        A small plain message gets the entry of its full scan.
        """
        path = self.write("m", PLAIN)
        [entry] = indexSmallPlain([path])
        self.assertEqual(entry, indexEntry(scanMessage(io.BytesIO(PLAIN))))
        self.assertEqual(readWhole(path, WHOLE_READ_BYTES), PLAIN)

    def test_readWholeBoundaries(self) -> None:
        """
        L{readWhole} gives a file of exactly C{maxBytes} whole, in however
        many reads it takes, and nothing for one a byte longer; a limit
        smaller than one read is kept too.
        """
        for size in (WHOLE_READ_BYTES, 100 * 1024 + 7, 64 * 1024, 20):
            content = b"Subject: s\n\n" + b"y" * (size - 13) + b"\n"
            self.assertEqual(len(content), size)
            path = self.write("m%d" % (size,), content)
            self.assertEqual(readWhole(path, size), content)
            self.assertIsNone(readWhole(path, size - 1))
            self.assertEqual(readWhole(path, WHOLE_READ_BYTES), content)

    def test_leftToTheServer(self) -> None:
        """
        A message larger than L{WHOLE_READ_BYTES}, one whose header names
        "encrypted" (it may be sealed) and a missing one get no entry;
        the server's full indexer gives the first two theirs.
        """
        big = self.write("big", b"Subject: big\n\n" + b"x" * WHOLE_READ_BYTES)
        named = self.write("named", b"Subject: encrypted, they say\n\nbody\n")
        missing = os.path.join(os.path.dirname(big), "gone")
        self.assertEqual(indexSmallPlain([big, named, missing]), [None, None, None])
        self.assertIsNone(readWhole(big, WHOLE_READ_BYTES))
        self.assertIsNone(readWhole(named, WHOLE_READ_BYTES))
        self.assertRaises(FileNotFoundError, readWhole, missing, WHOLE_READ_BYTES)
        full = indexPlainFiles([big, named, missing])
        self.assertIn(b'"big"', full[0][ENVELOPE])
        self.assertIn(b'"encrypted, they say"', full[1][ENVELOPE])
        self.assertIsNone(full[2])
