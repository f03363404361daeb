# -*- test-case-name: tests.store.test_encrypted -*-
"""
The blocking work of sealing a message (L{qutemail.store.encrypted}):
encrypting it into memory (in the delivery process, or in a worker thread
where there is none) or into a file of the work directory (in a worker
thread), and removing a crash's leftover files.
"""

import io
import os

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories
from qutemail.message import SpooledMessage
from qutemail.qkd.cipher import SealedMessage, encryptStream

SEALED_SUFFIX = ".sealed"


def sealBodies(subject: str | None, items: list[tuple[bytes, str, bytes]]) -> list[tuple]:
    """
    Encrypt messages held in memory, answering with plain tuples (which
    pickle in C): what the delivery process does for a C{SEAL_INLINE}
    request (see L{qutemail.store.deliveryworker}), and a worker thread
    where there is no such process.  Blocking (CPU).

    @param items: C{(body, keyId, key)} of each message.
    @return: per message, in order, C{(stored form, keyId, messageId,
        plaintextBytes, storedBytes)}.
    """
    sealed = []
    for body, keyId, key in items:
        out = io.BytesIO()
        info = encryptStream(io.BytesIO(body), out, keyId, key, subject)
        sealed.append((out.getvalue(), info.keyId, info.messageId, info.plaintextBytes, info.storedBytes))
    return sealed


def writeSealed(message: SpooledMessage, path: str, keyId: str, key: bytes,
                subject: str | None) -> SealedMessage:
    """
    Encrypt a message into a new file; on any failure the file is removed.
    Blocking.  Not fsynced: the file is transient, every Maildir copy made
    from it is fsynced by the store, and after a crash the delivery is
    sealed again from the spool.

    @return: what the cipher says about it.
    @raise OSError: the file cannot be created or written, or the body
        cannot be read.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileNotFoundError:
        makeDirectories(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with open(fd, "wb", closefd=False) as out, message.openBody() as source:
            sealed = encryptStream(source, out, keyId, key, subject)
            out.flush()
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return sealed


def removeLeftovers(directory: str, olderThan: float) -> int:
    """
    Remove the sealed files of a work directory last modified before
    C{olderThan} (POSIX time).  Blocking.

    @return: how many were removed.
    @raise OSError: the directory exists but cannot be read.
    """
    removed = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if not entry.name.endswith(SEALED_SUFFIX):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime > olderThan:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
    return removed
