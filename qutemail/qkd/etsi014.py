# -*- test-case-name: tests.qkd.test_etsi014 -*-
"""
L{ETSI014KeySource}: an L{IQKDKeySource} that asks a KME for keys through
the ETSI GS QKD 014 REST API (HTTPS with mutual TLS, JSON).

Our SAE is named by our client certificate, never in the request (§4.2).
Every request has a deadline; answers are size-capped and parsed strictly,
and every key is checked (base64, length, id, count) before it is used.
Whatever goes wrong becomes one L{KeySourceError} line, temporary unless
the KME definitely refuses a C{dec_keys}.  Connections are kept alive and
reused (one TLS handshake for many keys); L{ETSI014KeySource.close} closes
them.  Key material is never logged.
"""

import json
import uuid
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error, ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    URI,
)
from twisted.web.http_headers import Headers
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from qutemail.httpbody import BodyTooLarge, readCapped
from qutemail.interfaces import IQKDKeySource, KeySourceError, KMEStatus
from qutemail.qkd.etsiparse import keyContainer, oneLine, parseJSON, statusObject
from qutemail.tlsclient import VerifyingClientTLS

DEFAULT_TIMEOUT_SECONDS = 10.0
# 128 keys of 8192 bits fit in about 190 kB.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024
# Below the embedded KME's 60 s idle timeout, so we rarely reuse a
# connection the server is closing.
IDLE_CONNECTION_SECONDS = 30
# Kept-alive connections to the KME (mutual-TLS handshakes are dear).
MAX_PERSISTENT_CONNECTIONS = 8

_log = Logger()


@implementer(IPolicyForHTTPS)
@attrs.frozen
class MutualTLSPolicy:
    """
    TLS for L{Agent}: the KME's certificate checked against our CA and its
    host name (always), our client certificate shown, TLS 1.2 or later.

    @ivar trustRoot: the CA that signs the KME's certificate.
    @ivar clientCertificate: ours, or C{None} to show none.
    @ivar kmeId: an id the KME's certificate must also carry, or C{None}.
    """

    trustRoot: ssl.Certificate
    clientCertificate: ssl.PrivateCertificate | None = None
    kmeId: str | None = None

    def creatorForNetloc(self, hostname: bytes, port: int):
        """
        @return: the client TLS options for one host.
        """
        return VerifyingClientTLS(hostname.decode("ascii"), self.trustRoot, self.clientCertificate,
                                  requiredId=self.kmeId)


@implementer(IAgentEndpointFactory)
@attrs.define(eq=False)
class KMEEndpoints:
    """
    Where L{Agent} connects for a URL: HTTPS only, through the TLS policy,
    each endpoint built once per host and port and then reused.

    L{Agent}'s own endpoint factory builds a new endpoint for every
    request, even one sent on a kept-alive connection, and building one
    runs the policy (certificate options, cipher selection, IDNA): that
    cost about a third of a pooled C{enc_keys} request.  The endpoint is
    only used to open new connections, each of which still gets a new TLS
    connection checked against the CA and the host name.

    @ivar reactor: to connect with.
    @ivar policy: the L{IPolicyForHTTPS} (L{MutualTLSPolicy}).
    @ivar connectTimeoutSeconds: the deadline of a TCP connection.
    """

    reactor: Any
    policy: Any
    connectTimeoutSeconds: float
    _endpoints: dict = attrs.field(factory=dict, init=False)

    def endpointForURI(self, uri: URI):
        """
        @return: the TLS endpoint for C{uri}'s host and port.
        @raise SchemeNotSupported: C{uri} is not HTTPS.
        """
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        key = (uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            tcp = HostnameEndpoint(self.reactor, uri.host.decode("ascii"), uri.port,
                                   timeout=self.connectTimeoutSeconds)
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tcp)
            self._endpoints[key] = endpoint
        return endpoint


@implementer(IBodyProducer)
@attrs.define
class _BytesProducer:
    """
    A request body already in memory (it is small).

    @ivar body: the bytes.
    """

    body: bytes

    @property
    def length(self) -> int:
        """
        The body's length, for Content-Length.
        """
        return len(self.body)

    def startProducing(self, consumer) -> Deferred:
        """
        Write it all at once.
        """
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing to pause.
        """

    def resumeProducing(self) -> None:
        """
        Nothing to resume.
        """

    def stopProducing(self) -> None:
        """
        Nothing to stop.
        """


class _DeadlinePassed(Exception):
    """
    The request did not finish in time.
    """


def _deadlinePassed(result: Any, timeoutSeconds: float) -> None:
    """
    Whatever cancelling the late request led to (a L{CancelledError}, or a
    connection aborted under the agent), the cause is the deadline.

    @raise _DeadlinePassed: always.
    """
    raise _DeadlinePassed()


def _transportProblem(e: BaseException, timeoutSeconds: float) -> str | None:
    """
    @return: a one-line description of a network or TLS failure, or
        C{None} when C{e} is not one.
    """
    if isinstance(e, _DeadlinePassed):
        return f"no answer within {timeoutSeconds:g} s"
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (error.ConnectError, error.ConnectionLost, error.ConnectionDone)):
        return f"cannot connect: {oneLine(str(e))}"
    if isinstance(e, SSL.Error):
        return f"TLS failure: {_sslReason(e)}"
    if isinstance(e, BodyTooLarge):
        return "the answer is too large"
    if isinstance(e, (ResponseFailed, RequestTransmissionFailed)):
        for reason in getattr(e, "reasons", []):
            if reason.check(SSL.Error):
                return f"TLS failure: {_sslReason(reason.value)}"
            if reason.check(VerificationError):
                return "TLS failure: the KME's certificate does not name its host"
        return "the connection broke before a complete answer"
    return None


def _sslReason(e: SSL.Error) -> str:
    """
    @return: OpenSSL's own words for the last error, on one line.
    """
    entries = e.args[0] if e.args and isinstance(e.args[0], list) else []
    if entries and isinstance(entries[-1], tuple) and entries[-1]:
        return oneLine(str(entries[-1][-1]))
    return oneLine(str(e)) or "handshake failed"


@implementer(IQKDKeySource)
@attrs.define(eq=False)
class ETSI014KeySource:
    """
    A key source backed by a KME's ETSI GS QKD 014 API.

    @ivar reactor: for connections, deadlines and the connection pool.
    @ivar baseURL: the KME's root, C{https://host:port}; requests go to
        C{<baseURL>/api/v1/keys/...}.
    @ivar clientCertificate: our SAE's certificate and key.
    @ivar trustRoot: the CA that signs the KME's certificate.
    @ivar timeoutSeconds: the deadline of each request, connecting
        included.
    @ivar maxResponseBytes: the longest answer read.
    @ivar useGET: use the GET forms of C{enc_keys} and C{dec_keys} rather
        than POST.
    @ivar metrics: counts requests by outcome and their latency
        (L{qutemail.metrics.registry.Metrics}), or C{None}.
    @ivar kmeId: the KME's id when configured (C{[qkd] kme_id}): the
        KME's certificate must carry it (subject CN or a subjectAltName
        DNS or URI entry) and each status's C{source_KME_ID} must equal
        it (ETSI GS QKD 014 §4.2: the SAE confirms the KME ID).

    Before the first C{enc_keys} of a link the client reads the link's
    status and keeps it (it is read again after any failure on that
    link): a request for more keys than C{max_key_per_request} is split
    into requests the KME accepts, and a key size outside
    C{min_key_size}..C{max_key_size} is refused before asking.
    """

    reactor: Any
    baseURL: str = attrs.field()
    clientCertificate: ssl.PrivateCertificate
    trustRoot: ssl.Certificate
    timeoutSeconds: float = DEFAULT_TIMEOUT_SECONDS
    maxResponseBytes: int = DEFAULT_MAX_RESPONSE_BYTES
    useGET: bool = False
    kmeId: str | None = None
    metrics: Any = None
    _statuses: dict = attrs.field(factory=dict, init=False)
    _pool: HTTPConnectionPool = attrs.field(init=False)
    _agent: Agent = attrs.field(init=False)

    @baseURL.validator
    def _checkURL(self, attribute, value: str) -> None:
        """
        Only HTTPS: the standard asks for TLS.
        """
        if not isinstance(value, str) or not value.startswith("https://") or len(value) <= len("https://"):
            raise ValueError(f"KME URL {value!r}: it must start with https://")

    def __attrs_post_init__(self) -> None:
        """
        Build the persistent connection pool and the agent.
        """
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.cachedConnectionTimeout = IDLE_CONNECTION_SECONDS
        # Twisted keeps 2 by default; concurrent deliveries would otherwise
        # pay a mutual-TLS handshake for most requests.
        self._pool.maxPersistentPerHost = MAX_PERSISTENT_CONNECTIONS
        endpoints = KMEEndpoints(self.reactor, MutualTLSPolicy(self.trustRoot, self.clientCertificate,
                                                               self.kmeId), self.timeoutSeconds)
        self._agent = Agent.usingEndpointFactory(self.reactor, endpoints, pool=self._pool)

    @classmethod
    def fromFiles(cls, reactor: Any, baseURL: str, certPath: str, keyPath: str, caPath: str,
                  **kwargs: Any) -> "ETSI014KeySource":
        """
        Build a key source from PEM files.  Blocking (it reads them): call
        it at start-up.

        @param certPath: our SAE's client certificate.
        @param keyPath: its private key.
        @param caPath: the CA that signs the KME's certificate.
        @param kwargs: the other attributes.
        @raise OSError: a file cannot be read.
        @raise OpenSSL.SSL.Error: they are not PEM, or do not match.
        """
        with open(certPath, "rb") as f:
            certificatePEM = f.read()
        with open(keyPath, "rb") as f:
            keyPEM = f.read()
        with open(caPath, "rb") as f:
            caPEM = f.read()
        return cls(reactor, baseURL, ssl.PrivateCertificate.loadPEM(certificatePEM + b"\n" + keyPEM),
                   ssl.Certificate.loadPEM(caPEM), **kwargs)

    def close(self) -> Deferred:
        """
        Close the kept-alive connections.

        @return: a Deferred firing once they are closed.
        """
        return self._pool.closeCachedConnections()

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
        Take several keys in one C{enc_keys} request.

        @param number: how many, at least 1 (the KME's C{max_key_per_request}
            bounds it).
        @return: a Deferred firing with a list of C{(keyId, key)}.
        @raise KeySourceError: (in the Deferred) as for L{encKey}.
        """
        return Deferred.fromCoroutine(self._encKeys(peerSAE, sizeBits, number))

    def decKey(self, peerSAE: str, keyId: str, sizeBits: int | None = None) -> Deferred:
        """
        See L{IQKDKeySource.decKey}.

        @param sizeBits: the key's size when known; the answer must match
            it.  Without it any whole number of bytes from 1 is accepted.
        """
        return Deferred.fromCoroutine(self._decKey(peerSAE, keyId, sizeBits))

    async def _status(self, peerSAE: str) -> KMEStatus:
        """
        Ask for the link's status.
        """
        what = f"KME status for SAE {peerSAE}"
        status = statusObject(await self._call(what, b"GET", peerSAE, "status"), what)
        if self.kmeId is not None and status.sourceKMEId != self.kmeId:
            raise KeySourceError(f"{what}: the KME says it is {oneLine(repr(status.sourceKMEId))}, "
                                 f"not {self.kmeId!r} ([qkd] kme_id)", temporary=False)
        return status

    async def _linkStatus(self, peerSAE: str) -> KMEStatus:
        """
        The link's status, read once and kept until a request fails.
        """
        status = self._statuses.get(peerSAE)
        if status is None:
            status = self._statuses[peerSAE] = await self._status(peerSAE)
        return status

    async def _encKey(self, peerSAE: str, sizeBits: int) -> tuple[str, bytes]:
        """
        Take one key for C{peerSAE}.
        """
        [(keyId, key)] = await self._encKeys(peerSAE, sizeBits, 1)
        return keyId, key

    async def _encKeys(self, peerSAE: str, sizeBits: int, number: int) -> list[tuple[str, bytes]]:
        """
        Take C{number} keys for C{peerSAE}.
        """
        what = f"KME enc_keys for SAE {peerSAE}"
        if isinstance(sizeBits, bool) or not isinstance(sizeBits, int) or sizeBits < 8 or sizeBits % 8:
            raise KeySourceError(f"{what}: key size {sizeBits!r} is not a positive multiple of 8", temporary=False)
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise KeySourceError(f"{what}: key count {number!r} is not a positive whole number", temporary=False)
        try:
            status = await self._linkStatus(peerSAE)
            if status.minKeySize > 0 and status.maxKeySize > 0 and not (
                    status.minKeySize <= sizeBits <= status.maxKeySize):
                raise KeySourceError(f"{what}: key size {sizeBits} is outside the KME's {status.minKeySize}.."
                                     f"{status.maxKeySize} bits ([qkd] key_size)", temporary=False)
            perRequest = status.maxKeyPerRequest if status.maxKeyPerRequest > 0 else number
            keys: list[tuple[str, bytes]] = []
            while len(keys) < number:
                keys += await self._encKeysOnce(what, peerSAE, sizeBits, min(perRequest, number - len(keys)))
            if len({keyId for keyId, _ in keys}) != len(keys):
                raise KeySourceError(f"{what}: the KME gave the same key id twice")
        except KeySourceError:
            # Read the status again next time: the KME may have changed.
            self._statuses.pop(peerSAE, None)
            raise
        return keys

    async def _encKeysOnce(self, what: str, peerSAE: str, sizeBits: int, number: int) -> list[tuple[str, bytes]]:
        """
        One C{enc_keys} request.
        """
        if self.useGET:
            answer = await self._call(what, b"GET", peerSAE, "enc_keys", query={"number": number, "size": sizeBits})
        else:
            answer = await self._call(what, b"POST", peerSAE, "enc_keys", body={"number": number, "size": sizeBits})
        return keyContainer(answer, what, number, sizeBits)

    async def _decKey(self, peerSAE: str, keyId: str, sizeBits: int | None) -> bytes:
        """
        Fetch the key C{peerSAE} took as C{keyId}.
        """
        [key] = await self._decKeys(peerSAE, [keyId], sizeBits)
        return key

    def decKeys(self, peerSAE: str, keyIds: list[str], sizeBits: int | None = None) -> Deferred:
        """
        Fetch several keys C{peerSAE} took, in one POST C{dec_keys} (with
        C{useGET}, one GET each).  The KME hands out all or none.

        @return: a Deferred firing with the keys, in the order of C{keyIds}.
        @raise KeySourceError: (in the Deferred) as for L{decKey}; a key
            unknown or not ours fails them all.
        """
        return Deferred.fromCoroutine(self._decKeys(peerSAE, list(keyIds), sizeBits))

    async def _decKeys(self, peerSAE: str, keyIds: list[str], sizeBits: int | None) -> list[bytes]:
        """
        See L{decKeys}.
        """
        what = f"KME dec_keys for SAE {peerSAE}"
        canonical = []
        for keyId in keyIds:
            try:
                canonical.append(str(uuid.UUID(keyId)))
            except (TypeError, ValueError, AttributeError):
                raise KeySourceError(f"{what}: key id {oneLine(repr(keyId))} is not a UUID", temporary=False)
        if self.useGET:
            answers = [await self._call(what, b"GET", peerSAE, "dec_keys", query={"key_ID": keyId}, final=True)
                       for keyId in keyIds]
            got = [entry for answer in answers for entry in keyContainer(answer, what, 1, sizeBits)]
        else:
            answer = await self._call(what, b"POST", peerSAE, "dec_keys",
                                      body={"key_IDs": [{"key_ID": keyId} for keyId in keyIds]}, final=True)
            got = keyContainer(answer, what, len(keyIds), sizeBits)
        byId = {str(uuid.UUID(gotId)): key for gotId, key in got}
        if set(byId) != set(canonical):
            raise KeySourceError(f"{what}: asked for key{'s' if len(keyIds) > 1 else ''} {', '.join(keyIds)}, "
                                 f"got {', '.join(g for g, _ in got)}")
        return [byId[k] for k in canonical]

    async def _call(self, what: str, method: bytes, sae: str, operation: str, query: dict | None = None,
                    body: dict | None = None, final: bool = False) -> Any:
        """
        Make one request, within the deadline, and parse the JSON answer.

        @param what: names the request in errors.
        @param final: a 400 or 401 answer is a definite no (not temporary).
        @return: the parsed JSON of a 200 answer.
        @raise KeySourceError: anything else.
        """
        url = f"{self.baseURL.rstrip('/')}/api/v1/keys/{quote(sae, safe='')}/{operation}"
        if query:
            url += "?" + urlencode(query)
        d = Deferred.fromCoroutine(self._exchange(method, url.encode("ascii"), body))
        d.addTimeout(self.timeoutSeconds, self.reactor, onTimeoutCancel=_deadlinePassed)
        started = self.reactor.seconds()
        try:
            code, raw = await d
        except Exception as e:
            if self.metrics is not None:
                self.metrics.kmeRequest(operation, "error", self.reactor.seconds() - started)
            problem = _transportProblem(e, self.timeoutSeconds)
            if problem is None:
                # Not a failure we know: keep the traceback for whoever
                # debugs it, and still give the caller a KeySourceError.
                _log.failure("unexpected failure of {what}", what=what)
                problem = f"unexpected {type(e).__name__}"
            raise KeySourceError(f"{what}: {problem}")
        if self.metrics is not None:
            self.metrics.kmeRequest(operation, "ok" if code == 200 else f"http_{code}",
                                    self.reactor.seconds() - started)
        if code == 200:
            return parseJSON(raw, what)
        message = ""
        if code != 401:
            try:
                answer = parseJSON(raw, what)
            except KeySourceError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("message"), str):
                message = f" ({oneLine(answer['message'])})"
        raise KeySourceError(f"{what}: HTTP {code}{message}", temporary=not (final and code in (400, 401)))

    async def _exchange(self, method: bytes, url: bytes, body: dict | None) -> tuple[int, bytes]:
        """
        Send a request and read the whole (capped) answer.

        @return: the status code and body.
        """
        headers = Headers({b"accept": [b"application/json"]})
        producer = None
        if body is not None:
            headers.addRawHeader(b"content-type", b"application/json")
            producer = _BytesProducer(json.dumps(body).encode("utf-8"))
        response = await self._agent.request(method, url, headers, producer)
        return response.code, await readCapped(response, self.maxResponseBytes)

