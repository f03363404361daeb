"""
Tests for L{qutemail.qkd.etsi014}: the key source of an SAE of the
embedded KME, and the key source against KMEs that misbehave.
"""

import base64
import datetime
import json
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from qutemail.interfaces import IQKDKeySource, KeySourceError
from qutemail.qkd.certs import makeLeaf
from qutemail.qkd.etsi014 import ETSI014KeySource
from qutemail.qkd.kme import EmbeddedKeySource, EmbeddedKMEService, listenTLS, serverTLSOptions
from qutemail.qkd.kmecore import KME, QKDLink
from qutemail.qkd.kmeweb import KMESite
from tests.qkd.test_kmeservice import SAES, clientCertificate, makePKI, startKME, trustRoot

from tests.qkd.test_etsi014 import KEY_ID, KEY, keySource, keysAnswer, STATUS, CannedKME


class EmbeddedKeySourceTests(TestCase):
    """
    L{EmbeddedKeySource}: the key source of an SAE of an embedded KME.
    """

    timeout = 10

    async def test_waitsForTheKME(self):
        """
        Calls made before the KME listens wait for it, then go over the
        real client.
        """
        pki = makePKI(self)
        service = EmbeddedKMEService(reactor, KME("kme-1", SAES, QKDLink()), pki)
        self.addCleanup(service.stopService)
        a = EmbeddedKeySource.forSAE(service, "sae-a", timeoutSeconds=5)
        b = EmbeddedKeySource.forSAE(service, "sae-b")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertTrue(verifyObject(IQKDKeySource, a))
        d = a.encKey("sae-b")
        self.assertNoResult(d)
        service.startService()
        keyId, key = await d
        self.assertEqual(await b.decKey("sae-a", keyId), key)
        self.assertEqual((await a.status("sae-b")).storedKeyCount, 999)
        self.assertEqual(a._source.timeoutSeconds, 5)

    async def test_notListening(self):
        """
        A KME that cannot listen gives a temporary error.
        """
        pki = makePKI(self)
        taken = await startKME(self, pki)
        service = EmbeddedKMEService(reactor, KME("kme-2", SAES, QKDLink()), pki,
                                     endpoint=f"tcp:{taken.portNumber}:interface=127.0.0.1")
        source = EmbeddedKeySource.forSAE(service, "sae-a")
        service.startService()
        self.addCleanup(service.stopService)
        e = await self.assertFailure(source.encKey("sae-b"), KeySourceError)
        self.assertTrue(e.temporary)
        self.assertIn("not listening", str(e))
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)


class FakeKMETests(TestCase):
    """
    The key source against KMEs that misbehave.
    """

    timeout = 10

    def setUp(self):
        """
        One PKI for all the fake KMEs.
        """
        self.pki = makePKI(self)

    async def serve(self, answer, options=None, status=STATUS) -> CannedKME:
        """
        Serve a L{CannedKME} over mutual TLS; C{self.url} is its URL.

        @param options: the server's TLS options (default: the PKI's KME
            certificate, client certificates required).
        @param status: its status object (see L{CannedKME}).
        """
        resource = CannedKME(answer, status)
        listener = await listenTLS(reactor, "tcp:0:interface=127.0.0.1", options or serverTLSOptions(self.pki),
                                   KMESite(resource, reactor))
        self.addCleanup(listener.stop)
        self.url = f"https://localhost:{listener.portNumber}"
        return resource

    async def failure(self, d: Deferred, temporary: bool = True) -> str:
        """
        Assert that C{d} fails with a one-line L{KeySourceError}.

        @return: its message.
        """
        e = await self.assertFailure(d, KeySourceError)
        self.assertEqual(e.temporary, temporary, str(e))
        self.assertNotIn("\n", str(e))
        return str(e)

    async def test_wireForms(self):
        """
        POST sends the standard's JSON bodies, GET its query parameters; a
        key container spelled C{Keys} is accepted.
        """
        canned = await self.serve(keysAnswer([(KEY_ID, KEY)], name="Keys"))
        for useGET in (False, True):
            source = keySource(self, self.pki, self.url, "sae-a", useGET=useGET)
            self.assertEqual(await source.encKey("sae b"), (KEY_ID, KEY))
            self.assertEqual(await source.decKey("sae-b", KEY_ID), KEY)
        self.assertEqual([(m, u, json.loads(b) if b else b) for m, u, b in canned.requests], [
            (b"POST", b"/api/v1/keys/sae%20b/enc_keys", {"number": 1, "size": 256}),
            (b"POST", b"/api/v1/keys/sae-b/dec_keys", {"key_IDs": [{"key_ID": KEY_ID}]}),
            (b"GET", b"/api/v1/keys/sae%20b/enc_keys?number=1&size=256", b""),
            (b"GET", b"/api/v1/keys/sae-b/dec_keys?key_ID=" + KEY_ID.encode(), b""),
        ])

    async def test_wrongAnswers(self):
        """
        Garbage, a wrong count, size, encoding or id, and a malformed status
        are temporary errors that name the problem and hold no key
        material.
        """
        other = "0f0e0d0c-0b0a-4908-8706-050403020100"
        cases = [
            ((200, b"<html>oops</html>"), "not valid JSON"),
            ((200, b'{"keys": [], "keys": []}'), "not valid JSON"),
            ((200, b"[]"), "not a JSON object"),
            ((200, b'{"key": []}'), "no key list"),
            (keysAnswer([(KEY_ID, KEY), (other, KEY)]), "asked for 1 keys, got 2"),
            (keysAnswer([(KEY_ID, KEY[:31])]), "248 bits, expected 256"),
            (keysAnswer([(KEY_ID, "not base64!")]), "not valid base64"),
            (keysAnswer([("key-1", KEY)]), "not a UUID"),
            (keysAnswer([(other, KEY)]), f"asked for key {KEY_ID}, got {other}"),
            ((500, b"<html>\nInternal\n</html>"), "HTTP 500"),
            ((503, b'{"message": "busy\\nreally"}'), "HTTP 503 (busy really)"),
            ((400, b'{"message": "no"}'), "HTTP 400 (no)"),
        ]
        for answer, expected in cases:
            await self.serve(answer)
            source = keySource(self, self.pki, self.url, "sae-a")
            d = source.encKey("sae-b") if "asked for key" not in expected else source.decKey("sae-b", KEY_ID, 256)
            message = await self.failure(d)
            self.assertIn(expected, message)
            self.assertNotIn(base64.b64encode(KEY[:31]).decode(), message)
        await self.serve((200, json.dumps({"source_KME_ID": "k", "key_size": "256"}).encode()), status=None)
        self.assertIn("is missing", await self.failure(keySource(self, self.pki, self.url, "sae-a").status("sae-b")))
        # A status the client cannot read stops enc_keys before it asks.
        canned = await self.serve(keysAnswer([(KEY_ID, KEY)]), status={"source_KME_ID": "k"})
        self.assertIn("KME status for SAE sae-b",
                      await self.failure(keySource(self, self.pki, self.url, "sae-a").encKey("sae-b")))
        self.assertEqual(canned.requests, [])

    async def test_statusLimitsRespected(self):
        """
        The link's status is read once: more keys than its
        C{max_key_per_request} are taken in several requests, and a size
        outside C{min_key_size}..C{max_key_size} is refused (permanently)
        without asking.  After a failure the status is read again.
        """
        other = "0b5a8cde-54b8-4e2e-a9a2-19c1d0e2b8f4"
        canned = await self.serve(keysAnswer([(KEY_ID, KEY)]),
                                  status=STATUS | {"max_key_per_request": 1, "min_key_size": 256,
                                                   "max_key_size": 256})
        source = keySource(self, self.pki, self.url, "sae-a")
        with self.assertRaises(KeySourceError) as caught:
            await source.encKeys("sae-b", 256, 3)
        # Three one-key requests were made (the canned KME repeats its key id).
        self.assertEqual([json.loads(b) for _, _, b in canned.requests], [{"number": 1, "size": 256}] * 3)
        self.assertIn("same key id twice", str(caught.exception))
        self.assertEqual(canned.statusRequests, 1)
        message = await self.failure(source.encKey("sae-b", 512), temporary=False)
        self.assertIn("key size 512 is outside the KME's 256..256 bits", message)
        self.assertEqual(len(canned.requests), 3)
        self.assertEqual(canned.statusRequests, 2)
        canned.answer = keysAnswer([(other, KEY)])
        self.assertEqual(await source.encKey("sae-b"), (other, KEY))
        self.assertEqual(await source.encKey("sae-b"), (other, KEY))
        self.assertEqual(canned.statusRequests, 3)

    async def test_kmeIdChecked(self):
        """
        With C{kmeId}, the status must name that KME (a permanent refusal
        otherwise) and so must its certificate (the handshake fails).
        """
        await self.serve(keysAnswer([(KEY_ID, KEY)]))
        right = keySource(self, self.pki, self.url, "sae-a", kmeId="localhost")
        message = await self.failure(right.encKey("sae-b"), temporary=False)
        self.assertIn("the KME says it is 'kme-canned', not 'localhost'", message)
        named = await self.serve(keysAnswer([(KEY_ID, KEY)]), status=STATUS | {"source_KME_ID": "localhost"})
        self.assertEqual(await keySource(self, self.pki, self.url, "sae-a", kmeId="localhost").encKey("sae-b"),
                         (KEY_ID, KEY))
        self.assertEqual(named.statusRequests, 1)
        # The KME's certificate carries "localhost" but not "kme-7".
        wrong = await self.serve(keysAnswer([(KEY_ID, KEY)]), status=STATUS | {"source_KME_ID": "kme-7"})
        message = await self.failure(keySource(self, self.pki, self.url, "sae-a", kmeId="kme-7").encKey("sae-b"))
        self.assertIn("KME status for SAE sae-b", message)
        self.assertEqual((wrong.statusRequests, wrong.requests), (0, []))
        self.flushLoggedErrors()

    async def test_decKeysConformance(self):
        """
        C{dec_keys}, in its POST and GET forms, meets every malformed
        answer that C{enc_keys} meets with the same one-line error and no
        key material: garbage, a wrong count, a key of the wrong length,
        bad base64 or ids, and 400/401/503 answers with or without a body
        (400 and 401 permanent: the key will not appear; 503 and the
        rest temporary).
        """
        other = "0f0e0d0c-0b0a-4908-8706-050403020100"
        cases = [
            ((200, b"<html>oops</html>"), "not valid JSON", True),
            ((200, b"[]"), "not a JSON object", True),
            ((200, b'{"key": []}'), "no key list", True),
            (keysAnswer([(KEY_ID, KEY), (other, KEY)]), "asked for 1 keys, got 2", True),
            (keysAnswer([(KEY_ID, KEY[:31])]), "248 bits, expected 256", True),
            (keysAnswer([(KEY_ID, KEY + b"x")]), "264 bits, expected 256", True),
            (keysAnswer([(KEY_ID, "not base64!")]), "not valid base64", True),
            (keysAnswer([("key-1", KEY)]), "not a UUID", True),
            (keysAnswer([(other, KEY)]), f"asked for key {KEY_ID}, got {other}", True),
            ((400, b'{"message": "one or more keys specified are not found on KME"}'),
             "HTTP 400 (one or more keys specified are not found on KME)", False),
            ((401, b""), "HTTP 401", False),
            ((401, b'{"message": "not yours"}'), "HTTP 401", False),
            ((503, b'{"message": "busy"}'), "HTTP 503 (busy)", True),
            ((503, b""), "HTTP 503", True),
        ]
        for useGET in (False, True):
            for answer, expected, temporary in cases:
                canned = await self.serve(answer)
                source = keySource(self, self.pki, self.url, "sae-b", useGET=useGET)
                message = await self.failure(source.decKey("sae-a", KEY_ID, 256), temporary)
                self.assertIn(expected, message)
                self.assertTrue(message.startswith("KME dec_keys for SAE sae-a: "), message)
                self.assertNotIn(base64.b64encode(KEY[:31]).decode(), message)
                [(method, uri, _)] = canned.requests
                self.assertEqual(method, b"GET" if useGET else b"POST")
                self.assertTrue(uri.startswith(b"/api/v1/keys/sae-a/dec_keys"), uri)
                # dec_keys needs no status first.
                self.assertEqual(canned.statusRequests, 0)

    async def test_decKeysSeveral(self):
        """
        C{decKeys} asks for several keys in one POST and gives them in the
        order asked, whatever order the KME answers in; a key missing from
        the answer fails them all.
        """
        other = "0f0e0d0c-0b0a-4908-8706-050403020100"
        canned = await self.serve(keysAnswer([(other, KEY[::-1]), (KEY_ID, KEY)]))
        source = keySource(self, self.pki, self.url, "sae-b")
        self.assertEqual(await source.decKeys("sae-a", [KEY_ID, other], 256), [KEY, KEY[::-1]])
        [(method, _, body)] = canned.requests
        self.assertEqual(method, b"POST")
        self.assertEqual(json.loads(body), {"key_IDs": [{"key_ID": KEY_ID}, {"key_ID": other}]})
        third = "1f0e0d0c-0b0a-4908-8706-050403020100"
        await self.serve(keysAnswer([(other, KEY), (third, KEY)]))
        source = keySource(self, self.pki, self.url, "sae-b")
        message = await self.failure(source.decKeys("sae-a", [KEY_ID, other]), True)
        self.assertIn(f"asked for keys {KEY_ID}, {other}, got {other}, {third}", message)

    async def test_decRefusedIsPermanent(self):
        """
        A 400 or 401 to C{dec_keys} is permanent; a 503 is not.
        """
        for code, temporary in ((400, False), (401, False), (503, True)):
            await self.serve((code, b'{"message": "one or more keys specified are not found on KME"}'))
            source = keySource(self, self.pki, self.url, "sae-b")
            await self.failure(source.decKey("sae-a", KEY_ID), temporary)

    async def test_tooLarge(self):
        """
        An answer past the size cap is a temporary error.
        """
        await self.serve((200, b'{"keys": [' + b" " * 300_000 + b"]}"))
        source = keySource(self, self.pki, self.url, "sae-a", maxResponseBytes=100_000)
        self.assertIn("too large", await self.failure(source.encKey("sae-b")))

    async def test_neverAnswers(self):
        """
        A KME that accepts the request and never answers gives a temporary
        error once the deadline passes.
        """
        canned = await self.serve(None)
        source = keySource(self, self.pki, self.url, "sae-a", timeoutSeconds=0.3)
        started = time.monotonic()
        self.assertIn("no answer within 0.3 s", await self.failure(source.encKey("sae-b")))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(len(canned.requests), 1)

    async def test_unreachable(self):
        """
        A port nobody listens on is a temporary connection error.
        """
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        url = f"https://localhost:{port.getHost().port}"
        await port.stopListening()
        message = await self.failure(keySource(self, self.pki, url, "sae-a").status("sae-b"))
        self.assertIn("conn", message)

    async def test_serverNotTrusted(self):
        """
        A KME whose certificate is not from our CA, or not for the host we
        asked for, fails the TLS handshake: a temporary error.
        """
        stranger = makePKI(self, ["sae-a"])
        await self.serve(keysAnswer([(KEY_ID, KEY)]), serverTLSOptions(stranger))
        self.assertIn("TLS failure", await self.failure(keySource(self, self.pki, self.url, "sae-a").encKey("x")))
        canned = await self.serve(keysAnswer([(KEY_ID, KEY)]), self.caSigned(["kme.example.test"], ["127.0.0.1"]))
        self.assertIn("TLS failure", await self.failure(keySource(self, self.pki, self.url, "sae-a").encKey("x")))
        self.assertEqual(canned.requests, [])

    def caSigned(self, dnsNames=(), ipAddresses=(), commonName="localhost") -> ssl.CertificateOptions:
        """
        @return: server TLS options with a certificate from our own CA,
            with these subjectAltNames (none: no extension at all).
        """
        with open(self.pki.ca.keyPath, "rb") as f:
            caKey = serialization.load_pem_private_key(f.read(), None)
        with open(self.pki.ca.certPath, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        leaf, key = makeLeaf(ca, caKey, commonName, datetime.datetime.now(datetime.timezone.utc), server=True,
                             dnsNames=dnsNames, ipAddresses=ipAddresses)
        return ssl.PrivateCertificate.loadPEM(
            leaf.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())).options()

    async def test_noSubjectAltName(self):
        """
        A certificate from our own CA without any subjectAltName (an SAE's
        certificate, say, with the KME's host name as its CN) fails the
        handshake: no key is asked for, let alone taken.
        """
        canned = await self.serve(keysAnswer([(KEY_ID, KEY)]), self.caSigned(commonName="localhost"))
        message = await self.failure(keySource(self, self.pki, self.url, "sae-a").encKey("sae-b"))
        self.assertIn("TLS failure", message)
        self.assertEqual(canned.requests, [])

    async def test_subjectAltNameChecked(self):
        """
        A certificate from our CA passes only when a subjectAltName names
        the host of the URL.
        """
        canned = await self.serve(keysAnswer([(KEY_ID, KEY)]), self.caSigned(["kme.other.test"]))
        self.assertIn("TLS failure", await self.failure(keySource(self, self.pki, self.url, "sae-a").encKey("b")))
        self.assertEqual(canned.requests, [])
        await self.serve(keysAnswer([(KEY_ID, KEY)]), self.caSigned(["localhost"]))
        self.assertEqual(await keySource(self, self.pki, self.url, "sae-a").encKey("sae-b"), (KEY_ID, KEY))

    def test_clientCertificateLoaded(self):
        """
        L{ETSI014KeySource.fromFiles} shows the SAE's own certificate.
        """
        paths = self.pki.client("sae-b")
        source = ETSI014KeySource.fromFiles(reactor, "https://localhost:1", paths.certPath, paths.keyPath,
                                            self.pki.ca.certPath)
        self.assertEqual(source.clientCertificate.getSubject().commonName, b"sae-b")
        self.assertEqual(source.clientCertificate.dump(1), clientCertificate(self.pki, "sae-b").dump(1))
        self.assertEqual(source.trustRoot, trustRoot(self.pki))
