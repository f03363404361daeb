# -*- test-case-name: tests.access.test_imapseal -*-
"""
Messages saved over IMAP APPEND (Sent, Drafts, any folder) are stored
encrypted at rest like internal mail, when the server encrypts internal
mail at all.

A client's copy of what it sent to a colleague is the same internal mail
that was sealed in the colleague's mailbox; stored as the client sent it,
it would be plaintext on disk for anyone reading the Maildir.  So APPEND
writes the literal into the spool area first (C{data_dir/queue/append/},
where incoming mail waits in plaintext too until it is sealed), seals it
through the same L{qutemail.store.encrypted.MessageEncryptor} (one fresh
QKD key, kept in the vault before anything reaches the folder), and only
the ciphertext is renamed into the folder.  The plaintext file is removed
whatever happens.

When no key can be had (the KME is down or out of keys), the APPEND is
refused with C{NO [UNAVAILABLE]}: the client keeps its copy and tries
again; nothing is stored in plaintext.
"""

import os
from typing import Any

import attrs
from twisted.logger import Logger

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories, removeFile, writeAll
from qutemail.message import Envelope, SpooledMessage
from qutemail.replies import ReplyError

_log = Logger()


class SealUnavailable(Exception):
    """
    The message could not be sealed now (no key, the vault or the disk
    failed); the text says why, in one line.
    """


@attrs.define(eq=False)
class AppendSealer:
    """
    Seals appended messages.

    @ivar encryptor: the server's L{qutemail.store.encrypted.MessageEncryptor}.
    @ivar runner: runs the file work.
    @ivar directory: where plaintext literals wait to be sealed
        (C{data_dir/queue/append/}); it gets a C{tmp/} subdirectory, as a
        Maildir folder has, so the IMAP store's APPEND writer can use it.
    """

    encryptor: Any
    runner: Any
    directory: str

    def __attrs_post_init__(self) -> None:
        """
        Make the directory, and remove the plaintext of APPENDs that a
        crash or a stop interrupted (their clients got no OK and keep
        their copies).  Runs once, as the server is assembled.
        """
        waiting = os.path.join(self.directory, "tmp")
        makeDirectories(waiting)
        for name in os.listdir(waiting):
            removeFile(os.path.join(waiting, name))
            _log.info("removed the plaintext of an interrupted APPEND: {name}", name=name)

    async def seal(self, plainPath: str, size: int, address: str) -> str:
        """
        Seal one appended message.

        @param plainPath: the literal, as written (removed here, always).
        @param size: its size in bytes.
        @param address: the account appending it (the sealed message's
            envelope, for the logs).
        @return: the sealed file's path (the caller moves it away or
            removes it).
        @raise SealUnavailable: it cannot be sealed now.
        """
        envelope = Envelope(address, (address,), authenticated=address)
        queueId = "A" + os.path.basename(plainPath).split(".")[0][-20:]
        message = SpooledMessage(queueId, envelope, size, path=plainPath)
        try:
            result = await self.encryptor.seal(message)
        except ReplyError as e:
            raise SealUnavailable(e.reply.text) from None
        finally:
            await self.runner.run(removeFile, plainPath)
        _log.info("sealed an appended message of {address} with key {keyId}", address=address,
                  keyId=result.keyId)
        if result.message.path is not None:
            return result.message.path
        # sealed in memory: written where the caller expects a file
        path = self.encryptor.sealedPath(message)
        await self.runner.run(_writeFile, path, result.message.inline)
        return path


def _writeFile(path: str, data: bytes) -> None:
    """
    Write a new file, mode 0600.  Blocking.
    """
    makeDirectories(os.path.dirname(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        writeAll(fd, data)
    finally:
        os.close(fd)
