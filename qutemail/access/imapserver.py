# -*- test-case-name: tests.access.test_imapserver -*-
"""
IMAP4rev1 (RFC 3501) over an account's Maildir++ folders, decrypting
internal mail for its owner.  L{IMAPServer} subclasses Twisted's
C{IMAP4Server} for its line and literal handling, greeting, capability
list and auto-logout timer, and does the commands itself: each one is a
coroutine whose file work goes through the runner, and later commands
wait until it is answered (pipelining is accepted, not run in parallel).

Passwords never travel in the clear: on the plain port the server offers
STARTTLS and LOGINDISABLED, and LOGIN and AUTHENTICATE are refused
(C{NO [PRIVACYREQUIRED]}) until TLS is up; on the implicit-TLS port
(RFC 8314) they work at once.  AUTHENTICATE PLAIN (RFC 4616, with
SASL-IR, RFC 4959) and LOGIN go through the portal; failures are
throttled with L{qutemail.policy.throttle.AuthThrottle} as POP3 and SMTP
AUTH are, and logged without the password.

Changes made by deliveries and other sessions are announced on NOOP,
CHECK, and during IDLE (RFC 2177), when the selected folder is synced
every C{pollSeconds} on the injected clock.

Errors never reach the client as tracebacks: bad syntax is C{BAD}, a
refused operation C{NO} with an RFC 5530 response code, and an
unexpected failure is logged and answered C{NO [SERVERBUG]}.

Other extensions: UIDPLUS (RFC 4315), MOVE (RFC 6851), UNSELECT
(RFC 3691), CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154), QUOTA (RFC 9208,
one root C{""} with STORAGE), APPENDLIMIT (RFC 7889), NAMESPACE
(RFC 2342), ID (RFC 2971) and ENABLE (RFC 5161, nothing to enable yet).

Arguments nested too deep (lists, or SEARCH keys) are answered C{BAD}
with one log line, before anything recurses over them.

Wiring (the lead's C{service.py})::

    portal = imapPortal(directory, dataDir, vault, runner)
    plain = IMAPFactory(portal, runner, reactor, throttle, tlsContext, defaultQuotaBytes=quota)
    implicit = TLSMemoryBIOFactory(tlsContext, False, IMAPFactory(
        portal, runner, reactor, throttle, tlsContext, implicitTLS=True, defaultQuotaBytes=quota))
"""

import re
from typing import Any, Coroutine

import attrs
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail.imap4 import IMAP4Server

from qutemail.store.folders import FolderError, FolderExists, FolderHasChildren, InvalidFolderName, NoSuchFolder
from qutemail.access.imapauth import AuthCommands
from qutemail.access.imapcommands import FolderCommands
from qutemail.access.imapmailbox import FolderGone, UIDValidityChanged
from qutemail.access.imapmessage import MessageUnavailable
from qutemail.access.imapnegotiate import NegotiationCommands
from qutemail.access.imapselected import SelectedCommands
from qutemail.access.imapstore import OverQuota
from qutemail.access.imapwire import ParseError, Refusal, TokenReader, TooDeep, bad
from qutemail.access.keywords import KeywordLimit
from qutemail.policy.sessions import IMAP, PER_ADDRESS, SessionLimits, SessionTicket

# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">.
_TAG = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\+]+")
_ANY = frozenset({"unauth", "auth", "select"})
_AUTHENTICATED = frozenset({"auth", "select"})
_SELECTED = frozenset({"select"})
_COMMANDS = {
    b"CAPABILITY": _ANY, b"NOOP": _ANY, b"LOGOUT": _ANY, b"ID": _ANY, b"ENABLE": _AUTHENTICATED,
    b"STARTTLS": frozenset({"unauth"}), b"LOGIN": frozenset({"unauth"}), b"AUTHENTICATE": frozenset({"unauth"}),
    b"SELECT": _AUTHENTICATED, b"EXAMINE": _AUTHENTICATED, b"CREATE": _AUTHENTICATED,
    b"DELETE": _AUTHENTICATED, b"RENAME": _AUTHENTICATED, b"SUBSCRIBE": _AUTHENTICATED,
    b"UNSUBSCRIBE": _AUTHENTICATED, b"LIST": _AUTHENTICATED, b"LSUB": _AUTHENTICATED,
    b"STATUS": _AUTHENTICATED, b"APPEND": _AUTHENTICATED, b"NAMESPACE": _AUTHENTICATED,
    b"IDLE": _AUTHENTICATED, b"GETQUOTA": _AUTHENTICATED, b"GETQUOTAROOT": _AUTHENTICATED,
    b"SETQUOTA": _AUTHENTICATED,
    b"CHECK": _SELECTED, b"CLOSE": _SELECTED, b"UNSELECT": _SELECTED, b"EXPUNGE": _SELECTED,
    b"SEARCH": _SELECTED, b"FETCH": _SELECTED, b"STORE": _SELECTED, b"COPY": _SELECTED,
    b"MOVE": _SELECTED, b"UID": _SELECTED,
}
_UID_COMMANDS = (b"FETCH", b"SEARCH", b"STORE", b"COPY", b"MOVE", b"EXPUNGE")
# Commands sent while another runs are queued; a client queueing more is
# cut off.
MAX_QUEUED_LINES = 200
# Literals in arguments (names, passwords, search strings).
MAX_ARGUMENT_LITERAL_BYTES = 64 * 1024
DEFAULT_QUOTA_BYTES = 5120 * 2**20
DEFAULT_MAX_APPEND_BYTES = 64 * 2**20
# RFC 5530 UNAVAILABLE: try again later.
TOO_MANY_FROM_ADDRESS = b"[UNAVAILABLE] Too many connections from your address"
TOO_MANY_SESSIONS = b"[UNAVAILABLE] Too many connections, try again later"


class IMAPServer(AuthCommands, SelectedCommands, FolderCommands, NegotiationCommands, IMAP4Server):
    """
    One IMAP session.  Set by the factory: C{factory}, C{callLater},
    C{timeOut}, C{secure}.

    @ivar secure: whether the session is encrypted (implicit TLS, or
        STARTTLS done).
    @ivar account: the L{qutemail.access.imapaccount.IMAPAccount} once
        logged in.
    @ivar view: the selected folder's
        L{qutemail.access.imapmailbox.FolderView}, or C{None}.
    """

    _log = Logger()
    IDENT = b"QutEmail IMAP4rev1 server ready"
    MAX_LENGTH = 64 * 1024
    _literalStringLimit = MAX_ARGUMENT_LITERAL_BYTES
    secure = False
    view = None
    _lost = False
    _discardLines = False
    _waitingLine: Deferred | None = None
    _peer = "?"
    _ticket: SessionTicket | None = None
    # IDLE: whether it runs, its next poll, and a notice that came while a
    # poll was running.
    _idling = False
    _idleCall: Any = None
    _wakeAgain = False

    def connectionMade(self) -> None:
        """
        Greet, with the capabilities, and start the auto-logout timer.
        """
        self._peer = getattr(self.transport.getPeer(), "host", "?")
        # A response is several writes (a literal's header, data, the
        # tagged line): without this, Nagle's algorithm and the client's
        # delayed ACK hold the last one back ~40 ms per command.
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            noDelay(True)
        self._ticket = self.factory.limits.admit(IMAP, self._peer, self.factory.listenerName)
        if self._ticket.refused is not None:
            # RFC 3501 §7.1.5: a BYE greeting refuses the connection.
            self._log.info("refused IMAP from {peer}: too many connections", peer=self._peer)
            self._bye(TOO_MANY_FROM_ADDRESS if self._ticket.refused == PER_ADDRESS else TOO_MANY_SESSIONS)
            return
        self.factory.sessions.add(self)
        IMAP4Server.connectionMade(self)

    def connectionLost(self, reason: Any) -> None:
        """
        Stop IDLE, fail whatever waits for the client, and close the
        account's messages.
        """
        self._lost = True
        self.factory.sessions.discard(self)
        if self._ticket is not None:
            self._ticket.release()
        self._stopIdle()
        waiting, self._waitingLine = self._waitingLine, None
        if waiting is not None:
            waiting.errback(ConnectionLost())
        literal, self._pendingLiteral = self._pendingLiteral, None
        if literal is not None:
            pending = getattr(literal, "defer", None) or getattr(literal, "done", None)
            if pending is not None and not pending.called:
                pending.errback(ConnectionLost())
        IMAP4Server.connectionLost(self, reason)

    def capabilities(self) -> dict:
        """
        The capabilities (Twisted's C{listCapabilities} lists them after
        C{IMAP4rev1}).
        """
        caps: dict = {}
        if not self.secure:
            if self.ctx is not None and self.canStartTLS:
                caps[b"STARTTLS"] = None
            caps[b"LOGINDISABLED"] = None
        elif self.state == "unauth":
            caps[b"AUTH"] = [b"PLAIN"]
            caps[b"SASL-IR"] = None
        for name in (b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"CHILDREN", b"SPECIAL-USE",
                     b"QUOTA", b"QUOTA=RES-STORAGE", b"ID", b"ENABLE"):
            caps[name] = None
        caps[b"APPENDLIMIT=%d" % (self.factory.maxAppendBytes,)] = None
        return caps

    # Input.

    def dataReceived(self, data: bytes) -> None:
        """
        What arrives after this point came through TLS, if STARTTLS was
        done.  A refused session reads nothing.
        """
        if self._ticket is not None and self._ticket.refused is not None:
            return
        self._discardLines = False
        IMAP4Server.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        """
        Route a line: to what waits for a continuation, to a literal's
        command, to the queue while a command runs, or to dispatch.
        """
        if self._discardLines:
            return
        if self._waitingLine is not None:
            waiting, self._waitingLine = self._waitingLine, None
            self.resetTimeout()
            waiting.callback(line)
        elif self.parseState == "pending":
            self.resetTimeout()
            self.parse_pending(line)
        elif self.blocked is not None:
            if len(self.blocked) >= MAX_QUEUED_LINES:
                self._bye(b"Too many commands queued")
                return
            self.blocked.append(line)
        else:
            self.resetTimeout()
            try:
                self._dispatch(line)
            except Exception:
                self._log.failure("IMAP: bad line from {peer}", peer=self._peer)
                self.sendLine(b"* BAD Internal error")

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line too long: say so and close.
        """
        self._bye(b"Line too long")

    def _dispatch(self, line: bytes) -> None:
        """
        Parse a command line's tag and name, and run the command.
        """
        tag, _, rest = line.partition(b" ")
        if not _TAG.fullmatch(tag):
            self.sendLine(b"* BAD Invalid tag")
            return
        command, _, rest = rest.partition(b" ")
        command = command.upper()
        uid = False
        states = _COMMANDS.get(command)
        if states is None:
            self._tagged(tag, b"BAD", b"Unknown command")
            return
        if self.state not in states:
            self._tagged(tag, b"BAD", b"Command not valid in this state")
            return
        if command == b"UID":
            command, _, rest = rest.partition(b" ")
            command, uid = command.upper(), True
            if command not in _UID_COMMANDS:
                self._tagged(tag, b"BAD", b"Unknown UID command")
                return
        handler = getattr(self, "imap_" + command.decode("ascii"))
        self._run(tag, handler(tag, rest, uid))

    def _run(self, tag: bytes, coroutine: Coroutine) -> None:
        """
        Run a command; if it does not end at once, hold later lines until
        it does.
        """
        done = Deferred.fromCoroutine(self._guard(tag, coroutine))
        if not done.called:
            self.blocked = []
            done.addBoth(lambda _: self._unblock() if not self._lost else None)

    async def _guard(self, tag: bytes, coroutine: Coroutine) -> None:
        """
        Answer a command's failure; nothing escapes.
        """
        try:
            await coroutine
        except Refusal as e:
            self._tagged(tag, e.status, e.text)
        except TooDeep as e:
            self._log.info("IMAP command from {address} at {peer} refused: {reason}", address=self._address(),
                           peer=self._peer, reason=str(e))
            self._tagged(tag, b"BAD", b"Syntax error: " + str(e).encode("ascii", "replace"))
        except ParseError as e:
            self._tagged(tag, b"BAD", b"Syntax error: " + str(e).encode("ascii", "replace"))
        except InvalidFolderName as e:
            self._tagged(tag, b"NO", b"[CANNOT] Invalid mailbox name: " + e.reason.encode("ascii", "replace"))
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
        except FolderExists:
            self._tagged(tag, b"NO", b"[ALREADYEXISTS] Mailbox exists already")
        except FolderHasChildren:
            self._tagged(tag, b"NO", b"[INUSE] Mailbox has child mailboxes")
        except FolderError as e:
            self._tagged(tag, b"NO", b"[CANNOT] " + e.reason.encode("ascii", "replace"))
        except OverQuota:
            self._tagged(tag, b"NO", b"[OVERQUOTA] Quota exceeded")
        except KeywordLimit:
            self._tagged(tag, b"NO", b"[LIMIT] No room for another keyword in this mailbox (26 at most)")
        except MessageUnavailable:
            self._tagged(tag, b"NO", b"[UNAVAILABLE] Message cannot be read now; try again later")
        except ConnectionLost:
            pass
        except (UIDValidityChanged, FolderGone):
            self._log.info("IMAP: selected folder of {address} vanished or was rebuilt", address=self._address())
            self._bye(b"Selected mailbox was removed or rebuilt; please reconnect")
        except FileNotFoundError:
            self._tagged(tag, b"NO", b"[NONEXISTENT] Removed by another session meanwhile")
        except Exception:
            if self._lost:
                # Files closed under a command when the client went away.
                self._log.debug("IMAP command ended by the lost connection of {peer}", peer=self._peer)
                return
            self._log.failure("IMAP command failed for {address} from {peer}", address=self._address(),
                              peer=self._peer)
            self._tagged(tag, b"NO", b"[SERVERBUG] Internal error; try again later")

    # Output.

    def _address(self) -> str | None:
        """
        @return: the logged-in address, for the log.
        """
        return self.account.address if self.account is not None else None

    def _tagged(self, tag: bytes, status: bytes, text: bytes) -> None:
        """
        Send a tagged response.
        """
        if not self._lost:
            self.sendLine(b"%b %b %b" % (tag, status, text))

    def _untagged(self, text: bytes) -> None:
        """
        Send an untagged response.
        """
        if not self._lost:
            self.sendLine(b"* " + text)

    def _bye(self, text: bytes) -> None:
        """
        Send BYE and close.
        """
        self._untagged(b"BYE " + text)
        self.state = "logout"
        self.transport.loseConnection()

    # Arguments.

    async def _arguments(self, rest: bytes, messageLiteral: bool = False) -> tuple[list, int | None]:
        """
        Read a command's arguments, asking for literals as they come.

        @param messageLiteral: stop at a literal after the first argument
            (APPEND's message), unread.
        @return: the tokens and the size of the unread literal (or
            C{None}).
        @raise ParseError: bad syntax.
        """
        reader = TokenReader()
        size = reader.feed(rest)
        while size is not None:
            if messageLiteral and reader.depth == 0 and reader.tokens:
                return reader.finish(), size
            if size > MAX_ARGUMENT_LITERAL_BYTES:
                raise bad(b"Literal too long")
            data, rest = await self._stringLiteral(size)
            reader.literal(data)
            size = reader.feed(rest)
        return reader.finish(), None

    def _nextLine(self) -> Deferred:
        """
        @return: a Deferred firing with the next line the client sends (a
            continuation).
        """
        self._waitingLine = Deferred()
        return self._waitingLine

    # Any state.

    async def imap_CAPABILITY(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        CAPABILITY (RFC 3501 §6.1.1).
        """
        self._untagged(b"CAPABILITY " + b" ".join(self.listCapabilities()))
        self._tagged(tag, b"OK", b"CAPABILITY completed")

    async def imap_NOOP(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        NOOP: report changes to the selected folder.
        """
        await self._refresh()
        self._tagged(tag, b"OK", b"NOOP completed")

    async def imap_LOGOUT(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        LOGOUT (RFC 3501 §6.1.3).
        """
        self._untagged(b"BYE QutEmail IMAP server logging out")
        self._tagged(tag, b"OK", b"LOGOUT completed")
        self.state = "logout"
        self.transport.loseConnection()

    # Changes to the selected folder.

    async def _refresh(self) -> None:
        """
        Sync the selected folder and tell the client what changed.
        """
        if self.view is None:
            return
        for line in await self.account.refresh(self.view):
            self._untagged(line)

    async def imap_IDLE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        IDLE (RFC 2177): poll the selected folder every C{pollSeconds}
        until the client sends DONE.
        """
        if rest.strip():
            raise bad(b"IDLE takes no arguments")
        self._idling = True
        self._idleRefresh: Deferred | None = None
        done = self._nextLine()
        self.sendLine(b"+ idling")
        self._scheduleIdlePoll()
        notifier = self.factory.notifier
        # A notice of a change wakes the poll at once; polling stays the
        # fallback for notices that never come.
        unsubscribe = notifier.subscribe(self._address(), self._idleWake) if notifier is not None else None
        try:
            line = await done
        finally:
            if unsubscribe is not None:
                unsubscribe()
            self._stopIdle()
        if self._idleRefresh is not None:
            await self._idleRefresh
        if line.strip().upper() != b"DONE":
            raise bad(b"Expected DONE")
        self._tagged(tag, b"OK", b"IDLE terminated")

    def _scheduleIdlePoll(self) -> None:
        """
        Poll again after C{pollSeconds}, while idling.
        """
        if self._idling and not self._lost:
            self._idleCall = self.factory.clock.callLater(self.factory.pollSeconds, self._idlePoll)

    def _announce(self) -> None:
        """
        This session changed the mailbox (flags, expunge, append): tell the
        sessions watching it, on every node.
        """
        notifier = self.factory.notifier
        if notifier is not None and self.account is not None:
            notifier.publish(self.account.address)

    def _idleWake(self) -> None:
        """
        The mailbox changed: poll now instead of at the next interval (or,
        while a poll is running, right after it: it may have looked first).
        """
        if not self._idling:
            return
        call = self._idleCall
        if call is not None and call.active():
            call.cancel()
            self._idlePoll()
        else:
            self._wakeAgain = True

    def _stopIdle(self) -> None:
        """
        Stop polling.
        """
        self._idling = False
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()

    def _idlePoll(self) -> None:
        """
        One IDLE poll.
        """
        self._idleCall = None
        polling = Deferred.fromCoroutine(self._idlePollOnce())
        self._idleRefresh = polling

        def polled(_: Any) -> None:
            """
            Forget the finished poll and schedule the next.
            """
            if self._idleRefresh is polling:
                self._idleRefresh = None
            if self._wakeAgain and self._idling and not self._lost:
                self._wakeAgain = False
                self._idlePoll()
                return
            self._scheduleIdlePoll()

        polling.addBoth(polled)

    async def _idlePollOnce(self) -> None:
        """
        Sync the selected folder; a failure is logged and polling goes on.
        """
        try:
            await self._refresh()
        except (UIDValidityChanged, FolderGone):
            self._stopIdle()
            self._bye(b"Selected mailbox was removed or rebuilt; please reconnect")
        except Exception:
            self._log.failure("IMAP IDLE poll failed for {address}", address=self._address())


@attrs.define(slots=False, eq=False)
class IMAPFactory(ServerFactory):
    """
    Builds IMAP sessions.

    @ivar listenerName: the listener's name in the metrics (C{imap} or
        C{imaps}).

    @ivar portal: see L{qutemail.access.imapaccount.imapPortal}.
    @ivar runner: runs every file operation.
    @ivar reactor: the clock for timers, throttle delays, IDLE polls and
        the time stamps of stored messages.
    @ivar throttle: failed-login counters (shareable with the other
        listeners).
    @ivar contextFactory: the TLS context for STARTTLS (C{None}: none, so
        no login on a plain port).
    @ivar implicitTLS: sessions are TLS from the first byte (the lead wraps
        this factory in a C{TLSMemoryBIOFactory}).
    @ivar pollSeconds: how often IDLE looks for changes.
    @ivar notifier: the L{qutemail.interfaces.IMailboxNotifier} whose
        notices wake IDLE at once, or C{None} (polling only).
    @ivar defaultQuotaBytes: the quota of accounts without their own
        (C{[mailbox] default_quota_mb}).
    @ivar hostname: used in the names of messages the sessions store.
    @ivar maxAppendBytes: the largest message APPEND takes.
    @ivar timeoutSeconds: auto-logout before login.
    @ivar authenticatedTimeoutSeconds: auto-logout after login (RFC 3501
        §5.4: at least 30 minutes).
    @ivar limits: the process's L{SessionLimits} (shared by every
        listener); by default one of its own with no limits.
    """

    portal: Portal
    runner: Any
    reactor: Any = attrs.field(converter=IReactorTime)
    throttle: Any
    contextFactory: Any = None
    implicitTLS: bool = False
    pollSeconds: float = attrs.field(default=2.0, kw_only=True)
    notifier: Any = attrs.field(default=None, kw_only=True)
    listenerName: str = attrs.field(default="imap", kw_only=True)
    defaultQuotaBytes: int = attrs.field(default=DEFAULT_QUOTA_BYTES, kw_only=True)
    hostname: str = attrs.field(default="localhost", kw_only=True)
    maxAppendBytes: int = attrs.field(default=DEFAULT_MAX_APPEND_BYTES, kw_only=True)
    timeoutSeconds: float = attrs.field(default=60.0, kw_only=True)
    authenticatedTimeoutSeconds: float = attrs.field(default=1800.0, kw_only=True)
    limits: SessionLimits = attrs.field(factory=SessionLimits, kw_only=True)
    noisy = False

    @property
    def clock(self) -> Any:
        """
        The reactor, as a clock.
        """
        return self.reactor

    sessions: set = attrs.field(factory=set, init=False)

    def shutdown(self) -> None:
        """
        The server is stopping: tell every session (RFC 3501 §7.1.5, an
        untagged BYE) and close it.  Nothing is lost: stored changes are
        already on disk.
        """
        for session in list(self.sessions):
            session._bye(b"QutEmail IMAP server shutting down")

    def buildProtocol(self, addr: Any) -> IMAPServer:
        """
        A session using the injected clock for its timers.
        """
        protocol = IMAPServer(contextFactory=self.contextFactory)
        protocol.factory = self
        protocol.callLater = self.reactor.callLater
        protocol.timeOut = self.timeoutSeconds
        protocol.secure = self.implicitTLS
        return protocol
