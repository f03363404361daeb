"""
Tests for L{qutemail.pipeline.dkim}: keys, signing, and the DNS records,
checked with dkimpy's verifier and with an independent one written here
from RFC 6376.
"""

import base64
import functools
import hashlib
import importlib.util
import io
import os
import re

import dkim
import dns.zone
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding
from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.config import DKIMConfig
from qutemail.interfaces import IDKIMKeys
from qutemail.pipeline.dkim import (
    ED25519_SHA256, RSA_SHA256, FileDKIMKeys, KeyLookupError, SigningKey, dnsFunction, dnsRecords, generateKey,
    publicTXTValue, signHeader, txtRecord,
)
from tests.dnsserver import SERVFAIL, startDNSServer, zoneRecords

MESSAGE = (b"Received: from client.test by mail.example.test\n"
           b"From: Alice <alice@example.test>\n"
           b"To: bob@remote.test\n"
           b"Subject: Hello,\n\tfolded   world\n"
           b"X-Mailer: test\n"
           b"\n"
           b"Hi Bob,  \n"
           b"\n"
           b".a dot line\n"
           b"\n\n")


@functools.cache
def rsaKey() -> tuple[bytes, str]:
    """
    One 2048-bit RSA key for the whole module (generating one per test or
    per example would be slow).

    @return: C{(privateKeyPEM, txtValue)}.
    """
    return generateKey("rsa", 2048)


def signingKey(selector: str = "sel", domain: str = "example.test") -> SigningKey:
    """
    @return: the module's RSA key as a L{SigningKey}.
    """
    return SigningKey(selector, domain, rsaKey()[0], RSA_SHA256)


def onTheWire(signature: bytes, message: bytes) -> bytes:
    """
    A message stored with LF line ends, signed, as SMTP sends it: CRLF line
    ends and a final CRLF.
    """
    wire = (signature + message).replace(b"\n", b"\r\n")
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


def staticDNS(txt: str):
    """
    @return: a C{dnsfunc} answering every name with C{txt}.
    """
    return lambda name, timeout=5: txt.encode("ascii")


def _relaxedHeader(field: bytes) -> bytes:
    """
    RFC 6376 §3.4.2 relaxed header canonicalisation of one field.
    """
    name, _, value = field.partition(b":")
    value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value


def _relaxedBody(body: bytes) -> bytes:
    """
    RFC 6376 §3.4.4 relaxed body canonicalisation.
    """
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def independentlyVerify(wire: bytes, txt: str) -> bool:
    """
    Verify the first rsa-sha256 relaxed/relaxed signature of a CRLF
    message (RFC 6376 §3.7 and §6.1.3), without dkimpy.
    """
    head, _, body = wire.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    signature = next(f for f in fields if f.lower().startswith(b"dkim-signature:"))
    tags = dict(tag.split(b"=", 1) for tag in re.sub(rb"\s", b"", signature.partition(b":")[2]).split(b";") if tag)
    assert (tags[b"a"], tags[b"c"]) == (b"rsa-sha256", b"relaxed/relaxed")
    if base64.b64encode(hashlib.sha256(_relaxedBody(body)).digest()) != tags[b"bh"]:
        return False
    used: set[int] = set()
    hashed = b""
    for name in tags[b"h"].lower().split(b":"):
        # §5.4.2: several instances are taken from the bottom up
        for index in reversed(range(len(fields))):
            if index not in used and fields[index].partition(b":")[0].strip().lower() == name:
                used.add(index)
                hashed += _relaxedHeader(fields[index]) + b"\r\n"
                break
    hashed += re.sub(rb"(;\s*b=)[^;]*", rb"\1", _relaxedHeader(signature))
    publicKey = serialization.load_der_public_key(base64.b64decode(txt.partition("p=")[2]))
    try:
        publicKey.verify(base64.b64decode(tags[b"b"]), hashed, padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return False
    return True


class SignTests(SynchronousTestCase):
    """
    L{signHeader} makes signatures that verify where they matter: on the
    wire.
    """

    def test_signAndVerify(self):
        """
        A message stored with LF line ends, signed and sent with CRLF,
        verifies with dkimpy and with the independent verifier.
        """
        signature = signHeader(io.BytesIO(MESSAGE), signingKey(), 10000)
        self.assertTrue(signature.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;"))
        self.assertTrue(signature.endswith(b"\n"))
        self.assertNotIn(b"\r", signature)
        wire = onTheWire(signature, MESSAGE)
        self.assertTrue(dkim.verify(wire, dnsfunc=staticDNS(rsaKey()[1])))
        self.assertTrue(independentlyVerify(wire, rsaKey()[1]))
        self.assertTrue(dkim.verify(signature + MESSAGE, dnsfunc=staticDNS(rsaKey()[1])))

    def test_signedHeaders(self):
        """
        The recommended fields present are signed, From once more than it
        occurs; trace and unknown fields are not.
        """
        signature = signHeader(io.BytesIO(MESSAGE), signingKey(), 10000)
        tags = dkim.util.parse_tag_value(signature.partition(b":")[2].replace(b"\n", b""))
        self.assertEqual(re.split(rb"\s*:\s*", tags[b"h"]), [b"from", b"to", b"subject", b"from"])
        self.assertEqual((tags[b"s"], tags[b"d"]), (b"sel", b"example.test"))

    def test_headerOrBodyChanged(self):
        """
        A changed body, a changed Subject or an added From breaks the
        signature.
        """
        signature = signHeader(io.BytesIO(MESSAGE), signingKey(), 10000)
        dnsfunc = staticDNS(rsaKey()[1])
        for changed in (MESSAGE.replace(b"Hi Bob", b"Hi Rob"), MESSAGE.replace(b"Hello", b"Hullo"),
                        b"From: mallory@evil.test\n" + MESSAGE):
            wire = onTheWire(signature, changed)
            self.assertFalse(dkim.verify(wire, dnsfunc=dnsfunc))
            self.assertFalse(independentlyVerify(wire, rsaKey()[1]))

    def test_crlfResult(self):
        """
        The header can be asked for with CRLF line ends.
        """
        signature = signHeader(io.BytesIO(MESSAGE), signingKey(), 10000, lineEnd=b"\r\n")
        self.assertTrue(signature.endswith(b"\r\n"))
        self.assertEqual(signature.count(b"\n"), signature.count(b"\r\n"))
        self.assertTrue(dkim.verify(onTheWire(b"", signature.replace(b"\r\n", b"\n") + MESSAGE),
                                    dnsfunc=staticDNS(rsaKey()[1])))

    def test_fromPath(self):
        """
        A path is read like a file.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        signature = signHeader(path, signingKey(), len(MESSAGE))
        self.assertTrue(dkim.verify(onTheWire(signature, MESSAGE), dnsfunc=staticDNS(rsaKey()[1])))

    def test_tooBig(self):
        """
        A message over C{maxBytes} is refused.
        """
        self.assertRaises(ValueError, signHeader, io.BytesIO(MESSAGE), signingKey(), len(MESSAGE) - 1)

    def test_noFrom(self):
        """
        A message without From cannot be signed (RFC 6376 §5.4: From must
        be).
        """
        self.assertRaises(dkim.DKIMException, signHeader, io.BytesIO(b"Subject: x\n\nbody\n"), signingKey(), 1000)

    def test_ed25519(self):
        """
        An Ed25519 key signs with ed25519-sha256 where dkimpy can (it needs
        PyNaCl), and otherwise fails with dkimpy's NaClNotFoundError.
        """
        pem, txt = generateKey("ed25519")
        key = SigningKey("ed", "example.test", pem, ED25519_SHA256)
        if importlib.util.find_spec("nacl") is None:
            self.assertRaises(dkim.NaClNotFoundError, signHeader, io.BytesIO(MESSAGE), key, 10000)
            return
        signature = signHeader(io.BytesIO(MESSAGE), key, 10000)
        self.assertIn(b"a=ed25519-sha256", signature)
        self.assertTrue(dkim.verify(onTheWire(signature, MESSAGE), dnsfunc=staticDNS(txt)))

    _word = st.binary(min_size=1, max_size=12).map(lambda b: bytes(0x21 + x % 94 for x in b))
    _space = st.sampled_from([b" ", b"  ", b"\t", b" \t ", b"\n ", b"\n\t"])
    _value = st.lists(st.tuples(_space, _word), max_size=6).map(lambda ws: b"".join(s + w for s, w in ws))
    _name = st.sampled_from([b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To", b"X-Mailer",
                             b"Received", b"MIME-Version", b"Content-Type", b"References", b"Comments", b"x-lower"])
    _line = st.lists(st.one_of(_word, _space.filter(lambda s: b"\n" not in s), st.binary(min_size=1, max_size=3)
                               .map(lambda b: bytes(0x80 | x for x in b))), max_size=8).map(b"".join)

    @given(headers=st.lists(st.tuples(_name, _value), max_size=8), fromValue=_value,
           lines=st.lists(_line, max_size=10), finalNewline=st.booleans())
    def test_property(self, headers, fromValue, lines, finalNewline):
        """
        Any set of header fields (folded or not, repeated or not) and any
        body (blank lines, odd whitespace, 8-bit bytes, no final newline)
        signs and verifies on the wire.
        """
        head = [b"From:" + fromValue] + [name + b":" + value for name, value in headers]
        message = b"\n".join(head) + b"\n\n" + b"\n".join(lines) + (b"\n" if finalNewline else b"")
        wire = onTheWire(signHeader(io.BytesIO(message), signingKey(), len(message)), message)
        self.assertTrue(dkim.verify(wire, dnsfunc=staticDNS(rsaKey()[1])))
        self.assertTrue(independentlyVerify(wire, rsaKey()[1]))


class KeyTests(SynchronousTestCase):
    """
    Key generation and the DKIM key record.
    """

    def test_rsaKey(self):
        """
        An RSA key has the asked size, and its record carries its public
        key.
        """
        pem, txt = generateKey("rsa", 1024)
        key = serialization.load_pem_private_key(pem, password=None)
        self.assertEqual(key.key_size, 1024)
        self.assertTrue(txt.startswith("v=DKIM1; k=rsa; p="))
        public = serialization.load_der_public_key(base64.b64decode(txt.partition("p=")[2]))
        self.assertEqual(public.public_numbers(), key.public_key().public_numbers())
        self.assertEqual(publicTXTValue(pem), txt)

    def test_ed25519Key(self):
        """
        An Ed25519 key record carries the raw 32-byte public key (RFC 8463).
        """
        pem, txt = generateKey("ed25519")
        self.assertTrue(txt.startswith("v=DKIM1; k=ed25519; p="))
        raw = base64.b64decode(txt.partition("p=")[2])
        key = serialization.load_pem_private_key(pem, password=None)
        self.assertEqual(raw, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def test_refused(self):
        """
        Short RSA keys and other algorithms are refused.
        """
        self.assertRaises(ValueError, generateKey, "rsa", 512)
        self.assertRaises(ValueError, generateKey, "dsa")
        self.assertRaises(ValueError, publicTXTValue, b"not a key")

    def test_txtRecord(self):
        """
        The key record loads with dnspython's zone parser, in strings of at
        most 255 bytes that join back to the value, even for a value as long
        as a 4096-bit key's and for characters that need escaping.
        """
        for txt in ("v=DKIM1; k=rsa; p=" + "Q" * 736, rsaKey()[1], 'odd "quoted" \\ value \u00e9', ""):
            line = txtRecord("sel", "Example.Test.", txt)
            self.assertTrue(line.startswith("sel._domainkey.example.test. 3600 IN TXT ( "), line)
            zone = dns.zone.from_text(line, origin="example.test", check_origin=False)
            [rdata] = zone.find_rdataset("sel._domainkey", "TXT")
            self.assertTrue(all(len(s) <= 255 for s in rdata.strings))
            self.assertEqual(b"".join(rdata.strings).decode("utf-8"), txt)

    def test_dnsRecords(self):
        """
        The records load as a zone: MX to the host name, SPF, DKIM and
        DMARC; the DKIM record's key verifies a signature.
        """
        text = "\n".join(dnsRecords("example.test", "mail.example.test", "sel", rsaKey()[1]))
        zone = dns.zone.from_text(text, origin="example.test", relativize=False, check_origin=False)
        [mx] = zone.find_rdataset("example.test.", "MX")
        self.assertEqual((mx.preference, mx.exchange.to_text()), (10, "mail.example.test."))
        [spf] = zone.find_rdataset("example.test.", "TXT")
        self.assertEqual(spf.strings, (b"v=spf1 mx -all",))
        [dmarc] = zone.find_rdataset("_dmarc.example.test.", "TXT")
        self.assertTrue(b"".join(dmarc.strings).startswith(b"v=DMARC1; p=quarantine"))
        [key] = zone.find_rdataset("sel._domainkey.example.test.", "TXT")
        signature = signHeader(io.BytesIO(MESSAGE), signingKey(), 10000)
        wire = onTheWire(signature, MESSAGE)
        self.assertTrue(dkim.verify(wire, dnsfunc=lambda name, timeout=5: b"".join(key.strings)))


class FileDKIMKeysTests(SynchronousTestCase):
    """
    L{FileDKIMKeys}: one key file for every local domain.
    """

    def keys(self, pem: bytes | None, runner=None) -> FileDKIMKeys:
        """
        @param pem: what the key file holds, or C{None} for no file.
        @return: keys for example.test and example.org from that file.
        """
        path = self.mktemp()
        if pem is not None:
            with open(path, "wb") as f:
                f.write(pem)
        return FileDKIMKeys(path, "sel", ("Example.Test", "example.org."), runner or InlineRunner())

    def test_interface(self):
        """
        It provides L{IDKIMKeys}.
        """
        self.assertTrue(verifyObject(IDKIMKeys, self.keys(None)))

    def test_rsa(self):
        """
        Every local domain gets the key, with the selector and rsa-sha256.
        """
        keys = self.keys(rsaKey()[0])
        for domain in ("example.test", "EXAMPLE.ORG."):
            key = self.successResultOf(keys.keyFor(domain))
            self.assertEqual(key, SigningKey("sel", domain.lower().rstrip("."), rsaKey()[0], RSA_SHA256))

    def test_foreignDomain(self):
        """
        A domain that is not local has no key.
        """
        self.assertIsNone(self.successResultOf(self.keys(rsaKey()[0]).keyFor("remote.test")))

    def test_missingFile(self):
        """
        No key file, no key.
        """
        self.assertIsNone(self.successResultOf(self.keys(None).keyFor("example.test")))

    def test_unusableFile(self):
        """
        A file without a usable key (garbage, an encrypted key) gives no
        key.
        """
        encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"))
        for pem in (b"garbage", encrypted):
            self.assertIsNone(self.successResultOf(self.keys(pem).keyFor("example.test")))

    def test_ed25519AndPKCS8(self):
        """
        An Ed25519 key signs with ed25519-sha256; an RSA key in PKCS#8 is
        taken and handed on as PKCS#1.
        """
        pem, _ = generateKey("ed25519")
        self.assertEqual(self.successResultOf(self.keys(pem).keyFor("example.test")).algorithm, ED25519_SHA256)
        private = serialization.load_pem_private_key(rsaKey()[0], password=None)
        pkcs8 = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        key = self.successResultOf(self.keys(pkcs8).keyFor("example.test"))
        self.assertEqual((key.privateKeyPEM, key.algorithm), (rsaKey()[0], RSA_SHA256))

    def test_readOnce(self):
        """
        The file is read once, through the runner, and the key kept.
        """
        calls = []

        class CountingRunner(InlineRunner):
            """
            Counts the calls it runs.
            """

            def run(self, f, *args):
                """
                Count, then run inline.
                """
                calls.append(f)
                return InlineRunner.run(self, f, *args)

        keys = self.keys(rsaKey()[0], CountingRunner())
        self.successResultOf(keys.keyFor("example.test"))
        os.remove(keys.path)
        self.assertIsNotNone(self.successResultOf(keys.keyFor("example.org")))
        self.assertEqual(len(calls), 1)

    def test_fromConfig(self):
        """
        The key file is C{[dkim] private_key}, or by default
        C{data_dir/keys/dkim-<selector>.key}.
        """
        keys = FileDKIMKeys.fromConfig(DKIMConfig(selector="s1"), "/srv/data", ("example.test",), InlineRunner())
        self.assertEqual((keys.path, keys.selector), ("/srv/data/keys/dkim-s1.key", "s1"))
        keys = FileDKIMKeys.fromConfig(DKIMConfig(selector="s1", privateKey="/etc/k.pem"), "/srv/data",
                                       ("example.test",), InlineRunner())
        self.assertEqual(keys.path, "/etc/k.pem")


class DNSVerifyTests(TestCase):
    """
    Verification with the key fetched by L{dnsFunction} from the loopback
    DNS server, in a worker thread.
    """

    def setUp(self):
        """
        Start a thread pool for the blocking verification.
        """
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    async def test_endToEnd(self):
        """
        The records from L{dnsRecords}, served by DNS, verify a signature;
        an unknown selector does not, and a DNS failure is raised as
        L{KeyLookupError}.
        """
        text = "\n".join(dnsRecords("example.test", "mail.example.test", "sel", rsaKey()[1]))
        server = await startDNSServer(self, zoneRecords(text, "example.test"))
        dnsfunc = dnsFunction(server.nameservers, timeoutSeconds=2.0)
        signature = signHeader(io.BytesIO(MESSAGE), signingKey(), 10000)
        self.assertTrue(await self.runner.run(dkim.verify, onTheWire(signature, MESSAGE), dnsfunc=dnsfunc))
        self.assertIn(("sel._domainkey.example.test", "TXT"), server.queries)
        other = signHeader(io.BytesIO(MESSAGE), signingKey(selector="gone"), 10000)
        self.assertFalse(await self.runner.run(dkim.verify, onTheWire(other, MESSAGE), dnsfunc=dnsfunc))
        server.setMode(SERVFAIL)
        with self.assertRaises(KeyLookupError):
            await self.runner.run(dkim.verify, onTheWire(signature, MESSAGE), dnsfunc=dnsfunc)
