"""
Tests of the durable-write primitives.
"""

import errno
import os
import stat
import subprocess
import sys

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail import durable
from qutemail.durable import (
    SYNCFS_FILE_SYSTEMS, canSyncFileSystem, fileSystemType, replaceFile, syncDirectory, syncFileSystem, writeAll,
)


class DurableTests(SynchronousTestCase):
    """
    L{replaceFile}, L{writeAll}, L{syncDirectory}.
    """

    @given(st.binary(max_size=200_000))
    def test_replaceFile(self, data):
        """
        The file holds exactly the new bytes, with the asked mode, and no
        temporary file is left beside it.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "f")
        replaceFile(path, b"old")
        replaceFile(path, data, mode=0o640)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode) & 0o777, 0o640 & ~_umask())
        self.assertEqual(os.listdir(directory), ["f"])

    def test_writeAllAndSync(self):
        """
        L{writeAll} writes everything; L{syncDirectory} accepts a directory
        and refuses a missing one.
        """
        path = self.mktemp()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            writeAll(fd, b"x" * 1_000_000)
        finally:
            os.close(fd)
        self.assertEqual(os.path.getsize(path), 1_000_000)
        syncDirectory(os.path.dirname(os.path.abspath(path)))
        self.assertRaises(FileNotFoundError, syncDirectory, path + ".missing")

    def test_syncFileSystem(self):
        """
        On Linux (where the server runs and CI tests) L{syncFileSystem} is
        C{syncfs(2)}: it syncs through any descriptor on the file system,
        and a bad descriptor is an C{OSError}.  Elsewhere it refuses with
        C{ENOSYS}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if not sys.platform.startswith("linux"):
                self.assertFalse(canSyncFileSystem())
                self.assertEqual(self.assertRaises(OSError, syncFileSystem, fd).errno, errno.ENOSYS)
                return
            self.assertTrue(canSyncFileSystem())
            self.assertIsNone(syncFileSystem(fd))
        finally:
            os.close(fd)
        self.assertEqual(self.assertRaises(OSError, syncFileSystem, fd).errno, errno.EBADF)

    def test_fileSystemType(self):
        """
        The type of a directory's file system is what util-linux's
        C{findmnt} says; syncfs stands in for fsyncs only on the file
        systems listed, never on C{/proc}.
        """
        if not sys.platform.startswith("linux"):
            self.skipTest("/proc/self/mountinfo is Linux's")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        told = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", directory],
                              capture_output=True, text=True, check=True).stdout.strip()
        self.assertEqual(fileSystemType(os.stat(directory).st_dev), told)
        self.assertEqual(canSyncFileSystem(directory), told in SYNCFS_FILE_SYSTEMS)
        self.assertEqual(fileSystemType(os.stat("/proc").st_dev), "proc")
        self.assertFalse(canSyncFileSystem("/proc"))


def _umask() -> int:
    """
    @return: the process's umask.
    """
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ReplaceFileTests(SynchronousTestCase):
    """
    L{replaceFile} replaces atomically, with exactly the mode asked for,
    and leaves nothing behind when it fails.
    """

    def test_modeAndStatus(self) -> None:
        """
        The new file has the mode asked for whatever the umask, and the
        returned status is the new file's.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "f")
        old = os.umask(0)
        try:
            status = replaceFile(path, b"one", 0o640)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertEqual((status.st_ino, status.st_size), (os.stat(path).st_ino, 3))
        self.assertEqual(os.listdir(directory), ["f"])

    def test_failureLeavesNothing(self) -> None:
        """
        A write that fails leaves the old file as it was and no temporary
        file beside it.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "f")
        replaceFile(path, b"old")

        def failing(fd: int, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        self.patch(durable, "writeAll", failing)
        self.assertRaises(OSError, replaceFile, path, b"new")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(directory), ["f"])
