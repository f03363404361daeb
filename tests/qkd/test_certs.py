"""
Tests of the embedded KME's PKI (L{qutemail.qkd.certs}).
"""

import datetime
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.qkd.certs import KMEPKI, checkSAEId, ensurePKI

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc)


def load(path: str) -> x509.Certificate:
    """
    @return: the PEM certificate in C{path}.
    """
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def contents(pki: KMEPKI) -> dict[str, bytes]:
    """
    @return: every file of the PKI directory, by name.
    """
    out = {}
    for name in os.listdir(pki.directory):
        with open(os.path.join(pki.directory, name), "rb") as f:
            out[name] = f.read()
    return out


class PKITests(SynchronousTestCase):
    """
    L{ensurePKI} makes, reuses and renews the CA, the KME's certificate and
    the SAEs' certificates.
    """

    def setUp(self):
        """
        A directory that does not exist yet, and a log observer.
        """
        self.directory = os.path.abspath(self.mktemp())
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def messages(self, word: str) -> list[dict]:
        """
        @return: the logged events whose format contains C{word}.
        """
        return [e for e in self.events if word in e.get("log_format", "")]

    def test_generated(self):
        """
        The CA may sign leaves only; the KME's certificate is for
        C{localhost} and C{127.0.0.1}; each SAE's certificate carries its id
        as CN; both are signed by the CA; keys are mode 0600; no temporary
        file is left.
        """
        pki = ensurePKI(self.directory, ["sae-a", "sae-b"], NOW)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode) & 0o077, 0)
        ca, server = load(pki.ca.certPath), load(pki.server.certPath)
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        self.assertEqual((constraints.ca, constraints.path_length), (True, 0))
        server.verify_directly_issued_by(ca)
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(names.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")])
        self.assertIn(ExtendedKeyUsageOID.SERVER_AUTH,
                      server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        for saeId in ("sae-a", "sae-b"):
            client = load(pki.client(saeId).certPath)
            client.verify_directly_issued_by(ca)
            self.assertEqual([a.value for a in client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
                             [saeId])
            self.assertIn(ExtendedKeyUsageOID.CLIENT_AUTH,
                          client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        for paths in [pki.ca, pki.server, *pki.clients.values()]:
            self.assertEqual(stat.S_IMODE(os.stat(paths.keyPath).st_mode), 0o600)
        self.assertEqual(len(os.listdir(self.directory)), 8)
        self.assertEqual(len(self.messages("created")), 4)

    def test_reused(self):
        """
        A second call a year later changes no file and logs nothing; a new
        SAE only adds its own certificate.
        """
        first = contents(ensurePKI(self.directory, ["sae-a"], NOW))
        logged = len(self.events)
        later = NOW + datetime.timedelta(days=365)
        self.assertEqual(contents(ensurePKI(self.directory, ["sae-a"], later)), first)
        self.assertEqual(len(self.events), logged)
        pki = ensurePKI(self.directory, ["sae-a", "sae-b"], later)
        after = contents(pki)
        self.assertEqual({k: v for k, v in after.items() if "sae-b" not in k}, first)
        self.assertEqual(len(self.messages("created")), 3 + 1)

    def test_expiredLeavesRenewed(self):
        """
        Once the KME's and SAEs' certificates expire they are made again,
        each with a log line saying why; the CA, still valid, is kept.
        """
        first = contents(ensurePKI(self.directory, ["sae-a"], NOW))
        later = NOW + datetime.timedelta(days=900)
        pki = ensurePKI(self.directory, ["sae-a"], later)
        after = contents(pki)
        self.assertEqual(after["ca-cert.pem"], first["ca-cert.pem"])
        self.assertNotEqual(after["kme-cert.pem"], first["kme-cert.pem"])
        self.assertNotEqual(after["sae-sae-a-key.pem"], first["sae-sae-a-key.pem"])
        self.assertGreater(load(pki.server.certPath).not_valid_after_utc, later)
        replaced = self.messages("replacing")
        self.assertEqual(len(replaced), 2)
        self.assertIn("expired", replaced[0]["reason"])

    def test_newCANewLeaves(self):
        """
        When the CA expires, it and every leaf signed by it are made again.
        """
        first = contents(ensurePKI(self.directory, ["sae-a"], NOW))
        pki = ensurePKI(self.directory, ["sae-a"], NOW + datetime.timedelta(days=3700))
        after = contents(pki)
        self.assertEqual([name for name in first if first[name] == after[name]], [])
        load(pki.client("sae-a").certPath).verify_directly_issued_by(load(pki.ca.certPath))

    def test_damagedReplaced(self):
        """
        A certificate that is not PEM, or whose key does not match, is made
        again.
        """
        pki = ensurePKI(self.directory, ["sae-a", "sae-b"], NOW)
        with open(pki.client("sae-a").certPath, "wb") as f:
            f.write(b"rubbish")
        os.replace(pki.client("sae-b").keyPath, pki.server.keyPath)
        ensurePKI(self.directory, ["sae-a", "sae-b"], NOW)
        self.assertEqual(len(self.messages("replacing")), 2)
        ensurePKI(self.directory, ["sae-a", "sae-b"], NOW)
        self.assertEqual(len(self.messages("replacing")), 2)

    def test_saeIdsChecked(self):
        """
        An SAE id that cannot be a file name or a CN is refused before
        anything is written.
        """
        for bad in ["", "../x", "a/b", ".hidden", "x" * 65, "sp ace", "é"]:
            self.assertRaises(ValueError, checkSAEId, bad)
            self.assertRaises(ValueError, ensurePKI, self.directory, [bad], NOW)
        self.assertFalse(os.path.exists(self.directory))
        self.assertEqual(checkSAEId("qutemail@mail.example_1-2"), "qutemail@mail.example_1-2")
