"""
Tests for L{qutemail.pipeline.spool}: the body of a transaction, kept in
memory while small and spilled to a file past the threshold.
"""

import errno
import os

from hypothesis import example, given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.pipeline.spool import DEFAULT_THRESHOLD_BYTES, SpoolWriter
from qutemail.message import Envelope, SpooledMessage
from tests.support import QueuedRunner

ENVELOPE = Envelope("sender@remote.test", ("alice@example.test",), "client.test", "192.0.2.7", 1700000000.0)


def pattern(length: int, seed: int = 0) -> bytes:
    """
    @return: C{length} bytes that differ from position to position, so a
        lost or reordered chunk shows.
    """
    block = bytes((seed + i * 7) % 251 for i in range(251))
    return (block * (length // 251 + 1))[:length]


def body(message: SpooledMessage) -> bytes:
    """
    @return: a spooled message's body, inline or from its file.
    """
    with message.openBody() as f:
        return f.read()


class SpoolWriterTests(SynchronousTestCase):
    """
    Inline below the threshold, a file above it.
    """

    def setUp(self):
        """
        A spill path in a fresh directory.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        self.spill = os.path.join(directory, "Q1")

    def test_smallInline(self):
        """
        A small body written in pieces stays in memory: the message is
        inline, has the right size, and no spill file exists.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        for piece in (b"Subject: x\n", b"\n", b"body\n"):
            writer.write(piece)
        self.assertFalse(writer.spilled)
        message = self.successResultOf(writer.finish("Q1", ENVELOPE))
        self.assertEqual(message, SpooledMessage("Q1", ENVELOPE, 17, inline=b"Subject: x\n\nbody\n"))
        self.assertFalse(os.path.exists(self.spill))

    def test_emptyBody(self):
        """
        A body with no bytes at all is an empty inline message.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        message = self.successResultOf(writer.finish("Q1", ENVELOPE))
        self.assertEqual((message.inline, message.path, message.size), (b"", None, 0))

    def test_atThresholdInline(self):
        """
        A body of exactly the threshold stays inline.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        data = pattern(DEFAULT_THRESHOLD_BYTES)
        writer.write(data)
        message = self.successResultOf(writer.finish("Q1", ENVELOPE))
        self.assertEqual(message.inline, data)
        self.assertFalse(os.path.exists(self.spill))

    def test_pastThresholdSpilled(self):
        """
        One byte past the threshold, the body goes to the spill file: the
        message has the path, no inline body, the full size, and the file
        holds every byte written.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        data = pattern(DEFAULT_THRESHOLD_BYTES + 1)
        writer.write(data[:1000])
        writer.write(data[1000:])
        self.assertTrue(writer.spilled)
        message = self.successResultOf(writer.finish("Q1", ENVELOPE))
        self.assertEqual(message, SpooledMessage("Q1", ENVELOPE, len(data), path=self.spill))
        with open(self.spill, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_smallThresholdHonoured(self):
        """
        With a threshold smaller than the write chunk, a body past the
        threshold is still spilled.
        """
        writer = SpoolWriter(InlineRunner(), self.spill, thresholdBytes=100)
        writer.write(pattern(200))
        message = self.successResultOf(writer.finish("Q1", ENVELOPE))
        self.assertEqual((message.inline, message.path), (None, self.spill))


    def test_abortRemovesSpill(self):
        """
        Aborting a spilled body deletes its file.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        writer.write(pattern(DEFAULT_THRESHOLD_BYTES + 10))
        self.assertTrue(os.path.exists(self.spill))
        self.assertIsNone(self.successResultOf(writer.abort()))
        self.assertFalse(os.path.exists(self.spill))

    def test_abortInline(self):
        """
        Aborting an inline body succeeds and creates no file.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        writer.write(b"small")
        self.assertIsNone(self.successResultOf(writer.abort()))
        self.assertFalse(os.path.exists(self.spill))

    def test_spillFailure(self):
        """
        When the spill file cannot be created, C{finish} fails with the
        C{OSError}, and C{abort} afterwards still succeeds.
        """
        spill = os.path.join(self.mktemp(), "missing", "Q1")
        writer = SpoolWriter(InlineRunner(), spill)
        writer.write(pattern(DEFAULT_THRESHOLD_BYTES + 1))
        self.failureResultOf(writer.finish("Q1", ENVELOPE), FileNotFoundError)
        self.assertIsNone(self.successResultOf(writer.abort()))

    def test_abortAfterFailedFinish(self):
        """
        When writing the spill file fails (disk full), C{finish} fails with
        the error, and the C{abort} the listener then calls closes and
        deletes the partial file.
        """
        writer = SpoolWriter(InlineRunner(), self.spill)
        self.addCleanup(lambda: writer._file and writer._file.close())

        def full(chunk):
            """
            Fail as a full disk would.
            """
            raise OSError(errno.ENOSPC, "No space left on device")

        writer._writeChunk = full
        writer.write(pattern(DEFAULT_THRESHOLD_BYTES + 1))
        reason = self.failureResultOf(writer.finish("Q1", ENVELOPE), OSError)
        self.assertEqual(reason.value.errno, errno.ENOSPC)
        self.successResultOf(writer.abort())
        self.assertFalse(os.path.exists(self.spill))
        self.assertIsNone(writer._file)


    def test_pendingBytesAndDrained(self):
        """
        With an asynchronous runner, C{pendingBytes} counts the bytes handed
        to it but not yet written, and C{drained} fires once they are.
        """
        runner = QueuedRunner()
        writer = SpoolWriter(runner, self.spill)
        self.successResultOf(writer.drained())
        data = pattern(2 * DEFAULT_THRESHOLD_BYTES + 5, seed=3)
        writer.write(data)
        self.assertEqual(writer.pendingBytes, len(data))
        drained = writer.drained()
        self.assertNoResult(drained)
        runner.runAll()
        self.assertEqual(writer.pendingBytes, 0)
        self.successResultOf(drained)
        message = writer.finish("Q1", ENVELOPE)
        runner.runAll()
        self.assertEqual(body(self.successResultOf(message)), data)

    @given(st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 250)), max_size=8))
    @example([(300_000, 1), (5, 2), (0, 0), (300_000, 3)])
    @example([(100, 0), (DEFAULT_THRESHOLD_BYTES - 100, 1)])
    def test_chunksRoundTrip(self, chunks):
        """
        However the body is cut into writes, the message's body (inline or
        spilled) equals everything written, its size is the total, and it
        is spilled exactly when the total passes the threshold.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        spill = os.path.join(directory, "Q1")
        writer = SpoolWriter(InlineRunner(), spill)
        pieces = [pattern(length, seed) for length, seed in chunks]
        for piece in pieces:
            writer.write(piece)
        message = self.successResultOf(writer.finish("Q1", ENVELOPE))
        data = b"".join(pieces)
        self.assertEqual(body(message), data)
        self.assertEqual(message.size, len(data))
        spilled = len(data) > DEFAULT_THRESHOLD_BYTES
        self.assertEqual((message.path is not None, message.inline is None), (spilled, spilled))
        self.assertEqual(os.path.exists(spill), spilled)
