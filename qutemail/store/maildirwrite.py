# -*- test-case-name: tests.store.test_maildirwrite,tests.store.test_maildir -*-
"""
The blocking half of Maildir delivery: writing a batch of copies.

L{qutemail.store.maildir.MaildirStore} decides what goes where (the file
name, the mailbox, the quota) on the reactor thread and hands the batch, as
plain L{WriteJob} values, to a L{MaildirWriter}: in a worker thread, or in
the delivery process (L{qutemail.store.deliveryprocess}), so that the disk
work of delivery does not contend with the SMTP dialogue for one GIL.

A copy is written to C{tmp/<name>}, fsynced and renamed into C{new/}; each
mailbox touched by the batch gets one C{maildirsize} line and each C{new/}
directory one fsync, after which the batch is reported.
"""

import os
import threading

import attrs

from qutemail.durable import PRIVATE_FILE_MODE, syncDirectory, writeAll
from qutemail.replies import MAILBOX_FULL, ReplyError
from qutemail.store.folders import ensureMaildir
from qutemail.store.mailbox import UsageTail, readUsageFrom, recordUsage

_COPY_BYTES = 1024 * 1024
@attrs.frozen
class WriteJob:
    """
    One recipient's copy of a message, as the writer needs it: plain values
    only, so that a job can cross a process boundary.

    @ivar mailbox: the account's Maildir (where its quota is kept).
    @ivar folder: the Maildir++ folder name (without its leading dot), or
        C{""} for the INBOX.
    @ivar name: the file's base name.
    @ivar header: the lines delivery adds in front of the message.
    @ivar inline: the message's bytes when held in memory, else C{None}.
    @ivar source: the spill file holding the message when not inline.
    @ivar size: the stored size (header included).
    @ivar quotaBytes: the account's quota (0: unlimited).
    @ivar checkExisting: look for a copy stored before a crash first.
    """

    mailbox: str
    folder: str
    name: str
    header: bytes
    inline: bytes | None
    source: str | None
    size: int
    quotaBytes: int
    checkExisting: bool

    @property
    def box(self) -> str:
        """
        The directory the copy goes into: the mailbox or one of its folders.
        """
        return os.path.join(self.mailbox, "." + self.folder) if self.folder else self.mailbox


@attrs.define
class _Tally:
    """
    One mailbox's usage during a batch.

    @ivar quotaBytes: the account's quota (0: unlimited).
    @ivar usedBytes: its usage when the batch first wrote to it (read only
        when there is a quota).
    @ivar addedBytes: what the batch's copies added since.
    @ivar addedMessages: how many copies that is.
    """

    quotaBytes: int
    usedBytes: int = 0
    addedBytes: int = 0
    addedMessages: int = 0


class MaildirWriter:
    """
    Writes batches of copies (blocking: a worker thread or the delivery
    process; batches may run in parallel threads).
    """

    def __init__(self) -> None:
        # One lock per mailbox for maildirsize: batches run in parallel.
        self._sizeLocks: dict[str, threading.Lock] = {}
        # What each mailbox's maildirsize said when last read (under that
        # mailbox's lock).
        self._tails: dict[str, UsageTail | None] = {}
        self._known: set[str] = set()

    def writeBatch(self, jobs: list[WriteJob]) -> list:
        """
        Write every copy of a batch, record the mailboxes' new usage (one
        C{maildirsize} line per mailbox), then sync the directories.

        @return: per job, C{(name, addedBytes)} (0 bytes when an earlier
            copy was found) or the C{OSError}/L{ReplyError} that stopped it.
        """
        results: list = []
        dirty: set[str] = set()
        tallies: dict[str, _Tally] = {}
        for job in jobs:
            try:
                results.append(self._writeOne(job, dirty, tallies))
            except (OSError, ReplyError) as e:
                results.append(e)
        for root, tally in tallies.items():
            if tally.addedMessages:
                with self._sizeLock(root):
                    recordUsage(root, tally.quotaBytes, tally.addedBytes, tally.addedMessages)
        for path in dirty:
            try:
                syncDirectory(path)
            except OSError as e:
                # The files are written, but their names may not survive
                # a crash: report the jobs in this directory as failed.
                for i, job in enumerate(jobs):
                    if path.startswith(job.mailbox + os.sep):
                        results[i] = e
        return results

    def _ensureMailbox(self, path: str, folder: bool = False) -> None:
        """
        Create a Maildir++ mailbox, or a folder of one, if missing.
        """
        if path in self._known:
            return
        ensureMaildir(path, folder)
        self._known.add(path)

    def _writeOne(self, job: WriteJob, dirty: set[str], tallies: dict[str, _Tally]) -> tuple[str, int]:
        """
        Write one copy.

        @param dirty: gets the directory the copy was renamed into.
        @param tallies: the batch's usage per mailbox; gets this copy.
        @raise ReplyError: the quota would be exceeded.
        """
        path = job.mailbox
        self._ensureMailbox(path)
        box = job.box
        if job.folder:
            # A Maildir++ folder: its usage counts in the mailbox's quota.
            self._ensureMailbox(box, folder=True)
        if job.checkExisting and _alreadyStored(box, job.name):
            return job.name, 0
        tally = tallies.get(path)
        if tally is None:
            tally = tallies[path] = _Tally(job.quotaBytes)
            if tally.quotaBytes:
                # Read once per batch: the copies before this one in the
                # batch are in the tally, not yet in maildirsize.
                with self._sizeLock(path):
                    (tally.usedBytes, _), self._tails[path] = readUsageFrom(path, self._tails.get(path))
        if tally.quotaBytes and tally.usedBytes + tally.addedBytes + job.size > tally.quotaBytes:
            raise ReplyError(MAILBOX_FULL)
        temp = os.path.join(box, "tmp", job.name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        try:
            if job.inline is not None:
                _writeParts(fd, job.header, job.inline)
            else:
                writeAll(fd, job.header)
                with open(job.source, "rb") as src:
                    while chunk := src.read(_COPY_BYTES):
                        writeAll(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, os.path.join(box, "new", job.name))
        dirty.add(os.path.join(box, "new"))
        tally.addedBytes += job.size
        tally.addedMessages += 1
        return job.name, job.size

    def _sizeLock(self, path: str) -> threading.Lock:
        """
        The lock that serialises changes to one mailbox's C{maildirsize}.
        """
        lock = self._sizeLocks.get(path)
        if lock is None:
            lock = self._sizeLocks.setdefault(path, threading.Lock())
        return lock


def _writeParts(fd: int, first: bytes, second: bytes) -> None:
    """
    Write two pieces with one system call when the file takes them whole
    (one release of the GIL instead of two), finishing like L{writeAll}.
    """
    written = os.writev(fd, [first, second])
    if written < len(first):
        writeAll(fd, first[written:])
        writeAll(fd, second)
    else:
        writeAll(fd, second[written - len(first):])


def _alreadyStored(path: str, name: str) -> bool:
    """
    Whether a copy named C{name} is in C{new/} or, with flags, in C{cur/}.
    """
    if os.path.exists(os.path.join(path, "new", name)):
        return True
    prefix = name + ":"
    with os.scandir(os.path.join(path, "cur")) as entries:
        return any(e.name == name or e.name.startswith(prefix) for e in entries)
