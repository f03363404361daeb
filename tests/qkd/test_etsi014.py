"""
Tests of L{ETSI014KeySource} over real loopback mutual-TLS sockets: against
the embedded KME, and against small fake KMEs that answer wrongly, slowly
or not at all.
"""

import base64
import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from qutemail.interfaces import IQKDKeySource, KeySourceError, KMEStatus
from qutemail.qkd.etsi014 import ETSI014KeySource, KMEEndpoints, MutualTLSPolicy
from qutemail.qkd.kmecore import KEYS_NOT_FOUND, KME, PoolSettings, QKDLink
from qutemail.qkd.kmeweb import KMESite
from tests.qkd.test_kmeservice import SAES, makePKI, startKME, trustRoot

KEY_ID = "5b3f2a6e-1c4d-4e8f-9a0b-7c6d5e4f3a2b"
KEY = bytes(range(32))


def keySource(testCase, pki, url: str, saeId: str, **kwargs) -> ETSI014KeySource:
    """
    @return: a key source for C{saeId}, its connections closed after the
        test.
    """
    paths = pki.client(saeId)
    source = ETSI014KeySource.fromFiles(reactor, url, paths.certPath, paths.keyPath, pki.ca.certPath, **kwargs)
    testCase.addCleanup(source.close)
    return source


def keysAnswer(keys, name: str = "keys") -> tuple[int, bytes]:
    """
    @param keys: C{(keyId, material)} pairs; material as bytes or as the
        text to send.
    @return: a 200 answer holding a key container.
    """
    entries = [{"key_ID": i, "key": base64.b64encode(k).decode() if isinstance(k, bytes) else k} for i, k in keys]
    return 200, json.dumps({name: entries}).encode()


# What a permissive KME says of a link (ETSI GS QKD 014 §6.1).
STATUS = {
    "source_KME_ID": "kme-canned", "target_KME_ID": "kme-canned", "master_SAE_ID": "sae-a",
    "slave_SAE_ID": "sae-b", "key_size": 256, "stored_key_count": 1000, "max_key_count": 1000,
    "max_key_per_request": 128, "max_key_size": 1024, "min_key_size": 64, "max_SAE_ID_count": 0,
}


class CannedKME(Resource):
    """
    A fake KME: every request gets the same answer, except a status
    request, which gets C{status} (the client reads it before its first
    C{enc_keys}).

    @ivar answer: C{(code, body)}, or C{None} never to answer.
    @ivar status: the status object, or C{None} to answer status requests
        like the others.
    @ivar requests: C{(method, uri, body)} of each request but the status
        requests answered with C{status}.
    @ivar statusRequests: how many of those there were.
    """

    isLeaf = True

    def __init__(self, answer: tuple[int, bytes] | None, status: dict | None = STATUS) -> None:
        """
        @param answer: C{(code, body)}, or C{None} never to answer.
        @param status: see L{status}.
        """
        super().__init__()
        self.answer = answer
        self.status = status
        self.requests: list[tuple[bytes, bytes, bytes]] = []
        self.statusRequests = 0

    def render(self, request):
        """
        Record the request; answer as told.
        """
        if self.status is not None and request.path.endswith(b"/status"):
            self.statusRequests += 1
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.status).encode("utf-8")
        request.content.seek(0)
        self.requests.append((request.method, request.uri, request.content.read()))
        if self.answer is None:
            return NOT_DONE_YET
        request.setResponseCode(self.answer[0])
        request.setHeader(b"content-type", b"application/json")
        return self.answer[1]


class EmbeddedKMETests(TestCase):
    """
    The key source against the embedded KME serving SAEs A, B and C.
    """

    timeout = 10

    def setUp(self):
        """
        Start the KME (three keys, one more per second of its clock).
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self):
        """
        Start the KME and make a key source for each SAE.
        """
        self.pki = makePKI(self)
        self.clock = Clock()
        link = QKDLink(PoolSettings(maxKeyCount=3, refillKeysPerSecond=1.0))
        self.service = await startKME(self, self.pki, KME("kme-1", SAES, link), self.clock)
        self.url = self.service.baseURL
        self.sources = {s: keySource(self, self.pki, self.url, s) for s in SAES + ("sae-d",)}

    async def test_status(self):
        """
        C{status} gives the link's status as a L{KMEStatus}.
        """
        source = self.sources["sae-a"]
        self.assertTrue(verifyObject(IQKDKeySource, source))
        self.assertEqual(await source.status("sae-b"), KMEStatus(
            sourceKMEId="kme-1", targetKMEId="kme-1", masterSAEId="sae-a", slaveSAEId="sae-b", keySize=256,
            storedKeyCount=3, maxKeyCount=3, maxKeyPerRequest=128, maxKeySize=1024, minKeySize=64,
            maxSAEIdCount=0))

    async def test_bothForms(self):
        """
        Whether C{enc_keys} and C{dec_keys} go as POST or GET, the slave
        gets the very key the master took, of the asked size.
        """
        for encGET, decGET, size in [(False, False, 256), (True, True, 128), (False, True, 512), (True, False, 64)]:
            master = keySource(self, self.pki, self.url, "sae-a", useGET=encGET)
            slave = keySource(self, self.pki, self.url, "sae-b", useGET=decGET)
            keyId, key = await master.encKey("sae-b", size)
            self.assertEqual(len(key), size // 8)
            self.assertEqual(await slave.decKey("sae-a", keyId, sizeBits=size), key)
            self.clock.advance(10)

    async def test_severalKeysAtOnce(self):
        """
        C{encKeys} takes several distinct keys in one request (POST and
        GET), each fetchable by the slave, and the pool shrinks by as many.
        """
        for useGET in (False, True):
            master = keySource(self, self.pki, self.url, "sae-a", useGET=useGET)
            before = (await master.status("sae-b")).storedKeyCount
            keys = await master.encKeys("sae-b", 256, 3)
            self.assertEqual(len({keyId for keyId, _ in keys}), 3)
            self.assertEqual((await master.status("sae-b")).storedKeyCount, before - 3)
            for keyId, key in keys:
                self.assertEqual(await self.sources["sae-b"].decKey("sae-a", keyId), key)
            self.clock.advance(10)

    async def test_secondDecFails(self):
        """
        A key is delivered once: asking again is a permanent error quoting
        the KME.
        """
        keyId, key = await self.sources["sae-a"].encKey("sae-b")
        self.assertEqual(await self.sources["sae-b"].decKey("sae-a", keyId), key)
        e = await self.assertFailure(self.sources["sae-b"].decKey("sae-a", keyId), KeySourceError)
        self.assertFalse(e.temporary)
        self.assertIn("HTTP 400", str(e))
        self.assertIn(KEYS_NOT_FOUND, str(e))

    async def test_notTheSlave(self):
        """
        C{dec_keys} by an SAE the key was not taken for is a permanent 401;
        C{enc_keys} by an SAE the KME does not serve is a temporary one (an
        administrator may fix it while mail waits).
        """
        keyId, _ = await self.sources["sae-a"].encKey("sae-b")
        e = await self.assertFailure(self.sources["sae-c"].decKey("sae-a", keyId), KeySourceError)
        self.assertEqual((str(e), e.temporary), ("KME dec_keys for SAE sae-a: HTTP 401", False))
        # (It learns that from the status the client reads first.)
        e = await self.assertFailure(self.sources["sae-d"].encKey("sae-b"), KeySourceError)
        self.assertEqual((str(e), e.temporary), ("KME status for SAE sae-b: HTTP 401", True))

    async def test_emptyPool(self):
        """
        An empty pool is a temporary error; once the KME's clock moves on,
        keys come again.
        """
        for _ in range(3):
            await self.sources["sae-a"].encKey("sae-b")
        e = await self.assertFailure(self.sources["sae-a"].encKey("sae-b"), KeySourceError)
        self.assertTrue(e.temporary)
        self.assertIn("HTTP 503", str(e))
        self.clock.advance(1)
        self.assertEqual(len((await self.sources["sae-a"].encKey("sae-b"))[1]), 32)

    async def test_checkedLocally(self):
        """
        A size that is not a positive multiple of 8, or a key id that is not
        a UUID, is a permanent error and sends nothing.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for size in (100, 0, -8, True):
            e = await self.assertFailure(self.sources["sae-a"].encKey("sae-b", size), KeySourceError)
            self.assertFalse(e.temporary)
        e = await self.assertFailure(self.sources["sae-b"].decKey("sae-a", "../status"), KeySourceError)
        self.assertFalse(e.temporary)
        self.assertEqual([e for e in events if e.get("operation")], [])

    async def test_connectionsReused(self):
        """
        Many requests share one kept-alive TLS connection.
        """
        site = self.service._listener.factory.wrappedFactory
        built = []
        self.patch(site, "buildProtocol", lambda addr: built.append(addr) or KMESite.buildProtocol(site, addr))
        for _ in range(6):
            await self.sources["sae-a"].status("sae-b")
        self.assertEqual(len(built), 1)

    async def test_policyAskedOnce(self):
        """
        The TLS policy builds the connection creator once per KME, not once
        per request: requests on a kept-alive connection, and a new
        connection after the old ones are closed, reuse it.
        """
        asked = []
        policy = MutualTLSPolicy.creatorForNetloc
        self.patch(MutualTLSPolicy, "creatorForNetloc",
                   lambda self, host, port: asked.append((host, port)) or policy(self, host, port))
        source = keySource(self, self.pki, self.url, "sae-a")
        for _ in range(3):
            await source.status("sae-b")
        await source.close()
        await source.status("sae-b")
        self.assertEqual(asked, [(b"localhost", self.service.portNumber)])

    def test_httpsOnlyEndpoints(self):
        """
        L{KMEEndpoints} makes no endpoint for a URL that is not HTTPS.
        """
        endpoints = KMEEndpoints(reactor, MutualTLSPolicy(trustRoot(self.pki)), 1.0)
        self.assertRaises(SchemeNotSupported, endpoints.endpointForURI, URI.fromBytes(b"http://localhost:1/"))

    async def test_noKeyMaterialLogged(self):
        """
        Neither side logs key material.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        keyId, key = await self.sources["sae-a"].encKey("sae-b")
        await self.sources["sae-b"].decKey("sae-a", keyId)
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("dec_keys", text)
        self.assertNotIn(base64.b64encode(key).decode(), text)
        self.assertNotIn(repr(key), text)

    def test_httpsOnly(self):
        """
        A KME URL that is not HTTPS is refused.
        """
        paths = self.pki.client("sae-a")
        for url in ("http://localhost:1", "https://", "localhost"):
            self.assertRaises(ValueError, ETSI014KeySource.fromFiles, reactor, url, paths.certPath, paths.keyPath,
                              self.pki.ca.certPath)


class PairModeTests(TestCase):
    """
    Two embedded KMEs on one link.
    """

    timeout = 10

    async def test_keyCrossesTheLink(self):
        """
        SAE A gets a key from KME 1; SAE B gets the same key from KME 2.
        """
        pki = makePKI(self)
        link = QKDLink()
        one = await startKME(self, pki, KME("kme-1", ["sae-a"], link))
        two = await startKME(self, pki, KME("kme-2", ["sae-b"], link))
        a, b = keySource(self, pki, one.baseURL, "sae-a"), keySource(self, pki, two.baseURL, "sae-b")
        self.assertEqual((await a.status("sae-b")).targetKMEId, "kme-2")
        keyId, key = await a.encKey("sae-b")
        self.assertEqual(await b.decKey("sae-a", keyId), key)
