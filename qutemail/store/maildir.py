# -*- test-case-name: tests.store.test_maildir -*-
"""
Local delivery to Maildir++ mailboxes under C{data_dir/mail/<domain>/<localpart>/}.

Each delivery writes C{tmp/<name>}, fsyncs it and renames it into C{new/};
the C{new/} directory is fsynced before the delivery is reported done.
Deliveries that arrive together are written as one batch (by the
delivery process, or in a worker thread) and share the directory syncs
(group commit).

File names follow the Maildir spec (C{time.unique.host}) with the Maildir++
size suffix: C{<secs>.M<usecs>Q<queueId>R<index>.<host>,S=<bytes>}.  The
name is a function of the queue entry alone, so a delivery repeated after a
crash finds its own earlier file and does not store the message twice.

Each batch adds one line per mailbox to its Maildir++ C{maildirsize} file
(see L{qutemail.store.mailbox}, where mailboxes are found and their usage
read and recorded).
"""

from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.interfaces import Account, IMessageStore
from qutemail.message import SpooledMessage
from qutemail.store.mailbox import mailboxPath, readUsage
from qutemail.store.maildirwrite import MaildirWriter, WriteJob

# How long usage read from maildirsize is trusted before it is read again
# (other processes, such as an IMAP server on another node, may change it).
USAGE_CACHE_SECONDS = 60.0
# With the Maildirs shared by several nodes ([mailbox] mail_dir), the other
# nodes' deliveries reach maildirsize unseen by this node's cache: it is
# kept for this long only.
SHARED_USAGE_CACHE_SECONDS = 1.0
# Delivery batches written at once (each in its own worker thread, in the
# delivery process or in this one).
MAX_BATCHES = 4
# The most copies one batch takes.
MAX_BATCH_JOBS = 64
# How long the server lets a delivery wait for others to share its batch
# (MaildirStore's batchDelaySeconds).  The message is durable in the journal
# meanwhile; a batch then costs one worker-thread call, one directory sync
# and one maildirsize line per mailbox instead of one of each per copy,
# which is what a worker thread contending with the reactor for the GIL
# makes expensive (bench/throughput.sh: one session x 2 KB, 1.17-1.25 of
# Postfix's end-to-end rate with it, 0.84-1.10 without).
BATCH_DELAY_SECONDS = 0.05
# A batch starts sooner when deliveries stop coming for this long
# (MaildirStore's batchIdleSeconds): the last message of a burst, or a lone
# one, is not held for the whole delay with nothing left to wait for.
# Under steady load messages come closer together than this and batches
# still fill for the whole delay.
BATCH_IDLE_SECONDS = 0.005


def messageFileName(message: SpooledMessage, index: int, hostname: str, size: int) -> str:
    """
    The Maildir file name of one recipient's copy of a message.

    @param message: the spooled message.
    @param index: the recipient's position in the envelope.
    @param hostname: this server's host name.
    @param size: the stored size in bytes.
    @return: the base name (without any C{:2,} flags).
    """
    t = message.envelope.receivedAt
    secs = int(t)
    usecs = int((t - secs) * 1_000_000)
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{secs}.M{usecs:06d}Q{message.queueId}R{index}.{host},S={size}"


def returnPath(message: SpooledMessage) -> bytes:
    """
    The C{Return-Path} header a final delivery adds (RFC 5321 §4.4),
    followed by the envelope's L{Envelope.addedHeaders}.

    @param message: the spooled message.
    @return: the header lines, LF-terminated.
    """
    return b"Return-Path: <%s>\n" % (message.envelope.sender.encode("utf-8"),) + \
        message.envelope.addedHeaders.encode("utf-8")


@attrs.frozen
class _Job:
    """
    One recipient's copy, waiting for the next batch.
    """

    message: SpooledMessage
    account: Account
    index: int
    checkExisting: bool
    deferred: Deferred


@implementer(IMessageStore)
class MaildirStore:
    """
    Maildir++ delivery with quotas and group-committed syncs.
    """

    _log = Logger()

    def __init__(self, dataDir: str, runner: Any, hostname: str, defaultQuotaBytes: int,
                 clock: Any = None, batchDelaySeconds: float = 0.0, writer: Any = None,
                 notifier: Any = None, usageCacheSeconds: float = USAGE_CACHE_SECONDS,
                 batchIdleSeconds: float = 0.0) -> None:
        """
        @param dataDir: the server's C{data_dir}.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param hostname: this server's host name, for file names.
        @param defaultQuotaBytes: the quota of accounts without their own.
        @param clock: an C{IReactorTime}; with one, usage read from
            C{maildirsize} is cached for L{USAGE_CACHE_SECONDS} (and kept up
            to date by our own deliveries), so RCPT needs no disk access.
        @param batchDelaySeconds: how long a delivery may wait for others to
            share its batch (0: a batch starts at once; the server uses
            L{BATCH_DELAY_SECONDS}).  Only with a clock; a full batch
            (L{MAX_BATCH_JOBS}) never waits.
        @param writer: writes the batches: an object whose C{write(jobs)}
            returns a Deferred firing with the results of
            L{MaildirWriter.writeBatch}, such as the delivery process
            (L{qutemail.store.deliveryprocess.DeliveryProcess}); by default
            a L{ThreadWriter} on C{runner}.
        @param notifier: the L{qutemail.interfaces.IMailboxNotifier} told of
            each stored copy (IMAP IDLE wakes on it), or C{None}.
        @param usageCacheSeconds: how long usage read from C{maildirsize}
            is trusted (L{SHARED_USAGE_CACHE_SECONDS} when other nodes
            deliver to the same Maildirs).
        @param batchIdleSeconds: with a batch delay, start the batch
            earlier once no delivery has come for this long (0: always
            wait the whole delay; the server uses L{BATCH_IDLE_SECONDS}).
        """
        self._usageCacheSeconds = usageCacheSeconds
        self.notifier = notifier
        self._clock = clock
        self._batchDelay = batchDelaySeconds if clock is not None else 0.0
        self._batchIdle = batchIdleSeconds
        self._batchTimer: Any = None
        # When the waiting batch's first and latest deliveries came.
        self._batchStarted = self._lastArrival = 0.0
        self._usage: dict[str, tuple[int, int, float]] = {}
        self._dataDir = dataDir
        self._runner = runner
        self._hostname = hostname
        self._defaultQuota = defaultQuotaBytes
        self._pending: list[_Job] = []
        self._flushing = 0
        self._writer = writer if writer is not None else ThreadWriter(runner)

    def quotaOf(self, account: Account) -> int:
        """
        @return: the account's quota in bytes (0: unlimited).
        """
        return self._defaultQuota if account.quotaBytes is None else account.quotaBytes

    def deliver(self, message: SpooledMessage, account: Account, index: int = 0, checkExisting: bool = False) -> Deferred:
        """
        Store a message in an account's INBOX.

        @param message: the spooled message.
        @param account: the recipient.
        @param index: the recipient's position in the envelope (part of the
            file name, so each copy has its own).
        @param checkExisting: look for a copy stored before a crash first.
        @return: a Deferred firing with the file's base name; it fails with
            L{ReplyError} (C{MAILBOX_FULL}) when the quota would be exceeded,
            or with the C{OSError} of a failed write.
        """
        d: Deferred = Deferred()
        self._pending.append(_Job(message, account, index, checkExisting, d))
        if not self._batchDelay or len(self._pending) >= MAX_BATCH_JOBS:
            self._flush()
            return d
        self._lastArrival = self._clock.seconds()
        if self._batchTimer is None:
            self._batchStarted = self._lastArrival
            self._batchTimer = self._clock.callLater(self._nextWait(), self._batchDue)
        return d

    def _nextWait(self) -> float:
        """
        @return: how long from now the waiting batch may still wait: until
            the idle gap after its latest delivery, and never past the
            delay after its first.
        """
        deadline = self._batchStarted + self._batchDelay
        if self._batchIdle:
            deadline = min(deadline, self._lastArrival + self._batchIdle)
        return max(deadline - self._clock.seconds(), 0.0)

    def _batchDue(self) -> None:
        """
        The batch's wait may be over: write what is pending, unless
        deliveries came meanwhile and it may wait a little longer.
        """
        wait = self._nextWait()
        if wait > 0:
            self._batchTimer = self._clock.callLater(wait, self._batchDue)
            return
        self._batchTimer = None
        self._flush()

    def usage(self, account: Account) -> Deferred:
        """
        @return: a Deferred firing with C{(bytes, messages)}.
        """
        address = account.address
        if self._clock is not None:
            cached = self._usage.get(address)
            now = self._clock.seconds()
            if cached is not None and now - cached[2] < self._usageCacheSeconds:
                return succeed(cached[:2])

        def remember(usage):
            if self._clock is not None:
                self._usage[address] = (usage[0], usage[1], self._clock.seconds())
            return usage

        return self._runner.run(readUsage, mailboxPath(self._dataDir, address)).addCallback(remember)

    def _addCachedUsage(self, address: str, size: int) -> None:
        """
        Count one of our own deliveries in the cached usage.
        """
        cached = self._usage.get(address)
        if cached is not None:
            self._usage[address] = (cached[0] + size, cached[1] + 1, cached[2])

    def isFull(self, account: Account, extraBytes: int = 0) -> Deferred:
        """
        Whether a message of C{extraBytes} would exceed the account's quota.

        @return: a Deferred firing with a bool.
        """
        quota = self.quotaOf(account)
        if not quota:
            return succeed(False)
        d = self.usage(account)
        return d.addCallback(lambda used: used[0] >= quota or used[0] + extraBytes > quota)

    def _flush(self) -> None:
        """
        Start a batch of everything pending, unless L{MAX_BATCHES} are
        already being written (then the first to finish starts the next).
        Batches run in parallel because an fsync mostly waits on the disk,
        which serves several at once.
        """
        if self._flushing >= MAX_BATCHES or not self._pending:
            return
        if self._batchTimer is not None:
            self._batchTimer.cancel()
            self._batchTimer = None
        self._flushing += 1
        batch, self._pending = self._pending[:MAX_BATCH_JOBS], self._pending[MAX_BATCH_JOBS:]
        d = self._writer.write([self._writeJob(job) for job in batch])

        def finished(results):
            self._flushing -= 1
            for job, result in zip(batch, results):
                if isinstance(result, BaseException):
                    job.deferred.errback(result)
                else:
                    name, size = result
                    self._addCachedUsage(job.account.address, size)
                    if self.notifier is not None and size:
                        self.notifier.publish(job.account.address)
                    job.deferred.callback(name)
            self._flush()

        def failed(failure):
            self._flushing -= 1
            for job in batch:
                job.deferred.errback(failure)
            self._flush()

        d.addCallbacks(finished, failed)

    def _writeJob(self, job: _Job) -> WriteJob:
        """
        What the writer needs to store one copy.
        """
        message = job.message
        header = returnPath(message)
        size = len(header) + message.size
        return WriteJob(
            mailbox=mailboxPath(self._dataDir, job.account.address),
            folder=message.envelope.folder or "",
            name=messageFileName(message, job.index, self._hostname, size),
            header=header,
            inline=message.inline,
            source=None if message.inline is not None else message.path,
            size=size,
            quotaBytes=self.quotaOf(job.account),
            checkExisting=job.checkExisting,
        )


@attrs.define
class ThreadWriter:
    """
    Writes delivery batches in the server's worker threads.
    """

    runner: Any
    writer: MaildirWriter = attrs.field(factory=MaildirWriter)

    def write(self, jobs: list[WriteJob]) -> Deferred:
        """
        @return: a Deferred firing with L{MaildirWriter.writeBatch}'s results.
        """
        return self.runner.run(self.writer.writeBatch, jobs)


# Copies of messages held in memory from this size on are written in this
# process's threads even when a delivery process writes the rest.
LARGE_INLINE_BYTES = 32 * 1024


@attrs.define
class SplitWriter:
    """
    Hands the copies of big messages held in memory to one writer and the
    rest to another: the delivery process takes the many small copies
    (whose system calls would fight the reactor for the GIL), while a
    100 KiB body costs more to pickle and push through its pipe, on the
    reactor thread, than a worker thread's write of it costs (the write and
    the fsync release the GIL).

    @ivar small: the writer of most copies (the delivery process).
    @ivar large: the writer of big inline copies (a L{ThreadWriter}).
    @ivar thresholdBytes: what counts as big.
    """

    small: Any
    large: Any
    thresholdBytes: int = LARGE_INLINE_BYTES

    def write(self, jobs: list[WriteJob]) -> Deferred:
        """
        @return: a Deferred firing with L{MaildirWriter.writeBatch}'s
            results, in the order of C{jobs}; a part that failed as a whole
            gives its exception as each of its copies' result.
        """
        big = [job.inline is not None and len(job.inline) >= self.thresholdBytes for job in jobs]
        if not any(big):
            return self.small.write(jobs)
        if all(big):
            return self.large.write(jobs)
        parts = [(writer, [job for job, isBig in zip(jobs, big) if isBig is wanted])
                 for writer, wanted in ((self.small, False), (self.large, True))]

        def each(writer: Any, part: list[WriteJob]) -> Deferred:
            return writer.write(part).addErrback(lambda failure: [failure.value] * len(part))

        def merge(results: list[list]) -> list:
            smallResults, largeResults = iter(results[0]), iter(results[1])
            return [next(largeResults) if isBig else next(smallResults) for isBig in big]

        return gatherResults([each(writer, part) for writer, part in parts]).addCallback(merge)
