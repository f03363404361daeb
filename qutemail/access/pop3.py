# -*- test-case-name: tests.access.test_pop3 -*-
"""
POP3 (RFC 1939) over an account's INBOX, decrypting internal mail for its
owner (see L{qutemail.store.reader}).

Passwords never travel in the clear: on the plain port USER and PASS are
refused until STLS (RFC 2595 §4) has set up TLS; the implicit-TLS port
(RFC 8314) allows them at once.  APOP (which needs the cleartext password
on the server) is not offered: the greeting carries no challenge.  Failed
logins are throttled with L{qutemail.policy.throttle.AuthThrottle}, as
SMTP AUTH is.

A session sees the message list taken at login.  DELE only marks; the
files are removed at QUIT (RFC 1939 §6, the UPDATE state); a session that
ends any other way removes nothing.  Message sizes are those of the
messages as the owner gets them: an encrypted one is decrypted, once, to
learn its size.  A message whose key was erased or that fails
authentication is served as a short plain-text notice saying so.

Wiring (the lead's C{service.py})::

    portal = pop3Portal(directory, dataDir, vault, runner)
    plain = POP3Factory(portal, runner, reactor, throttle, tlsContext)
    implicit = TLSMemoryBIOFactory(
        tlsContext, False, POP3Factory(portal, runner, reactor, throttle, tlsContext, implicitTLS=True))
"""

import io
import os
from typing import Any, BinaryIO

import attrs
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.pop3 import POP3, IMailbox, POP3Error
from zope.interface import implementer

from qutemail.access.flow import WriteFlow
from qutemail.cred import UserDirectoryChecker
from qutemail.store.maildir import mailboxPath, messageEntries, recordUsage
from qutemail.store.reader import MessageUnreadable, StoredMessage, listMessages, readMessage, storedId

# RFC 1939 §3: the autologout timer must be at least 10 minutes.
IDLE_TIMEOUT_SECONDS = 600.0
# How much of a message is read (in a worker thread) per write.
CHUNK_BYTES = 64 * 1024

GREETING = b"QutEmail POP3 server ready"
NOT_SECURE = b"[AUTH] use STLS first: no passwords in the clear"
AUTH_FAILED = b"[AUTH] authentication failed"
LOCKED_OUT = b"[AUTH] too many failed logins: try again later"
TEMPORARY = b"[SYS/TEMP] temporary failure: try again later"
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


def pop3Portal(directory: Any, dataDir: str, vault: Any, runner: Any, tempDirectory: str | None = None) -> Portal:
    """
    The portal of the POP3 listeners.

    @param directory: the L{qutemail.interfaces.IUserDirectory}.
    """
    return Portal(POP3Realm(dataDir, vault, runner, tempDirectory), [UserDirectoryChecker(directory)])


@attrs.define
class DotStuffer:
    """
    Turns a stored message into POP3 multi-line data (RFC 1939 §3): CRLF
    line ends and byte-stuffed leading dots, fed in chunks split anywhere.

    @ivar bodyLines: for TOP, how many body lines to send (C{None}: all).
    @ivar done: the TOP limit was reached: feed no more.
    """

    bodyLines: int | None = None
    done: bool = False
    _atLineStart: bool = True
    _lineEmpty: bool = True
    _pendingCR: bool = False
    _inBody: bool = False
    _sentBodyLines: int = 0

    def feed(self, chunk: bytes) -> bytes:
        """
        @return: the transformed bytes of C{chunk}.
        """
        if self._pendingCR:
            chunk, self._pendingCR = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            # Maybe the first half of a CRLF: decide with the next chunk.
            chunk, self._pendingCR = chunk[:-1], True
        out = bytearray()
        pos = 0
        while pos < len(chunk) and not self.done:
            if self._atLineStart:
                if self._inBody and self.bodyLines is not None and self._sentBodyLines >= self.bodyLines:
                    self.done = True
                    break
                self._atLineStart, self._lineEmpty = False, True
                if chunk[pos:pos + 1] == b".":
                    out += b"."
            end = chunk.find(b"\n", pos)
            if end == -1:
                out += chunk[pos:]
                self._lineEmpty = False
                break
            line = chunk[pos:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            out += line + b"\r\n"
            empty = self._lineEmpty and not line
            self._atLineStart = True
            if self._inBody:
                self._sentBodyLines += 1
            elif empty:
                self._inBody = True
            pos = end + 1
        return bytes(out)

    def end(self) -> bytes:
        """
        @return: the rest, ending the last line, and the terminating dot.
        """
        out = b""
        if self._pendingCR and not self.done:
            out = self.feed(b"\n")
        if not self._atLineStart and not self.done:
            out += b"\r\n"
        return out + b".\r\n"


class POP3Server(POP3):
    """
    One POP3 session.  Set by the factory: C{factory}, C{portal},
    C{callLater}, C{timeOut}, C{secure}.

    @ivar secure: whether the session is encrypted (implicit TLS, or STLS
        done).
    """

    _log = Logger()
    AUTH_CMDS = [b"CAPA", b"USER", b"PASS", b"APOP", b"AUTH", b"STLS", b"QUIT", b"NOOP"]
    secure = False
    _lost = False
    _discardLines = False

    def connectionMade(self) -> None:
        """
        Greet without an APOP challenge, and start the idle timer.
        """
        self._peer = getattr(self.transport.getPeer(), "host", "?")
        self.successResponse(GREETING)
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason: Any) -> None:
        """
        Release the mailbox; marked messages stay (RFC 1939 §6).
        """
        self._lost = True
        POP3.connectionLost(self, reason)

    def dataReceived(self, data: bytes) -> None:
        """
        Lines arriving after this point come through TLS, if STLS was done.
        """
        self._discardLines = False
        POP3.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        """
        Drop cleartext sent after STLS in the same read (command injection,
        as in CVE-2011-0411).
        """
        if not self._discardLines:
            POP3.lineReceived(self, line)

    def state_COMMAND(self, line: bytes) -> None:
        """
        Run a command; a bad one gets C{-ERR} (Twisted's would log it as an
        error).
        """
        try:
            return self.processCommand(*line.split(b" "))
        except POP3Error as e:
            self.failResponse(e.args[0] if e.args else b"bad command")
        except (ValueError, TypeError):
            self._log.debug("bad POP3 command syntax from {peer}", peer=self._peer)
            self.failResponse(b"bad command syntax")

    def _run(self, coroutine: Any) -> Deferred:
        """
        Run a command's coroutine, holding later commands until it ends;
        an unexpected failure is logged and answered C{-ERR}.
        """

        async def guarded() -> None:
            try:
                await coroutine
            except Exception:
                self._log.failure("POP3 command failed for {peer}", peer=self._peer)
                self.failResponse(TEMPORARY)

        return self._longOperation(Deferred.fromCoroutine(guarded()))

    def listCapabilities(self) -> list[bytes]:
        """
        RFC 2449 capabilities: USER only where it is allowed, STLS until done.
        """
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.secure:
            caps.append(b"USER")
        elif self.factory.contextFactory is not None:
            caps.append(b"STLS")
        return caps

    def do_STLS(self) -> None:
        """
        RFC 2595 §4: start TLS, in the AUTHORIZATION state only.
        """
        if self.secure or self.mbox is not None or self.factory.contextFactory is None:
            self.failResponse(b"STLS not available now")
            return
        self.successResponse(b"Begin TLS negotiation")
        self.transport.startTLS(self.factory.contextFactory)
        self.secure = True
        self._userIs = None
        self._buffer = b""
        self._discardLines = True

    def do_APOP(self, *args: bytes) -> None:
        """
        APOP is not offered.
        """
        self.failResponse(b"APOP not supported")

    def do_AUTH(self, *args: bytes) -> None:
        """
        SASL is not offered: USER/PASS only.
        """
        self.failResponse(b"AUTH not supported: use USER and PASS")

    def do_USER(self, user: bytes) -> None:
        """
        USER, after TLS only.
        """
        if self.mbox is not None:
            self.failResponse(b"already authenticated")
        elif not self.secure:
            self.failResponse(NOT_SECURE)
        else:
            POP3.do_USER(self, user)

    def do_PASS(self, password: bytes, *words: bytes) -> Deferred | None:
        """
        PASS: ask the portal; failures are answered after the throttle's
        delay.
        """
        if self.mbox is not None:
            self.failResponse(b"already authenticated")
            return None
        if not self.secure:
            self.failResponse(NOT_SECURE)
            return None
        if self._userIs is None:
            self.failResponse(b"USER required before PASS")
            return None
        user, self._userIs = self._userIs, None
        return self._run(self._login(user, b" ".join((password,) + words)))

    async def _login(self, user: bytes, password: bytes) -> None:
        """
        See L{do_PASS}.
        """
        clock = self.factory.clock
        throttle = self.factory.throttle
        name = user.decode("utf-8", "replace").lower()
        if not throttle.allowed(self._peer, clock.seconds()):
            self._log.info("POP3 login refused for {peer}: locked out after failures", peer=self._peer)
            self.failResponse(LOCKED_OUT)
            return
        try:
            _, mailbox, logout = await self.portal.login(UsernamePassword(user, password), None, IMailbox)
        except UnauthorizedLogin:
            delay = throttle.failed(self._peer, clock.seconds(), name)
            self._log.info("POP3 login failed from {peer} for {user}", peer=self._peer, user=name)
            # Slow guessing down; later commands wait meanwhile.
            await deferLater(clock, delay, lambda: None)
            self.failResponse(AUTH_FAILED)
            return
        if self._lost:
            logout()
            return
        throttle.succeeded(self._peer, mailbox.address)
        self.mbox, self._onLogout = mailbox, logout
        self._log.info("POP3 login as {user} from {peer}", user=mailbox.address, peer=self._peer)
        self.successResponse(b"maildrop has %d messages" % (len(mailbox.messages),))

    def _index(self, argument: bytes) -> int | None:
        """
        @return: the 0-based index of a message number argument, or C{None}
            (an answer has been sent).
        """
        try:
            number = int(argument)
        except ValueError:
            number = 0
        if number < 1:
            self.failResponse(NO_SUCH_MESSAGE)
            return None
        return number - 1

    def _live(self) -> list[int]:
        """
        @return: the 0-based indexes of the messages not marked deleted.
        """
        return [i for i in range(len(self.mbox.messages)) if i not in self.mbox.deleted]

    def do_STAT(self) -> Deferred:
        """
        STAT: count and total size, deleted messages left out.
        """
        return self._run(self._stat())

    async def _stat(self) -> None:
        """
        See L{do_STAT}.
        """
        sizes = await self.mbox.listMessages()
        live = self._live()
        self.successResponse(b"%d %d" % (len(live), sum(sizes[i] for i in live)))

    def do_LIST(self, argument: bytes | None = None) -> Deferred:
        """
        LIST [msg].
        """
        return self._run(self._list(argument, self._listOne, self.mbox.listMessages))

    def do_UIDL(self, argument: bytes | None = None) -> Deferred:
        """
        UIDL [msg].
        """
        return self._run(self._list(argument, lambda i: succeed(self.mbox.getUidl(i)), None))

    async def _list(self, argument: bytes | None, one: Any, everything: Any) -> None:
        """
        A scan listing (LIST) or unique-id listing (UIDL).

        @param one: gives one message's value (a Deferred).
        @param everything: gives every size at once (LIST), or C{None}.
        """
        if argument is not None:
            index = self._index(argument)
            if index is None:
                return
            try:
                value = await one(index)
            except ValueError:
                self.failResponse(NO_SUCH_MESSAGE)
                return
            self.successResponse(b"%d %b" % (index + 1, value))
            return
        if everything is not None:
            await everything()
        lines = [b"%d %b\r\n" % (i + 1, await one(i)) for i in self._live()]
        self.successResponse(b"")
        self.transport.writeSequence(lines + [b".\r\n"])

    async def _listOne(self, index: int) -> bytes:
        """
        @return: one message's size, as LIST shows it.
        """
        return b"%d" % (await self.mbox.listMessages(index),)

    def do_RETR(self, argument: bytes) -> Deferred | None:
        """
        RETR msg.
        """
        index = self._index(argument)
        return None if index is None else self._run(self._send(index, None))

    def do_TOP(self, argument: bytes, lines: bytes) -> Deferred | None:
        """
        TOP msg n.
        """
        index = self._index(argument)
        if index is None:
            return None
        try:
            count = int(lines)
        except ValueError:
            count = -1
        if count < 0:
            self.failResponse(b"bad line count")
            return None
        return self._run(self._send(index, count))

    async def _send(self, index: int, bodyLines: int | None) -> None:
        """
        Send a message (or its top), streaming it from its file.
        """
        try:
            body, size = await self.mbox.openMessage(index)
        except ValueError:
            self.failResponse(NO_SUCH_MESSAGE)
            return
        except TemporarilyUnreadable:
            self.failResponse(TEMPORARY)
            return
        try:
            self.successResponse(b"%d octets" % (size,) if bodyLines is None else b"top of message follows")
            stuffer = DotStuffer(bodyLines)
            flow = WriteFlow()
            self.transport.registerProducer(flow, True)
            try:
                while not stuffer.done and not flow.stopped:
                    chunk = await self.factory.runner.run(body.read, CHUNK_BYTES)
                    if not chunk:
                        break
                    self.transport.write(stuffer.feed(chunk))
                    await flow.whenWritable()
            finally:
                self.transport.unregisterProducer()
            self.transport.write(stuffer.end())
        finally:
            await self.factory.runner.run(_close, body)

    def do_DELE(self, argument: bytes) -> None:
        """
        DELE msg: mark it; QUIT removes it.
        """
        index = self._index(argument)
        if index is None:
            return
        try:
            self.mbox.deleteMessage(index)
        except ValueError:
            self.failResponse(NO_SUCH_MESSAGE)
            return
        self.successResponse(b"message %d deleted" % (index + 1,))

    def do_RSET(self) -> None:
        """
        RSET: unmark every message.
        """
        self.mbox.undeleteMessages()
        self.successResponse(b"")

    def do_QUIT(self) -> Deferred | None:
        """
        QUIT: in the TRANSACTION state, remove the marked messages first
        (RFC 1939 §6).
        """
        if self.mbox is None:
            self.successResponse(b"bye")
            self.transport.loseConnection()
            return None
        return self._run(self._quit())

    async def _quit(self) -> None:
        """
        See L{do_QUIT}.
        """
        try:
            await self.mbox.sync()
        except OSError:
            self.failResponse(b"[SYS/TEMP] some deleted messages not removed")
        else:
            self.successResponse(b"bye")
        self.transport.loseConnection()


@attrs.define(slots=False, eq=False)
class POP3Factory(ServerFactory):
    """
    Builds POP3 sessions.

    @ivar portal: see L{pop3Portal}.
    @ivar runner: runs the file reads while sending.
    @ivar clock: the idle timer, throttle delays and lockouts.
    @ivar throttle: failed-login counters (shared with the other listeners
        if wanted).
    @ivar contextFactory: the server's TLS context for STLS (C{None}: no
        STLS, so no login on a plain port).
    @ivar implicitTLS: sessions are TLS from the first byte (the lead wraps
        this factory in a C{TLSMemoryBIOFactory}).
    @ivar timeoutSeconds: the idle (autologout) timer.
    """

    portal: Portal
    runner: Any
    clock: Any = attrs.field(converter=IReactorTime)
    throttle: Any
    contextFactory: Any = None
    implicitTLS: bool = False
    timeoutSeconds: float = IDLE_TIMEOUT_SECONDS
    noisy = False

    def buildProtocol(self, addr: Any) -> POP3Server:
        """
        A session using the injected clock for its idle timer.
        """
        protocol = POP3Server()
        protocol.factory = self
        protocol.portal = self.portal
        protocol.callLater = self.clock.callLater
        protocol.timeOut = self.timeoutSeconds
        protocol.secure = self.implicitTLS
        return protocol
