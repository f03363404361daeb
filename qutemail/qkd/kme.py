# -*- test-case-name: tests.qkd.test_kmeservice -*-
"""
The embedded KME: the ETSI GS QKD 014 API of L{qutemail.qkd.kmeweb} served
over HTTPS with mutual TLS, as a service.

  - TLS 1.2 or later (ETSI GS QKD 014 §4.2), with the server certificate
    of L{qutemail.qkd.certs}; the client must present a certificate signed
    by the same CA, or the handshake fails: a client without one never
    reaches HTTP.
  - The calling SAE is the client certificate's CN.

Pair mode is two L{EmbeddedKMEService}s whose L{KME}s share one
L{QKDLink}; each has its own id, listener and SAEs::

    link = QKDLink(PoolSettings())
    one = EmbeddedKMEService(reactor, KME("kme-1", ["sae-a"], link), pki, name="kme-1")
    two = EmbeddedKMEService(reactor, KME("kme-2", ["sae-b"], link), pki, name="kme-2")

L{EmbeddedKeySource} is the key source of one of the KME's SAEs: an
L{ETSI014KeySource} built once the KME listens.
"""

import datetime
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from qutemail.interfaces import IQKDKeySource, KeySourceError
from qutemail.qkd.certs import KMEPKI, ensurePKI
from qutemail.qkd.etsi014 import ETSI014KeySource
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from qutemail.qkd.kmeweb import MAX_BODY_BYTES, KMEResource, KMESite

DEFAULT_ENDPOINT = "tcp:0:interface=127.0.0.1"

_log = Logger()


def serverTLSOptions(pki: KMEPKI) -> ssl.CertificateOptions:
    """
    Build the KME's TLS options: its certificate, TLS 1.2 or later, and a
    client certificate required and verified against the CA.

    Reads three small files: call it at start-up.

    @return: the server's context factory.
    @raise OSError: a file cannot be read.
    """
    with open(pki.ca.certPath, "rb") as f:
        ca = ssl.Certificate.loadPEM(f.read())
    with open(pki.server.certPath, "rb") as f:
        certificatePEM = f.read()
    with open(pki.server.keyPath, "rb") as f:
        keyPEM = f.read()
    server = ssl.PrivateCertificate.loadPEM(certificatePEM + b"\n" + keyPEM)
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        verify=True,
        caCerts=[ca.original],
        requireCertificate=True,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


class _TrackingTLSFactory(TLSMemoryBIOFactory):
    """
    A TLS server factory that can close every connection it has and say
    when they are all gone, so a stopped KME leaves nothing behind.
    """

    noisy = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """
        Like L{TLSMemoryBIOFactory}.
        """
        super().__init__(*args, **kwargs)
        self._drained: list[Deferred] = []

    def unregisterProtocol(self, p) -> None:
        """
        Forget a closed connection; tell whoever waits once none is left.
        """
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def dropConnections(self) -> Deferred:
        """
        Abort every open connection.

        @return: a Deferred firing once all of them are closed.
        """
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self._drained.append(d)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return d


@attrs.define(eq=False)
class TLSListener:
    """
    A listening mutual-TLS port and its connections.

    @ivar port: the listening port.
    @ivar factory: the TLS factory, which knows the open connections.
    """

    port: IListeningPort
    factory: _TrackingTLSFactory

    @property
    def portNumber(self) -> int:
        """
        The TCP port it listens on.
        """
        return self.port.getHost().port

    async def stop(self) -> None:
        """
        Stop listening and close every connection.
        """
        await self.port.stopListening()
        await self.factory.dropConnections()


async def listenTLS(reactor: Any, description: str, options: ssl.CertificateOptions, site) -> TLSListener:
    """
    Serve a site over TLS on a server endpoint.

    @param reactor: the reactor.
    @param description: a stream server endpoint string, such as
        C{tcp:0:interface=127.0.0.1} (TLS is added here, so not C{ssl:}).
    @param options: from L{serverTLSOptions}.
    @param site: the HTTP factory.
    @return: the listener.
    """
    factory = _TrackingTLSFactory(options, False, site)
    port = await serverFromString(reactor, description).listen(factory)
    return TLSListener(port, factory)


@attrs.define(eq=False)
class EmbeddedKMEService(Service):
    """
    One KME listening for SAEs over mutual TLS.

    @ivar reactor: the reactor it listens with.
    @ivar kme: the KME that answers.
    @ivar pki: its certificates (read when the service starts).
    @ivar endpoint: where to listen, as a stream server endpoint string.
    @ivar clock: the key pool's clock (default: C{reactor}).
    @ivar maxBodyBytes: the largest request body accepted.
    """

    reactor: Any
    kme: KME
    pki: KMEPKI
    endpoint: str = DEFAULT_ENDPOINT
    clock: IReactorTime | None = None
    maxBodyBytes: int = MAX_BODY_BYTES
    name: str = "kme"
    _listener: TLSListener | None = None
    _failure: Failure | None = None
    _started: Deferred | None = None
    _waiters: list[Deferred] = attrs.field(factory=list)

    # Service's attributes, which attrs would otherwise not know about.
    parent: Any = None
    running: int = 0

    @property
    def portNumber(self) -> int | None:
        """
        The TCP port listened on, once listening.
        """
        return None if self._listener is None else self._listener.portNumber

    @property
    def baseURL(self) -> str | None:
        """
        C{https://localhost:<port>} once listening: the KME's certificate
        names C{localhost}.
        """
        return None if self._listener is None else f"https://localhost:{self.portNumber}"

    def startService(self) -> None:
        """
        Start listening; L{whenListening} says when it is done.
        """
        Service.startService(self)
        self._failure = None
        site = KMESite(KMEResource(self.kme, self.clock or self.reactor), self.reactor, self.maxBodyBytes)
        self._started = Deferred.fromCoroutine(self._listen(site))

    async def _listen(self, site: KMESite) -> None:
        """
        Listen, then wake the L{whenListening} waiters.
        """
        try:
            self._listener = await listenTLS(self.reactor, self.endpoint, serverTLSOptions(self.pki), site)
        except Exception:
            # The boundary of start-up: keep it for whenListening, and log.
            self._failure = Failure()
            _log.failure("KME {kmeId} cannot listen on {endpoint}", self._failure,
                         kmeId=self.kme.kmeId, endpoint=self.endpoint)
        else:
            _log.info("KME {kmeId} listening at {baseURL} for SAEs {saeIds}", kmeId=self.kme.kmeId,
                      baseURL=self.baseURL, saeIds=", ".join(sorted(self.kme.saeIds)))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _fire(self, d: Deferred) -> None:
        """
        Fire a waiter with the base URL or the listening failure.
        """
        if self._failure is not None:
            d.errback(self._failure)
        else:
            d.callback(self.baseURL)

    def whenListening(self) -> Deferred:
        """
        @return: a Deferred firing with the base URL once listening (at
            once if already), or failing with why it could not listen.
        """
        if self._listener is not None:
            return succeed(self.baseURL)
        if self._failure is not None:
            return fail(self._failure)
        d = Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> Deferred:
        """
        Stop listening and close every connection.

        @return: a Deferred firing when done.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """
        Wait for the start to finish, then stop the listener.
        """
        if self._started is not None:
            await self._started
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()


@implementer(IQKDKeySource)
@attrs.define(eq=False)
class EmbeddedKeySource:
    """
    The key source of one SAE of an embedded KME, usable before the KME
    listens: each call waits for L{EmbeddedKMEService.whenListening}, and
    the first builds the L{ETSI014KeySource} it delegates to (so the real
    client path runs even in-process).

    @ivar service: the KME.
    @ivar clientCertificate: the SAE's certificate and key.
    @ivar trustRoot: the KME's CA.
    @ivar options: more attributes for the L{ETSI014KeySource}.
    """

    service: EmbeddedKMEService
    clientCertificate: ssl.PrivateCertificate
    trustRoot: ssl.Certificate
    options: dict = attrs.field(factory=dict)
    _source: ETSI014KeySource | None = None

    @classmethod
    def forSAE(cls, service: EmbeddedKMEService, saeId: str, **options: Any) -> "EmbeddedKeySource":
        """
        Read an SAE's certificate from the KME's PKI.  Blocking: call it at
        start-up.

        @param options: more attributes for the L{ETSI014KeySource}, such
            as C{timeoutSeconds}.
        @raise KeyError: the PKI has no certificate for C{saeId}.
        """
        paths = service.pki.client(saeId)
        with open(paths.certPath, "rb") as c, open(paths.keyPath, "rb") as k:
            certificate = ssl.PrivateCertificate.loadPEM(c.read() + b"\n" + k.read())
        with open(service.pki.ca.certPath, "rb") as f:
            trustRoot = ssl.Certificate.loadPEM(f.read())
        return cls(service, certificate, trustRoot, options)

    async def _ready(self) -> ETSI014KeySource:
        """
        @return: the client, once the KME listens.
        @raise KeySourceError: the KME could not listen.
        """
        try:
            url = await self.service.whenListening()
        except Exception as e:
            # The service has logged why; the caller gets its one line.
            raise KeySourceError(f"the embedded KME is not listening: {type(e).__name__}")
        if self._source is None:
            self._source = ETSI014KeySource(self.service.reactor, url, self.clientCertificate, self.trustRoot,
                                            **self.options)
        return self._source

    async def _status(self, peerSAE: str):
        """
        Delegate L{status}.
        """
        return await (await self._ready()).status(peerSAE)

    async def _encKey(self, peerSAE: str, sizeBits: int):
        """
        Delegate L{encKey}.
        """
        return await (await self._ready()).encKey(peerSAE, sizeBits)

    async def _encKeys(self, peerSAE: str, sizeBits: int, number: int):
        """
        Delegate L{encKeys}.
        """
        return await (await self._ready()).encKeys(peerSAE, sizeBits, number)

    async def _decKey(self, peerSAE: str, keyId: str, sizeBits: int | None):
        """
        Delegate L{decKey}.
        """
        return await (await self._ready()).decKey(peerSAE, keyId, sizeBits)

    def status(self, peerSAE: str) -> Deferred:
        """
        See L{IQKDKeySource.status}.
        """
        return Deferred.fromCoroutine(self._status(peerSAE))

    def encKey(self, peerSAE: str, sizeBits: int = 256) -> Deferred:
        """
        See L{IQKDKeySource.encKey}.
        """
        return Deferred.fromCoroutine(self._encKey(peerSAE, sizeBits))

    def encKeys(self, peerSAE: str, sizeBits: int = 256, number: int = 1) -> Deferred:
        """
        See L{ETSI014KeySource.encKeys}.
        """
        return Deferred.fromCoroutine(self._encKeys(peerSAE, sizeBits, number))

    def decKey(self, peerSAE: str, keyId: str, sizeBits: int | None = None) -> Deferred:
        """
        See L{ETSI014KeySource.decKey}.
        """
        return Deferred.fromCoroutine(self._decKey(peerSAE, keyId, sizeBits))

    async def _decKeys(self, peerSAE: str, keyIds: list[str], sizeBits: int | None):
        """
        Delegate L{decKeys}.
        """
        return await (await self._ready()).decKeys(peerSAE, keyIds, sizeBits)

    def decKeys(self, peerSAE: str, keyIds: list[str], sizeBits: int | None = None) -> Deferred:
        """
        See L{ETSI014KeySource.decKeys}.
        """
        return Deferred.fromCoroutine(self._decKeys(peerSAE, list(keyIds), sizeBits))

    def close(self) -> Deferred:
        """
        Close the client's kept-alive connections.

        @return: a Deferred firing once they are closed.
        """
        return succeed(None) if self._source is None else self._source.close()


def buildStandaloneKME(reactor: Any, directory: str, kmeId: str, saeIds: Iterable[str], port: int = 0,
                       interface: str = "127.0.0.1", settings: PoolSettings | None = None,
                       now: datetime.datetime | None = None, link: QKDLink | None = None) -> EmbeddedKMEService:
    """
    Build one KME serving C{saeIds}, for C{qutemail kme}.

    Blocking (it finds or makes the PKI under C{directory}): call it before
    the reactor runs.  The server certificate names C{localhost} and
    C{127.0.0.1} only, so clients must come by loopback.

    @param reactor: the reactor to listen with, also the pool's clock.
    @param directory: the PKI's directory; SAEs use C{ca-cert.pem} and
        their C{sae-<id>-cert.pem} and C{sae-<id>-key.pem} from it.
    @param kmeId: the KME's id.
    @param saeIds: the SAEs it serves (each gets a client certificate).
    @param port: the TCP port (0: any free one).
    @param interface: the address to listen on.
    @param settings: the key pool's shape.
    @param now: the current time, UTC, for certificate validity.
    @param link: the simulated QKD link to join (default: a new one, with
        C{settings}): two KMEs on one link are a linked pair, what one
        hands out by C{enc_keys} the other hands out by C{dec_keys}.
    @return: the service, not yet started; C{pki} holds the paths.
    @raise ValueError: an SAE id is not fit for a certificate.
    """
    saeIds = sorted(set(saeIds))
    pki = ensurePKI(directory, saeIds, now or datetime.datetime.now(datetime.timezone.utc))
    link = link or QKDLink(settings or PoolSettings())
    return EmbeddedKMEService(reactor, KME(kmeId, saeIds, link), pki, endpoint=f"tcp:{port}:interface={interface}")
