# -*- test-case-name: tests.listener.test_smtp -*-
"""
The SMTP listener: Twisted's L{ESMTP}, subclassed where it falls short of
RFC 5321 and its extensions.

What this class changes, and why:

  - Input framing.  Twisted's C{LineOnlyReceiver} drops the rest of a packet
    after an over-long line and, in DATA, goes back to command mode, so the
    rest of the body would run as commands.  Here commands are limited to
    512 octets (RFC 5321 §4.5.3.1.4, plus the RFC 1870/6152 allowances for
    MAIL) and message lines to 1000 (§4.5.3.1.6); an over-long command is
    answered and skipped, an over-long message line fails only that message.
  - PIPELINING (RFC 2920).  Twisted validates MAIL/RCPT asynchronously but
    reads on, so a pipelined DATA can arrive before RCPT was accepted.  Here
    a command that waits for a Deferred holds back the commands after it, so
    replies come in order and each command sees the state the ones before it
    left.
  - DATA is framed in bulk, without smuggling (L{qutemail.listener.data}).
  - Replies all come from L{qutemail.replies} and carry enhanced status codes
    (RFC 2034); a temporary failure of ours is a 4xx, never Twisted's 550.
  - 250 after DATA only once the intake has the message durable in the
    journal: the session asks the intake
    (L{qutemail.pipeline.intake.Intake}) for the reply, and the policy
    (L{qutemail.policy.session.SessionPolicy}) for every verdict before it.
"""

from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.mail.smtp import ESMTP

from qutemail import replies
from qutemail.listener.auth import AuthMixin
from qutemail.listener.commands import SessionCommands
from qutemail.listener.headerfilter import SpoofedResultsFilter
from qutemail.listener.address import PathError, declaredSize, parseParameters, parsePath, splitArgument
from qutemail.listener.data import MessageData, receivedHeader
from qutemail.listener.framing import LAST_IN_GROUP, MAX_AUTH_OCTETS, isNotSMTP, lineProblem
from qutemail.listener.settings import SessionSettings
from qutemail.listener.transport import sendNow, setNoDelay
from qutemail.message import Envelope
from qutemail.pipeline.intake import InboundContext
from qutemail.replies import Reply, ReplyError

# Postfix's smtpd_hard_error_limit: a client that keeps erring is dropped.
MAX_ERRORS = 20

_COMMAND, _DATA = "COMMAND", "DATA"


class SMTPServer(SessionCommands, AuthMixin, ESMTP):
    """
    One SMTP session: the protocol only.  Every verdict comes from the
    policy, and every message goes to the intake, which gives the reply.
    """

    _log = Logger()

    def __init__(self, intake: Any, policy: Any, settings: SessionSettings, clock: Any) -> None:
        """
        @param intake: the L{qutemail.pipeline.intake.Intake}.
        @param policy: the L{qutemail.policy.session.SessionPolicy}.
        @param settings: the listener's L{SessionSettings}.
        @param clock: an C{IReactorTime} (timeouts, durations).
        """
        ESMTP.__init__(self)
        self.intake = intake
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self.portal = settings.portal
        self.throttle = settings.throttle
        self.host = settings.hostname.encode("ascii")
        self.timeout = settings.idleTimeoutSeconds
        self._buffer = b""
        self._mode = _COMMAND
        self._busy = False
        self._discardingLine = False
        self._errors = 0
        self._heloName: str | None = None
        self._esmtp = False
        self._resetTransaction()
        self._messages = 0
        self._commands = 0
        self._closing = False
        self._peer = ""
        self._startedAt = 0.0
        self._admitted = False
        self.authenticatedAs: str | None = None

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        """
        Greet the client (RFC 5321 §4.3.1) and start the idle timer.
        """
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", str(peer))
        self._startedAt = self.clock.seconds()
        self._ticket, refusal = self.factory.admit(self._peer)
        if refusal is not None:
            self._log.info("refused {peer}: too many connections", peer=self._peer)
            self.reply(refusal)
            self.transport.loseConnection()
            return
        self._admitted = True
        self.factory.sessions.add(self)
        # Replies that wait on a worker thread (SPF at MAIL, the checks and
        # the journal at the end of DATA) go out as separate small writes:
        # without this, Nagle's algorithm and the client's delayed ACK hold
        # each back about 40 ms.
        setNoDelay(self.transport)
        self.ctx = self.settings.tlsContext
        # Port 465 (RFC 8314): TLS from the first byte, so no STARTTLS.
        self.startedTLS = self.settings.implicitTLS
        self.canStartTLS = (not self.startedTLS and self.ctx is not None
                            and ITLSTransport.providedBy(self.transport))
        self.write(b"220 " + self.host + b" ESMTP QutEmail\r\n")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason) -> None:
        """
        Abandon an unfinished message and log the session.
        """
        self.setTimeout(None)
        if not self._admitted:
            return
        self.factory.sessions.discard(self)
        self._ticket.release()
        if self._data is not None:
            self._data.abort()
            self._data = None
        self._log.info(
            "session from {peer} closed after {seconds:.1f}s: {messages} messages, {commands} commands",
            peer=self._peer,
            seconds=self.clock.seconds() - self._startedAt,
            messages=self._messages,
            commands=self._commands,
        )

    def timeoutConnection(self) -> None:
        """
        RFC 5321 §4.5.3.2.7: close an idle session with a 421.
        """
        self._log.info("session from {peer} timed out", peer=self._peer)
        self.reply(replies.TIMEOUT)
        self.transport.loseConnection()

    def shutdown(self) -> None:
        """
        The server is stopping: close now unless a message is being
        committed, in which case close right after its reply.
        """
        self._closing = True
        if not self._busy and self._mode != _DATA:
            self.reply(replies.SHUTTING_DOWN)
            self.transport.loseConnection()
        elif self._mode == _DATA and self._data is not None and self._data.writer is not None:
            # Never acknowledged: the client will send it again.
            self.reply(replies.SHUTTING_DOWN)
            self.transport.loseConnection()

    # -- replies ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Send bytes to the client, at once when the socket can take them
        (see L{sendNow}).
        """
        sendNow(self.transport, data)

    def reply(self, reply: Reply) -> None:
        """
        Send one reply with its enhanced status code (a 4xx or 5xx one is
        counted).
        """
        if reply.code >= 400 and self.settings.metrics is not None:
            self.settings.metrics.errorReply(self.settings.listenerName, reply.code, reply.enhanced)
        self.write(b"%d %s\r\n" % (reply.code, reply.line))

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """
        Send a reply composed by Twisted's own code, adding the enhanced
        status code it lacks (RFC 2034 §3: every 2xx/4xx/5xx line).
        """
        lines = message.splitlines() or [b""]
        enhanced = replies.enhancedFor(code).encode("ascii")
        for i, line in enumerate(lines):
            sep = b" " if i == len(lines) - 1 else b"-"
            if code in (220, 221) or code // 100 not in (2, 4, 5) or line[:1].isdigit():
                self.write(b"%d%s%s\r\n" % (code, sep, line))
            else:
                self.write(b"%d%s%s %s\r\n" % (code, sep, enhanced, line))

    def _error(self, reply: Reply) -> None:
        """
        Send an error reply and drop a client that makes too many.
        """
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self._log.info("dropping {peer}: too many errors", peer=self._peer)
            self.reply(replies.TOO_MANY_ERRORS)
            self.transport.loseConnection()
            return
        self.reply(reply)

    # -- input framing ---------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer input and process what can be processed now.
        """
        self.resetTimeout()
        if not self._commands and not self._buffer and isNotSMTP(data):
            return self._drop(replies.NOT_SMTP, "not an SMTP client")
        self._buffer += data
        self._process()

    def _drop(self, reply: Reply, why: str) -> None:
        """
        End a session that does not follow the protocol; any transaction
        in progress is abandoned (nothing of it is stored).
        """
        self._log.info("dropping {peer}: {why}", peer=self._peer, why=why)
        self._abortTransaction()
        self._buffer = b""
        self.reply(reply)
        self.transport.loseConnection()

    def _inSync(self) -> bool:
        """
        A reply the client must wait for has just gone out (RFC 2920
        §3.1): anything already waiting was sent too early, and ends the
        session.

        @return: whether the session goes on.
        """
        if self._buffer and not self.transport.disconnecting:
            self._drop(replies.PIPELINING_VIOLATION, "commands sent before the reply they must wait for")
            return False
        return True

    def _process(self) -> None:
        """
        Run complete commands (or consume body bytes) until input runs out,
        a command is waiting on a Deferred, or the connection is closing.
        """
        while self._buffer and not self._busy and not self.transport.disconnecting:
            if self._mode == _DATA:
                if not self._consumeData():
                    return
                continue
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_AUTH_OCTETS:
                    # Keep only the tail: the line is refused when it ends.
                    self._discardingLine = True
                    self._buffer = b""
                return
            line = self._buffer[: newline + 1]
            self._buffer = self._buffer[newline + 1 :]
            if self._discardingLine:
                self._discardingLine = False
                self._error(replies.LINE_TOO_LONG)
                continue
            self._lineReceived(line)

    def _lineReceived(self, line: bytes) -> None:
        """
        Dispatch one command line (terminator included).
        """
        problem = lineProblem(line)
        if problem is not None:
            self._error(problem)
            return
        text = line[:-2]
        if self.inAuthExchange():
            result = self.authLineReceived(text)
            if isinstance(result, Deferred):
                self._wait(result)
            return
        self._commands += 1
        parts = text.strip().split(None, 1)
        if not parts:
            self._error(replies.SYNTAX_ERROR)
            return
        method = self.lookupMethod(parts[0])
        if method is None:
            self._error(replies.UNKNOWN_COMMAND)
            return
        # RFC 2920 §3.1: these, and every command without PIPELINING, are
        # the last of their group: the client waits for the reply.
        last = not self._esmtp or parts[0].upper().decode("ascii") in LAST_IN_GROUP
        result = method(parts[1] if len(parts) > 1 else b"")
        if isinstance(result, Deferred):
            self._wait(result, last)
        elif last:
            self._inSync()

    def lookupMethod(self, command: bytes):
        """
        @return: the C{do_} method for a command, or C{None}.
        """
        try:
            name = command.decode("ascii").upper()
        except UnicodeDecodeError:
            return None
        if not name.isalpha():
            return None
        if name == "STARTTLS" and not self.canStartTLS:
            return None
        return getattr(self, "do_" + name, None)

    def _wait(self, d: Deferred, last: bool = False) -> None:
        """
        Hold further input until C{d} fires, then carry on.

        @param last: the command must be the last of its group.
        """
        self._busy = True

        def resume(result):
            self._busy = False
            if self._closing and self._mode == _COMMAND:
                self.reply(replies.SHUTTING_DOWN)
                self.transport.loseConnection()
                return None
            if not last or self._inSync():
                self._process()
            return None

        def unexpected(failure):
            self._log.failure("command failed in session with {peer}", failure, peer=self._peer)
            self.reply(replies.LOCAL_ERROR)

        d.addErrback(unexpected)
        d.addCallback(resume)

    # -- commands --------------------------------------------------------

    def _resetTransaction(self) -> None:
        """
        Forget the current mail transaction.
        """
        self._sender: str | None = None
        self._recipients: list[str] = []
        self._acceptedRcpts = 0
        self._declaredSize: int | None = None
        self._data: MessageData | None = None
        # the SPF result of a checked transaction (see policy.inbound)
        self._spf: Any = None

    def _abortTransaction(self) -> None:
        """
        Drop the current transaction and any body already spooled.
        """
        if self._data is not None:
            self._data.abort()
        self._resetTransaction()

    def do_MAIL(self, rest: bytes):
        """
        MAIL FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME].
        """
        if self._heloName is None:
            return self._error(replies.NEED_HELO)
        if self._sender is not None:
            return self._error(replies.NESTED_MAIL)
        if self.portal is not None and self.authenticatedAs is None:
            # RFC 6409 §4.3: submission needs authentication
            return self._error(replies.AUTH_REQUIRED)
        try:
            path, words = splitArgument(rest, b"FROM:")
            sender = parsePath(path, allowNull=True)
            params = parseParameters(words) if self._esmtp else {}
            if words and not self._esmtp:
                raise PathError("parameters need EHLO")
        except PathError:
            return self._error(replies.BAD_SENDER_SYNTAX)
        try:
            declared = declaredSize(params)
        except ReplyError as e:
            return self._error(e.reply)
        return ensureDeferred(self._mail(sender, declared))

    async def _mail(self, sender: str, declared: int | None) -> None:
        """
        Ask the policy about the sender (rate limit, envelope rules, SPF).
        """
        try:
            spf = await self.policy.checkSender(peer=self._peer, sender=sender, declaredSize=declared,
                                                authenticated=self.authenticatedAs, helo=self._heloName or "")
        except ReplyError as e:
            if e.reply.isTemporary:
                self.reply(e.reply)
            else:
                self._error(e.reply)
            return
        if self._sender is not None or self._heloName is None:
            # RSET, EHLO or a nested MAIL came while we checked: not ours
            return
        self._spf = spf
        self._sender = sender
        self._declaredSize = declared
        self._recipients = []
        self.reply(replies.SENDER_OK)

    def do_RCPT(self, rest: bytes):
        """
        RCPT TO:<path>.
        """
        if self._sender is None:
            return self._error(replies.NEED_MAIL)
        try:
            path, words = splitArgument(rest, b"TO:")
            recipient = parsePath(path, allowNull=False)
            params = parseParameters(words)
        except PathError:
            if rest[:3].upper() == b"TO:" and rest[3:].strip().lower() == b"<postmaster>":
                recipient, params = f"postmaster@{self.settings.domains[0]}", {}
            else:
                return self._error(replies.BAD_RECIPIENT_SYNTAX)
        if params:
            return self._error(replies.PARAM_NOT_IMPLEMENTED)
        # Every accepted RCPT counts, a repeated address too.
        if self._acceptedRcpts >= self.settings.maxRecipients:
            # RFC 5321 §4.5.3.1.8: 452 and the client sends the rest later
            return self.reply(replies.TOO_MANY_RECIPIENTS)
        return ensureDeferred(self._rcpt(recipient))

    async def _rcpt(self, recipient: str) -> None:
        """
        Ask the policy about a recipient.
        """
        try:
            account = await self.policy.checkRecipient(
                recipient, self._declaredSize, self.authenticatedAs, self._sender
            )
        except ReplyError as e:
            self._log.info("refused RCPT {recipient} from {peer}: {reply}",
                           recipient=recipient, peer=self._peer, reply=str(e.reply))
            if e.reply.isTemporary:
                self.reply(e.reply)
            else:
                self._error(e.reply)
            return
        address = account.address if account is not None else recipient
        if self._sender is None:
            # RSET or EHLO came while we looked this up.
            return
        self._acceptedRcpts += 1
        if address not in self._recipients:
            self._recipients.append(address)
        self.reply(replies.RECIPIENT_OK)

    def do_DATA(self, rest: bytes) -> None:
        """
        DATA: start the body (RFC 5321 §4.1.1.4).
        """
        if self._sender is None:
            return self._error(replies.NEED_MAIL)
        if not self._recipients:
            return self._error(replies.NEED_RCPT)
        refused = self.policy.checkData()
        if refused is not None:
            # RFC 5321 §4.3.2: 452 is among DATA's replies; no 354 then
            return self.reply(refused)
        self._queueId, writer = self.intake.newMessage()
        self._receivedAt = self.clock.seconds()
        headerFilter = None
        # Mail from outside gets the content scanners' verdict fields: any
        # it brings with it go (see headerfilter).
        scanned = not self.authenticatedAs and self.intake.content is not None
        if self._spf is not None:
            # RFC 7208 §9.1: above the Received field of this hop
            writer.write(self.policy.traceHeader(self._spf, self._peer, self._sender, self._heloName or ""))
            headerFilter = SpoofedResultsFilter(self.policy.isForged, scanned)
        elif scanned:
            headerFilter = SpoofedResultsFilter(None, True)
        writer.write(self._receivedHeader())
        writer.traceBytes = writer.size
        # The header is kept for the From check of authenticated mail and
        # for DMARC.
        checked = bool(self.authenticatedAs) or self._spf is not None
        self._data = MessageData(writer, self.settings.maxMessageBytes, checked, headerFilter, self._backlogged)
        self._mode = _DATA
        self.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    def _receivedHeader(self) -> bytes:
        """
        The Received header of this hop (RFC 5321 §4.4).
        """
        # RFC 3848 protocol types
        protocol = ("ESMTP" if self._esmtp else "SMTP") + ("S" if self.startedTLS else "")
        protocol += "A" if self.authenticatedAs else ""
        return receivedHeader(self._heloName, self._peer, self.settings.hostname, protocol, self._queueId,
                              self._recipients, self._receivedAt)

    def _consumeData(self) -> bool:
        """
        Give buffered body bytes to the message being received.

        @return: C{True} if the end of data was reached (more input may be
            processed), C{False} when more bytes are needed.
        """
        ended, self._buffer = self._data.consume(self._buffer)
        if ended:
            self._mode = _COMMAND
            self._wait(ensureDeferred(self._endOfData()))
        return ended

    def _backlogged(self, drained: Deferred) -> None:
        """
        The spool is behind: stop reading until it has caught up.
        """
        self.transport.pauseProducing()
        drained.addCallback(lambda _: self.transport.resumeProducing())

    async def _endOfData(self) -> None:
        """
        The final dot: make the message durable, then answer.
        """
        data = self._data
        sender, recipients, spf = self._sender, tuple(self._recipients), self._spf
        self._resetTransaction()
        data.finish()
        if data.failure is None and self.authenticatedAs and not data.fromIsOwnedBy(self.authenticatedAs):
            data.fail(replies.FROM_NOT_OWNED)
        failure, writer = data.failure, data.writer
        if failure is not None:
            self._log.info("rejected message {queueId} from {peer}: {reply}",
                           queueId=self._queueId, peer=self._peer, reply=str(failure))
            self.reply(failure)
            return
        envelope = Envelope(sender, recipients, self._heloName or "", self._peer,
                            self._receivedAt, self.authenticatedAs)
        checks = InboundContext(spf, bytes(data.header)) if spf is not None else None
        reply = await self.intake.submit(self._queueId, writer, envelope, checks)
        if reply.code == replies.QUEUED.code:
            self._messages += 1
        if self.settings.metrics is not None:
            self.settings.metrics.messageAnswered(self.settings.listenerName, reply, writer.size)
        self.reply(reply)
