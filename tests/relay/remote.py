# -*- test-case-name: tests.relay.test_sender -*-
"""
A scriptable remote mail exchanger for relay tests: a small SMTP server on
loopback whose replies the test chooses (per recipient, per DATA), with
STARTTLS and AUTH PLAIN/LOGIN when asked, recording what it received.

It is written from RFC 5321 directly rather than on Twisted's server, so a
test can make it say anything, 451 at the end of data included.
"""

import base64
from typing import Any, Callable

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


@attrs.define
class Received:
    """
    One message the remote accepted.

    @ivar sender: MAIL FROM.
    @ivar recipients: the accepted recipients.
    @ivar data: the message as sent (CRLF, dot stuffing removed).
    @ivar tls: whether the session was encrypted.
    @ivar mailParameters: the MAIL FROM parameters.
    @ivar authenticated: the AUTH user, if any.
    """

    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    mailParameters: bytes
    authenticated: str | None


@attrs.define
class Script:
    """
    What the remote answers.

    @ivar rcpt: per recipient address, a list of replies (C{b"550 5.1.1
        No such user"}); each session takes the next one, the last repeats.
        Recipients not listed get 250.
    @ivar data: replies to the end of data, one per transaction; the last
        repeats; empty means 250.
    @ivar greeting: the banner line.
    @ivar everyRcpt: when set, the reply to every RCPT (C{b"550 5.1.1 No
        such user"}), whatever C{rcpt} says: a remote that accepts nobody.
    @ivar holdRcpt: when set, RCPT replies wait until this Deferred fires.
    @ivar credentials: C{(user, password)} to offer AUTH with.
    """

    rcpt: dict[str, list[bytes]] = attrs.field(factory=dict)
    data: list[bytes] = attrs.field(factory=list)
    greeting: bytes = b"220 remote.test ESMTP ready"
    everyRcpt: bytes | None = None
    holdRcpt: Deferred | None = None
    credentials: tuple[str, str] | None = None


def _take(replies: list[bytes], default: bytes) -> bytes:
    """
    The next reply of a list whose last element repeats.
    """
    if not replies:
        return default
    return replies.pop(0) if len(replies) > 1 else replies[0]


class RemoteSMTP(LineReceiver):
    """
    The remote's side of one session.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def connectionMade(self) -> None:
        """
        Greet.
        """
        self.factory.connections.append(self)
        self._reset()
        self.tls = False
        self.user = None
        self._dataLines: list[bytes] | None = None
        self._authStep: Callable[[bytes], None] | None = None
        self.sendLine(self.factory.script.greeting)

    def connectionLost(self, reason: Any) -> None:
        """
        Note the end of the session.
        """
        self.factory.connections.remove(self)
        self.factory.closed.append(self)
        waiters, self.factory.closeWaiters = self.factory.closeWaiters, []
        for d in waiters:
            d.callback(None)

    def _reset(self) -> None:
        """
        Forget the transaction.
        """
        self.sender = None
        self.parameters = b""
        self.recipients: list[str] = []

    def lineReceived(self, line: bytes) -> None:
        """
        One command, or one line of data.
        """
        if self._dataLines is not None:
            if line == b".":
                self._endData()
            else:
                self._dataLines.append(line[1:] if line.startswith(b".") else line)
            return
        if self._authStep is not None:
            step, self._authStep = self._authStep, None
            step(line)
            return
        self.factory.commands.append(line)
        verb, _, argument = line.partition(b" ")
        handler = getattr(self, "smtp_" + verb.upper().decode("ascii", "replace"), None)
        if handler is None:
            self.sendLine(b"500 5.5.2 Command unrecognized")
        else:
            handler(argument)

    def smtp_EHLO(self, argument: bytes) -> None:
        """
        Offer our extensions.
        """
        self._reset()
        lines = [b"remote.test", b"SIZE 52428800", b"8BITMIME"]
        if self.factory.tlsContext is not None and not self.tls:
            lines.append(b"STARTTLS")
        if self.factory.script.credentials is not None:
            lines.append(b"AUTH PLAIN LOGIN")
        for line in lines[:-1]:
            self.sendLine(b"250-" + line)
        self.sendLine(b"250 " + lines[-1])

    def smtp_HELO(self, argument: bytes) -> None:
        """
        Plain SMTP.
        """
        self._reset()
        self.sendLine(b"250 remote.test")

    def smtp_STARTTLS(self, argument: bytes) -> None:
        """
        RFC 3207.
        """
        if self.factory.tlsContext is None or self.tls:
            self.sendLine(b"502 5.5.1 No TLS")
            return
        self.sendLine(b"220 2.0.0 Go ahead")
        self.transport.startTLS(self.factory.tlsContext)
        self.tls = True
        self._reset()

    def smtp_AUTH(self, argument: bytes) -> None:
        """
        AUTH PLAIN and LOGIN (RFC 4954), checked against the script.
        """
        mechanism, _, initial = argument.partition(b" ")
        if mechanism.upper() == b"PLAIN":
            if initial:
                self._checkPlain(initial)
            else:
                self.sendLine(b"334 ")
                self._authStep = self._checkPlain
        elif mechanism.upper() == b"LOGIN":
            self.sendLine(b"334 " + base64.b64encode(b"Username:"))
            self._authStep = self._loginUser
        else:
            self.sendLine(b"504 5.5.4 Unrecognized authentication type")

    def _checkPlain(self, line: bytes) -> None:
        """
        PLAIN: authzid NUL authcid NUL password.
        """
        parts = base64.b64decode(line).split(b"\0")
        self._authenticate(parts[1].decode(), parts[2].decode())

    def _loginUser(self, line: bytes) -> None:
        """
        LOGIN, step 2.
        """
        user = base64.b64decode(line).decode()
        self.sendLine(b"334 " + base64.b64encode(b"Password:"))
        self._authStep = lambda reply: self._authenticate(user, base64.b64decode(reply).decode())

    def _authenticate(self, user: str, password: str) -> None:
        """
        Compare with the script's credentials.
        """
        if (user, password) == self.factory.script.credentials:
            self.user = user
            self.sendLine(b"235 2.7.0 Authentication successful")
        else:
            self.sendLine(b"535 5.7.8 Authentication credentials invalid")

    def smtp_MAIL(self, argument: bytes) -> None:
        """
        MAIL FROM:<address> [parameters].
        """
        path, _, parameters = argument[len(b"FROM:"):].partition(b" ")
        self.sender = path.strip(b"<>").decode()
        self.parameters = parameters
        self.recipients = []
        self.sendLine(b"250 2.1.0 OK")

    def smtp_RCPT(self, argument: bytes) -> None:
        """
        RCPT TO:<address>: the scripted reply.
        """
        address = argument[len(b"TO:"):].strip().strip(b"<>").decode()
        reply = self.factory.script.everyRcpt or _take(self.factory.script.rcpt.get(address, []), b"250 2.1.5 OK")
        if reply.startswith(b"2"):
            self.recipients.append(address)
        hold = self.factory.script.holdRcpt
        if hold is not None:
            hold.addCallback(lambda _: self.sendLine(reply) if self.transport.connected else None)
        else:
            self.sendLine(reply)

    def smtp_DATA(self, argument: bytes) -> None:
        """
        Start the body.
        """
        if not self.recipients:
            self.sendLine(b"554 5.5.1 No valid recipients")
            return
        self._dataLines = []
        self.sendLine(b"354 Go ahead")

    def _endData(self) -> None:
        """
        The final dot: the scripted reply, and a record when it is 250.
        """
        data = b"".join(line + b"\r\n" for line in self._dataLines)
        self._dataLines = None
        reply = _take(self.factory.script.data, b"250 2.0.0 Queued")
        if reply.startswith(b"2"):
            self.factory.received.append(Received(self.sender, list(self.recipients), data, self.tls,
                                                  self.parameters, self.user))
        self._reset()
        self.sendLine(reply)

    def smtp_RSET(self, argument: bytes) -> None:
        """
        Abandon the transaction.
        """
        self._reset()
        self.sendLine(b"250 2.0.0 OK")

    def smtp_NOOP(self, argument: bytes) -> None:
        """
        Nothing.
        """
        self.sendLine(b"250 2.0.0 OK")

    def smtp_QUIT(self, argument: bytes) -> None:
        """
        Goodbye.
        """
        self.sendLine(b"221 2.0.0 Bye")
        self.transport.loseConnection()


class RemoteMX(Factory):
    """
    The remote exchanger: its script, what it received, its sessions.
    """

    protocol = RemoteSMTP

    def __init__(self, script: Script | None = None, tlsContext: Any = None) -> None:
        self.script = script or Script()
        self.tlsContext = tlsContext
        self.received: list[Received] = []
        self.commands: list[bytes] = []
        self.connections: list[RemoteSMTP] = []
        self.closed: list[RemoteSMTP] = []
        self.closeWaiters: list[Deferred] = []
        self.port = None

    def whenIdle(self) -> Deferred:
        """
        @return: a Deferred firing once no session is open.
        """
        if not self.connections:
            d = Deferred()
            d.callback(None)
            return d
        d = Deferred()
        self.closeWaiters.append(d)
        return d.addCallback(lambda _: self.whenIdle())


async def startRemote(testCase: Any, script: Script | None = None, tlsContext: Any = None) -> RemoteMX:
    """
    Listen on a free loopback port; stop (and wait for sessions to close)
    when the test ends.

    @return: the L{RemoteMX}, its C{port} the bound port number.
    """
    remote = RemoteMX(script, tlsContext)
    listening = reactor.listenTCP(0, remote, interface="127.0.0.1")
    remote.port = listening.getHost().port

    async def stop() -> None:
        await listening.stopListening()
        for connection in list(remote.connections):
            connection.transport.abortConnection()
        await remote.whenIdle()

    testCase.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return remote


def selfSignedContext(hostname: str = "mx.remote.test") -> Any:
    """
    @return: a server TLS context with a self-signed certificate.
    """
    import datetime

    from twisted.internet.ssl import PrivateCertificate

    from qutemail.tlsserver import generateSelfSigned

    cert, key = generateSelfSigned(hostname, datetime.datetime.now(datetime.timezone.utc))
    return PrivateCertificate.loadPEM(cert + key).options()
