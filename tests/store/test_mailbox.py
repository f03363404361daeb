# -*- test-case-name: tests.store.test_mailbox -*-
"""
Tests for L{qutemail.store.mailbox}: reading the C{maildirsize} usage file,
whole and incrementally.  Delivery's writes to it are tested in
L{tests.store.test_maildir}.
"""

import os

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.mailbox import MAILDIRSIZE_MAX_BYTES, MailDirError, linkMailDir, readUsage, readUsageFrom, recordUsage


class ReadUsageTests(SynchronousTestCase):
    """
    L{readUsage} of a C{maildirsize} file written by hand.
    """

    def test_readUsageMissing(self):
        """
        A mailbox without C{maildirsize} uses nothing.
        """
        self.assertEqual(readUsage(self.mktemp()), (0, 0))

    def test_readUsageLines(self):
        """
        L{readUsage} skips the quota line and malformed lines, adds negative
        (deletion) lines, and never reports less than zero.
        """
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "maildirsize"), "wb") as f:
            f.write(b"1000S\n100 1\n50 1\nbad line here\nx 1\n-100 -1\n\n")
        self.assertEqual(readUsage(path), (50, 1))
        with open(os.path.join(path, "maildirsize"), "wb") as f:
            f.write(b"1000S\n10 1\n-30 -2\n")
        self.assertEqual(readUsage(path), (0, 0))


class IncrementalUsageTests(SynchronousTestCase):
    """
    L{readUsageFrom}, which reads only what was appended to C{maildirsize}
    since the last call and must always agree with L{readUsage}.
    """

    def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)
        self.sizeFile = os.path.join(self.path, "maildirsize")

    def append(self, data):
        with open(self.sizeFile, "ab") as f:
            f.write(data)

    @given(st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(-5, 5),
                              st.sampled_from(["whole", "partial", "junk"])), max_size=30))
    def test_agreesWithFullRead(self, lines):
        """
        Whatever is appended between reads (deletion lines, malformed lines,
        a line whose end arrives only with the next write), the incremental
        sum equals a full read of the whole lines.
        """
        with open(self.sizeFile, "wb") as f:
            f.write(b"1000S\n")
        tail = None
        pending = b""
        for size, count, kind in lines:
            if kind == "junk":
                self.append(b"not a usage line\n")
            elif kind == "partial":
                # Half a line now, the rest before the next read of it.
                text = b"%d %d\n" % (size, count)
                self.append(pending + text[:3])
                pending = text[3:]
                usage, tail = readUsageFrom(self.path, tail)
                self.assertEqual(usage, readUsage(self.path) if not pending else _wholeLines(self.sizeFile))
                continue
            else:
                self.append(pending + b"%d %d\n" % (size, count))
            pending = b""
            usage, tail = readUsageFrom(self.path, tail)
            self.assertEqual(usage, readUsage(self.path))

    def test_replacedFile(self):
        """
        When C{maildirsize} is replaced (recalculated past its size limit,
        or removed and recreated), the next read starts over from the new
        file rather than adding to what the old one said.
        """
        with open(self.sizeFile, "wb") as f:
            f.write(b"1000S\n500 5\n")
        usage, tail = readUsageFrom(self.path, None)
        self.assertEqual(usage, (500, 5))
        replacement = self.sizeFile + ".new"
        with open(replacement, "wb") as f:
            f.write(b"1000S\n70 1\n")
        os.rename(replacement, self.sizeFile)
        usage, tail = readUsageFrom(self.path, tail)
        self.assertEqual(usage, (70, 1))
        os.unlink(self.sizeFile)
        usage, tail = readUsageFrom(self.path, tail)
        self.assertEqual((usage, tail), ((0, 0), None))

    def test_rewrittenInPlace(self):
        """
        A file rewritten in place (same inode, other contents) is noticed
        by the bytes before the last offset and read again whole.
        """
        with open(self.sizeFile, "wb") as f:
            f.write(b"1000S\n500 5\n")
        usage, tail = readUsageFrom(self.path, None)
        with open(self.sizeFile, "r+b") as f:
            f.write(b"1000S\n100 1\n20 1\n")
        usage, tail = readUsageFrom(self.path, tail)
        self.assertEqual(usage, (120, 2))

    def test_grownPastLimit(self):
        """
        After L{recordUsage} recalculates a long file into a new one, the
        incremental reader still agrees with a full read.
        """
        tail = None
        for n in range(MAILDIRSIZE_MAX_BYTES // 6 + 10):
            recordUsage(self.path, 0, 100 + n, 1)
            if n % 97 == 0:
                usage, tail = readUsageFrom(self.path, tail)
                self.assertEqual(usage, readUsage(self.path))
        usage, tail = readUsageFrom(self.path, tail)
        self.assertEqual(usage, readUsage(self.path))


def _wholeLines(sizeFile):
    """
    What L{readUsage} says of C{sizeFile} cut after its last newline.
    """
    with open(sizeFile, "rb") as f:
        data = f.read()
    copy = sizeFile + ".whole"
    os.makedirs(copy)
    try:
        with open(os.path.join(copy, "maildirsize"), "wb") as f:
            f.write(data[: data.rfind(b"\n") + 1])
        return readUsage(copy)
    finally:
        os.unlink(os.path.join(copy, "maildirsize"))
        os.rmdir(copy)


class LinkMailDirTests(SynchronousTestCase):
    """
    L{linkMailDir}: C{data_dir/mail} leads to C{[mailbox] mail_dir}.
    """

    def setUp(self) -> None:
        """
        A data directory and a shared directory, both new.
        """
        base = os.path.abspath(self.mktemp())
        self.dataDir, self.shared = os.path.join(base, "var"), os.path.join(base, "shared", "mail")
        os.makedirs(self.dataDir)

    def test_linked(self) -> None:
        """
        The link is made (and the shared directory); a second start finds
        it in place.
        """
        linkMailDir(self.dataDir, self.shared)
        linkMailDir(self.dataDir, self.shared)
        link = os.path.join(self.dataDir, "mail")
        self.assertEqual(os.readlink(link), self.shared)
        self.assertTrue(os.path.isdir(self.shared))

    def test_emptyDirectoryReplaced(self) -> None:
        """
        An empty C{data_dir/mail} gives way to the link.
        """
        os.makedirs(os.path.join(self.dataDir, "mail"))
        linkMailDir(self.dataDir, self.shared)
        self.assertTrue(os.path.islink(os.path.join(self.dataDir, "mail")))

    def test_mailboxesKept(self) -> None:
        """
        A C{data_dir/mail} with mailboxes, or a link elsewhere, is refused
        in one line and left as it is.
        """
        os.makedirs(os.path.join(self.dataDir, "mail", "example.test", "bob"))
        error = self.assertRaises(MailDirError, linkMailDir, self.dataDir, self.shared)
        self.assertIn("holds mailboxes", str(error))
        self.assertFalse(os.path.islink(os.path.join(self.dataDir, "mail")))
        other = os.path.join(self.dataDir, "other")
        linkMailDir(other, self.shared)
        error = self.assertRaises(MailDirError, linkMailDir, other, self.shared + "2")
        self.assertIn("already leads to", str(error))

    def test_unset(self) -> None:
        """
        Without C{mail_dir}, nothing changes.
        """
        linkMailDir(self.dataDir, "")
        self.assertFalse(os.path.exists(os.path.join(self.dataDir, "mail")))
