# -*- test-case-name: tests.relay.test_sender -*-
"""
The relay client: one ESMTP session per destination domain of a message,
carrying all of that domain's recipients, the body streamed from disk.

L{RelayClient} is Twisted's C{ESMTPClient} with the parts an MTA needs that
the stock class lacks: C{SIZE} and C{BODY=8BITMIME} on MAIL FROM, dot
stuffing that holds across read chunks (Twisted's C{transformChunk} misses a
dot at the start of a chunk), a reply per recipient, and an idle timeout on
the injected clock.  L{Relay} picks the hosts (the domain's exchangers in
preference order, or the smarthost), applies the TLS policy and turns what
happened into one L{Reply} per recipient: 2xx done, 4xx try later, 5xx
bounce.  It only sends; the queue decides what follows.
"""

import re
from typing import Any, Callable

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail._cred import CramMD5ClientAuthenticator, LOGINAuthenticator
from twisted.python.failure import Failure

from qutemail.tlsclient import VerifyingClientTLS
from qutemail.relay.mtasts import applyPolicy
from qutemail.relay.tlsrpt import HOST_MISMATCH, STARTTLS_NOT_SUPPORTED, VALIDATION_FAILURE
from qutemail.relay.mx import DNSLookupError
from qutemail.replies import (
    CONNECTION_LOST,
    NO_ANSWER,
    SMARTHOST_AUTH_REFUSED,
    TLS_NOT_OFFERED,
    TLS_NOT_VERIFIED,
    Reply,
)

# RFC 5321 §4.5.3.2: the shortest of the recommended per-phase timeouts is
# 2 minutes, the longest 10; one idle timeout reset by every reply and
# every chunk sent covers them all.
DEFAULT_TIMEOUT_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 30.0
# Try at most this many addresses for one domain in one attempt.
MAX_DESTINATIONS = 6
_ENHANCED = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})\s*")


def remoteReply(code: int, response: bytes) -> Reply:
    """
    Turn a remote server's reply into a L{Reply}.

    @param code: the reply code.
    @param response: the text, lines joined by LF, maybe with an enhanced
        code (RFC 2034) first.
    @return: the reply, its enhanced code taken from the text when it
        matches the code's class, else C{X.0.0}.
    """
    lines = [line.strip() for line in response.split(b"\n") if line.strip()]
    enhanced = f"{code // 100}.0.0"
    texts = []
    for number, line in enumerate(lines):
        match = _ENHANCED.match(line)
        if match and int(match.group(1)) == code // 100:
            if number == 0:
                enhanced = match.group(0).strip().decode("ascii")
            line = line[match.end():]
        texts.append(line.decode("ascii", "replace"))
    text = " ".join(texts)[:300] or "(no text)"
    if not 200 <= code < 600:
        return CONNECTION_LOST.withText(f"Unexpected reply {code} {text}")
    return Reply(code, enhanced, text)


@attrs.frozen
class Destination:
    """
    One address to try.

    @ivar host: the host name, for TLS verification and logs.
    @ivar address: the IP address (or a name the reactor resolves).
    @ivar port: the TCP port.
    """

    host: str
    address: str
    port: int


class SessionFailed(Exception):
    """
    A session ended without a reply for each recipient.

    @ivar reply: what to record for the recipients.
    @ivar tryNext: whether another host may do better (nothing was
        transacted on this one).
    @ivar tlsFailed: the TLS handshake failed.
    @ivar tlsResult: for a TLS failure, its RFC 8460 result type (for
        the TLS reports), else C{""}.
    """

    def __init__(self, reply: Reply, tryNext: bool = True, tlsFailed: bool = False, tlsResult: str = "") -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.tryNext = tryNext
        self.tlsFailed = tlsFailed
        self.tlsResult = tlsResult


class _BodyReader:
    """
    A file-like object reading a prefix (the DKIM-Signature field), then a
    file, for C{FileSender}.
    """

    def __init__(self, prefix: bytes, body: Any) -> None:
        self._prefix = prefix
        self._body = body

    def read(self, size: int) -> bytes:
        """
        @return: up to C{size} bytes.
        """
        if self._prefix:
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return self._body.read(size)

    def close(self) -> None:
        """
        Close the body file.
        """
        self._body.close()


class RelayClient(smtp.ESMTPClient):
    """
    Sends one message to some recipients over one connection.
    """

    heloFallback = True
    debug = True

    def __init__(self, *, identity: str, context: Any, requireTLS: bool, username: bytes | None,
                 password: bytes | None, sender: str, recipients: list[str], body: Callable[[], Any],
                 sizeBytes: int, prefix: bytes, result: Deferred, timeoutSeconds: float) -> None:
        smtp.ESMTPClient.__init__(self, password, context, identity, logsize=10)
        self.requireTransportSecurity = requireTLS
        self.requireAuthentication = password is not None
        if username is not None:
            # Strongest first; PLAIN only as a last resort, always under TLS.
            self.registerAuthenticator(CramMD5ClientAuthenticator(username))
            self.registerAuthenticator(LOGINAuthenticator(username))
            self.registerAuthenticator(smtp.PLAINAuthenticator(username))
        self.timeout = timeoutSeconds
        self._sender = sender
        self._recipients = recipients
        self._openBody = body
        self._sizeBytes = sizeBytes
        self._prefix = prefix
        self._result = result
        self._extensions: dict[bytes, bytes | None] = {}
        self._mailSent = False
        self._atLineStart = True
        self._bodyFile = None

    def _finish(self, outcome: Any) -> None:
        """
        Fire the result once.
        """
        if self._result is None:
            return
        result, self._result = self._result, None
        if isinstance(outcome, SessionFailed):
            result.errback(Failure(outcome))
        else:
            result.callback(outcome)

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        """
        Remember the extensions the server offers.
        """
        self._extensions = {}
        for line in resp.splitlines():
            keyword, _, value = line.partition(b" ")
            self._extensions[keyword.upper()] = value or None
        smtp.ESMTPClient.esmtpState_serverConfig(self, code, resp)

    def getMailFrom(self) -> str | None:
        """
        The sender, for the one transaction of this session.
        """
        if self._mailSent:
            return None
        self._mailSent = True
        return self._sender

    def getMailTo(self) -> list[str]:
        """
        The recipients, in order.
        """
        return self._recipients

    def getMailData(self) -> _BodyReader:
        """
        The DKIM-Signature field, then the stored body.
        """
        self._bodyFile = _BodyReader(self._prefix, self._openBody())
        return self._bodyFile

    def smtpState_from(self, code: int, resp: bytes) -> None:
        """
        MAIL FROM with SIZE (RFC 1870) and BODY=8BITMIME (RFC 6152) when the
        server offers them.
        """
        self._from = self.getMailFrom()
        self._failresponse = self.smtpTransferFailed
        if self._from is None:
            self._disconnectFromServer()
            return
        parameters = b""
        if b"SIZE" in self._extensions:
            parameters += b" SIZE=%d" % (self._sizeBytes + len(self._prefix))
        if b"8BITMIME" in self._extensions:
            parameters += b" BODY=8BITMIME"
        self.sendLine(b"MAIL FROM:" + smtp.quoteaddr(self._from) + parameters)
        self._expected = [250]
        self._okresponse = self.smtpState_to

    def transformChunk(self, chunk: bytes) -> bytes:
        """
        LF to CRLF and dot stuffing (RFC 5321 §4.5.2), remembering across
        chunks whether the next byte starts a line.
        """
        self.resetTimeout()
        if not chunk:
            return chunk
        data = chunk.replace(b"\n", b"\r\n")
        if self._atLineStart and data[:1] == b".":
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._atLineStart = data.endswith(b"\n")
        return data

    def smtpState_toOrData(self, code: int, resp: bytes) -> None:
        """
        Record the reply to the last RCPT and send the next one; after the
        last, DATA if the server accepted anyone, else end the session with
        each recipient's own reply and QUIT.

        Twisted's version, when nobody was accepted, calls
        C{smtpState_msgSent} with the last RCPT's code and the C{str}
        C{"No recipients accepted"} in place of the server's bytes, which
        L{sentMail} cannot read, and the last recipient's reply would stand
        for all of them.
        """
        if self.lastAddress is not None:
            self.toAddressesResult.append((self.lastAddress, code, resp))
            if code in smtp.SUCCESS:
                self.successAddresses.append(self.lastAddress)
        self.lastAddress = next(self.toAddresses, None)
        if self.lastAddress is not None:
            self.sendLine(b"RCPT TO:" + smtp.quoteaddr(self.lastAddress))
        elif self.successAddresses:
            self.sendLine(b"DATA")
            self._expected = [354]
            self._okresponse = self.smtpState_data
        else:
            # RFC 5321 §4.1.1.10: QUIT ends the session in any state.
            byAddress = {address: remoteReply(rcptCode, rcptResponse)
                         for address, rcptCode, rcptResponse in self.toAddressesResult}
            self._finish({r: byAddress.get(r, CONNECTION_LOST) for r in self._recipients})
            self._disconnectFromServer()

    def sentMail(self, code: int, resp: bytes, numOk: int, addresses: list, log: Any) -> None:
        """
        The transaction is over: a reply per recipient.  A recipient the
        server accepted gets the reply to the end of data.
        """
        if self._bodyFile is not None:
            self._bodyFile.close()
            self._bodyFile = None
        final = remoteReply(code, resp) if code > 0 else None
        byAddress = {}
        for address, rcptCode, rcptResponse in addresses:
            address = address.decode("utf-8") if isinstance(address, bytes) else address
            reply = remoteReply(rcptCode, rcptResponse)
            if 200 <= rcptCode < 300 and final is not None:
                reply = final
            byAddress[address] = reply
        # No RCPT replies at all: MAIL FROM itself was refused.
        replies = {r: byAddress.get(r, final or CONNECTION_LOST) for r in self._recipients}
        self._finish(replies)

    def sendError(self, exc: Exception) -> None:
        """
        The session failed before every recipient had a reply.
        """
        if isinstance(exc, smtp.TLSRequiredError):
            failure = SessionFailed(TLS_NOT_OFFERED, tryNext=True, tlsResult=STARTTLS_NOT_SUPPORTED)
        elif isinstance(exc, smtp.SMTPTimeoutError):
            failure = SessionFailed(CONNECTION_LOST.withText("Timed out waiting for the remote server"),
                                    tryNext=not self._mailSent)
        elif isinstance(exc, smtp.AUTHDeclinedError) or isinstance(exc, smtp.AUTHRequiredError):
            failure = SessionFailed(SMARTHOST_AUTH_REFUSED.withText(f"Smarthost refused authentication: {_text(exc)}"),
                                    tryNext=False)
        elif isinstance(exc, smtp.SMTPClientError) and exc.code and 400 <= exc.code < 600:
            # Greeting or EHLO refused: this host will not talk to us now.
            failure = SessionFailed(CONNECTION_LOST.withText(
                f"Remote server refused the session: {exc.code} {_text(exc)}"), tryNext=True)
        else:
            failure = SessionFailed(CONNECTION_LOST.withText(f"Session failed: {_text(exc)}"),
                                    tryNext=not self._mailSent)
        self._finish(failure)
        smtp.ESMTPClient.sendError(self, exc)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """
        A connection lost before every recipient had a reply fails the
        session; a TLS handshake failure says so.
        """
        smtp.ESMTPClient.connectionLost(self, reason)
        if self._bodyFile is not None:
            self._bodyFile.close()
            self._bodyFile = None
        if self._result is None:
            return
        if self._tlsMode and reason.check(SSL.Error, VerificationError):
            reply = TLS_NOT_VERIFIED if self.requireTransportSecurity else CONNECTION_LOST.withText(
                "TLS handshake failed")
            self._finish(SessionFailed(reply.withText(f"{reply.text}: {_text(reason.value)}"), tryNext=True,
                                       tlsFailed=True, tlsResult=HOST_MISMATCH if reason.check(VerificationError)
                                       else VALIDATION_FAILURE))
            return
        self._finish(SessionFailed(
            CONNECTION_LOST.withText(f"Connection lost: {_text(reason.value)}"), tryNext=not self._mailSent))


def _text(exc: BaseException) -> str:
    """
    @return: one line describing C{exc}.
    """
    if isinstance(exc, smtp.SMTPClientError):
        resp = exc.resp.decode("ascii", "replace") if isinstance(exc.resp, bytes) else str(exc.resp)
        text = resp
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


class _ClientFactory(protocol.ClientFactory):
    """
    Builds one L{RelayClient}; a failed connection fails the session.
    """

    def __init__(self, clock: Any, build: Callable[[], RelayClient], result: Deferred, destination: Destination):
        self._clock = clock
        self._build = build
        self._result = result
        self._destination = destination
        self.protocol_ = None

    def buildProtocol(self, addr: Any) -> RelayClient:
        """
        The client, its timeouts on the injected clock.
        """
        client = self._build()
        client.callLater = self._clock.callLater
        client.factory = self
        self.protocol_ = client
        return client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        """
        Nobody answered: try the next host.
        """
        if not self._result.called:
            where = f"{self._destination.host}[{self._destination.address}]:{self._destination.port}"
            self._result.errback(Failure(SessionFailed(
                NO_ANSWER.withText(f"Cannot connect to {where}: {_text(reason.value)}"), tryNext=True)))


@attrs.define
class Relay:
    """
    Delivers a message to the recipients of one domain.

    @ivar reactor: provides C{IReactorTCP} and C{IReactorTime}.
    @ivar resolver: the L{qutemail.relay.mx.MXResolver}.
    @ivar hostname: our name, for EHLO.
    @ivar mxPort: the port exchangers are reached on.
    @ivar smarthost: C{(host, port)} to send everything through, or C{None}.
    @ivar routes: C{domain -> (host, port)}: fixed next hops, taking
        precedence over the smarthost and the MX records.
    @ivar username: the smarthost AUTH user, or C{None}.
    @ivar password: the smarthost AUTH password, or C{None}.
    @ivar requireVerifiedTls: domains (or C{"*"}) that need a verified
        certificate.
    @ivar trustRoot: what verifies certificates (C{None}: the platform's
        trust store).
    @ivar timeoutSeconds: the idle timeout of a session.
    @ivar clock: what times sessions out (C{None}: the reactor).
    @ivar mtaSts: the L{qutemail.relay.mtasts.MTASTSPolicies} of MX
        delivery (C{[relay] mta_sts}), or C{None}.
    @ivar tlsReports: the L{qutemail.relay.tlsrpt.TLSReportLog} each MX
        session's TLS outcome goes to, or C{None}.
    """

    _log = Logger()

    reactor: Any
    resolver: Any
    hostname: str
    mxPort: int = 25
    smarthost: tuple[str, int] | None = None
    routes: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    username: str | None = None
    password: str | None = None
    requireVerifiedTls: tuple[str, ...] = ()
    trustRoot: Any = None
    timeoutSeconds: float = DEFAULT_TIMEOUT_SECONDS
    clock: Any = None
    mtaSts: Any = None
    tlsReports: Any = None
    _connectors: set = attrs.field(factory=set)

    def needsVerifiedTLS(self, domain: str) -> bool:
        """
        @return: whether mail to C{domain} may only go over verified TLS
            (always true for a smarthost we authenticate to).
        """
        return "*" in self.requireVerifiedTls or domain.lower() in self.requireVerifiedTls

    async def destinations(self, domain: str) -> list[Destination]:
        """
        Where mail for C{domain} goes, best first.

        @raise qutemail.relay.mx.DNSLookupError: when DNS says no, or cannot
            say now.
        """
        route = self.routes.get(domain.lower())
        if route is not None:
            return [Destination(route[0], route[0], route[1])]
        if self.smarthost is not None:
            return [Destination(self.smarthost[0], self.smarthost[0], self.smarthost[1])]
        exchangers = await self.resolver.resolve(domain)
        return [Destination(mx.host, address, self.mxPort) for mx in exchangers for address in mx.addresses]

    async def deliver(self, *, domain: str, sender: str, recipients: list[str], body: Callable[[], Any],
                      sizeBytes: int, prefix: bytes = b"") -> dict[str, Reply]:
        """
        Send a message to the recipients of one domain.

        @param domain: their domain.
        @param sender: the envelope sender (C{""} for a bounce).
        @param recipients: the addresses.
        @param body: opens the stored body (LF line ends) for reading.
        @param sizeBytes: the body's size.
        @param prefix: header fields to send before the body (the
            DKIM-Signature).
        @return: a reply per recipient.
        """
        viaMX = self.smarthost is None and domain.lower() not in self.routes
        # The policy is looked up while the exchangers are.
        policy = self.mtaSts.policyFor(domain) if self.mtaSts is not None and viaMX else succeed(None)
        try:
            destinations = await self.destinations(domain)
        except DNSLookupError as e:
            return {r: e.reply for r in recipients}
        finally:
            policy = await policy
        # The smarthost's credentials are for the smarthost alone.
        authenticate = self.username is not None and domain.lower() not in self.routes
        verified = self.needsVerifiedTLS(domain) or authenticate
        found = destinations
        destinations, enforced, refusal = applyPolicy(policy, domain, destinations)
        if refusal is not None:
            for destination in {d.host: d for d in found}.values():
                self._reportTLS(domain, policy, destination, VALIDATION_FAILURE)
            return {r: refusal for r in recipients}
        verified = verified or enforced
        # Under an enforced policy, every failure says whose rule it was.
        note = f" (MTA-STS policy of {domain}, id {policy.id})" if enforced else ""
        last = NO_ANSWER.withText(f"No mail exchanger for {domain} answered{note}")
        for destination in destinations[:MAX_DESTINATIONS]:
            for useTLS in ((True,) if verified else (True, False)):
                try:
                    replies, overTLS = await self._session(destination, verified, useTLS, sender, recipients,
                                                           body, sizeBytes, prefix, authenticate)
                except SessionFailed as e:
                    if e.tlsResult:
                        self._reportTLS(domain, policy, destination, e.tlsResult)
                    last = e.reply.withText(e.reply.text + note) if note else e.reply
                    self._log.info("relay to {host}[{address}] for {domain} failed: {reply}",
                                   host=destination.host, address=destination.address, domain=domain,
                                   reply=str(e.reply))
                    if e.tlsFailed and useTLS and not verified:
                        continue  # RFC 3207 §4.1 permits delivery in clear after a failed negotiation
                    if not e.tryNext:
                        return {r: last for r in recipients}
                    break
                self._reportTLS(domain, policy, destination, None if overTLS else STARTTLS_NOT_SUPPORTED)
                self._log.info("relayed to {host}[{address}] for {domain}: {replies}", host=destination.host,
                               address=destination.address, domain=domain,
                               replies="; ".join(f"{r}: {reply}" for r, reply in replies.items()))
                return replies
        return {r: last for r in recipients}

    def _reportTLS(self, domain: str, policy: Any, destination: Destination, resultType: str | None) -> None:
        """
        Note a session's TLS outcome for the domain's TLS report.
        """
        if self.tlsReports is not None and domain.lower() not in self.routes and self.smarthost is None:
            self.tlsReports.record(domain, policy, destination.host, destination.address, resultType)

    def _context(self, destination: Destination, verified: bool) -> Any:
        """
        The TLS client options for a destination.
        """
        if verified:
            return VerifyingClientTLS(destination.host, self.trustRoot)
        # Opportunistic (RFC 7435): encrypt without checking who answers.
        return CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)

    async def _session(self, destination: Destination, verified: bool, useTLS: bool, sender: str,
                       recipients: list[str], body: Callable[[], Any], sizeBytes: int,
                       prefix: bytes, authenticate: bool = True) -> tuple[dict[str, Reply], bool]:
        """
        One connection, one transaction.

        @param authenticate: send the smarthost's credentials (when set).
        @return: a reply per recipient, and whether the session ran over
            TLS.
        """
        result: Deferred = Deferred()
        context = self._context(destination, verified) if useTLS else None

        made: list[RelayClient] = []

        def build() -> RelayClient:
            client = RelayClient(
                identity=self.hostname, context=context, requireTLS=verified,
                username=self.username.encode("utf-8") if self.username and authenticate else None,
                password=self.password.encode("utf-8") if self.password is not None and authenticate else None,
                sender=sender, recipients=list(recipients), body=body, sizeBytes=sizeBytes,
                prefix=prefix, result=result, timeoutSeconds=self.timeoutSeconds,
            )
            made.append(client)
            return client

        factory = _ClientFactory(self.clock or self.reactor, build, result, destination)
        connector = self.reactor.connectTCP(destination.address, destination.port, factory,
                                            timeout=CONNECT_TIMEOUT_SECONDS)
        self._connectors.add(connector)
        try:
            replies = await result
        finally:
            self._connectors.discard(connector)
        # Twisted's ESMTPClient sets _tlsMode once STARTTLS succeeded.
        return replies, bool(made and made[-1]._tlsMode)

    def stop(self) -> None:
        """
        Drop every session in progress (server shutdown); their recipients
        stay queued as they were.
        """
        for connector in list(self._connectors):
            connector.disconnect()
