"""
Tests for L{qutemail.queue.journal}: small batches written over zeros
laid down ahead, and batches whose write fails.
"""

import errno
import os

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from qutemail.durable import writeAllAt
from qutemail.queue import journal as journalModule
from qutemail.queue.journal import ZERO_AHEAD_BYTES, ZERO_AHEAD_MAX_BATCH_BYTES, encodeMessage, parseSegment
from tests.support import QueuedRunner

from tests.queue.test_journal import FailingOpenOS, inlineMessage, segmentNames, JournalTestsMixin


class ZerosAheadTests(JournalTestsMixin, SynchronousTestCase):
    """
    Small batches are written over zeros laid down ahead of them, so that
    their syncs change no metadata; reading takes the zeros for the end.
    """

    def segment(self) -> bytes:
        """
        @return: the only segment's bytes.
        """
        [name] = segmentNames(self.directory)
        with open(os.path.join(self.directory, name), "rb") as f:
            return f.read()

    def test_smallBatchesOverwriteZeros(self):
        """
        The first small batch lays down L{ZERO_AHEAD_BYTES} of zeros after
        itself; the next ones are written over them, so the file keeps its
        size until they run out; recovery finds every message and no
        damage.
        """
        first = inlineMessage("Z1")
        self.commit(first)
        length = len(encodeMessage(first))
        self.assertEqual(len(self.segment()), length + ZERO_AHEAD_BYTES)
        messages = [first] + [inlineMessage(f"Z{n}") for n in range(2, 12)]
        for message in messages[1:]:
            self.commit(message)
        data = self.segment()
        self.assertEqual(len(data), length + ZERO_AHEAD_BYTES)
        used = sum(len(encodeMessage(m)) for m in messages)
        self.assertEqual(data[used:], bytes(len(data) - used))
        self.assertEqual(parseSegment(data), (messages, set(), []))
        self.assertEqual(self.recoverFresh(), messages)

    def test_runsOutOfZeros(self):
        """
        A small batch that passes the zeros lays down more after itself.
        """
        self.journal = self.openJournal()
        body = b"Subject: big\n\n" + b"x" * (ZERO_AHEAD_MAX_BATCH_BYTES // 2) + b"\n"
        messages = [inlineMessage(f"R{n}", body) for n in range(2 * ZERO_AHEAD_BYTES // len(body) + 2)]
        for message in messages:
            self.commit(message)
        data = self.segment()
        used = sum(len(encodeMessage(m)) for m in messages)
        self.assertGreater(used, ZERO_AHEAD_BYTES * 2)
        self.assertGreater(len(data), used)
        self.assertEqual(data[used:], bytes(len(data) - used))
        self.assertEqual(self.recoverFresh(), messages)

    def test_bigBatchAppended(self):
        """
        A batch of L{ZERO_AHEAD_MAX_BATCH_BYTES} or more past the zeros is
        only appended: nothing follows it.
        """
        big = inlineMessage("B1", b"Subject: big\n\n" + b"x" * ZERO_AHEAD_MAX_BATCH_BYTES + b"\n")
        self.commit(big)
        self.assertEqual(self.segment(), encodeMessage(big))
        self.assertEqual(self.recoverFresh(), [big])

    def test_zerosAfterTornRecord(self):
        """
        A record cut short before the zeros (a batch that never synced) is
        a torn tail, as at the end of a file.
        """
        first = inlineMessage("T1")
        self.commit(first)
        record = encodeMessage(inlineMessage("T2"))
        data = self.segment()
        length = len(encodeMessage(first))
        torn = data[:length] + record[:20] + data[length + 20:]
        self.assertEqual(parseSegment(torn), ([first], set(), [(length, len(torn) - length)]))


class FailedBatchTests(JournalTestsMixin, SynchronousTestCase):
    """
    A batch whose write fails fails its commits and is never appended to.
    """

    def test_failedBatch(self):
        """
        A write that fails half-way errbacks the commit with the C{OSError}
        and logs it; the next commit goes to a new segment, and recovery
        returns the messages before and after, not the failed one.
        """
        first, failed, third = inlineMessage("Q1"), inlineMessage("Q2"), inlineMessage("Q3")
        self.commit(first)
        realWriteAll = journalModule.writeAllAt

        def tornWrite(fd, data, offset):
            """
            Write half, then fail as a dying disk would.
            """
            realWriteAll(fd, data[: len(data) // 2], offset)
            raise OSError(errno.EIO, "Input/output error")

        self.patch(journalModule, "writeAllAt", tornWrite)
        reason = self.failureResultOf(self.journal.commit(failed), OSError)
        self.assertEqual(reason.value.errno, errno.EIO)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

        self.patch(journalModule, "writeAllAt", realWriteAll)
        self.assertIs(self.commit(third), third)
        self.assertEqual(segmentNames(self.directory), ["0000000000.log", "0000000001.log"])
        self.assertEqual(self.recoverFresh(), [first, third])

    def test_failedBatchFailsEveryCommit(self):
        """
        Every commit of a failed batch fails with the same error, and the
        refused messages are no longer counted live.
        """
        runner = QueuedRunner()
        self.journal = self.openJournal(runner=runner)
        d0 = self.journal.commit(inlineMessage("Q0"))
        d1 = self.journal.commit(inlineMessage("Q1"))
        d2 = self.journal.commit(inlineMessage("Q2"))
        runner.runNext()
        self.successResultOf(d0)

        f, args, kwargs, d = runner.calls.pop(0)
        self.assertEqual(len(args[1]), 2)
        d.errback(Failure(OSError(errno.ENOSPC, "No space left on device")))
        for commit in (d1, d2):
            self.assertEqual(self.failureResultOf(commit, OSError).value.errno, errno.ENOSPC)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

        d3 = self.journal.commit(inlineMessage("Q3"))
        [(f, args, kwargs, _)] = runner.calls
        self.assertEqual(args[0], 1)
        runner.runAll()
        self.successResultOf(d3)
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["Q0", "Q3"])

    def test_doneRecordsSurviveFailedBatch(self):
        """
        C{D} records (and segment deletions) carried by a failed batch are
        not lost: once writes work again, the message marked done is not
        recovered and its finished segment is deleted.
        """
        self.journal = self.openJournal(segmentBytes=1)
        self.commit(inlineMessage("A"))
        self.commit(inlineMessage("B"))
        self.journal.markDone("A")

        def broken(fd, data, offset):
            """
            Fail every write.
            """
            raise OSError(errno.EIO, "Input/output error")

        self.patch(journalModule, "writeAllAt", broken)
        self.failureResultOf(self.journal.commit(inlineMessage("C")), OSError)
        self.flushLoggedErrors(OSError)
        self.patch(journalModule, "writeAllAt", writeAllAt)
        self.journal.markDone("B")
        self.commit(inlineMessage("D"))
        self.clock.advance(1)
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["D"])
        self.assertEqual(segmentNames(self.directory), ["0000000004.log"])


    def test_newSegmentOpenFails(self):
        """
        When the next segment cannot be created (too many open files), that
        batch fails, and the journal recovers once creating files works
        again: the next commit succeeds.
        """
        self.journal = self.openJournal(segmentBytes=1)
        self.commit(inlineMessage("A"))
        # After the bug, the journal holds a descriptor it already closed.
        self.addCleanup(setattr, self.journal, "_fd", None)
        self.patch(journalModule, "os", FailingOpenOS(failures=1))
        self.assertEqual(
            self.failureResultOf(self.journal.commit(inlineMessage("B")), OSError).value.errno, errno.EMFILE
        )
        self.flushLoggedErrors(OSError)
        d = self.journal.commit(inlineMessage("C"))
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.successResultOf(d).queueId, "C")
