"""
Tests of the embedded KME's HTTPS service (L{qutemail.qkd.kme},
L{qutemail.qkd.kmeweb}) over real loopback mutual-TLS sockets, driven by a
plain L{Agent} so every status code and body can be seen.

The helpers here are also used by L{tests.qkd.test_etsi014}.
"""

import base64
import datetime
import io
import json
import os

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseFailed, readBody
from twisted.web.http_headers import Headers

from qutemail.qkd.certs import KMEPKI, ensurePKI
from qutemail.qkd.etsi014 import MutualTLSPolicy
from qutemail.qkd.kme import EmbeddedKMEService, buildStandaloneKME, listenTLS, serverTLSOptions
from qutemail.qkd.kmecore import KEYS_NOT_FOUND, KME, SIZE_NOT_MULTIPLE_OF_8, PoolSettings, QKDLink
from qutemail.qkd.kmeweb import KMEResource, KMESite

SAES = ("sae-a", "sae-b", "sae-c")


def makePKI(testCase, saeIds=SAES + ("sae-d",)) -> KMEPKI:
    """
    @return: a fresh PKI in a temporary directory, valid now.
    """
    return ensurePKI(os.path.abspath(testCase.mktemp()), saeIds, datetime.datetime.now(datetime.timezone.utc))


async def startKME(testCase, pki: KMEPKI, kme: KME | None = None, clock=None) -> EmbeddedKMEService:
    """
    Start a KME on 127.0.0.1 (any port), stopped after the test.

    @param kme: the KME (default: C{kme-1} serving L{SAES} on a fresh link).
    @param clock: the pool's clock (default: a new L{Clock}).
    @return: the listening service.
    """
    kme = kme or KME("kme-1", SAES, QKDLink(PoolSettings()))
    service = EmbeddedKMEService(reactor, kme, pki, clock=clock or Clock(), name=kme.kmeId)
    service.startService()
    testCase.addCleanup(service.stopService)
    await service.whenListening()
    return service


def clientCertificate(pki: KMEPKI, saeId: str) -> PrivateCertificate:
    """
    @return: an SAE's certificate and key.
    """
    paths = pki.client(saeId)
    with open(paths.certPath, "rb") as c, open(paths.keyPath, "rb") as k:
        return PrivateCertificate.loadPEM(c.read() + k.read())


def trustRoot(pki: KMEPKI) -> Certificate:
    """
    @return: the PKI's CA certificate.
    """
    with open(pki.ca.certPath, "rb") as f:
        return Certificate.loadPEM(f.read())


def clientAgent(testCase, pki: KMEPKI, saeId: str | None, caPKI: KMEPKI | None = None) -> Agent:
    """
    @param saeId: whose certificate to show (C{None}: none).
    @param caPKI: the PKI whose CA to trust (default: C{pki}).
    @return: an agent whose kept-alive connections close after the test.
    """
    pool = HTTPConnectionPool(reactor)
    testCase.addCleanup(pool.closeCachedConnections)
    certificate = None if saeId is None else clientCertificate(pki, saeId)
    policy = MutualTLSPolicy(trustRoot(caPKI or pki), certificate)
    return Agent(reactor, contextFactory=policy, pool=pool)


async def fetch(agent: Agent, method: bytes, url: str, body: bytes | None = None):
    """
    Make a request and read the answer.

    @return: C{(code, headers, body)}.
    """
    producer = None if body is None else FileBodyProducer(io.BytesIO(body))
    response = await agent.request(method, url.encode("ascii"), Headers(), producer)
    return response.code, response.headers, await readBody(response)


class KMEServiceTests(TestCase):
    """
    One KME serving SAEs A, B and C (not D) over mutual TLS.
    """

    # Everything here takes well under a second; a hang is a bug.
    timeout = 10

    def setUp(self):
        """
        Start the KME; an agent for each SAE.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self):
        """
        Start the KME; an agent for each SAE.
        """
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.pki = makePKI(self)
        self.clock = Clock()
        self.link = QKDLink(PoolSettings(maxKeyCount=3, refillKeysPerSecond=1.0))
        self.service = await startKME(self, self.pki, KME("kme-1", SAES, self.link), self.clock)
        self.agents = {s: clientAgent(self, self.pki, s) for s in SAES + ("sae-d",)}

    async def call(self, sae: str, method: bytes, path: str, body=None):
        """
        Call the KME as C{sae}; a dict or list body is sent as JSON.

        @return: C{(code, headers, parsed JSON or raw body)}.
        """
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        code, headers, raw = await fetch(self.agents[sae], method, self.service.baseURL + path, body)
        if headers.getRawHeaders(b"content-type") == [b"application/json"]:
            return code, headers, json.loads(raw)
        return code, headers, raw

    async def test_status(self):
        """
        C{GET status} answers 200 with the standard's Status object, as JSON.
        """
        self.assertTrue(self.service.baseURL.startswith("https://localhost:"))
        self.assertEqual(await self.service.whenListening(), self.service.baseURL)
        code, _, status = await self.call("sae-a", b"GET", "/api/v1/keys/sae-b/status")
        self.assertEqual(code, 200)
        self.assertEqual(status, {
            "source_KME_ID": "kme-1", "target_KME_ID": "kme-1", "master_SAE_ID": "sae-a",
            "slave_SAE_ID": "sae-b", "key_size": 256, "stored_key_count": 3, "max_key_count": 3,
            "max_key_per_request": 128, "max_key_size": 1024, "min_key_size": 64, "max_SAE_ID_count": 0})

    async def test_encAndDecInBothForms(self):
        """
        Keys taken with C{enc_keys} (POST or GET) come back unchanged from
        C{dec_keys} (POST or GET) for the slave, once.
        """
        code, _, posted = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {"number": 2})
        self.assertEqual(code, 200)
        code, _, got = await self.call("sae-a", b"GET", "/api/v1/keys/sae-c/enc_keys?number=1&size=128")
        self.assertEqual(code, 200)
        self.assertEqual(len(base64.b64decode(got["keys"][0]["key"])), 16)
        first, second = posted["keys"]
        code, _, answer = await self.call("sae-b", b"GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={first['key_ID']}")
        self.assertEqual((code, answer), (200, {"keys": [first]}))
        code, _, answer = await self.call("sae-b", b"POST", "/api/v1/keys/sae-a/dec_keys",
                                          {"key_IDs": [{"key_ID": second["key_ID"]}]})
        self.assertEqual((code, answer), (200, {"keys": [second]}))
        code, _, answer = await self.call("sae-c", b"POST", "/api/v1/keys/sae-a/dec_keys",
                                          {"key_IDs": [{"key_ID": got["keys"][0]["key_ID"]}]})
        self.assertEqual((code, answer), (200, got))
        code, _, answer = await self.call("sae-b", b"GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={first['key_ID']}")
        self.assertEqual((code, answer["message"]), (400, KEYS_NOT_FOUND))

    async def test_refusals(self):
        """
        A non-slave gets a 401 with only a message, as does an SAE the KME
        does not serve (before its request is even parsed);
        a size not a multiple of 8 gets 400 with the standard's message.
        """
        _, _, taken = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {})
        keyId = taken["keys"][0]["key_ID"]
        unauthorised = {"message": "the SAE is not authorised for this request"}
        code, headers, body = await self.call("sae-c", b"GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={keyId}")
        self.assertEqual((code, body), (401, unauthorised))
        code, _, body = await self.call("sae-d", b"GET", "/api/v1/keys/sae-b/status")
        self.assertEqual((code, body), (401, unauthorised))
        code, _, body = await self.call("sae-d", b"POST", "/api/v1/keys/sae-b/enc_keys", b"{")
        self.assertEqual((code, body), (401, unauthorised))
        code, _, body = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {"size": 100})
        self.assertEqual((code, body["message"]), (400, SIZE_NOT_MULTIPLE_OF_8))
        code, _, body = await self.call("sae-a", b"GET", "/api/v1/keys/sae-b/enc_keys?number=1&size=100")
        self.assertEqual((code, body["message"]), (400, SIZE_NOT_MULTIPLE_OF_8))

    async def test_extensionNamed(self):
        """
        An C{extension_mandatory} refusal names each parameter it does not
        support in its C{details}.
        """
        code, _, answer = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys",
                                          {"extension_mandatory": [{"abc_route_type": "direct"},
                                                                   {"abc_transfer_method": "qkd"}]})
        self.assertEqual((code, answer["message"]), (400, "not all extension_mandatory parameters are supported"))
        self.assertEqual(answer["details"], [{"extension_mandatory_unsupported": "abc_route_type"},
                                             {"extension_mandatory_unsupported": "abc_transfer_method"}])

    async def test_upperCaseKeyId(self):
        """
        A key id asked for in upper case is the same key (UUIDs compare
        without regard to case), still delivered once.
        """
        _, _, taken = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {})
        [key] = taken["keys"]
        code, _, answer = await self.call("sae-b", b"POST", "/api/v1/keys/sae-a/dec_keys",
                                          {"key_IDs": [{"key_ID": key["key_ID"].upper()}]})
        self.assertEqual(code, 200)
        self.assertEqual(answer["keys"][0]["key"], key["key"])
        code, _, answer = await self.call("sae-b", b"POST", "/api/v1/keys/sae-a/dec_keys",
                                          {"key_IDs": [{"key_ID": key["key_ID"]}]})
        self.assertEqual((code, answer["message"]), (400, KEYS_NOT_FOUND))

    async def test_malformedRequests(self):
        """
        Unknown paths get 404, other methods 405 with C{Allow}, malformed
        parameters or JSON 400, an oversized body 400 too: each with a JSON
        message and no traceback.
        """
        cases = [
            (b"GET", "/", None, 404), (b"GET", "/api/v1/keys/sae-b", None, 404),
            (b"GET", "/api/v2/keys/sae-b/status", None, 404), (b"GET", "/api/v1/keys//status", None, 404),
            (b"GET", "/api/v1/keys/sae-b/status/", None, 404), (b"GET", "/api/v1/keys/sae-b/keys", None, 404),
            (b"POST", "/api/v1/keys/sae-b/status", b"{}", 405), (b"PUT", "/api/v1/keys/sae-b/enc_keys", b"{}", 405),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b"{", 400), (b"POST", "/api/v1/keys/sae-b/enc_keys", b"[]", 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": "1"}', 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": true}', 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b'{"size": NaN}', 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b'\xff', 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b"[" * 100_00, 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b'{"additional_slave_SAE_IDs": ["sae-c"]}', 400),
            (b"POST", "/api/v1/keys/sae-b/enc_keys", b'{"extension_mandatory": [{"x": 1}]}', 400),
            (b"GET", "/api/v1/keys/sae-b/enc_keys?number=x", None, 400),
            (b"GET", "/api/v1/keys/sae-b/enc_keys?number=1&number=2", None, 400),
            (b"POST", "/api/v1/keys/sae-a/dec_keys", b'{"key_IDs": "x"}', 400),
            (b"POST", "/api/v1/keys/sae-a/dec_keys", b'{"key_IDs": [{"key_ID": 5}]}', 400),
            (b"POST", "/api/v1/keys/sae-a/dec_keys", b'{}', 400),
            (b"POST", "/api/v1/keys/sae-a/dec_keys", b" " * 70_000, 400),
        ]
        for method, path, body, expected in cases:
            code, headers, answer = await self.call("sae-b", method, path, body)
            self.assertEqual(code, expected, (method, path, body[:20] if body else body))
            self.assertIsInstance(answer["message"], str)
            self.assertNotIn("Traceback", json.dumps(answer))
            if code == 405:
                self.assertIn(b"GET", headers.getRawHeaders(b"allow")[0])
        self.assertEqual(self.link.storedKeyCount(self.clock.seconds()), 3)

    async def test_emptyPoolThenRefill(self):
        """
        With the pool empty, C{enc_keys} gets 503 with a message; after the
        pool's clock advances, keys flow again.
        """
        code, _, _ = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {"number": 3})
        self.assertEqual(code, 200)
        code, _, body = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {"number": 1})
        self.assertEqual(code, 503)
        self.assertIn("try again", body["message"])
        self.clock.advance(1)
        code, _, body = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {"number": 1})
        self.assertEqual((code, len(body["keys"])), (200, 1))

    async def test_oneLogLinePerRequestNoKeys(self):
        """
        Each request logs one line with the caller, operation, status and
        key count; no key material appears in any log event.
        """
        _, _, taken = await self.call("sae-a", b"POST", "/api/v1/keys/sae-b/enc_keys", {"number": 2})
        await self.call("sae-b", b"POST", "/api/v1/keys/sae-a/dec_keys",
                        {"key_IDs": [{"key_ID": k["key_ID"]} for k in taken["keys"]]})
        await self.call("sae-d", b"GET", "/api/v1/keys/sae-b/status")
        lines = [e for e in self.events if e.get("operation")]
        self.assertEqual([(e["caller"], e["operation"], e["status"], e["keyCount"]) for e in lines],
                         [("sae-a", "enc_keys", 200, 2), ("sae-b", "dec_keys", 200, 2), ("sae-d", "status", 401, 0)])
        text = "\n".join(formatEvent(e) + repr(e) for e in self.events)
        for key in taken["keys"]:
            self.assertNotIn(key["key"], text)
            self.assertNotIn(repr(base64.b64decode(key["key"])), text)

    async def test_refusedAtTLS(self):
        """
        A client with no certificate, or one from another CA, never reaches
        HTTP: the handshake fails and no request is logged.
        """
        other = makePKI(self, ["sae-a"])
        for agent in (clientAgent(self, self.pki, None), clientAgent(self, other, "sae-a", caPKI=self.pki)):
            with self.assertRaises(ResponseFailed) as caught:
                await fetch(agent, b"GET", self.service.baseURL + "/api/v1/keys/sae-b/status")
            self.assertTrue(any(r.check(SSL.Error) for r in caught.exception.reasons), caught.exception.reasons)
        self.assertEqual([e for e in self.events if e.get("operation")], [])

    async def test_stopClosesEverything(self):
        """
        Stopping the service closes the port and the kept-alive connections.
        """
        await self.call("sae-a", b"GET", "/api/v1/keys/sae-b/status")
        listener = self.service._listener
        self.assertEqual(len(listener.factory.protocols), 1)
        await self.service.stopService()
        self.assertEqual(len(listener.factory.protocols), 0)
        self.assertIsNone(self.service.baseURL)
        self.assertFalse(listener.port.connected)

    async def test_listenFailure(self):
        """
        A port already taken fails L{EmbeddedKMEService.whenListening} and
        is logged.
        """
        busy = EmbeddedKMEService(reactor, KME("kme-2", ["sae-a"], QKDLink()), self.pki,
                                  endpoint=f"tcp:{self.service.portNumber}:interface=127.0.0.1")
        busy.startService()
        await self.assertFailure(busy.whenListening(), CannotListenError)
        await self.assertFailure(busy.whenListening(), CannotListenError)
        await busy.stopService()
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)

    async def test_internalError(self):
        """
        A fault of ours is logged and answered with a bare JSON 500, never a
        traceback.
        """
        def broken(request):
            """
            Fail as a bug would.
            """
            return 1 // 0

        resource = KMEResource(KME("kme-9", ["sae-a"], QKDLink()), Clock(), callerOf=broken)
        listener = await listenTLS(reactor, "tcp:0:interface=127.0.0.1", serverTLSOptions(self.pki),
                                   KMESite(resource, reactor))
        self.addCleanup(listener.stop)
        code, _, body = await fetch(self.agents["sae-a"], b"GET",
                                    f"https://localhost:{listener.portNumber}/api/v1/keys/sae-b/status")
        self.assertEqual((code, json.loads(body)), (500, {"message": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_standalone(self):
        """
        L{buildStandaloneKME} makes the PKI and a KME serving the given SAEs
        that answers over mutual TLS.
        """
        directory = os.path.abspath(self.mktemp())
        service = buildStandaloneKME(reactor, directory, "kme-x", ["sae-b", "sae-a"])
        service.startService()
        self.addCleanup(service.stopService)
        url = await service.whenListening()
        self.assertEqual(sorted(service.pki.clients), ["sae-a", "sae-b"])
        code, _, body = await fetch(clientAgent(self, service.pki, "sae-a"), b"GET", url + "/api/v1/keys/sae-b/status")
        self.assertEqual((code, json.loads(body)["source_KME_ID"]), (200, "kme-x"))


class PairModeServiceTests(TestCase):
    """
    Two KME services on one link, each with its own listener and SAEs.
    """

    timeout = 10

    async def test_keyCrossesTheLink(self):
        """
        SAE A takes a key from KME 1 for SAE B; SAE B gets the same key from
        KME 2, and gets 401 from KME 1.
        """
        pki = makePKI(self)
        link = QKDLink()
        one = await startKME(self, pki, KME("kme-1", ["sae-a"], link))
        two = await startKME(self, pki, KME("kme-2", ["sae-b"], link))
        self.assertNotEqual(one.portNumber, two.portNumber)
        a, b = clientAgent(self, pki, "sae-a"), clientAgent(self, pki, "sae-b")
        code, _, raw = await fetch(a, b"POST", one.baseURL + "/api/v1/keys/sae-b/enc_keys", b"{}")
        [taken] = json.loads(raw)["keys"]
        path = f"/api/v1/keys/sae-a/dec_keys?key_ID={taken['key_ID']}"
        code, _, _ = await fetch(b, b"GET", one.baseURL + path)
        self.assertEqual(code, 401)
        code, _, raw = await fetch(b, b"GET", two.baseURL + path)
        self.assertEqual((code, json.loads(raw)), (200, {"keys": [taken]}))
