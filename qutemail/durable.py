# -*- test-case-name: tests.test_durable -*-
"""
Blocking file primitives for writes that must survive a crash.  Call them
only from worker threads (see L{qutemail.blocking}).
"""

import os


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to a file descriptor, however many calls it takes.

    @param fd: an open, writable file descriptor.
    @param data: the bytes.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


def replaceFile(path: str, data: bytes, mode: int = 0o600) -> None:
    """
    Replace a file's contents atomically and durably: write a temporary
    file beside it, fsync, rename over, fsync the directory.

    @param path: the file.
    @param data: its new contents.
    @param mode: the permission bits of the new file.
    """
    directory = os.path.dirname(path) or "."
    temp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        writeAll(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)
    syncDirectory(directory)


def removeFile(path: str) -> None:
    """
    Unlink a file; a missing one is fine.  Blocking.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
