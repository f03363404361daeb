"""
The L{IDKIMKeys} contract, run against the key-file backend and the memory
one.
"""

import io
import os

import dkim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryDKIMKeys
from qutemail.blocking import InlineRunner
from qutemail.interfaces import IDKIMKeys
from qutemail.pipeline.dkim import (
    ED25519_SHA256, RSA_SHA256, FileDKIMKeys, SigningKey, generateKey, loadPrivateKey, signHeader,
)
from tests.pipeline.test_dkim import MESSAGE, onTheWire, rsaKey, staticDNS

DOMAINS = ("example.test", "example.org")


class DKIMKeysContractMixin:
    """
    The behaviour every L{IDKIMKeys} has.  Subclasses provide
    C{makeKeys(selector, pem, domains)}, returning keys by which every
    domain of C{domains} (lower case) signs with the PEM private key C{pem}
    under C{selector}, and no other domain signs; their Deferreds have
    fired when they are returned.
    """

    def keyFor(self, keys, domain: str):
        """
        @return: what C{keys.keyFor(domain)} fired with.
        """
        return self.successResultOf(keys.keyFor(domain))

    def test_provides(self):
        """
        The backend provides the interface.
        """
        self.assertTrue(verifyObject(IDKIMKeys, self.makeKeys("sel", rsaKey()[0], DOMAINS)))

    def test_keyForEachDomain(self):
        """
        Each signing domain gets a L{SigningKey} for that very domain (its
        C{d=}), with the selector, the private key and its algorithm.
        """
        keys = self.makeKeys("sel", rsaKey()[0], DOMAINS)
        for domain in DOMAINS:
            self.assertEqual(self.keyFor(keys, domain), SigningKey("sel", domain, rsaKey()[0], RSA_SHA256))

    def test_ed25519(self):
        """
        An Ed25519 key comes with C{ed25519-sha256}, in the form dkimpy reads.
        """
        pem, _ = generateKey("ed25519")
        key = self.keyFor(self.makeKeys("ed", pem, DOMAINS), "example.org")
        self.assertEqual((key.selector, key.domain, key.algorithm), ("ed", "example.org", ED25519_SHA256))
        self.assertEqual(loadPrivateKey(key.privateKeyPEM), (key.privateKeyPEM, key.algorithm))

    def test_otherDomain(self):
        """
        A domain without a key gets C{None} (its mail goes unsigned).
        """
        keys = self.makeKeys("sel", rsaKey()[0], DOMAINS)
        for domain in ("remote.test", "sub.example.test", "test"):
            self.assertIsNone(self.keyFor(keys, domain))

    def test_sameKeyAgain(self):
        """
        Asking again gives the same key.
        """
        keys = self.makeKeys("sel", rsaKey()[0], DOMAINS)
        self.assertEqual(self.keyFor(keys, "example.test"), self.keyFor(keys, "example.test"))

    def test_signs(self):
        """
        The key signs: a message signed with it verifies against the
        domain's published public key.
        """
        key = self.keyFor(self.makeKeys("sel", rsaKey()[0], DOMAINS), "example.test")
        signature = signHeader(io.BytesIO(MESSAGE), key, 10000)
        self.assertIn(b" d=example.test;", signature)
        self.assertTrue(dkim.verify(onTheWire(signature, MESSAGE), dnsfunc=staticDNS(rsaKey()[1])))


class FileDKIMKeysTests(DKIMKeysContractMixin, SynchronousTestCase):
    """
    The contract for the key-file backend.
    """

    def makeKeys(self, selector: str, pem: bytes, domains: tuple[str, ...]):
        """
        @return: L{FileDKIMKeys} reading C{pem} from a new file, inline.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(pem)
        return FileDKIMKeys(path, selector, domains, InlineRunner())


class MemoryDKIMKeysTests(DKIMKeysContractMixin, SynchronousTestCase):
    """
    The contract for the memory backend.
    """

    def makeKeys(self, selector: str, pem: bytes, domains: tuple[str, ...]):
        """
        @return: L{MemoryDKIMKeys} holding one L{SigningKey} per domain,
            its key in the form dkimpy reads.
        """
        pem, algorithm = loadPrivateKey(pem)
        return MemoryDKIMKeys(SigningKey(selector, domain, pem, algorithm) for domain in domains)
