# -*- test-case-name: tests.store.test_encrypted -*-
"""
The blocking work of sealing a message (L{qutemail.store.encrypted}):
encrypting it into memory or into a file of the work directory.  Both run
in a worker thread.
"""

import io
import os

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories
from qutemail.message import SpooledMessage
from qutemail.qkd.cipher import SealedMessage, encryptStream


def sealInMemory(items: list[tuple[SpooledMessage, str, bytes]],
                 subject: str | None) -> list[tuple[bytes, SealedMessage]]:
    """
    Encrypt inline messages into memory.  Blocking (CPU).

    @param items: C{(message, keyId, key)} of each.
    @return: per message, in order, its stored form and what the cipher
        says about it.
    """
    sealed = []
    for message, keyId, key in items:
        out = io.BytesIO()
        with message.openBody() as source:
            info = encryptStream(source, out, keyId, key, subject)
        sealed.append((out.getvalue(), info))
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
