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
  - DATA is framed in bulk: only CRLF.CRLF ends it (no bare-LF smuggling),
    bare CR or LF fail the message, dot-stuffing is undone, and the body is
    streamed into a L{SpoolWriter} with its size capped (RFC 1870).
  - Replies all come from L{qutemail.replies} and carry enhanced status codes
    (RFC 2034); a temporary failure of ours is a 4xx, never Twisted's 550.
  - 250 after DATA only once the intake has the message durable in the
    journal: the session asks the intake
    (L{qutemail.pipeline.intake.Intake}) for the reply, and the policy
    (L{qutemail.policy.session.SessionPolicy}) for every verdict before it.
"""

import email.parser
import email.policy
import email.utils
import re
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet import tcp
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail.smtp import ESMTP

from qutemail import replies
from qutemail.listener.auth import MECHANISMS, AuthMixin
from qutemail.listener.headerfilter import SpoofedResultsFilter
from qutemail.listener.address import PathError, parseParameters, parsePath, splitArgument
from qutemail.message import Envelope
from qutemail.pipeline.intake import InboundContext
from qutemail.pipeline.spool import SpoolWriter
from qutemail.replies import Reply, ReplyError

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF;
# RFC 1870 §3 adds 26 to MAIL for SIZE, RFC 6152 §3 16 for BODY.
MAX_COMMAND_OCTETS = 512
MAX_MAIL_OCTETS = 512 + 26 + 16
# RFC 4954 §4: AUTH lines (command and responses) may be 12288 octets.
MAX_AUTH_OCTETS = 12288
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_TEXT_LINE_OCTETS = 1000
# A line (after the first of a chunk) longer than the text-line limit.
_LONG_LINE = re.compile(rb"\n[^\n]{%d}" % (MAX_TEXT_LINE_OCTETS - 1,))
# Postfix's smtpd_hard_error_limit: a client that keeps erring is dropped.
MAX_ERRORS = 20
# Pause reading while more than this much body waits to be written.
MAX_PENDING_BYTES = 4 * 1024 * 1024
# The most header kept for the From check of authenticated submissions.
MAX_HEADER_BYTES = 64 * 1024

_COMMAND, _DATA = "COMMAND", "DATA"


def setNoDelay(transport: Any) -> None:
    """
    Turn on C{TCP_NODELAY} for a connection, under TLS too.
    """
    while transport is not None:
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(True)
            return
        transport = getattr(transport, "transport", None)


@attrs.frozen
class SessionSettings:
    """
    What a listener's sessions are told about themselves.

    @ivar hostname: this server's name, for the greeting and Received.
    @ivar domains: the local domains (C{postmaster} goes to the first).
    @ivar maxMessageBytes: the SIZE limit.
    @ivar maxRecipients: recipients per transaction.
    @ivar idleTimeoutSeconds: idle time before a 421.
    @ivar tlsContext: the TLS context factory for STARTTLS, or C{None} to
        offer no TLS.
    @ivar implicitTLS: the listener wraps every connection in TLS (465).
    @ivar portal: for a submission listener, the cred portal AUTH logs in
        through (MAIL then needs AUTH); C{None} on the MTA port.
    @ivar throttle: the L{qutemail.policy.throttle.AuthThrottle}.
    @ivar connectionsPerIp: concurrent sessions per client IP; 0 for no
        limit.
    """

    hostname: str
    domains: tuple[str, ...]
    maxMessageBytes: int
    maxRecipients: int
    idleTimeoutSeconds: float
    tlsContext: Any = None
    implicitTLS: bool = False
    portal: Any = None
    throttle: Any = None
    connectionsPerIp: int = 0


class SMTPServer(AuthMixin, ESMTP):
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
        if not self.factory.admit(self._peer):
            self._log.info("refused {peer}: too many connections", peer=self._peer)
            self.reply(replies.TOO_MANY_CONNECTIONS)
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
        self.factory.release(self._peer)
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
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
        elif self._mode == _DATA and self._writer is not None:
            # Never acknowledged: the client will send it again.
            self.reply(replies.SHUTTING_DOWN)
            self.transport.loseConnection()

    # -- replies ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Send bytes to the client.

        Twisted's TCP transport holds every write until the reactor's next
        turn: an epoll_ctl to watch for writability, a poll, the send, and
        another epoll_ctl.  A reply is a few dozen bytes and the socket
        buffer is nearly always empty, so on a plain TCP connection with
        nothing already queued the send is tried at once, and only what did
        not fit goes to the transport.  Under TLS, or with anything queued,
        everything goes through the transport.  (This reads the transport's
        buffer attributes, which are Twisted internals: setup.cfg pins the
        Twisted series; tests over real sockets cover this path.)
        """
        transport = self.transport
        # Only a plain TCP connection: a TLS wrapper (port 465) forwards
        # attribute lookups to the socket beneath it, and a direct send
        # there would bypass the encryption.
        sock = transport.socket if isinstance(transport, tcp.Connection) else None
        if (
            sock is not None
            and transport.TLS is False
            and transport.connected
            and not transport.disconnecting
            and not transport._tempDataBuffer
            and len(transport.dataBuffer) == transport.offset
        ):
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # Let the transport meet the error and close properly.
                sent = 0
            data = data[sent:]
            if not data:
                return
        transport.write(data)

    def reply(self, reply: Reply) -> None:
        """
        Send one reply with its enhanced status code.
        """
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
        self._buffer += data
        self._process()

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
        if self.inAuthExchange():
            result = self.authLineReceived(line.rstrip(b"\r\n"))
            if isinstance(result, Deferred):
                self._wait(result)
            return
        self._commands += 1
        verb = line[:4].upper()
        limit = {b"MAIL": MAX_MAIL_OCTETS, b"AUTH": MAX_AUTH_OCTETS}.get(verb, MAX_COMMAND_OCTETS)
        if len(line) > limit:
            self._error(replies.LINE_TOO_LONG)
            return
        text = line.rstrip(b"\r\n")
        if b"\0" in text or b"\r" in text:
            self._error(replies.SYNTAX_ERROR)
            return
        parts = text.strip().split(None, 1)
        if not parts:
            self._error(replies.SYNTAX_ERROR)
            return
        method = self.lookupMethod(parts[0])
        if method is None:
            self._error(replies.UNKNOWN_COMMAND)
            return
        result = method(parts[1] if len(parts) > 1 else b"")
        if isinstance(result, Deferred):
            self._wait(result)

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

    def _wait(self, d: Deferred) -> None:
        """
        Hold further input until C{d} fires, then carry on.
        """
        self._busy = True

        def resume(result):
            self._busy = False
            if self._closing and self._mode == _COMMAND:
                self.reply(replies.SHUTTING_DOWN)
                self.transport.loseConnection()
                return None
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
        self._declaredSize: int | None = None
        self._writer: SpoolWriter | None = None
        # the SPF result of a checked transaction (see policy.inbound)
        self._spf: Any = None
        self._filter: SpoofedResultsFilter | None = None

    def extensions(self) -> dict:
        """
        The EHLO keywords (RFC 5321 §4.1.1.1).
        """
        ext: dict[bytes, list[bytes] | None] = {
            b"PIPELINING": None,
            b"SIZE": [b"%d" % self.settings.maxMessageBytes],
            b"8BITMIME": None,
            b"ENHANCEDSTATUSCODES": None,
        }
        if self.canStartTLS and not self.startedTLS:
            ext[b"STARTTLS"] = None
        if self.authOffered():
            ext[b"AUTH"] = list(MECHANISMS)
        return ext

    def do_STARTTLS(self, rest: bytes) -> None:
        """
        STARTTLS (RFC 3207).
        """
        if rest.strip():
            return self._error(replies.BAD_ARGUMENTS.withText("STARTTLS takes no parameters"))
        if self.startedTLS:
            return self._error(replies.BAD_SEQUENCE.withText("TLS already active"))
        if self._heloName is None:
            return self._error(replies.NEED_HELO)
        # CVE-2011-0411: whatever the client pipelined after STARTTLS came in
        # the clear and must never run once the session is protected.
        self._buffer = b""
        # RFC 3207 §4.2: the server forgets everything it learnt before TLS.
        self._heloName = None
        self._esmtp = False
        self._abortTransaction()
        self.reply(replies.GO_AHEAD_TLS)
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    def do_EHLO(self, rest: bytes) -> None:
        """
        EHLO: greet and list extensions; resets any transaction.
        """
        if not rest.strip():
            self._error(replies.BAD_ARGUMENTS.withText("EHLO needs a domain or address literal"))
            return
        self._heloName = rest.strip().decode("ascii", "replace")
        self._esmtp = True
        self._abortTransaction()
        lines = [self.host + b" Hello " + self._peer.encode("ascii")]
        for keyword, args in self.extensions().items():
            lines.append(keyword + (b" " + b" ".join(args) if args else b""))
        # One write for the whole multi-line reply: one syscall, one segment.
        self.write(b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n")

    def do_HELO(self, rest: bytes) -> None:
        """
        HELO: greet; resets any transaction.
        """
        if not rest.strip():
            self._error(replies.BAD_ARGUMENTS.withText("HELO needs a domain"))
            return
        self._heloName = rest.strip().decode("ascii", "replace")
        self._esmtp = False
        self._abortTransaction()
        self.write(b"250 " + self.host + b"\r\n")

    def do_NOOP(self, rest: bytes) -> None:
        """
        NOOP (RFC 5321 §4.1.1.9).
        """
        self.reply(replies.NOOP)

    def do_RSET(self, rest: bytes) -> None:
        """
        RSET: abandon the transaction (RFC 5321 §4.1.1.5).
        """
        self._abortTransaction()
        self.reply(replies.RESET)

    def do_QUIT(self, rest: bytes) -> None:
        """
        QUIT: say goodbye and close.
        """
        self.reply(replies.BYE)
        self.transport.loseConnection()

    def do_VRFY(self, rest: bytes) -> None:
        """
        VRFY: never disclose accounts (RFC 5321 §7.3).
        """
        self.reply(replies.VRFY_CANNOT)

    def do_HELP(self, rest: bytes) -> None:
        """
        HELP.
        """
        self.reply(replies.HELP)

    def _abortTransaction(self) -> None:
        """
        Drop the current transaction and any body already spooled.
        """
        if self._writer is not None:
            self._writer.abort()
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
        declared = None
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return self._error(replies.BAD_ARGUMENTS)
                declared = int(value)
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return self._error(replies.BAD_BODY_PARAM)
            elif key == "AUTH":
                pass  # RFC 4954 §5: accepted; we trust only our own AUTH
            else:
                return self._error(replies.PARAM_NOT_IMPLEMENTED)
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
        if len(self._recipients) >= self.settings.maxRecipients:
            # RFC 5321 §4.5.3.1.8: 452 and the client sends the rest later
            return self.reply(replies.TOO_MANY_RECIPIENTS)
        return ensureDeferred(self._rcpt(recipient))

    async def _rcpt(self, recipient: str) -> None:
        """
        Ask the policy about a recipient.
        """
        try:
            account = await self.policy.checkRecipient(
                recipient, self._declaredSize, self.authenticatedAs
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
        self._queueId, self._writer = self.intake.newMessage()
        self._receivedAt = self.clock.seconds()
        if self._spf is not None:
            # RFC 7208 §9.1: above the Received field of this hop
            self._writer.write(self.policy.traceHeader(self._spf, self._peer, self._sender, self._heloName or ""))
            self._filter = SpoofedResultsFilter(self.policy.isForged)
        self._writer.write(self._receivedHeader())
        self._dataFailure: Reply | None = None
        self._dataSize = 0
        self._midLine = False
        # The header section, kept for the From check of authenticated mail
        # and for DMARC.
        checked = self.authenticatedAs or self._spf is not None
        self._header: bytearray | None = bytearray() if checked else None
        self._mode = _DATA
        self.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    def _receivedHeader(self) -> bytes:
        """
        The Received header (RFC 5321 §4.4), LF line ends.
        """
        # RFC 3848 protocol types
        protocol = "ESMTP" if self._esmtp else "SMTP"
        if self.startedTLS:
            protocol += "S"
        if self.authenticatedAs:
            protocol += "A"
        forClause = f"\n\tfor <{self._recipients[0]}>" if len(self._recipients) == 1 else ""
        date = email.utils.formatdate(self._receivedAt)
        text = (
            f"Received: from {self._heloName} ([{self._peer}])\n"
            f"\tby {self.settings.hostname} (QutEmail) with {protocol} id {self._queueId}"
            f"{forClause};\n\t{date}\n"
        )
        return text.encode("utf-8", "replace")

    def _consumeData(self) -> bool:
        """
        Consume buffered body bytes.  The buffer always starts at the start
        of a line.

        @return: C{True} if the end of data was reached (more input may be
            processed), C{False} when more bytes are needed.
        """
        buffer = self._buffer
        if self._midLine:
            # The rest of an over-long line: skip to its end.
            found = buffer.find(b"\r\n")
            if found < 0:
                self._buffer = buffer[-1:] if buffer.endswith(b"\r") else b""
                return False
            buffer = buffer[found + 2 :]
            self._midLine = False
        if buffer.startswith(b".\r\n"):
            end, rest = 0, buffer[3:]
        else:
            found = buffer.find(b"\r\n.\r\n")
            if found >= 0:
                end, rest = found + 2, buffer[found + 5 :]
            else:
                last = buffer.rfind(b"\r\n")
                if last < 0:
                    if len(buffer) > MAX_TEXT_LINE_OCTETS:
                        self._failData(replies.BAD_DATA_LINE)
                        self._midLine = True
                        self._buffer = buffer[-1:] if buffer.endswith(b"\r") else b""
                    else:
                        self._buffer = buffer
                    return False
                self._bodyChunk(buffer[: last + 2])
                self._buffer = buffer[last + 2 :]
                return False
        self._bodyChunk(buffer[:end])
        self._buffer = rest
        self._mode = _COMMAND
        self._wait(ensureDeferred(self._endOfData()))
        return True

    def _failData(self, reply: Reply) -> None:
        """
        Fail the message being received; the rest of it is discarded.
        """
        if self._dataFailure is None:
            self._dataFailure = reply
            if self._writer is not None:
                self._writer.abort()
                self._writer = None

    def _bodyChunk(self, chunk: bytes) -> None:
        """
        Check, unstuff and spool complete lines of body.

        @param chunk: whole lines, CRLF-terminated, still dot-stuffed.
        """
        if not chunk:
            return
        if self._dataFailure is not None:
            return
        # Stored with LF line ends; every check below runs in C over the
        # whole chunk rather than line by line in Python.
        lines = chunk.replace(b"\r\n", b"\n")
        crlf = len(chunk) - len(lines)
        if b"\r" in lines or lines.count(b"\n") != crlf:
            return self._failData(replies.BARE_LINEFEED)
        if len(lines) > MAX_TEXT_LINE_OCTETS - 1 and (
            lines.find(b"\n") > MAX_TEXT_LINE_OCTETS - 2 or _LONG_LINE.search(lines)
        ):
            return self._failData(replies.BAD_DATA_LINE)
        # RFC 5321 §4.5.2: remove the first dot of every line starting with one
        if lines[:1] == b".":
            lines = lines[1:]
        lines = lines.replace(b"\n.", b"\n")
        if self._header is not None:
            self._keepHeader(lines)
        # RFC 1870 counts the message as sent, with CRLF line ends
        self._dataSize += len(lines) + crlf
        if self._dataSize > self.settings.maxMessageBytes:
            return self._failData(replies.TOO_BIG)
        if self._filter is not None:
            lines = self._filter.feed(lines)
        self._writer.write(lines)
        if self._writer.pendingBytes > MAX_PENDING_BYTES:
            self.transport.pauseProducing()
            self._writer.drained().addCallback(lambda _: self.transport.resumeProducing())

    def _keepHeader(self, lines: bytes) -> None:
        """
        Keep the header section (up to its blank line, at most 64 KiB) of
        an authenticated submission.
        """
        header = self._header
        if header.endswith(b"\n\n") or header == b"\n" or len(header) >= MAX_HEADER_BYTES:
            return
        header += lines[: MAX_HEADER_BYTES - len(header)]
        end = header.find(b"\n\n")
        if header.startswith(b"\n"):
            del header[1:]
        elif end >= 0:
            del header[end + 2 :]

    def _fromIsOwned(self) -> bool:
        """
        Whether every C{From:} address is the authenticated user's.
        """
        message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(bytes(self._header))
        addresses = [a for _, a in email.utils.getaddresses(message.get_all("From", []))]
        return all(a.lower() == self.authenticatedAs for a in addresses)

    async def _endOfData(self) -> None:
        """
        The final dot: make the message durable, then answer.
        """
        writer, self._writer = self._writer, None
        failure = self._dataFailure
        sender, recipients = self._sender, tuple(self._recipients)
        spf, headerFilter = self._spf, self._filter
        self._resetTransaction()
        if failure is None and headerFilter is not None:
            writer.write(headerFilter.finish())
        if failure is None and self.authenticatedAs and not self._fromIsOwned():
            failure = replies.FROM_NOT_OWNED
            writer.abort()
        if failure is not None:
            self._log.info("rejected message {queueId} from {peer}: {reply}",
                           queueId=self._queueId, peer=self._peer, reply=str(failure))
            self.reply(failure)
            return
        envelope = Envelope(sender, recipients, self._heloName or "", self._peer,
                            self._receivedAt, self.authenticatedAs)
        checks = InboundContext(spf, bytes(self._header)) if spf is not None else None
        reply = await self.intake.submit(self._queueId, writer, envelope, checks)
        if reply.code == replies.QUEUED.code:
            self._messages += 1
        self.reply(reply)


class SMTPServerFactory(ServerFactory):
    """
    Builds L{SMTPServer} sessions for one listener, and counts them.
    """

    def __init__(self, *, intake: Any, policy: Any, settings: SessionSettings, clock: Any) -> None:
        """
        @param intake: the L{qutemail.pipeline.intake.Intake}.
        @param policy: the listener's L{qutemail.policy.session.SessionPolicy}.
        @param settings: the listener's L{SessionSettings}.
        @param clock: an C{IReactorTime}; the sessions' timeouts use it.
        """
        self.intake = intake
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self._connections: dict[str, int] = {}
        self.sessions: set[SMTPServer] = set()

    def admit(self, ip: str) -> bool:
        """
        Count a new session from C{ip}, unless it has too many already.

        @return: whether it is admitted.
        """
        count = self._connections.get(ip, 0)
        if self.settings.connectionsPerIp and count >= self.settings.connectionsPerIp:
            return False
        self._connections[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """
        A session from C{ip} ended.
        """
        count = self._connections.get(ip, 0) - 1
        if count > 0:
            self._connections[ip] = count
        else:
            self._connections.pop(ip, None)

    def buildProtocol(self, addr) -> SMTPServer:
        """
        Make a session whose timeouts run on our clock.
        """
        proto = SMTPServer(self.intake, self.policy, self.settings, self.clock)
        proto.factory = self
        proto.callLater = self.clock.callLater
        return proto

    def shutdown(self) -> None:
        """
        Tell every session the server is stopping.
        """
        for session in list(self.sessions):
            session.shutdown()
