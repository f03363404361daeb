"""
Tests for L{qutemail.tlsclient}: real TLS handshakes over loopback against
certificates made here, signed by a CA the client trusts.

The helpers L{certifiedContext} and L{caRoot} are also used by the KME
client's and the relay's tests of the same checks.
"""

import datetime

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.qkd.certs import makeCA, makeLeaf
from qutemail.tlsclient import VerifyingClientTLS


def _now() -> datetime.datetime:
    """
    @return: the time now, UTC.
    """
    return datetime.datetime.now(datetime.timezone.utc)


class TestCA:
    """
    A CA made for one test, and leaf certificates it signs.
    """

    def __init__(self) -> None:
        """
        Make the CA.
        """
        self.certificate, self.key = makeCA(_now(), "QutEmail test CA")

    def root(self) -> Certificate:
        """
        @return: the CA as a Twisted trust root.
        """
        return Certificate.loadPEM(self.certificate.public_bytes(serialization.Encoding.PEM))

    def serverContext(self, commonName: str, dnsNames=(), ipAddresses=()) -> CertificateOptions:
        """
        @param commonName: the subject CN (never used for the name check).
        @param dnsNames: the subjectAltName DNS names (none: no SAN at all).
        @param ipAddresses: subjectAltName IP addresses.
        @return: server TLS options with a leaf signed by this CA.
        """
        leaf, key = makeLeaf(self.certificate, self.key, commonName, _now(), server=True,
                             dnsNames=dnsNames, ipAddresses=ipAddresses)
        return CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(leaf),
        )


class _Echo(Protocol):
    """
    Echoes what it gets; C{closed} fires when the connection is gone.
    """

    def __init__(self) -> None:
        """
        Still open.
        """
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        """
        Send it back.
        """
        self.transport.write(data)

    def connectionLost(self, reason) -> None:
        """
        Gone.
        """
        self.closed.callback(None)


class _Ping(_Echo):
    """
    Sends a ping once connected and keeps the answer.
    """

    received = b""

    def connectionMade(self) -> None:
        """
        TLS starts with the first write.
        """
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        """
        The handshake completed and the peer answered.
        """
        self.received += data
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        """
        Keep the reason: lost before any answer means the handshake failed.
        """
        self.reason = reason
        self.closed.callback(None)


def handshake(testCase: TestCase, serverContext: CertificateOptions, creator) -> Deferred:
    """
    Listen on loopback with C{serverContext}, connect with C{creator}.

    @return: fires with the echo, when the client accepted the server, or
        fails with why the connection was lost before it.
    """
    return Deferred.fromCoroutine(_handshake(testCase, serverContext, creator))


async def _handshake(testCase: TestCase, serverContext: CertificateOptions, creator) -> bytes:
    """
    See L{handshake}.
    """
    servers: list[_Echo] = []

    def build() -> _Echo:
        servers.append(_Echo())
        return servers[-1]

    factory = TLSMemoryBIOFactory(serverContext, False, Factory.forProtocol(build))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5))
    protocol = await connectProtocol(endpoint, _Ping())
    await protocol.closed
    for server in servers:
        await server.closed
    if protocol.received:
        return protocol.received
    protocol.reason.raiseException()


class VerifyingClientTLSTests(TestCase):
    """
    L{VerifyingClientTLS} accepts a server only when its certificate chains
    to the trust root and its subjectAltName names the host.
    """

    timeout = 10

    def setUp(self) -> None:
        """
        A CA for the test.
        """
        self.ca = TestCA()

    async def test_rightName(self) -> None:
        """
        A certificate from the trusted CA naming the host passes.
        """
        context = self.ca.serverContext("kme.test", dnsNames=["kme.test"])
        self.assertEqual(await handshake(self, context, VerifyingClientTLS("kme.test", self.ca.root())), b"ping")

    async def test_ipAddress(self) -> None:
        """
        An IP address is checked against the certificate's IP SANs.
        """
        good = self.ca.serverContext("x", ipAddresses=["127.0.0.1"])
        self.assertEqual(await handshake(self, good, VerifyingClientTLS("127.0.0.1", self.ca.root())), b"ping")
        bad = self.ca.serverContext("127.0.0.1", dnsNames=["kme.test"])
        await self.assertFailure(handshake(self, bad, VerifyingClientTLS("127.0.0.1", self.ca.root())),
                                 VerificationError, SSL.Error)

    async def test_noSubjectAltName(self) -> None:
        """
        A certificate from the trusted CA without any subjectAltName fails
        the handshake, even when its CN is the host name, and the refusal
        is logged as such.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        context = self.ca.serverContext("kme.test")
        e = await self.assertFailure(handshake(self, context, VerifyingClientTLS("kme.test", self.ca.root())),
                                     VerificationError)
        self.assertIn("kme.test", str(e))
        refused = [ev for ev in events if "does not name it" in ev.get("log_format", "")]
        self.assertEqual([ev["hostname"] for ev in refused], ["kme.test"])

    async def test_wrongName(self) -> None:
        """
        A certificate from the trusted CA naming another host fails.
        """
        context = self.ca.serverContext("kme.test", dnsNames=["other.test"])
        await self.assertFailure(handshake(self, context, VerifyingClientTLS("kme.test", self.ca.root())),
                                 VerificationError)

    async def test_otherCA(self) -> None:
        """
        A certificate naming the host but from another CA fails.
        """
        context = TestCA().serverContext("kme.test", dnsNames=["kme.test"])
        await self.assertFailure(handshake(self, context, VerifyingClientTLS("kme.test", self.ca.root())),
                                 SSL.Error)
