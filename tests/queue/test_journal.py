"""
Tests for L{qutemail.queue.journal}: group-committed, append-only segments
and their recovery after a crash.
"""

import errno
import os

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.message import Envelope, SpooledMessage
from qutemail.queue import journal as journalModule
from qutemail.queue.journal import ZERO_AHEAD_BYTES, Journal, encodeDone, encodeMessage, parseSegment
from tests.support import QueuedRunner


class FailingOpenOS:
    """
    The C{os} module, except that the first C{failures} calls to C{open}
    fail with C{EMFILE}.
    """

    def __init__(self, failures: int) -> None:
        """
        @param failures: how many C{open} calls fail.
        """
        self.failures = failures

    def __getattr__(self, name: str):
        """
        Everything else is the real C{os}.
        """
        return getattr(os, name)

    def open(self, path, flags, mode=0o777):
        """
        Fail, or call L{os.open}.
        """
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return os.open(path, flags, mode)


def envelope(sender: str = "sender@remote.test", recipients=("alice@example.test",)) -> Envelope:
    """
    @return: an envelope with fixed client details.
    """
    return Envelope(sender, tuple(recipients), "client.test", "192.0.2.7", 1700000000.5)


def inlineMessage(queueId: str, body: bytes = b"Subject: hi\n\nbody\n") -> SpooledMessage:
    """
    @return: a small message whose body is in the record.
    """
    return SpooledMessage(queueId, envelope(), len(body), inline=body)


def segmentNames(directory: str) -> list[str]:
    """
    @return: the journal directory's file names, sorted.
    """
    return sorted(os.listdir(directory))


class JournalTestsMixin:
    """
    A journal over an inline runner and a L{Clock}.
    """

    def setUp(self):
        """
        A journal in a fresh directory.
        """
        self.directory = self.mktemp()
        self.clock = Clock()
        self.journal = self.openJournal()

    def openJournal(self, segmentBytes: int = journalModule.DEFAULT_SEGMENT_BYTES, runner=None) -> Journal:
        """
        Open (and recover) a journal over the test's directory, closed at
        cleanup.
        """
        journal = Journal(self.directory, runner or InlineRunner(), self.clock, segmentBytes)
        journal.recover()
        self.addCleanup(journal._closeFile)
        return journal

    def recoverFresh(self) -> list[SpooledMessage]:
        """
        What a journal opened after a crash now would recover.
        """
        return Journal(self.directory, InlineRunner(), Clock()).recover()

    def commit(self, message: SpooledMessage) -> SpooledMessage:
        """
        Commit and return the result of the (already fired) Deferred.
        """
        return self.successResultOf(self.journal.commit(message))


class CommitRecoverTests(JournalTestsMixin, SynchronousTestCase):
    """
    What is committed survives; what is done does not come back.
    """

    def test_commitFiresWithMessage(self):
        """
        C{commit} fires with the message itself once the batch is written.
        """
        message = inlineMessage("Q1")
        self.assertIs(self.commit(message), message)

    def test_inlineRecovered(self):
        """
        A committed inline message is recovered, equal in every field, by a
        journal opened afterwards.
        """
        message = inlineMessage("Q1")
        self.commit(message)
        self.assertEqual(self.recoverFresh(), [message])

    def test_spilledRecovered(self):
        """
        A committed spilled message (a path, no inline body) is recovered
        with its path and size and no inline body.
        """
        message = SpooledMessage("Q2", envelope(), 5_000_000, path="queue/large/Q2")
        self.commit(message)
        [recovered] = self.recoverFresh()
        self.assertEqual(recovered, message)
        self.assertIsNone(recovered.inline)

    def test_recoverOrder(self):
        """
        Several messages are recovered oldest first.
        """
        messages = [inlineMessage(f"Q{i}", b"body %d\n" % (i,)) for i in range(5)]
        for message in messages:
            self.commit(message)
        self.assertEqual(self.recoverFresh(), messages)

    def test_markDoneThenRecover(self):
        """
        After C{markDone} and the lazy flush a second later, recovery
        returns nothing; before the flush the C{D} record is not yet written
        and the message would be recovered.
        """
        message = inlineMessage("Q1")
        self.commit(message)
        self.journal.markDone("Q1")
        self.assertEqual(self.recoverFresh(), [message])
        self.clock.advance(0.999)
        self.assertEqual(self.recoverFresh(), [message])
        self.clock.advance(0.001)
        self.assertEqual(self.recoverFresh(), [])

    def test_doneRidesOnNextBatch(self):
        """
        A C{D} record is written with the next commit's batch, without
        waiting for the lazy flush.
        """
        first, second = inlineMessage("Q1"), inlineMessage("Q2")
        self.commit(first)
        self.journal.markDone("Q1")
        self.commit(second)
        self.assertEqual(self.recoverFresh(), [second])

    def test_markDoneOnlyTheOne(self):
        """
        Marking one message done leaves the others to recovery.
        """
        messages = [inlineMessage(f"Q{i}") for i in range(3)]
        for message in messages:
            self.commit(message)
        self.journal.markDone("Q1")
        self.clock.advance(1)
        self.assertEqual(self.recoverFresh(), [messages[0], messages[2]])

    def test_markDoneUnknown(self):
        """
        C{markDone} for an id the journal does not hold writes nothing and
        schedules nothing.
        """
        self.journal.markDone("NOPE")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(os.listdir(self.directory), [])

    def test_markDoneRemovesSpill(self):
        """
        The spill file given to C{markDone} is deleted once the C{D} record
        is written, and not before.
        """
        spill = self.mktemp()
        with open(spill, "wb") as f:
            f.write(b"big body")
        message = SpooledMessage("Q1", envelope(), 8, path=spill)
        self.commit(message)
        self.journal.markDone("Q1", spill)
        self.assertTrue(os.path.exists(spill))
        self.clock.advance(1)
        self.assertFalse(os.path.exists(spill))
        self.assertEqual(self.recoverFresh(), [])

    def test_recordLayout(self):
        """
        The segment holds exactly the C{M} records, then the C{D} records,
        as L{encodeMessage} and L{encodeDone} build them, then the zeros
        laid down ahead of them when the first (small) batch was written.
        """
        message = inlineMessage("Q1")
        self.commit(message)
        self.journal.markDone("Q1")
        self.clock.advance(1)
        [name] = segmentNames(self.directory)
        self.assertEqual(name, "0000000000.log")
        records = encodeMessage(message) + b"D Q1\n"
        with open(os.path.join(self.directory, name), "rb") as f:
            self.assertEqual(f.read(), records + bytes(len(encodeMessage(message)) + ZERO_AHEAD_BYTES - len(records)))
        self.assertEqual(encodeDone("Q1"), b"D Q1\n")

    def test_closeFlushesDone(self):
        """
        C{close} writes a pending C{D} record at once and cancels the lazy
        flush, also with a runner that finishes synchronously.
        """
        self.commit(inlineMessage("Q1"))
        self.journal.markDone("Q1")
        self.successResultOf(self.journal.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.recoverFresh(), [])


    def test_closeWaitsForBatches(self):
        """
        With an asynchronous runner, C{close} waits for the batch in flight,
        writes what is pending, and only then closes the segment.
        """
        runner = QueuedRunner()
        self.journal = self.openJournal(runner=runner)
        self.journal.commit(inlineMessage("Q0"))
        d1 = self.journal.commit(inlineMessage("Q1"))
        closed = self.journal.close()
        self.assertNoResult(closed)
        runner.runNext()
        self.assertNoResult(closed)
        runner.runNext()
        self.successResultOf(d1)
        self.assertNoResult(closed)
        [(f, args, kwargs, _)] = runner.calls
        self.assertEqual(f.__name__, "_closeFile")
        runner.runNext()
        self.assertIsNone(self.successResultOf(closed))
        self.assertIsNone(self.journal._fd)
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["Q0", "Q1"])

    @given(
        st.lists(
            st.tuples(
                st.text(max_size=30),
                st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4),
                st.binary(max_size=300),
                st.booleans(),
            ),
            max_size=8,
        )
    )
    def test_commitRecoverRoundTrip(self, specs):
        """
        Any messages (any envelope text, any body bytes, inline or spilled)
        committed are recovered by a fresh journal as equal
        L{SpooledMessage} objects, in order.
        """
        directory = self.mktemp()
        journal = Journal(directory, InlineRunner(), Clock())
        journal.recover()
        messages = []
        for i, (sender, recipients, body, spilled) in enumerate(specs):
            env = Envelope(sender, tuple(recipients), "helo", "192.0.2.1", 1700000000.0 + i / 7)
            if spilled:
                message = SpooledMessage(f"Q{i:04X}", env, len(body) + 1, path=f"large/Q{i:04X}")
            else:
                message = SpooledMessage(f"Q{i:04X}", env, len(body), inline=body)
            self.successResultOf(journal.commit(message))
            messages.append(message)
        self.successResultOf(journal.close())
        self.assertEqual(Journal(directory, InlineRunner(), Clock()).recover(), messages)


class TornRecordTests(JournalTestsMixin, SynchronousTestCase):
    """
    A record cut short by a crash (it never got its sync, so never got a
    250) is ignored, and the records before it survive.
    """

    def setUp(self):
        """
        Two committed messages; the second one's record is the last.
        """
        JournalTestsMixin.setUp(self)
        self.first = inlineMessage("Q1", b"Subject: one\n\nfirst body\n")
        self.second = inlineMessage("Q2", b"Subject: two\n\nsecond body, longer\n")
        self.commit(self.first)
        self.commit(self.second)
        self.successResultOf(self.journal.close())
        self.segment = os.path.join(self.directory, "0000000000.log")
        self.firstLength = len(encodeMessage(self.first))
        self.secondRecord = encodeMessage(self.second)

    def test_truncatedInsideLastRecord(self):
        """
        Cutting the segment anywhere inside the last record (in its header,
        right after it, in the envelope, in the body, one byte short)
        recovers exactly the first message.
        """
        headerLength = self.secondRecord.index(b"\n") + 1
        cuts = [1, 2, headerLength - 1, headerLength, headerLength + 5, len(self.secondRecord) - 1]
        for cut in cuts:
            with open(self.segment, "r+b") as f:
                f.truncate(self.firstLength + cut)
            self.assertEqual(self.recoverFresh(), [self.first], f"cut at {cut}")

    def test_everyCutPoint(self):
        """
        No truncation point inside the last record makes it (or anything
        else) recovered.
        """
        with open(self.segment, "rb") as f:
            whole = f.read(self.firstLength + len(self.secondRecord))
        for cut in range(self.firstLength, len(whole)):
            messages, done, damaged = parseSegment(whole[:cut])
            expected = [] if cut == self.firstLength else [(self.firstLength, cut - self.firstLength)]
            self.assertEqual((messages, done, damaged), ([self.first], set(), expected))

    def test_garbageAppended(self):
        """
        Garbage after the last complete record (no newline, a bad header, a
        checksum mismatch, a length past the end) is ignored and both
        messages are recovered.
        """
        bad = [
            b"x",
            b"\x00\xff" * 150,
            b"M Q3 1",
            b"Z Q3 1 2 3\n",
            b"M Q3 abc 0 0\n",
            b"M Q3 2 3 12345\n{}abc",
            b"M Q3 99999 0 0\n{}",
            b"M \xff\xfe 2 0 0\n{}",
        ]
        with open(self.segment, "rb") as f:
            clean = f.read()
        for garbage in bad:
            with open(self.segment, "wb") as f:
                f.write(clean + garbage)
            self.assertEqual(self.recoverFresh(), [self.first, self.second], repr(garbage))

    def test_tornTailLogged(self):
        """
        Recovery logs a warning naming the segment with the torn record.
        """
        with open(self.segment, "ab") as f:
            f.write(b"M Q3 5")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.recoverFresh()
        [event] = [e for e in events if "torn" in e["log_format"]]
        self.assertEqual(event["segment"], "0000000000.log")

    def test_newRecordsGoToNewSegment(self):
        """
        After recovering a torn segment, new records go to the next segment,
        never after the torn bytes, and recovery then finds old and new.
        """
        with open(self.segment, "r+b") as f:
            f.truncate(self.firstLength + 10)
        journal = self.openJournal()
        third = inlineMessage("Q3")
        self.successResultOf(journal.commit(third))
        self.assertEqual(segmentNames(self.directory), ["0000000000.log", "0000000001.log"])
        with open(self.segment, "rb") as f:
            self.assertEqual(len(f.read()), self.firstLength + 10)
        self.assertEqual(self.recoverFresh(), [self.first, third])


class CorruptionTests(JournalTestsMixin, SynchronousTestCase):
    """
    Damage that is not a torn tail is not silently taken for one.
    """

    def test_corruptRecordBeforeGoodOnes(self):
        """
        A record that fails its checksum with complete records after it (not
        a torn tail: those records were acknowledged) costs only itself: the
        records after it are recovered, and the damage is logged as an error
        naming the offset.
        """
        messages = [inlineMessage(f"Q{i}", b"body %d\n" % (i,)) for i in range(3)]
        for message in messages:
            self.commit(message)
        segment = os.path.join(self.directory, "0000000000.log")
        with open(segment, "r+b") as f:
            f.seek(len(encodeMessage(messages[0])) - 2)
            f.write(b"X")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertEqual(self.recoverFresh(), messages[1:])
        [event] = [e for e in events if "damaged" in e["log_format"]]
        self.assertEqual((event["offset"], event["length"]), (0, len(encodeMessage(messages[0]))))
        self.assertEqual(event["log_level"], LogLevel.error)


class GroupCommitTests(JournalTestsMixin, SynchronousTestCase):
    """
    Commits that arrive while a batch is being written share the next one.
    """

    def setUp(self):
        """
        A journal over a runner the test drives.
        """
        self.directory = self.mktemp()
        self.clock = Clock()
        self.runner = QueuedRunner()
        self.journal = self.openJournal(runner=self.runner)

    def writeBatches(self) -> int:
        """
        @return: how many C{_writeBatch} calls the runner has run.
        """
        return sum(1 for f in self.runner.ran if getattr(f, "__name__", "") == "_writeBatch")

    def test_commitsShareOneBatch(self):
        """
        Three commits made while the first batch is in flight are written by
        one further C{_writeBatch} call, and their Deferreds fire only after
        it ran.
        """
        first = self.journal.commit(inlineMessage("Q0"))
        self.assertEqual(len(self.runner.calls), 1)
        later = [self.journal.commit(inlineMessage(f"Q{i}")) for i in range(1, 4)]
        self.assertEqual(len(self.runner.calls), 1)
        self.assertNoResult(first)

        self.runner.runNext()
        self.assertEqual(self.successResultOf(first).queueId, "Q0")
        for d in later:
            self.assertNoResult(d)
        [(f, args, kwargs, d)] = self.runner.calls
        self.assertEqual(args[1], [encodeMessage(inlineMessage(f"Q{i}")) for i in range(1, 4)])

        self.runner.runNext()
        self.assertEqual([self.successResultOf(d).queueId for d in later], ["Q1", "Q2", "Q3"])
        self.assertEqual(self.writeBatches(), 2)
        self.assertEqual(self.runner.calls, [])
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["Q0", "Q1", "Q2", "Q3"])

    def test_doneRecordsJoinBatch(self):
        """
        A C{D} record made while a batch is in flight goes into the next
        batch with the commits, without an extra write.
        """
        self.journal.commit(inlineMessage("Q0"))
        self.runner.runNext()
        self.journal.commit(inlineMessage("Q1"))
        self.journal.markDone("Q0")
        d = self.journal.commit(inlineMessage("Q2"))
        self.runner.runNext()
        [(f, args, kwargs, _)] = self.runner.calls
        self.assertEqual(args[1], [b"D Q0\n", encodeMessage(inlineMessage("Q2"))])
        self.runner.runNext()
        self.successResultOf(d)
        self.clock.advance(1)
        self.assertEqual(self.runner.calls, [])
        self.assertEqual(self.writeBatches(), 3)
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["Q1", "Q2"])

    def test_idleAfterBatch(self):
        """
        When nothing else is pending, a finished batch does not start
        another write.
        """
        d = self.journal.commit(inlineMessage("Q0"))
        self.runner.runNext()
        self.successResultOf(d)
        self.assertEqual(self.runner.calls, [])


class RotationTests(JournalTestsMixin, SynchronousTestCase):
    """
    Segments are started past C{segmentBytes} and deleted in order once
    every message in them is done.
    """

    def test_rotateAndDeleteInOrder(self):
        """
        With a one-byte segment size each commit starts a segment; a
        finished segment is not deleted while an earlier one still holds a
        live message, the current segment is never deleted, and recovery
        returns only what is live.
        """
        log = self.directory
        self.journal = self.openJournal(segmentBytes=1)
        for queueId in ("A", "B", "C"):
            self.commit(inlineMessage(queueId))
        self.assertEqual(segmentNames(log), ["0000000000.log", "0000000001.log", "0000000002.log"])

        self.journal.markDone("B")
        self.clock.advance(1)
        self.assertEqual(segmentNames(log), ["0000000000.log", "0000000001.log", "0000000002.log"])

        self.journal.markDone("A")
        self.clock.advance(1)
        self.assertEqual(segmentNames(log), ["0000000002.log"])

        self.journal.markDone("C")
        self.clock.advance(1)
        self.assertEqual(segmentNames(log), ["0000000002.log"])

        self.commit(inlineMessage("D"))
        self.assertEqual(segmentNames(log), ["0000000003.log"])
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["D"])

    def test_rotationBySize(self):
        """
        A new segment starts with the first commit after the written bytes
        reach C{segmentBytes}.
        """
        recordLength = len(encodeMessage(inlineMessage("A")))
        self.journal = self.openJournal(segmentBytes=2 * recordLength)
        for queueId in ("A", "B", "C", "D", "E"):
            self.commit(inlineMessage(queueId))
        self.assertEqual(segmentNames(self.directory), ["0000000000.log", "0000000001.log", "0000000002.log"])
        sizes = []
        for name in segmentNames(self.directory):
            with open(os.path.join(self.directory, name), "rb") as f:
                sizes.append(len(f.read().rstrip(b"\0")))
        self.assertEqual(sizes, [2 * recordLength, 2 * recordLength, recordLength])

    def test_recoverDeletesFinishedSegments(self):
        """
        Recovery deletes the leading segments whose messages are all done
        (a crash came after the C{D} records were synced but before the
        files were unlinked), and keeps the rest.
        """
        self.journal = self.openJournal(segmentBytes=1)
        for queueId in ("A", "B", "C"):
            self.commit(inlineMessage(queueId))
        self.successResultOf(self.journal.close())
        # Written where the journal would have written it: over the zeros
        # after the last record.
        last = os.path.join(self.directory, "0000000002.log")
        with open(last, "rb") as f:
            end = len(f.read().rstrip(b"\0"))
        with open(last, "r+b") as f:
            f.seek(end)
            f.write(encodeDone("A"))
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["B", "C"])
        self.assertEqual(segmentNames(self.directory), ["0000000001.log", "0000000002.log"])

    def test_liveSegmentKeptAfterLaterOnesFinish(self):
        """
        A segment holding a live message keeps every later segment too,
        finished or not, because their C{D} records may be needed.
        """
        self.journal = self.openJournal(segmentBytes=1)
        for queueId in ("A", "B", "C"):
            self.commit(inlineMessage(queueId))
        self.journal.markDone("B")
        self.journal.markDone("C")
        self.clock.advance(1)
        self.commit(inlineMessage("D"))
        self.assertEqual(
            segmentNames(self.directory),
            ["0000000000.log", "0000000001.log", "0000000002.log", "0000000003.log"],
        )
        self.assertEqual([m.queueId for m in self.recoverFresh()], ["A", "D"])
