"""
Tests of L{qutemail.store.maildirwrite.MaildirWriter}: how a batch of
copies is made durable and named.
"""

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail import durable
from qutemail.durable import canSyncFileSystem
from qutemail.replies import MAILBOX_FULL, ReplyError
from qutemail.store import maildirwrite
from qutemail.store.mailbox import readUsage
from qutemail.store.maildirwrite import MaildirWriter, WriteJob

HEADER = b"Return-Path: <x@remote.test>\n"


def job(mailbox: str, name: str, body: bytes = b"body\n", quotaBytes: int = 0, folder: str = "") -> WriteJob:
    """
    @return: a job writing C{body} as C{name} into C{mailbox}.
    """
    return WriteJob(mailbox, folder, name, HEADER, body, None, len(HEADER) + len(body), quotaBytes, False)


class WholeSyncTests(SynchronousTestCase):
    """
    With C{syncfs} (Linux, where the server runs): one sync makes the
    batch's copies durable before any is named, one more makes the names
    durable, and no copy is fsynced on its own.
    """

    def setUp(self):
        """
        Two mailboxes, and a record of every sync the writer makes.
        """
        if not canSyncFileSystem():
            self.skipTest("syncfs is Linux's; the other path is tested below")
        base = os.path.abspath(self.mktemp())
        self.alice, self.bob = os.path.join(base, "alice"), os.path.join(base, "bob")
        self.syncs: list[tuple[list[str], list[str]]] = []
        self.failAt: int | None = None
        realSync = maildirwrite.syncFileSystem

        def syncFileSystem(fd):
            # What tmp/ and new/ of alice's INBOX hold at each sync.
            self.syncs.append((sorted(os.listdir(os.path.join(self.alice, "tmp"))),
                               sorted(os.listdir(os.path.join(self.alice, "new")))))
            if self.failAt == len(self.syncs):
                raise OSError(errno.EIO, "I/O error")
            realSync(fd)

        self.patch(maildirwrite, "syncFileSystem", syncFileSystem)
        self.patch(maildirwrite.os, "fsync", lambda fd: self.fail("a copy was fsynced on its own"))

    def test_twoSyncs(self):
        """
        Copies for two mailboxes and a folder on one file system: two
        syncs, the first with every copy still in C{tmp/}, the second with
        every copy named; each mailbox's usage is recorded.
        """
        jobs = [job(self.alice, "a1"), job(self.alice, "a2"), job(self.bob, "b1"),
                job(self.alice, "f1", folder="Lists")]
        self.assertEqual(MaildirWriter(wholeSync=True).writeBatch(jobs), [(j.name, j.size) for j in jobs])
        self.assertEqual(self.syncs, [(["a1", "a2"], []), ([], ["a1", "a2"])])
        self.assertEqual(sorted(os.listdir(os.path.join(self.bob, "new"))), ["b1"])
        self.assertEqual(os.listdir(os.path.join(self.alice, ".Lists", "new")), ["f1"])
        self.assertEqual(readUsage(self.alice), (3 * jobs[0].size, 3))
        with open(os.path.join(self.alice, "new", "a1"), "rb") as f:
            self.assertEqual(f.read(), HEADER + b"body\n")

    def test_copiesSyncFails(self):
        """
        When the copies cannot be made durable, none is named: each gets
        the error, C{tmp/} is emptied and no usage is recorded.
        """
        self.failAt = 1
        results = MaildirWriter(wholeSync=True).writeBatch([job(self.alice, "a1"), job(self.alice, "a2", quotaBytes=10_000)])
        self.assertEqual([r.errno for r in results], [errno.EIO, errno.EIO])
        self.assertEqual(len(self.syncs), 1)
        self.assertEqual(os.listdir(os.path.join(self.alice, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.alice, "new")), [])
        self.assertEqual(readUsage(self.alice), (0, 0))

    def test_namesSyncFails(self):
        """
        When the names cannot be made durable, every copy is reported
        failed (its delivery is retried, finding the copy if it survived).
        """
        self.failAt = 2
        results = MaildirWriter(wholeSync=True).writeBatch([job(self.alice, "a1"), job(self.alice, "a2")])
        self.assertEqual([r.errno for r in results], [errno.EIO, errno.EIO])

    def test_refusedCopyNotCounted(self):
        """
        A copy over quota is refused before it is written; the others of
        the batch are stored.
        """
        results = MaildirWriter(wholeSync=True).writeBatch([job(self.alice, "a1", quotaBytes=60),
                                              job(self.alice, "a2", quotaBytes=60)])
        self.assertEqual(results[0], ("a1", len(HEADER) + 5))
        self.assertIsInstance(results[1], ReplyError)
        self.assertEqual(results[1].reply, MAILBOX_FULL)
        self.assertEqual(self.syncs, [(["a1"], []), ([], ["a1"])])


class DecidedPerFileSystemTests(SynchronousTestCase):
    """
    By default each mailbox's file system decides: C{syncfs} where it is
    known to make files durable, an fsync of each copy elsewhere.
    """

    def deliverTwo(self, whole: bool) -> tuple[int, int]:
        """
        Deliver two copies with the file system taken for one synced
        whole (or not).

        @return: how many C{syncfs} and how many fsyncs were made.
        """
        if not canSyncFileSystem():
            self.skipTest("syncfs is Linux's")
        alice = os.path.join(os.path.abspath(self.mktemp()), "alice")
        asked, syncs, fsyncs = [], [], []
        realFsync = os.fsync

        def canSync(path=None):
            # syncfs is there; the file system decides.
            asked.append(path)
            return whole if path is not None else True

        def fsync(fd):
            fsyncs.append(fd)
            realFsync(fd)

        self.patch(durable, "canSyncFileSystem", canSync)
        self.patch(maildirwrite, "syncFileSystem", syncs.append)
        self.patch(maildirwrite.os, "fsync", fsync)
        writer = MaildirWriter()
        results = writer.writeBatch([job(alice, "a1"), job(alice, "a2")])
        self.assertEqual(results, [("a1", len(HEADER) + 5), ("a2", len(HEADER) + 5)])
        self.assertEqual(asked[-1], os.path.join(alice, "tmp"))
        return len(syncs), len(fsyncs)

    def test_wholeWhereKnown(self):
        """
        On a file system synced whole: two C{syncfs}, no fsync.
        """
        self.assertEqual(self.deliverTwo(True), (2, 0))

    def test_eachElsewhere(self):
        """
        Elsewhere: an fsync per copy and one of C{new/}, no C{syncfs}.
        """
        self.assertEqual(self.deliverTwo(False), (0, 3))


class OneByOneTests(SynchronousTestCase):
    """
    Without C{syncfs}: each copy is fsynced before it is named, and each
    C{new/} directory after.
    """

    def test_fsyncEach(self):
        """
        Each copy is fsynced once and each C{new/} once; a failed sync of a
        C{new/} fails the copies named in it only.
        """
        base = os.path.abspath(self.mktemp())
        alice, bob = os.path.join(base, "alice"), os.path.join(base, "bob")
        fsynced, synced = [], []
        realFsync = os.fsync

        def fsync(fd):
            fsynced.append(fd)
            realFsync(fd)

        def syncDirectory(path):
            synced.append(path)
            if path.startswith(bob):
                raise OSError(errno.EIO, "I/O error")

        writer = MaildirWriter(wholeSync=False)
        writer.writeBatch([])
        self.patch(maildirwrite.os, "fsync", fsync)
        self.patch(maildirwrite, "syncDirectory", syncDirectory)
        self.patch(maildirwrite, "syncFileSystem", lambda fd: self.fail("syncfs used"))
        results = writer.writeBatch([job(alice, "a1"), job(bob, "b1"), job(alice, "a2")])
        self.assertEqual(results[0], ("a1", len(HEADER) + 5))
        self.assertEqual(results[1].errno, errno.EIO)
        self.assertEqual(results[2], ("a2", len(HEADER) + 5))
        self.assertEqual(len(fsynced), 3)
        self.assertEqual(sorted(synced), [os.path.join(alice, "new"), os.path.join(bob, "new")])
        self.assertEqual(sorted(os.listdir(os.path.join(alice, "new"))), ["a1", "a2"])

    def test_writeFails(self):
        """
        A copy that cannot be written gets its error and leaves nothing in
        C{tmp/}; the others are stored.
        """
        alice = os.path.join(os.path.abspath(self.mktemp()), "alice")
        realWrite = maildirwrite._writeParts
        calls = []

        def writeParts(fd, first, second):
            calls.append(fd)
            if len(calls) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            realWrite(fd, first, second)

        self.patch(maildirwrite, "_writeParts", writeParts)
        modes = (False, True) if canSyncFileSystem() else (False,)
        for wholeSync in modes:
            del calls[:]
            results = MaildirWriter(wholeSync=wholeSync).writeBatch([job(alice, f"x{wholeSync}"),
                                                                     job(alice, f"y{wholeSync}")])
            self.assertEqual(results[0].errno, errno.ENOSPC)
            self.assertEqual(results[1], (f"y{wholeSync}", len(HEADER) + 5))
            self.assertEqual(os.listdir(os.path.join(alice, "tmp")), [])
        self.assertEqual(len(os.listdir(os.path.join(alice, "new"))), len(modes))
