# -*- test-case-name: tests.access.test_pop3 -*-
"""
POP3 (RFC 1939) over an account's INBOX: the protocol.  What a session sees
of the mailbox, and how it is decrypted for its owner, is
L{qutemail.access.maildrop}.

Passwords never travel in the clear: on the plain port USER and PASS are
refused until STLS (RFC 2595 §4) has set up TLS; the implicit-TLS port
(RFC 8314) allows them at once.  APOP (which needs the cleartext password
on the server) is not offered: the greeting carries no challenge.  Failed
logins are throttled with L{qutemail.policy.throttle.AuthThrottle}, as
SMTP AUTH is.

Wiring (the lead's C{service.py})::

    portal = pop3Portal(directory, dataDir, vault, runner)
    plain = POP3Factory(portal, runner, reactor, throttle, tlsContext)
    implicit = TLSMemoryBIOFactory(
        tlsContext, False, POP3Factory(portal, runner, reactor, throttle, tlsContext, implicitTLS=True))
"""

from typing import Any

import attrs
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.pop3 import POP3, IMailbox, POP3Error

from qutemail.access.dotstuff import DotStuffer
from qutemail.access.flow import WriteFlow
from qutemail.access.maildrop import NO_SUCH_MESSAGE, POP3Realm, TemporarilyUnreadable
from qutemail.cred import UserDirectoryChecker
from qutemail.policy.sessions import PER_ADDRESS, SessionLimits, SessionTicket
from qutemail.policy.sessions import POP3 as POP3_SESSIONS

# notice is qutemail.access.maildrop's, kept importable from here for
# qutemail.access.imapmessage.

# RFC 1939 §3: the autologout timer must be at least 10 minutes.
IDLE_TIMEOUT_SECONDS = 600.0
# How much of a message is read (in a worker thread) per write.
CHUNK_BYTES = 64 * 1024

GREETING = b"QutEmail POP3 server ready"
NOT_SECURE = b"[AUTH] use STLS first: no passwords in the clear"
AUTH_FAILED = b"[AUTH] authentication failed"
LOCKED_OUT = b"[AUTH] too many failed logins: try again later"
TEMPORARY = b"[SYS/TEMP] temporary failure: try again later"
# RFC 3206: the directory cannot check the password now (Redis down).
AUTH_UNAVAILABLE = b"[SYS/TEMP] authentication temporarily unavailable: try again later"
TOO_MANY_FROM_ADDRESS = b"[SYS/TEMP] Too many connections from your address"
TOO_MANY_SESSIONS = b"[SYS/TEMP] Too many connections, try again later"


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
    _ticket: SessionTicket | None = None

    def connectionMade(self) -> None:
        """
        Greet without an APOP challenge, and start the idle timer.
        """
        self._peer = getattr(self.transport.getPeer(), "host", "?")
        self._ticket = self.factory.limits.admit(POP3_SESSIONS, self._peer, self.factory.listenerName)
        if self._ticket.refused is not None:
            # RFC 3206 §4: SYS/TEMP, a temporary problem; try again later.
            self._log.info("refused POP3 from {peer}: too many connections", peer=self._peer)
            self.failResponse(TOO_MANY_FROM_ADDRESS if self._ticket.refused == PER_ADDRESS else TOO_MANY_SESSIONS)
            self.transport.loseConnection()
            return
        self.successResponse(GREETING)
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason: Any) -> None:
        """
        Release the mailbox; marked messages stay (RFC 1939 §6).
        """
        self._lost = True
        if self._ticket is not None:
            self._ticket.release()
        POP3.connectionLost(self, reason)

    def dataReceived(self, data: bytes) -> None:
        """
        Lines arriving after this point come through TLS, if STLS was done.
        A refused session reads nothing.
        """
        if self._ticket is not None and self._ticket.refused is not None:
            return
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
        # The guess counts from now, before the hash (see AuthThrottle.begin).
        attempt = throttle.begin(self._peer, clock.seconds())
        if attempt is None:
            self._log.info("POP3 login refused for {peer}: locked out after failures", peer=self._peer)
            self.failResponse(LOCKED_OUT)
            return
        try:
            _, mailbox, logout = await self.portal.login(UsernamePassword(user, password), None, IMailbox)
        except UnauthorizedLogin:
            delay = attempt.failed(clock.seconds(), name)
            self._log.info("POP3 login failed from {peer} for {user}", peer=self._peer, user=name)
            # Slow guessing down; later commands wait meanwhile.
            await deferLater(clock, delay, lambda: None)
            self.failResponse(AUTH_FAILED)
            return
        except Exception as e:
            # The user directory cannot say (Redis down): fail closed, for now.
            self._log.warn("POP3 login from {peer} for {user} not checked: {reason}", peer=self._peer, user=name,
                           reason=str(e) or type(e).__name__)
            self.failResponse(AUTH_UNAVAILABLE)
            return
        finally:
            attempt.release()
        if self._lost:
            logout()
            return
        attempt.succeeded(mailbox.address, name)
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
            await self.factory.runner.run(body.close)

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

    @ivar listenerName: the listener's name in the metrics (C{pop3} or
        C{pop3s}).

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
    @ivar limits: the process's L{SessionLimits} (shared by every
        listener); by default one of its own with no limits.
    """

    portal: Portal
    runner: Any
    clock: Any = attrs.field(converter=IReactorTime)
    throttle: Any
    contextFactory: Any = None
    implicitTLS: bool = False
    timeoutSeconds: float = IDLE_TIMEOUT_SECONDS
    limits: SessionLimits = attrs.field(factory=SessionLimits, kw_only=True)
    listenerName: str = attrs.field(default="pop3", kw_only=True)
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


def pop3Portal(directory: Any, dataDir: str, vault: Any, runner: Any, tempDirectory: str | None = None) -> Portal:
    """
    The portal of the POP3 listeners.

    @param directory: the L{qutemail.interfaces.IUserDirectory}.
    """
    return Portal(POP3Realm(dataDir, vault, runner, tempDirectory), [UserDirectoryChecker(directory)])
