# -*- test-case-name: tests.store.test_maildir -*-
"""
Tests for L{qutemail.store.maildir}: Maildir++ delivery, file names, quota
and the C{maildirsize} usage file.
"""

import os
import re

from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, IMessageStore
from qutemail.message import Envelope, SpooledMessage
from qutemail.replies import ReplyError
from qutemail.store import maildir
from qutemail.store.mailbox import mailboxPath, readUsage
from qutemail.store.maildir import MaildirStore, messageFileName, returnPath
from qutemail.store.maildirwrite import WriteJob
from tests.support import QueuedRunner

HOSTNAME = "mail.example.test"
ALICE = Account("alice@example.test")
BOB = Account("bob@example.test")
RECEIVED_AT = 1700000000.25


def message(queueId: str = "18B2C0FFEE0001", body: bytes = b"Subject: hi\n\nbody\n",
            sender: str = "sender@remote.test", receivedAt: float = RECEIVED_AT) -> SpooledMessage:
    """
    @return: an inline message to alice.
    """
    env = Envelope(sender, ("alice@example.test",), "client.test", "192.0.2.7", receivedAt)
    return SpooledMessage(queueId, env, len(body), inline=body)


def queueIdOf(job) -> str:
    """
    @return: the queue id in a L{WriteJob}'s file name.
    """
    return re.search(r"\.M\d{6}Q(.+?)R\d+\.", job.name).group(1)


class MaildirTestsMixin:
    """
    A store under a fresh data directory, with the inline runner.
    """

    defaultQuota = 10 * 1024 * 1024

    def setUp(self):
        """
        A fresh store.
        """
        self.dataDir = self.mktemp()
        self.store = MaildirStore(self.dataDir, InlineRunner(), HOSTNAME, self.defaultQuota)

    def folder(self, account: Account, sub: str) -> list[str]:
        """
        @return: the sorted names in one of an account's Maildir folders.
        """
        path = os.path.join(mailboxPath(self.dataDir, account.address), sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def read(self, account: Account, sub: str, name: str) -> bytes:
        """
        @return: a stored file's contents.
        """
        with open(os.path.join(mailboxPath(self.dataDir, account.address), sub, name), "rb") as f:
            return f.read()


class DeliverTests(MaildirTestsMixin, SynchronousTestCase):
    """
    One delivery: one file in C{new/}, with the Return-Path header.
    """

    def test_interface(self):
        """
        L{MaildirStore} provides L{IMessageStore}.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))

    def test_mailboxPath(self):
        """
        The Maildir of C{local@domain} is C{data_dir/mail/domain/local}.
        """
        self.assertEqual(mailboxPath("/srv", "alice@example.test"), "/srv/mail/example.test/alice")

    def test_deliverOneFile(self):
        """
        A delivery creates exactly one file, in C{new/}, holding the
        Return-Path header then the body, named after the message; C{tmp/}
        and C{cur/} stay empty.
        """
        m = message()
        name = self.successResultOf(self.store.deliver(m, ALICE))
        expectedSize = len(b"Return-Path: <sender@remote.test>\n") + len(m.inline)
        self.assertEqual(name, f"1700000000.M250000Q18B2C0FFEE0001R0.mail.example.test,S={expectedSize}")
        self.assertEqual(self.folder(ALICE, "new"), [name])
        self.assertEqual(self.read(ALICE, "new", name), b"Return-Path: <sender@remote.test>\nSubject: hi\n\nbody\n")
        self.assertEqual(self.folder(ALICE, "tmp"), [])
        self.assertEqual(self.folder(ALICE, "cur"), [])

    def test_nullSenderReturnPath(self):
        """
        A message from the null sender gets C{Return-Path: <>}.
        """
        m = message(sender="")
        self.assertEqual(returnPath(m), b"Return-Path: <>\n")
        name = self.successResultOf(self.store.deliver(m, ALICE))
        self.assertEqual(self.read(ALICE, "new", name), b"Return-Path: <>\n" + m.inline)

    def test_eachRecipientOwnCopy(self):
        """
        The same message delivered for two recipient indexes gives two
        files with different names.
        """
        m = message()
        first = self.successResultOf(self.store.deliver(m, ALICE, 0))
        second = self.successResultOf(self.store.deliver(m, ALICE, 1))
        self.assertNotEqual(first, second)
        self.assertEqual(self.folder(ALICE, "new"), sorted([first, second]))

    def test_spilledMessage(self):
        """
        A spilled message (a path, no inline body) larger than the copy
        buffer is copied byte for byte after the Return-Path header.
        """
        body = bytes(range(256)) * (10 * 1024 + 3)
        spill = self.mktemp()
        with open(spill, "wb") as f:
            f.write(body)
        env = Envelope("big@remote.test", ("alice@example.test",), "c", "192.0.2.7", RECEIVED_AT)
        m = SpooledMessage("BIG1", env, len(body), path=spill)
        name = self.successResultOf(self.store.deliver(m, ALICE))
        header = b"Return-Path: <big@remote.test>\n"
        self.assertEqual(self.read(ALICE, "new", name), header + body)
        self.assertTrue(name.endswith(f",S={len(header) + len(body)}"))
        self.assertEqual(readUsage(mailboxPath(self.dataDir, ALICE.address)), (len(header) + len(body), 1))

    def test_missingSpillFails(self):
        """
        A spilled message whose file is gone fails the delivery with the
        C{OSError}, and leaves nothing in C{new/}.
        """
        env = Envelope("s@remote.test", ("alice@example.test",), "c", "192.0.2.7", RECEIVED_AT)
        m = SpooledMessage("GONE1", env, 10, path=os.path.join(self.mktemp(), "missing"))
        self.failureResultOf(self.store.deliver(m, ALICE), FileNotFoundError)
        self.assertEqual(self.folder(ALICE, "new"), [])


class FileNameTests(SynchronousTestCase):
    """
    Maildir file names: valid, unique, and a function of the queue entry.
    """

    def test_hostnameEscaped(self):
        """
        C{/} and C{:} in the host name are written as C{\\057} and C{\\072}.
        """
        name = messageFileName(message(), 0, "a/b:c", 10)
        self.assertEqual(name, "1700000000.M250000Q18B2C0FFEE0001R0.a\\057b\\072c,S=10")

    def test_deterministic(self):
        """
        The same message, index and size always give the same name.
        """
        self.assertEqual(messageFileName(message(), 3, HOSTNAME, 99), messageFileName(message(), 3, HOSTNAME, 99))

    @given(
        queueIds=st.lists(st.text("0123456789ABCDEF", min_size=1, max_size=24), min_size=2, max_size=2),
        indexes=st.lists(st.integers(0, 10_000), min_size=2, max_size=2),
        times=st.lists(st.floats(0, 2**33, allow_nan=False), min_size=2, max_size=2),
        hostname=st.text(min_size=1, max_size=20),
        size=st.integers(0, 2**40),
    )
    def test_validAndUnique(self, queueIds, indexes, times, hostname, size):
        """
        For any queue ids (hex, as L{qutemail.message.QueueIds}
        makes them), indexes, times and host names, names contain no C{/} or
        C{:}, and two copies with a different queue id or index have
        different names.
        """
        names = [
            messageFileName(message(queueId=q, receivedAt=t), i, hostname, size)
            for q, i, t in zip(queueIds, indexes, times)
        ]
        for name in names:
            self.assertNotIn("/", name)
            self.assertNotIn(":", name)
            self.assertFalse(name.startswith("."))
        if (queueIds[0], indexes[0]) != (queueIds[1], indexes[1]):
            self.assertNotEqual(names[0], names[1])


class ConcurrentDeliveryTests(MaildirTestsMixin, SynchronousTestCase):
    """
    Deliveries that arrive while a batch is being written share the next
    batch.
    """

    def test_parallelBatches(self):
        """
        Up to C{MAX_BATCHES} batches are written at once; deliveries made
        while that many are in flight wait and share the next batch.
        """
        runner = QueuedRunner()
        store = MaildirStore(self.dataDir, runner, HOSTNAME, self.defaultQuota)
        first = [store.deliver(message(queueId=f"A{i}"), ALICE, i) for i in range(maildir.MAX_BATCHES)]
        later = [store.deliver(message(queueId=f"B{i}"), BOB, i) for i in range(3)]
        self.assertEqual(len(runner.calls), maildir.MAX_BATCHES)
        runner.runNext()
        self.successResultOf(first[0])
        self.assertEqual([queueIdOf(job) for job in runner.calls[-1][1][0]], ["B0", "B1", "B2"])
        while runner.calls:
            runner.runNext()
        self.assertEqual(len(self.folder(ALICE, "new")), maildir.MAX_BATCHES)
        self.assertEqual(len(self.folder(BOB, "new")), 3)
        for d in later:
            self.successResultOf(d)

    def test_oneBatch(self):
        """
        With one batch at a time, five deliveries made while it is in flight
        are all written by one further batch; none fires before its batch
        ran, and all land.
        """
        self.patch(maildir, "MAX_BATCHES", 1)
        runner = QueuedRunner()
        store = MaildirStore(self.dataDir, runner, HOSTNAME, self.defaultQuota)
        first = store.deliver(message(queueId="A0"), ALICE)
        later = [store.deliver(message(queueId=f"B{i}"), BOB if i % 2 else ALICE, i) for i in range(5)]
        self.assertEqual(len(runner.calls), 1)
        self.assertNoResult(first)

        runner.runNext()
        firstName = self.successResultOf(first)
        for d in later:
            self.assertNoResult(d)
        [(f, (batch,), kwargs, _)] = runner.calls
        self.assertEqual([queueIdOf(job) for job in batch], [f"B{i}" for i in range(5)])

        runner.runNext()
        names = [self.successResultOf(d) for d in later]
        self.assertEqual(runner.calls, [])
        self.assertEqual(self.folder(ALICE, "new"), sorted([firstName] + names[0::2]))
        self.assertEqual(self.folder(BOB, "new"), sorted(names[1::2]))

    def test_quotaWithinBatch(self):
        """
        Copies to one mailbox in the same batch count against the quota one
        after the other: the one that would exceed it fails, the others land.
        """
        self.patch(maildir, "MAX_BATCHES", 1)
        runner = QueuedRunner()
        store = MaildirStore(self.dataDir, runner, HOSTNAME, self.defaultQuota)
        size = len(returnPath(message())) + message().size
        account = Account("alice@example.test", quotaBytes=2 * size)
        store.deliver(message(queueId="A0"), account)
        ds = [store.deliver(message(queueId=f"B{i}"), account) for i in range(2)]
        runner.runNext()
        runner.runNext()
        self.successResultOf(ds[0])
        self.assertEqual(self.failureResultOf(ds[1], ReplyError).value.reply.enhanced, "4.2.2")
        self.assertEqual(len(self.folder(ALICE, "new")), 2)


class BatchWindowTests(MaildirTestsMixin, SynchronousTestCase):
    """
    With a batch delay, deliveries wait up to that long for others to share
    their batch (one worker call, one directory sync, one C{maildirsize}
    line per mailbox for all of them).
    """

    def windowed(self, clock, runner, delay=0.05):
        return MaildirStore(self.dataDir, runner, HOSTNAME, self.defaultQuota, clock, batchDelaySeconds=delay)

    def test_waitsForTheWindow(self):
        """
        Nothing is written before the delay has passed; then one batch
        writes every delivery made meanwhile, and each Deferred fires with
        its file's name.
        """
        clock, runner = Clock(), QueuedRunner()
        store = self.windowed(clock, runner)
        ds = [store.deliver(message(queueId=f"W{i}"), BOB if i % 2 else ALICE, i) for i in range(5)]
        clock.advance(0.049)
        self.assertEqual(runner.calls, [])
        clock.advance(0.001)
        [(f, (batch,), kwargs, _)] = runner.calls
        self.assertEqual([queueIdOf(job) for job in batch], [f"W{i}" for i in range(5)])
        for d in ds:
            self.assertNoResult(d)
        runner.runNext()
        names = [self.successResultOf(d) for d in ds]
        self.assertEqual(self.folder(ALICE, "new"), sorted(names[0::2]))
        self.assertEqual(self.folder(BOB, "new"), sorted(names[1::2]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_fullBatchAtOnce(self):
        """
        A batch that is full does not wait: it starts at once and cancels
        the timer, and what comes after starts a new window.
        """
        clock, runner = Clock(), QueuedRunner()
        store = self.windowed(clock, runner)
        for i in range(maildir.MAX_BATCH_JOBS):
            store.deliver(message(queueId=f"F{i}"), ALICE, i)
        self.assertEqual(len(runner.calls), 1)
        self.assertEqual(len(runner.calls[0][1][0]), maildir.MAX_BATCH_JOBS)
        self.assertEqual(clock.getDelayedCalls(), [])
        late = store.deliver(message(queueId="G0"), BOB)
        self.assertEqual(len(runner.calls), 1)
        clock.advance(0.05)
        self.assertEqual(len(runner.calls), 2)
        runner.runAll()
        self.successResultOf(late)
        self.assertEqual(len(self.folder(ALICE, "new")), maildir.MAX_BATCH_JOBS)

    def test_oneUsageLinePerMailbox(self):
        """
        A batch of three copies to alice appends one C{maildirsize} line
        for all three, and the usage read back is their sum.
        """
        clock, runner = Clock(), QueuedRunner()
        store = self.windowed(clock, runner)
        msgs = [message(queueId=f"U{i}", body=b"x" * (10 * i) + b"\n") for i in range(3)]
        ds = [store.deliver(m, ALICE) for m in msgs]
        clock.advance(0.05)
        runner.runAll()
        for d in ds:
            self.successResultOf(d)
        sizes = [len(returnPath(m)) + m.size for m in msgs]
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        with open(os.path.join(mailbox, "maildirsize"), "rb") as f:
            self.assertEqual(f.read(), b"%dS\n%d 3\n" % (self.defaultQuota, sum(sizes)))
        self.assertEqual(readUsage(mailbox), (sum(sizes), 3))

    def test_noClockNoWindow(self):
        """
        Without a clock the delay is ignored: each delivery starts a batch
        at once, as the command-line tools need.
        """
        runner = QueuedRunner()
        store = MaildirStore(self.dataDir, runner, HOSTNAME, self.defaultQuota, batchDelaySeconds=0.05)
        store.deliver(message(), ALICE)
        self.assertEqual(len(runner.calls), 1)


class CheckExistingTests(MaildirTestsMixin, SynchronousTestCase):
    """
    A delivery repeated after a crash finds its earlier copy.
    """

    def test_alreadyInNew(self):
        """
        With C{checkExisting}, a copy already in C{new/} (the server crashed
        after storing it) is not stored again, its name is returned, and
        usage is not counted twice.
        """
        m = message()
        name = self.successResultOf(self.store.deliver(m, ALICE, 2))
        restarted = MaildirStore(self.dataDir, InlineRunner(), HOSTNAME, self.defaultQuota)
        self.assertEqual(self.successResultOf(restarted.deliver(m, ALICE, 2, checkExisting=True)), name)
        self.assertEqual(self.folder(ALICE, "new"), [name])
        self.assertEqual(readUsage(mailboxPath(self.dataDir, ALICE.address)), (len(returnPath(m)) + m.size, 1))

    def test_alreadyInCur(self):
        """
        With C{checkExisting}, a copy the user has since read (moved to
        C{cur/} with C{:2,S}) is not stored again.
        """
        m = message()
        name = self.successResultOf(self.store.deliver(m, ALICE))
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        os.rename(os.path.join(mailbox, "new", name), os.path.join(mailbox, "cur", name + ":2,S"))
        restarted = MaildirStore(self.dataDir, InlineRunner(), HOSTNAME, self.defaultQuota)
        self.assertEqual(self.successResultOf(restarted.deliver(m, ALICE, checkExisting=True)), name)
        self.assertEqual(self.folder(ALICE, "new"), [])
        self.assertEqual(self.folder(ALICE, "cur"), [name + ":2,S"])

    def test_withoutCheckStoresAgain(self):
        """
        Without C{checkExisting}, the same copy is written again even though
        a read copy is in C{cur/}.
        """
        m = message()
        name = self.successResultOf(self.store.deliver(m, ALICE))
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        os.rename(os.path.join(mailbox, "new", name), os.path.join(mailbox, "cur", name + ":2,S"))
        self.successResultOf(self.store.deliver(m, ALICE))
        self.assertEqual(self.folder(ALICE, "new"), [name])

    def test_otherCopyNotMistaken(self):
        """
        With C{checkExisting}, another recipient index's copy, or a name
        that only shares a prefix, does not count as already stored.
        """
        m = message()
        other = self.successResultOf(self.store.deliver(m, ALICE, 1))
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        name = messageFileName(m, 0, HOSTNAME, len(returnPath(m)) + m.size)
        with open(os.path.join(mailbox, "cur", name + "0"), "wb"):
            pass
        self.assertEqual(self.successResultOf(self.store.deliver(m, ALICE, 0, checkExisting=True)), name)
        self.assertEqual(self.folder(ALICE, "new"), sorted([other, name]))


class QuotaTests(MaildirTestsMixin, SynchronousTestCase):
    """
    Quotas, from the account or the configured default.
    """

    def test_overQuotaRefused(self):
        """
        A delivery that would take the mailbox past its quota fails with
        L{ReplyError} carrying 452 4.2.2, and stores nothing.
        """
        m = message(body=b"x" * 200)
        reason = self.failureResultOf(self.store.deliver(m, Account("alice@example.test", 100)), ReplyError)
        self.assertEqual((reason.value.reply.code, reason.value.reply.enhanced), (452, "4.2.2"))
        self.assertEqual(self.folder(ALICE, "new"), [])
        self.assertEqual(self.folder(ALICE, "tmp"), [])
        self.assertEqual(readUsage(mailboxPath(self.dataDir, ALICE.address)), (0, 0))

    def test_exactlyAtQuota(self):
        """
        A message that brings usage exactly to the quota is stored; the next
        byte is refused.
        """
        m = message()
        size = len(returnPath(m)) + m.size
        account = Account("alice@example.test", size)
        self.successResultOf(self.store.deliver(m, account))
        tiny = message(queueId="T1", body=b"")
        self.failureResultOf(self.store.deliver(tiny, account), ReplyError)
        self.assertEqual(len(self.folder(ALICE, "new")), 1)

    def test_defaultQuota(self):
        """
        An account without its own quota gets the store's default.
        """
        store = MaildirStore(self.dataDir, InlineRunner(), HOSTNAME, 50)
        self.assertEqual(store.quotaOf(ALICE), 50)
        self.assertEqual(store.quotaOf(Account("x@example.test", 7)), 7)
        self.failureResultOf(store.deliver(message(), ALICE), ReplyError)

    def test_zeroIsUnlimited(self):
        """
        A quota of 0 means no limit.
        """
        store = MaildirStore(self.dataDir, InlineRunner(), HOSTNAME, 0)
        self.successResultOf(store.deliver(message(body=b"y" * 5000), ALICE))
        self.assertFalse(self.successResultOf(store.isFull(ALICE, 10**12)))

    def test_isFull(self):
        """
        C{isFull} says whether the mailbox is at its quota or would go past
        it with C{extraBytes} more.
        """
        m = message()
        size = len(returnPath(m)) + m.size
        account = Account("alice@example.test", size + 10)
        self.assertFalse(self.successResultOf(self.store.isFull(account)))
        self.successResultOf(self.store.deliver(m, account))
        self.assertFalse(self.successResultOf(self.store.isFull(account, 10)))
        self.assertTrue(self.successResultOf(self.store.isFull(account, 11)))
        self.assertTrue(self.successResultOf(self.store.isFull(Account("alice@example.test", size))))


class UsageTests(MaildirTestsMixin, SynchronousTestCase):
    """
    The C{maildirsize} file and L{readUsage}.
    """

    def test_sumsDeliveries(self):
        """
        After three deliveries C{maildirsize} has the quota line and one
        line per delivery, and L{readUsage} sums them.
        """
        sizes = []
        for i, body in enumerate([b"a\n", b"bb\n" * 10, b""]):
            m = message(queueId=f"U{i}", body=body)
            self.successResultOf(self.store.deliver(m, ALICE))
            sizes.append(len(returnPath(m)) + m.size)
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        with open(os.path.join(mailbox, "maildirsize"), "rb") as f:
            expected = b"%dS\n" % (self.defaultQuota,) + b"".join(b"%d 1\n" % (s,) for s in sizes)
            self.assertEqual(f.read(), expected)
        self.assertEqual(readUsage(mailbox), (sum(sizes), 3))
        self.assertEqual(self.successResultOf(self.store.usage(ALICE)), (sum(sizes), 3))

    def test_recreatedFromCount(self):
        """
        When C{maildirsize} is missing (removed, or never written by another
        Maildir tool), the next delivery writes it from a full count of the
        mailbox, folders included, not from its own size alone.
        """
        first = message(queueId="R0", body=b"x\n" * 50)
        self.successResultOf(self.store.deliver(first, ALICE))
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        os.unlink(os.path.join(mailbox, "maildirsize"))
        second = message(queueId="R1", body=b"y\n")
        self.successResultOf(self.store.deliver(second, ALICE))
        sizes = [len(returnPath(m)) + m.size for m in (first, second)]
        self.assertEqual(readUsage(mailbox), (sum(sizes), 2))
        with open(os.path.join(mailbox, "maildirsize"), "rb") as f:
            self.assertEqual(f.read(), b"%dS\n%d 2\n" % (self.defaultQuota, sum(sizes)))

    def test_quotaLineIsAccountQuota(self):
        """
        The first line of C{maildirsize} (Maildir++ quota definition) is the
        account's own quota when it has one.
        """
        self.successResultOf(self.store.deliver(message(), Account("alice@example.test", 5000)))
        with open(os.path.join(mailboxPath(self.dataDir, ALICE.address), "maildirsize"), "rb") as f:
            self.assertEqual(f.read().split(b"\n")[0], b"5000S")


class _RecordingWriter:
    """
    A writer that remembers each batch and answers it as told.
    """

    def __init__(self, failWith: BaseException | None = None) -> None:
        self.batches: list[list] = []
        self.failWith = failWith

    def write(self, jobs: list) -> Deferred:
        self.batches.append(list(jobs))
        if self.failWith is not None:
            return fail(self.failWith)
        return succeed([(job.name, job.size) for job in jobs])


def _job(name: str, inline: bytes | None, source: str | None = None) -> WriteJob:
    """
    A copy to write, as the store makes them.
    """
    size = len(inline) if inline is not None else 10
    return WriteJob("/mail/a", "", name, b"", inline, source, size, 0, False)


class SplitWriterTests(SynchronousTestCase):
    """
    L{maildir.SplitWriter} gives big bodies held in memory to its large
    writer and the rest to its small one, and answers in the batch's order.
    """

    def test_routesBySize(self) -> None:
        """
        Inline bodies from the threshold on go to the large writer; smaller
        ones and spilled messages (only a path crosses) to the small one;
        the results come back in the order of the batch.
        """
        small, large = _RecordingWriter(), _RecordingWriter()
        writer = maildir.SplitWriter(small, large, thresholdBytes=100)
        jobs = [_job("a", b"x" * 99), _job("b", b"x" * 100), _job("c", None, "/spool/c"), _job("d", b"x" * 500)]
        results = self.successResultOf(writer.write(jobs))
        self.assertEqual([[j.name for j in batch] for batch in small.batches], [["a", "c"]])
        self.assertEqual([[j.name for j in batch] for batch in large.batches], [["b", "d"]])
        self.assertEqual(results, [("a", 99), ("b", 100), ("c", 10), ("d", 500)])

    def test_oneWriterOnly(self) -> None:
        """
        A batch that is all small or all big goes whole to one writer.
        """
        small, large = _RecordingWriter(), _RecordingWriter()
        writer = maildir.SplitWriter(small, large, thresholdBytes=100)
        self.successResultOf(writer.write([_job("a", b"x"), _job("b", None, "/spool/b")]))
        self.successResultOf(writer.write([_job("c", b"x" * 200)]))
        self.assertEqual([[j.name for j in batch] for batch in small.batches], [["a", "b"]])
        self.assertEqual([[j.name for j in batch] for batch in large.batches], [["c"]])

    def test_partFails(self) -> None:
        """
        When one writer fails its part, each of that part's copies gets the
        error as its result and the other part's copies are still reported
        written.
        """
        error = OSError(5, "disk")
        writer = maildir.SplitWriter(_RecordingWriter(), _RecordingWriter(failWith=error), thresholdBytes=100)
        results = self.successResultOf(writer.write([_job("a", b"x" * 200), _job("b", b"x"), _job("c", b"x" * 300)]))
        self.assertEqual(results, [error, ("b", 1), error])
