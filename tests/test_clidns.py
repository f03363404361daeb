"""
Tests for the DNS commands of L{qutemail.cli}: C{dkim keygen} and
C{dns records}, checked against the records they print.
"""

import io
import os
import stat

import dkim
import dns.zone
from twisted.trial.unittest import SynchronousTestCase

from qutemail.pipeline.dkim import SigningKey, loadPrivateKey, signHeader
from qutemail.relay.mtasts import parseRecord
from qutemail.relay.tlsrpt import parseReportRecord
from qutemail.stspolicy import ownPolicy, policyId

from tests.test_cli import CommandTestsMixin

SIGNED_MESSAGE = b"From: Alice <alice@example.test>\nTo: dave@remote.test\nSubject: signed\n\nHello\n"


def loadZone(text: str, domain: str) -> dns.zone.Zone:
    """
    Load zone-file text as a DNS server would; records of other domains are
    ignored.
    """
    return dns.zone.from_text(text, origin=domain, relativize=False, check_origin=False)


def signatureVerifies(zone: dns.zone.Zone, domain: str, keyPath: str) -> bool:
    """
    Sign a message for C{domain} with the key file, as the server does, and
    verify it with dkimpy, resolving the key record from C{zone}.
    """
    with open(keyPath, "rb") as f:
        pem, algorithm = loadPrivateKey(f.read())
    signature = signHeader(io.BytesIO(SIGNED_MESSAGE), SigningKey("mail", domain, pem, algorithm), 10000)
    wire = (signature + SIGNED_MESSAGE).replace(b"\n", b"\r\n")

    def lookupTXT(name: bytes, timeout: float = 5) -> bytes | None:
        """
        @return: the TXT record of C{name} in the zone.
        """
        rdataset = zone.get_rdataset(name.decode("ascii"), "TXT")
        return None if rdataset is None else b"".join(rdataset[0].strings)

    return dkim.verify(wire, dnsfunc=lookupTXT)


class DKIMKeygenTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dkim keygen}.
    """

    def setUp(self) -> None:
        """
        Where the key goes by default.
        """
        super().setUp()
        self.keyPath = os.path.join(self.dataDir, "keys", "dkim-mail.key")

    def keygen(self, *args: str) -> str:
        """
        Run C{dkim keygen} with a small RSA key (fast), which must succeed
        with a note on standard error.

        @return: standard output.
        """
        status, out, err = self.runCommand("dkim", "keygen", *(args or ("--bits", "1024")))
        self.assertEqual(status, 0, err)
        self.assertIn("restart the server", err)
        return out

    def test_keygen(self) -> None:
        """
        The key is written under C{data_dir/keys}, mode 0600, and the
        printed records, one per local domain, load as zone files and
        verify a signature made with the key.
        """
        status, out, err = self.runCommand("dkim", "keygen", "--bits", "1024")
        self.assertEqual(status, 0, err)
        self.assertIn(self.keyPath, err)
        self.assertEqual(stat.S_IMODE(os.stat(self.keyPath).st_mode), 0o600)
        self.assertEqual(len(out.splitlines()), 2)
        for domain in ["example.test", "other.test"]:
            zone = loadZone(out, domain)
            [rdata] = zone.find_rdataset(f"mail._domainkey.{domain}.", "TXT")
            self.assertTrue(b"".join(rdata.strings).startswith(b"v=DKIM1; k=rsa; p="))
            self.assertTrue(signatureVerifies(zone, domain, self.keyPath))

    def test_refusesOverwrite(self) -> None:
        """
        An existing key is kept unless C{--force} is given.
        """
        self.keygen()
        with open(self.keyPath, "rb") as f:
            before = f.read()
        message = self.runFailing("dkim", "keygen", "--bits", "1024")
        self.assertIn(f"a DKIM key already exists at {self.keyPath}", message)
        self.assertIn("--force", message)
        with open(self.keyPath, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_force(self) -> None:
        """
        C{--force} replaces the key: the new record verifies the new key's
        signatures, the old record no longer does.
        """
        old = loadZone(self.keygen(), "example.test")
        new = loadZone(self.keygen("--bits", "1024", "--force"), "example.test")
        self.assertEqual(stat.S_IMODE(os.stat(self.keyPath).st_mode), 0o600)
        self.assertTrue(signatureVerifies(new, "example.test", self.keyPath))
        self.assertFalse(signatureVerifies(old, "example.test", self.keyPath))

    def test_domain(self) -> None:
        """
        C{--domain} prints only that domain's record; a domain that is not
        local is refused before any key is made.
        """
        out = self.keygen("--domain", "Other.Test", "--bits", "1024")
        self.assertEqual(len(out.splitlines()), 1)
        self.assertTrue(out.startswith("mail._domainkey.other.test. "), out)
        os.unlink(self.keyPath)
        message = self.runFailing("dkim", "keygen", "--domain", "elsewhere.test")
        self.assertEqual(message, "'elsewhere.test' is not a local domain (example.test, other.test)")
        self.assertFalse(os.path.exists(self.keyPath))

    def test_configuredPath(self) -> None:
        """
        The key goes to C{[dkim] private_key} when it is set, with the
        configured selector; its directory is made if missing.
        """
        keyPath = os.path.join(self.base, "dkim", "signing.pem")
        with open(self.configPath, "a") as f:
            f.write(f"\n[dkim]\nselector = s2024\nprivate_key = {keyPath}\n")
        out = self.keygen()
        self.assertTrue(os.path.exists(keyPath))
        self.assertFalse(os.path.exists(self.keyPath))
        self.assertTrue(out.startswith("s2024._domainkey.example.test. "), out)

    def test_badBits(self) -> None:
        """
        RSA keys have 1024 to 4096 bits; C{--bits} does not apply to
        Ed25519.
        """
        for bits in ["512", "8192"]:
            self.assertIn("1024 to 4096 bits", self.runFailing("dkim", "keygen", "--bits", bits))
        self.assertEqual(self.runFailing("dkim", "keygen", "--algorithm", "ed25519", "--bits", "256"),
                         "--bits is for RSA keys only")
        self.assertFalse(os.path.exists(self.keyPath))

    def test_ed25519(self) -> None:
        """
        An Ed25519 key gets a C{k=ed25519} record that loads as a zone.
        """
        out = self.keygen("--algorithm", "ed25519")
        [rdata] = loadZone(out, "example.test").find_rdataset("mail._domainkey.example.test.", "TXT")
        self.assertTrue(b"".join(rdata.strings).startswith(b"v=DKIM1; k=ed25519; p="))
        self.assertEqual(stat.S_IMODE(os.stat(self.keyPath).st_mode), 0o600)


class DNSRecordsTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dns-records}.
    """

    def test_withKey(self) -> None:
        """
        Each local domain gets a comment header, then MX, SPF, DKIM and
        DMARC records that load as a zone; the DKIM record verifies a
        signature made with the key.
        """
        self.runCommand("dkim", "keygen", "--bits", "1024")
        out = self.runOk("dns-records")
        self.assertTrue(out.startswith("; example.test\n"), out)
        self.assertIn("\n\n; other.test\n", out)
        for domain in ["example.test", "other.test"]:
            zone = loadZone(out, domain)
            [mx] = zone.find_rdataset(f"{domain}.", "MX")
            self.assertEqual((mx.preference, mx.exchange.to_text()), (10, "mail.example.test."))
            [spf] = zone.find_rdataset(f"{domain}.", "TXT")
            self.assertEqual(spf.strings, (b"v=spf1 mx -all",))
            [dmarc] = zone.find_rdataset(f"_dmarc.{domain}.", "TXT")
            self.assertTrue(b"".join(dmarc.strings).startswith(b"v=DMARC1; "))
            zone.find_rdataset(f"mail._domainkey.{domain}.", "TXT")
            self.assertTrue(signatureVerifies(zone, domain, os.path.join(self.dataDir, "keys", "dkim-mail.key")))
            [sts] = zone.find_rdataset(f"_mta-sts.{domain}.", "TXT")
            self.assertEqual(parseRecord([b"".join(sts.strings)]), policyId(ownPolicy("mail.example.test", "testing")))
            [tlsrpt] = zone.find_rdataset(f"_smtp._tls.{domain}.", "TXT")
            self.assertEqual(parseReportRecord([b"".join(tlsrpt.strings)]), [f"postmaster@{domain}"])

    def test_noKey(self) -> None:
        """
        Without a key, a comment says how to make one in place of the DKIM
        record; the rest still loads.
        """
        out = self.runOk("dns-records", "--domain", "example.test")
        lines = out.splitlines()
        self.assertEqual(lines[0], "; example.test")
        self.assertIn("; no DKIM key: run qutemail dkim keygen", lines)
        self.assertNotIn("other.test", out)
        zone = loadZone(out, "example.test")
        self.assertEqual(len(zone.find_rdataset("example.test.", "MX")), 1)
        self.assertIsNone(zone.get_rdataset("mail._domainkey.example.test.", "TXT"))

    def test_unknownDomain(self) -> None:
        """
        C{--domain} must be a local domain.
        """
        self.assertIn("is not a local domain", self.runFailing("dns-records", "--domain", "elsewhere.test"))

    def test_badKey(self) -> None:
        """
        A key file that holds no key is one line of error naming it.
        """
        keyPath = os.path.join(self.dataDir, "keys", "dkim-mail.key")
        os.makedirs(os.path.dirname(keyPath))
        with open(keyPath, "w") as f:
            f.write("not a key")
        self.assertTrue(self.runFailing("dns-records").startswith(f"cannot use the DKIM key {keyPath}: "))
