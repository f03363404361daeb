"""
Tests for L{qutemail.pipeline.dkimverify}: every DKIM signature of a
message verified, with keys served by the loopback DNS server.
"""

import functools
import io
import os

import dkim
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.pipeline.dkim import RSA_SHA256, SigningKey, generateKey, signHeader
from qutemail.pipeline.dkimverify import (
    MAX_SIGNATURES, DKIMResult, DKIMVerifier, isUnsigned, verifyBlocking, verifyMessageBlocking,
)
from tests.dnsserver import SERVFAIL, SILENT, startDNSServer

MESSAGE = (b"From: Alice <alice@a.test>\n"
           b"To: bob@example.test\n"
           b"Subject: Hello\n"
           b"Date: Mon, 1 Jan 2024 12:00:00 +0000\n"
           b"\n"
           b"Hi Bob,  \n"
           b"\n"
           b"see you.\n")
DNS_TIMEOUT_SECONDS = 1.0


@functools.cache
def rsaKey(which: int) -> tuple[bytes, str]:
    """
    One 1024-bit RSA key per number, for the whole module (fast to make,
    and the smallest size a verifier accepts).

    @return: C{(privateKeyPEM, txtValue)}.
    """
    return generateKey("rsa", 1024)


def sign(message: bytes, domain: str = "a.test", selector: str = "sel", which: int = 0) -> bytes:
    """
    @return: the message with a DKIM signature on top, LF line ends.
    """
    key = SigningKey(selector, domain, rsaKey(which)[0], RSA_SHA256)
    return signHeader(io.BytesIO(message), key, 100000) + message


def keyRecord(domain: str = "a.test", selector: str = "sel", which: int = 0) -> tuple[str, str, str]:
    """
    @return: the DNS record publishing a key.
    """
    return (f"{selector}._domainkey.{domain}", "TXT", rsaKey(which)[1])


class DKIMResultTests(SynchronousTestCase):
    """
    L{DKIMResult.authResultsPart} writes RFC 8601 C{resinfo}s.
    """

    def test_pass(self):
        """
        A pass names the domain, the selector and the start of C{b=}.
        """
        self.assertEqual(DKIMResult("pass", "a.test", "sel", "", "AbCdEfGh").authResultsPart(),
                         "dkim=pass header.d=a.test header.s=sel header.b=AbCdEfGh")
        self.assertEqual(DKIMResult("pass", "a.test", "sel", "").authResultsPart(),
                         "dkim=pass header.d=a.test header.s=sel")

    def test_failureReasons(self):
        """
        Other results carry their reason, quoted; C{none} has neither
        reason nor properties.
        """
        self.assertEqual(DKIMResult("fail", "a.test", "sel", "body hash mismatch").authResultsPart(),
                         'dkim=fail reason="body hash mismatch" header.d=a.test header.s=sel')
        self.assertEqual(DKIMResult("permerror", "", "", 'bad "key"').authResultsPart(),
                         'dkim=permerror reason="bad \\"key\\""')
        self.assertEqual(DKIMResult("none", "", "", "").authResultsPart(), "dkim=none")


class OfflineTests(SynchronousTestCase):
    """
    What is decided before any DNS lookup.
    """

    def test_unsigned(self):
        """
        A message without signatures is C{none}, with no lookup.
        """
        self.assertEqual(verifyMessageBlocking(MESSAGE, (("127.0.0.1", 9),), 0.1),
                         (DKIMResult("none", "", "", ""),))

    def test_malformedSignature(self):
        """
        A signature with a bad tag is C{neutral}, still named by its
        C{d=} and C{s=}.
        """
        broken = sign(MESSAGE).replace(b"a=rsa-sha256", b"a=rsa-md5")
        [result] = verifyMessageBlocking(broken, (("127.0.0.1", 9),), 0.1)
        self.assertEqual((result.result, result.domain, result.selector), ("neutral", "a.test", "sel"))
        self.assertIn("malformed signature", result.reason)

    def test_fromNotSigned(self):
        """
        A signature whose C{h=} leaves out From is ignored (RFC 6376
        §6.1.1) before its key is looked up.
        """
        # dkimpy refuses to make one: sign From, then claim Subject
        header = dkim.DKIM(MESSAGE).sign(b"sel", b"a.test", rsaKey(0)[0], include_headers=[b"from"])
        self.assertIn(b"h=from;", header)
        signed = header.replace(b"h=from;", b"h=subject;") + MESSAGE
        [result] = verifyMessageBlocking(signed, (("127.0.0.1", 9),), 0.1)
        self.assertEqual((result.result, result.domain, result.reason), ("neutral", "a.test", "From field not signed"))

    def test_unparseableMessage(self):
        """
        A header dkimpy cannot read makes every signature C{neutral}.
        """
        broken = sign(MESSAGE).replace(b"To: bob", b"Not a field\nTo: bob")
        [result] = verifyMessageBlocking(broken, (), 0.1)
        self.assertEqual((result.result, result.domain), ("neutral", "a.test"))
        self.assertIn("malformed message", result.reason)

    def test_parserCrash(self):
        """
        A message dkimpy's parser crashes on (it starts with a continuation
        line) still gets a verdict per signature.
        """
        [result] = verifyMessageBlocking(b" \n" + sign(MESSAGE), (), 0.1)
        self.assertEqual((result.result, result.domain, result.reason),
                         ("neutral", "a.test", "malformed message: IndexError"))

    def test_tooLarge(self):
        """
        A message over C{maxBytes} is not verified: each signature is
        C{neutral}; an unsigned one is still C{none}.
        """
        path = self.mktemp()
        signed = sign(MESSAGE + b"x" * 5000 + b"\n")
        with open(path, "wb") as f:
            f.write(signed)
        [result] = verifyBlocking(path, (("127.0.0.1", 9),), 0.1, 1000)
        self.assertEqual(result.result, "neutral")
        self.assertEqual((result.domain, result.selector), ("a.test", "sel"))
        self.assertEqual(result.reason, "message too large to verify")
        verifier = DKIMVerifier((), 0.1, 1000, InlineRunner())
        [inline] = self.successResultOf(verifier.verifyBytes(signed))
        self.assertEqual(inline, result)
        with open(path, "wb") as f:
            f.write(MESSAGE + b"x" * 5000)
        self.assertEqual(verifyBlocking(path, (), 0.1, 1000), (DKIMResult("none", "", "", ""),))

    def test_unreadable(self):
        """
        A file that cannot be read is a C{temperror}: our fault.
        """
        [result] = verifyBlocking(os.path.join(self.mktemp(), "missing"), (), 0.1, 1000)
        self.assertEqual(result.result, "temperror")


class VerifyTests(TestCase):
    """
    Verification in worker threads, keys from the loopback DNS server.
    """

    timeout = 30

    def setUp(self):
        """
        Start a thread pool for the blocking verification.
        """
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    async def verifier(self, records, mode: str = "answer"):
        """
        Start a DNS server with C{records}.

        @return: C{(verifier, server)}.
        """
        self.server = await startDNSServer(self, records, mode=mode)
        return DKIMVerifier(self.server.nameservers, DNS_TIMEOUT_SECONDS, 100000, self.runner), self.server

    def write(self, data: bytes) -> str:
        """
        @return: the path of a new file holding C{data}.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    async def test_pass(self):
        """
        A good signature passes, from a file with LF or with CRLF line
        ends, and from bytes.
        """
        verifier, server = await self.verifier([keyRecord()])
        signed = sign(MESSAGE)
        for data in (signed, signed.replace(b"\n", b"\r\n")):
            [result] = await verifier.verify(self.write(data))
            self.assertEqual((result.result, result.domain, result.selector, result.reason),
                             ("pass", "a.test", "sel", ""))
            self.assertEqual(len(result.signaturePrefix), 8)
        [result] = await verifier.verifyBytes(signed)
        self.assertEqual(result.result, "pass")
        self.assertIn(("sel._domainkey.a.test", "TXT"), server.queries)

    async def test_noFinalLineEnd(self):
        """
        A stored message without a final line end verifies as sent (RFC
        6376 §3.4.4 adds one).
        """
        verifier, _ = await self.verifier([keyRecord()])
        [result] = await verifier.verify(self.write(sign(MESSAGE)[:-1]))
        self.assertEqual(result.result, "pass")

    async def test_bodyChanged(self):
        """
        A changed body fails with a body hash mismatch; a changed signed
        header fails the signature.
        """
        verifier, _ = await self.verifier([keyRecord()])
        signed = sign(MESSAGE)
        [result] = await verifier.verify(self.write(signed.replace(b"see you", b"send money")))
        self.assertEqual((result.result, result.reason), ("fail", "body hash mismatch"))
        [result] = await verifier.verify(self.write(signed.replace(b"Subject: Hello", b"Subject: Urgent")))
        self.assertEqual((result.result, result.reason), ("fail", "signature did not verify"))

    async def test_twoSignatures(self):
        """
        Each signature gets its own result, top first: one from a domain
        whose key matches, one from a domain publishing another key.
        """
        verifier, _ = await self.verifier([keyRecord(), keyRecord("b.test", "s2", which=0)])
        once = sign(MESSAGE, "a.test", "sel", which=0)
        twice = sign(once, "b.test", "s2", which=1)
        results = await verifier.verify(self.write(twice))
        self.assertEqual([(r.result, r.domain, r.selector) for r in results],
                         [("fail", "b.test", "s2"), ("pass", "a.test", "sel")])

    async def test_missingKey(self):
        """
        A selector without a key record, or a domain that does not exist,
        is a C{permerror}.
        """
        verifier, _ = await self.verifier([keyRecord(), ("other._domainkey.a.test", "A", "192.0.2.1")])
        for selector in ("gone", "other"):
            [result] = await verifier.verify(self.write(sign(MESSAGE, selector=selector)))
            self.assertEqual((result.result, result.reason, result.selector),
                             ("permerror", "no key for signature", selector))
        [result] = await verifier.verify(self.write(sign(MESSAGE, domain="nowhere.test")))
        self.assertEqual(result.result, "permerror")

    async def test_badKeyRecord(self):
        """
        A key record that holds no usable key is a C{permerror}.
        """
        verifier, _ = await self.verifier([("sel._domainkey.a.test", "TXT", "v=DKIM1; k=rsa; p=bm90IGEga2V5")])
        [result] = await verifier.verify(self.write(sign(MESSAGE)))
        self.assertEqual(result.result, "permerror")
        self.assertIn("unusable key", result.reason)

    async def test_silentDNS(self):
        """
        A DNS server that never answers gives a C{temperror} once the
        lookup times out; two signatures with the same selector wait once.
        """
        verifier, server = await self.verifier([keyRecord()], mode=SILENT)
        signed = sign(sign(MESSAGE))
        results = await verifier.verify(self.write(signed))
        self.assertEqual([(r.result, r.domain) for r in results], [("temperror", "a.test")] * 2)
        self.assertEqual(results[0].reason, "DNS lookup of the key failed")
        self.assertEqual(set(server.queries), {("sel._domainkey.a.test", "TXT")})

    async def test_servfail(self):
        """
        SERVFAIL is a C{temperror} too.
        """
        verifier, server = await self.verifier([keyRecord()])
        server.setMode(SERVFAIL)
        [result] = await verifier.verify(self.write(sign(MESSAGE)))
        self.assertEqual(result.result, "temperror")

    async def test_unsigned(self):
        """
        An unsigned message is C{none}, without a DNS query.
        """
        verifier, server = await self.verifier([keyRecord()])
        self.assertEqual(await verifier.verify(self.write(MESSAGE)), (DKIMResult("none", "", "", ""),))
        self.assertEqual(server.queries, [])

    async def test_signatureLimit(self):
        """
        At most L{MAX_SIGNATURES} signatures are verified.
        """
        verifier, _ = await self.verifier([keyRecord()])
        signed = MESSAGE
        for _ in range(MAX_SIGNATURES + 2):
            signed = sign(signed)
        results = await verifier.verify(self.write(signed))
        self.assertEqual(len(results), MAX_SIGNATURES)
        # each new signature covers the ones below it only through h=,
        # which does not list DKIM-Signature: they all pass
        self.assertEqual({r.result for r in results}, {"pass"})


class NoThreadRunner:
    """
    A runner that must not be used.
    """

    def run(self, f, *args):
        """
        Fail the test that got here.
        """
        raise AssertionError(f"{f.__name__} was sent to a worker thread")


class UnsignedTests(SynchronousTestCase):
    """
    A message without signatures is settled on the reactor thread.
    """

    def test_isUnsigned(self):
        """
        Only a header section that names no C{DKIM-Signature} field, in any
        case, is unsigned; the name in the body does not count; without
        an empty line the whole message is the header.
        """
        self.assertTrue(isUnsigned(MESSAGE))
        self.assertTrue(isUnsigned(MESSAGE + b"DKIM-Signature: in the body\n"))
        self.assertTrue(isUnsigned(MESSAGE.replace(b"\n", b"\r\n") + b"dkim-signature: x\r\n"))
        self.assertFalse(isUnsigned(sign(MESSAGE)))
        self.assertFalse(isUnsigned(b"dKiM-SiGnAtUrE : v=1\n" + MESSAGE))
        self.assertFalse(isUnsigned(b"Subject: x\nDKIM-Signature: v=1"))
        self.assertFalse(isUnsigned(b"Subject: x\r\n\tDKIM-Signature: folded\r\n\r\nbody"))

    def test_noThreadForUnsigned(self):
        """
        L{DKIMVerifier.verifyBytes} answers C{none} for an unsigned message
        at once, without its runner.
        """
        verifier = DKIMVerifier((), DNS_TIMEOUT_SECONDS, 100000, NoThreadRunner())
        self.assertEqual(self.successResultOf(verifier.verifyBytes(MESSAGE)), (DKIMResult("none", "", "", ""),))
        self.assertRaises(AssertionError, verifier.verifyBytes, sign(MESSAGE))

