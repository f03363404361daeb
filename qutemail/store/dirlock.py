# -*- test-case-name: tests.access.test_uids -*-
"""
A C{flock} on a directory, the lock that serialises changes to the
control files of a Maildir++ folder (C{uidlist}, C{dovecot-keywords},
C{subscriptions}) between threads and processes.  Blocking.
"""

import fcntl
import os


class DirectoryLock:
    """
    An exclusive C{flock} on a directory, held while in a C{with} block.
    Each use opens the directory anew, so it excludes other threads of this
    process as well as other processes.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: the directory.
        """
        self._path = path
        self._fd = -1

    def __enter__(self) -> "DirectoryLock":
        """
        Open the directory and wait for the lock.
        """
        self._fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """
        Release the lock.
        """
        os.close(self._fd)
