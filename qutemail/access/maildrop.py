# -*- test-case-name: tests.access.test_maildrop -*-
"""
The POP3 maildrop (RFC 1939): one session's view of an account's INBOX,
decrypting internal mail for its owner (see L{qutemail.store.reader}), and
the realm that opens it at login.

A session sees the message list taken at login.  DELE only marks; the
files are removed at QUIT (RFC 1939 §6, the UPDATE state); a session that
ends any other way removes nothing.  Message sizes are those of the
messages as the owner gets them: an encrypted one is decrypted, once, to
learn its size.  A message whose key was erased or that fails
authentication is served as a short plain-text notice saying so.

The protocol is L{qutemail.access.pop3}.
"""

import io
import os
from typing import Any, BinaryIO

import attrs
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail.pop3 import IMailbox
from zope.interface import implementer

from qutemail.store.mailbox import mailboxPath, messageEntries, recordUsage
from qutemail.store.reader import MessageUnreadable, StoredMessage, listMessages, readMessage, storedId

# The ValueError of a bad message number, and the -ERR text POP3 sends for it.
NO_SUCH_MESSAGE = b"no such message"

NOTICE = (
    "From: QutEmail <postmaster@localhost>\n"
    "Subject: [QutEmail] unreadable message\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "A message in this mailbox (id {messageId}) cannot be shown:\n"
    "{reason}.\n"
    "Its key has been erased, or it was damaged or tampered with.\n"
)


class TemporarilyUnreadable(Exception):
    """
    A message cannot be read now but may be later (the vault failed, or the
    file vanished under another session).
    """


def notice(messageId: str, reason: str) -> bytes:
    """
    The plain-text message served in place of an unreadable one.

    @param messageId: the stored message's id.
    @param reason: L{MessageUnreadable}'s one-line text (no key material).
    """
    return NOTICE.format(messageId=messageId, reason=reason).encode("ascii", "replace")


def _locate(directory: str, messageId: str) -> str | None:
    """
    Find a message by id, wherever it is now in C{new/} or C{cur/}.  Blocking.

    @return: its path, or C{None}.
    """
    for entry in messageEntries(directory):
        if storedId(entry.name) == messageId:
            return entry.path
    return None


def _remove(directory: str, message: StoredMessage) -> None:
    """
    Remove a message file, following it if it moved, and lower the
    mailbox's usage by its size.  Blocking.

    @raise OSError: it exists but cannot be removed.
    """
    try:
        os.unlink(message.path)
    except FileNotFoundError:
        moved = _locate(directory, message.id)
        if moved is None:
            return
        os.unlink(moved)
    recordUsage(directory, 0, -message.size, -1)


def _close(f: BinaryIO) -> None:
    """
    Close a file.  Blocking.
    """
    f.close()


@implementer(IMailbox)
@attrs.define(eq=False)
class POP3Mailbox:
    """
    One session's view of an INBOX: the list taken at login.

    @ivar address: the owner's normalised address.
    @ivar directory: the Maildir.
    @ivar messages: the snapshot, oldest first.
    @ivar vault: the L{qutemail.interfaces.IKeyVault} holding message keys.
    @ivar runner: runs every file and crypto call.
    @ivar tempDirectory: where decrypted copies live (anonymous files).
    """

    _log = Logger()

    address: str
    directory: str
    messages: list[StoredMessage]
    vault: Any
    runner: Any
    tempDirectory: str | None = None
    deleted: set[int] = attrs.field(factory=set)
    _sizes: dict[int, int] = attrs.field(factory=dict)
    # The file opened to learn a size, kept for the RETR that usually follows.
    _opened: tuple[int, BinaryIO] | None = None

    def _check(self, index: int) -> StoredMessage:
        """
        @return: the message at a 0-based index that is not deleted.
        @raise ValueError: there is none.
        """
        if not 0 <= index < len(self.messages) or index in self.deleted:
            raise ValueError(NO_SUCH_MESSAGE)
        return self.messages[index]

    async def _read(self, index: int) -> tuple[BinaryIO, int]:
        """
        Open a message as its owner sees it.

        @return: the file, at its start, and its size.
        @raise TemporarilyUnreadable: it cannot be read now.
        """
        message = self.messages[index]
        path = message.path
        for attempt in (0, 1):
            try:
                body, info = await readMessage(path, self.vault, self.runner, self.tempDirectory)
                return body, info.size
            except MessageUnreadable as e:
                if e.temporary:
                    self._log.warn("message {messageId} of {address} not readable now: {reason}",
                                   messageId=message.id, address=self.address, reason=str(e))
                    raise TemporarilyUnreadable(str(e)) from None
                self._log.warn("message {messageId} of {address} unreadable, served as a notice: {reason}",
                               messageId=message.id, address=self.address, reason=str(e))
                text = notice(message.id, str(e))
                return io.BytesIO(text), len(text)
            except FileNotFoundError:
                # Moved from new/ to cur/ (or deleted) by another session.
                path = await self.runner.run(_locate, self.directory, message.id)
                if path is None:
                    break
        raise TemporarilyUnreadable(f"message {message.id} is no longer in the mailbox")

    async def _size(self, index: int) -> int:
        """
        @return: the size of a message as its owner sees it (cached).
        """
        if index not in self._sizes:
            body, size = await self._read(index)
            await self._forget()
            self._opened = (index, body)
            self._sizes[index] = size
        return self._sizes[index]

    async def _forget(self) -> None:
        """
        Close the file kept from the last size computation.
        """
        if self._opened is not None:
            body, self._opened = self._opened[1], None
            await self.runner.run(_close, body)

    def listMessages(self, index: int | None = None) -> Deferred:
        """
        See L{IMailbox.listMessages}.

        @param index: a 0-based index, or C{None} for all.
        @return: a Deferred firing with the size, or the list of sizes (0 for
            deleted messages); failing with L{ValueError} for a bad index or
            L{TemporarilyUnreadable}.
        """
        return Deferred.fromCoroutine(self._listMessages(index))

    async def _listMessages(self, index: int | None) -> int | list[int]:
        """
        See L{listMessages}.
        """
        if index is not None:
            self._check(index)
            return await self._size(index)
        sizes = []
        for i in range(len(self.messages)):
            sizes.append(0 if i in self.deleted else await self._size(i))
        return sizes

    def openMessage(self, index: int) -> Deferred:
        """
        Open a message for sending; the caller closes the file.

        @param index: a 0-based index.
        @return: a Deferred firing with C{(file, size)}; failing with
            L{ValueError} or L{TemporarilyUnreadable}.
        """
        return Deferred.fromCoroutine(self._openMessage(index))

    async def _openMessage(self, index: int) -> tuple[BinaryIO, int]:
        """
        See L{openMessage}.
        """
        self._check(index)
        if self._opened is not None and self._opened[0] == index:
            body, self._opened = self._opened[1], None
            await self.runner.run(body.seek, 0)
            return body, self._sizes[index]
        await self._forget()
        body, size = await self._read(index)
        self._sizes[index] = size
        return body, size

    def getMessage(self, index: int) -> Deferred:
        """
        See L{IMailbox.getMessage}.

        @return: a Deferred firing with the message as a binary file, which
            the caller closes.
        """
        return self.openMessage(index).addCallback(lambda result: result[0])

    def getUidl(self, index: int) -> bytes:
        """
        See L{IMailbox.getUidl}: the Maildir base name before its info,
        stable across sessions and flag changes.

        @raise ValueError: no such message.
        """
        return self._check(index).id.encode("ascii", "replace")

    def deleteMessage(self, index: int) -> None:
        """
        See L{IMailbox.deleteMessage}: mark it; L{sync} removes it.

        @raise ValueError: no such message, or already deleted.
        """
        self._check(index)
        self.deleted.add(index)

    def undeleteMessages(self) -> None:
        """
        See L{IMailbox.undeleteMessages}.
        """
        self.deleted.clear()

    def sync(self) -> Deferred:
        """
        See L{IMailbox.sync}: remove the messages marked deleted.

        @return: a Deferred firing with C{None}; failing with L{OSError}
            when some could not be removed.
        """
        return Deferred.fromCoroutine(self._sync())

    async def _sync(self) -> None:
        """
        See L{sync}.
        """
        await self._forget()
        failed = None
        for index in sorted(self.deleted):
            message = self.messages[index]
            try:
                await self.runner.run(_remove, self.directory, message)
                self._log.info("POP3 removed {messageId} of {address}", messageId=message.id,
                               address=self.address)
            except OSError as e:
                self._log.warn("POP3 could not remove {messageId}: {reason}", messageId=message.id,
                               reason=str(e))
                failed = e
        self.deleted.clear()
        if failed is not None:
            raise failed

    def logout(self) -> None:
        """
        The session ended: close any file still open.
        """
        if self._opened is not None:
            Deferred.fromCoroutine(self._forget()).addErrback(
                lambda f: self._log.failure("closing a message of {address}", f, address=self.address))


@implementer(IRealm)
@attrs.define
class POP3Realm:
    """
    Opens an account's INBOX, taking the message list, for L{IMailbox}.

    @ivar dataDir: the server's C{data_dir}.
    @ivar vault: the key vault.
    @ivar runner: runs the directory scan and the mailbox's file work.
    @ivar tempDirectory: where decrypted copies live.
    """

    dataDir: str
    vault: Any
    runner: Any
    tempDirectory: str | None = None

    def requestAvatar(self, avatarId: str, mind: Any, *interfaces: Any) -> Deferred:
        """
        See L{IRealm.requestAvatar}.

        @return: a Deferred firing with C{(IMailbox, mailbox, logout)}.
        @raise NotImplementedError: L{IMailbox} was not asked for.
        """
        if IMailbox not in interfaces:
            raise NotImplementedError("POP3Realm only gives IMailbox")
        return Deferred.fromCoroutine(self._open(avatarId))

    async def _open(self, address: str) -> tuple:
        """
        See L{requestAvatar}.
        """
        messages = await self.runner.run(listMessages, self.dataDir, address)
        mailbox = POP3Mailbox(address, mailboxPath(self.dataDir, address), messages, self.vault,
                              self.runner, self.tempDirectory)
        return IMailbox, mailbox, mailbox.logout
