# -*- test-case-name: tests.store.test_maildirwrite,tests.store.test_maildir -*-
"""
The blocking half of Maildir delivery: writing a batch of copies.

L{qutemail.store.maildir.MaildirStore} decides what goes where (the file
name, the mailbox, the quota) on the reactor thread and hands the batch, as
plain L{WriteJob} values, to a L{MaildirWriter}: in a worker thread, or in
the delivery process (L{qutemail.store.deliveryprocess}), so that the disk
work of delivery does not contend with the SMTP dialogue for one GIL.

Each copy is written to C{tmp/<name>}; the batch's copies are made durable
together, then renamed into C{new/}; each mailbox touched by the batch gets
one C{maildirsize} line, the new names are made durable, and the batch is
reported.  On Linux, on the file systems whose C{syncfs} is known to make
files durable (L{qutemail.durable.SYNCFS_FILE_SYSTEMS}), both syncs are one
C{syncfs} of each file system the batch wrote to (one journal commit and
one disk flush each, where an fsync per copy cost one each: the disk of the
development machine takes about 3,600 such fsyncs a second, whatever the
number of threads); elsewhere each copy is fsynced before its rename and
each C{new/} directory after.
"""

import os
import threading

import attrs

from qutemail.durable import (
    PRIVATE_FILE_MODE, discardFile, openSyncTarget, syncDirectory, syncFileSystem, writeAll,
)
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


@attrs.define
class _Written:
    """
    A copy written to C{tmp/}, not yet durable or named.

    @ivar index: its job's place in the batch.
    @ivar temp: its file in C{tmp/}.
    @ivar final: its name in C{new/}.
    @ivar device: the file system it is on.
    @ivar whole: whether that file system is synced whole (C{syncfs}),
        else the copy was fsynced and its directory will be.
    @ivar tally: its mailbox's usage in the batch (which counts it).
    @ivar size: its stored size.
    """

    index: int
    temp: str
    final: str
    device: int
    whole: bool
    tally: _Tally
    size: int

    def drop(self) -> None:
        """
        Forget the copy: out of its mailbox's usage, its file removed.
        """
        self.tally.addedBytes -= self.size
        self.tally.addedMessages -= 1
        discardFile(self.temp)


class MaildirWriter:
    """
    Writes batches of copies (blocking: a worker thread or the delivery
    process; batches may run in parallel threads).
    """

    def __init__(self, wholeSync: bool | None = None) -> None:
        """
        @param wholeSync: sync with C{syncfs} (C{None}: on each file
            system where it is known to be enough, see
            L{qutemail.durable.openSyncTarget}).
        """
        self.wholeSync = wholeSync
        # One lock per mailbox for maildirsize: batches run in parallel.
        self._sizeLocks: dict[str, threading.Lock] = {}
        # What each mailbox's maildirsize said when last read (under that
        # mailbox's lock).
        self._tails: dict[str, UsageTail | None] = {}
        self._known: set[str] = set()

    def writeBatch(self, jobs: list[WriteJob]) -> list:
        """
        Write every copy of a batch, make them durable, name them in
        C{new/}, record the mailboxes' new usage (one C{maildirsize} line
        per mailbox), then make the names durable.

        @return: per job, C{(name, addedBytes)} (0 bytes when an earlier
            copy was found) or the C{OSError}/L{ReplyError} that stopped it.
        """
        results: list = [None] * len(jobs)
        tallies: dict[str, _Tally] = {}
        written: list[_Written] = []
        # Per mailbox directory written to: an open directory on its file
        # system (opened before the writes, so that syncfs reports their
        # errors), the device, and whether it is synced whole.
        devices: dict[str, tuple[int, int, bool]] = {}
        try:
            for index, job in enumerate(jobs):
                try:
                    results[index] = self._writeOne(index, job, tallies, written, devices)
                except (OSError, ReplyError) as e:
                    results[index] = e
            self._syncDevices(devices, [w for w in written if w.whole], results, named=False)
            written = [w for w in written if not isinstance(results[w.index], OSError)]
            named = []
            for w in written:
                try:
                    os.rename(w.temp, w.final)
                except OSError as e:
                    results[w.index] = e
                    w.drop()
                    continue
                named.append(w)
            for root, tally in tallies.items():
                if tally.addedMessages:
                    with self._sizeLock(root):
                        recordUsage(root, tally.quotaBytes, tally.addedBytes, tally.addedMessages)
            self._syncDevices(devices, [w for w in named if w.whole], results, named=True)
            self._syncDirectories([w for w in named if not w.whole], results)
        finally:
            for fd, _, _ in devices.values():
                if fd >= 0:
                    os.close(fd)
        return results

    def _syncDevices(self, devices: dict[str, tuple[int, int, bool]], written: list[_Written], results: list,
                     named: bool) -> None:
        """
        C{syncfs} each file system C{written} are on; the copies on one
        whose sync failed get its C{OSError} (and, not yet named, are
        dropped).
        """
        # One open directory per file system is enough for its syncfs.
        for device, fd in {device: fd for fd, device, whole in devices.values() if whole}.items():
            if not any(w.device == device for w in written):
                continue
            try:
                syncFileSystem(fd)
            except OSError as e:
                # The copies, or their names, may not survive a crash.
                for w in written:
                    if w.device == device:
                        results[w.index] = e
                        if not named:
                            w.drop()

    def _syncDirectories(self, named: list[_Written], results: list) -> None:
        """
        fsync each C{new/} directory a copy was named in; the copies of one
        whose sync failed get its C{OSError}.
        """
        for path in {os.path.dirname(w.final) for w in named}:
            try:
                syncDirectory(path)
            except OSError as e:
                # The files are written, but their names may not survive
                # a crash.
                for w in named:
                    if os.path.dirname(w.final) == path:
                        results[w.index] = e

    def _ensureMailbox(self, path: str, folder: bool = False) -> None:
        """
        Create a Maildir++ mailbox, or a folder of one, if missing.
        """
        if path in self._known:
            return
        ensureMaildir(path, folder)
        self._known.add(path)

    def _writeOne(self, index: int, job: WriteJob, tallies: dict[str, _Tally], written: list[_Written],
                  devices: dict[str, tuple[int, int, bool]]) -> tuple[str, int]:
        """
        Write one copy into C{tmp/}.

        @param index: the job's place in the batch.
        @param tallies: the batch's usage per mailbox; gets this copy.
        @param written: gets the copy written.
        @param devices: the batch's open directory, device and way of
            syncing per mailbox directory; gets this one's.
        @return: the job's result if it succeeds.
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
        opened = devices.get(box)
        if opened is None:
            opened = devices[box] = openSyncTarget(os.path.join(box, "tmp"), self.wholeSync)
        _, device, whole = opened
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
            if not whole:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            discardFile(temp)
            raise
        os.close(fd)
        tally.addedBytes += job.size
        tally.addedMessages += 1
        written.append(_Written(index, temp, os.path.join(box, "new", job.name), device, whole, tally, job.size))
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
