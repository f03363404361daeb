# -*- test-case-name: tests.test_durable,tests.test_filemodes -*-
"""
Blocking file primitives for writes that must survive a crash.  Call them
only from worker threads (see L{qutemail.blocking}).

Everything the server writes under C{data_dir} is private: files are
created mode 0600 (L{PRIVATE_FILE_MODE}) and directories 0700
(L{PRIVATE_DIRECTORY_MODE}), with the mode given explicitly rather than left
to the umask; the one exception is a public certificate (C{*-cert.pem}
under C{keys/}, 0644).
"""

import ctypes
import errno
import os
import sys
import tempfile
from typing import BinaryIO

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIRECTORY_MODE = 0o700
# A certificate is sent to every client in the TLS handshake; it stays
# readable (inside the 0700 keys/ directory all the same).
PUBLIC_CERTIFICATE_MODE = 0o644


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to a file descriptor, however many calls it takes.

    @param fd: an open, writable file descriptor.
    @param data: the bytes.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def writeAllAt(fd: int, data: bytes, offset: int) -> None:
    """
    Write all of C{data} at C{offset} of a file, however many calls it
    takes (C{pwrite}: the file's own position is not used).
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def syncDirectory(path: str) -> None:
    """
    fsync a directory, so that names created or renamed in it survive a
    crash.

    @param path: the directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _findSyncfs():
    """
    @return: Linux's C{syncfs(2)} from the C library, or C{None}.  Python's
        C{os} module has no binding for it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _findSyncfs()


# File systems whose syncfs(2) writes out every dirty file's data and
# metadata, commits the journal and flushes the disk's cache (their
# sync_fs does).  On others (network and FUSE file systems, whose sync_fs
# may do little) each file is fsynced instead.
SYNCFS_FILE_SYSTEMS = frozenset({"ext3", "ext4", "xfs", "btrfs"})
# Whether syncfs may stand in for fsyncs, by device number.
_wholeSyncByDevice: dict[int, bool] = {}


def fileSystemType(device: int) -> str | None:
    """
    @param device: a device number (C{st_dev}).
    @return: the type of the file system mounted from it, from
        C{/proc/self/mountinfo}, or C{None} when it cannot be told.
    """
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        return None
    return None


def canSyncFileSystem(path: str | None = None) -> bool:
    """
    @param path: a file or directory, or C{None}.
    @return: whether L{syncFileSystem} works here; with C{path}, also
        whether it makes files under C{path} as durable as an fsync of
        each would (the file system is one of L{SYNCFS_FILE_SYSTEMS}).
    @raise OSError: C{path} cannot be looked at.
    """
    if _SYNCFS is None:
        return False
    if path is None:
        return True
    device = os.stat(path).st_dev
    whole = _wholeSyncByDevice.get(device)
    if whole is None:
        whole = _wholeSyncByDevice[device] = fileSystemType(device) in SYNCFS_FILE_SYSTEMS
    return whole


def openSyncTarget(directory: str, wholeSync: bool | None = None) -> tuple[int, int, bool]:
    """
    Decide, before writing new files into a directory, how they will be
    made durable: by one L{syncFileSystem}, or by an fsync of each and then
    of the directory.

    @param wholeSync: C{True} for L{syncFileSystem}, C{False} for the
        fsyncs, C{None} for L{syncFileSystem} where that is known to be
        enough (see L{canSyncFileSystem}).
    @return: C{(fd, device, whole)}: with C{whole}, a descriptor open on
        C{directory} for L{syncFileSystem} (opened now, so that it reports
        the errors of the writes to come; the caller closes it) and its
        device; else C{(-1, 0, False)}.
    @raise OSError: C{directory} cannot be opened or looked at.
    """
    if wholeSync is False or (wholeSync is None and not canSyncFileSystem(directory)):
        return -1, 0, False
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return fd, os.fstat(fd).st_dev, True
    except BaseException:
        os.close(fd)
        raise


def discardFile(path: str) -> None:
    """
    Unlink a file, if it is there and can be removed (cleaning up after
    another failure, which is the one reported).  Blocking.
    """
    try:
        os.unlink(path)
    except OSError:
        pass


def syncFileSystem(fd: int) -> None:
    """
    Make everything written to a file system durable in one call (Linux's
    C{syncfs(2)}): the data and metadata of every file, with one journal
    commit and one flush of the disk's cache, where an fsync of each of
    many new files costs a commit and a flush each.  Writeback errors of
    the file system since C{fd} was opened are raised (Linux 5.8 and
    later), so open C{fd} before writing.

    @param fd: an open file descriptor on the file system (such as the
        directory the new files are in).
    @raise OSError: the sync failed, or L{canSyncFileSystem} is false.
    """
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available here")
    if _SYNCFS(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def makeDirectories(path: str, sync: bool = False) -> str:
    """
    Create a directory and any missing parents, each mode 0700.  Unlike
    C{os.makedirs(path, mode)}, which gives only the last directory that
    mode and the parents the default (0755 under the usual umask), every
    directory created here is private.  Directories that exist are left as
    they are.

    @param path: the directory.
    @param sync: fsync the parent of each directory created, so that the
        new names survive a crash.
    @return: C{path}.
    @raise FileExistsError: C{path} or a parent exists and is not a
        directory.
    """
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIRECTORY_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        if sync:
            syncDirectory(os.path.dirname(directory))
    return path


def replaceFile(path: str, data: bytes, mode: int = PRIVATE_FILE_MODE) -> os.stat_result:
    """
    Replace a file's contents atomically and durably: write a new temporary
    file beside it (an unpredictable name, created exclusively, so nothing
    left there can be followed or reused), set its mode, fsync, rename
    over, fsync the directory.  If anything fails, the temporary file is
    removed and the old file is untouched.

    @param path: the file.
    @param data: its new contents.
    @param mode: the permission bits of the new file (exactly these,
        whatever the umask).
    @return: the new file's status, taken before the rename (its
        C{st_ino}, C{st_size} and C{st_mtime_ns} identify this version).
    """
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            writeAll(fd, data)
            os.fsync(fd)
            status = os.fstat(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        removeFile(temp)
        raise
    syncDirectory(directory)
    return status


def removeFile(path: str) -> None:
    """
    Unlink a file; a missing one is fine.  Blocking.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def readUpTo(source: BinaryIO, size: int) -> bytes:
    """
    Read C{size} bytes, however many reads it takes.  Blocking.

    @param source: a binary file object.
    @return: C{size} bytes from C{source}, fewer only at its end.
    """
    parts, remaining = [], size
    while remaining > 0:
        data = source.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)
