"""
End-to-end tests of the inbound checks (issue 7, acceptance items 1 and 2):
the whole service tree listening on loopback, a loopback DNS server
publishing SPF, DKIM and DMARC records, and smtplib delivering to the MTA
port from 127.0.0.1.
"""

import email
import email.policy
import io
import os
import smtplib
import time

from twisted.trial.unittest import TestCase

from qutemail.pipeline.dkim import SigningKey, generateKey, signHeader
from tests.dnsserver import SILENT
from tests.integration.support import maildirFiles, waitFor
from tests.integration.test_mta import RunningServerMixin

# What the outside world publishes.  The test client connects from
# 127.0.0.1: good.test allows it, bad.test does not; signed.test has no SPF
# record and no DMARC policy; strict.test and good.test publish p=reject.
ZONE = [
    ("good.test", "TXT", "v=spf1 ip4:127.0.0.1 -all"),
    ("_dmarc.good.test", "TXT", "v=DMARC1; p=reject"),
    ("bad.test", "TXT", "v=spf1 ip4:192.0.2.1 -all"),
    ("strict.test", "TXT", "v=spf1 ip4:192.0.2.1 ~all"),
    ("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s"),
]

# Made once: RSA key generation takes a while.
_KEY = generateKey("rsa", 2048)


def message(sender: str, subject: str, extraHeaders: str = "") -> bytes:
    """
    A small message from C{sender} to alice, LF line ends.
    """
    return (f"From: {sender}\nTo: alice@example.test\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '-')}@test>\n{extraHeaders}\n"
            f"Hello alice,\nthis is {subject}.\n").encode("ascii")


def signed(data: bytes, domain: str) -> bytes:
    """
    C{data} with a DKIM signature by C{domain} (selector C{sel}) in front.
    """
    key = SigningKey("sel", domain, _KEY[0])
    return signHeader(io.BytesIO(data), key, 10 * 2**20) + data


class InboundChecksTests(RunningServerMixin, TestCase):
    """
    SPF, DKIM and DMARC verdicts at the MTA port, and the headers they leave
    on the stored message.
    """

    configExtra = "\n[inbound]\ndns_timeout = 2s\n"

    async def setUp(self):
        """
        Start the server, then publish the test zone and the DKIM key.
        """
        await RunningServerMixin.setUp(self)
        for name, rtype, value in ZONE:
            self.dns.add(name, rtype, value)
        self.dns.add("sel._domainkey.signed.test", "TXT", _KEY[1])
        self.dns.add("sel._domainkey.good.test", "TXT", _KEY[1])

    def send(self, sender: str, data: bytes):
        """
        Send C{data} from C{sender} to alice over the MTA port.

        @return: a Deferred firing with C{(code, text)} of the final reply,
            or of the refused MAIL.
        """

        def run(client):
            client.ehlo()
            code, text = client.mail(sender)
            if code != 250:
                return code, text
            client.rcpt("alice@example.test")
            try:
                return client.data(data.replace(b"\n", b"\r\n"))
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error

        return self.smtp(run)

    async def stored(self, count: int = 1) -> list[email.message.Message]:
        """
        Wait for alice to have C{count} messages and parse them.
        """
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) >= count)
        parsed = []
        for path in maildirFiles(self.dataDir, "alice@example.test"):
            with open(path, "rb") as f:
                parsed.append(email.message_from_binary_file(f, policy=email.policy.compat32))
        return parsed

    def results(self, stored: email.message.Message) -> str:
        """
        The one Authentication-Results field of a stored message, unfolded.
        """
        fields = stored.get_all("Authentication-Results")
        self.assertEqual(len(fields), 1, fields)
        return " ".join(fields[0].split())

    async def test_spfPassDMARCPass(self):
        """
        An aligned SPF pass: stored with C{Received-SPF: pass} and
        C{spf=pass}, C{dmarc=pass} in our Authentication-Results.
        """
        code, _ = await self.send("news@good.test", message("news@good.test", "spf pass"))
        self.assertEqual(code, 250)
        [stored] = await self.stored()
        self.assertTrue(stored["Received-SPF"].startswith("pass"), stored["Received-SPF"])
        self.assertIn("client-ip=127.0.0.1", stored["Received-SPF"])
        results = self.results(stored)
        self.assertTrue(results.startswith("mail.example.test;"), results)
        self.assertIn("spf=pass smtp.mailfrom=good.test", results)
        self.assertIn("dmarc=pass", results)

    async def test_spfFailRejected(self):
        """
        An SPF fail is refused at MAIL with 550 5.7.23; nothing is stored.
        """
        code, text = await self.send("ceo@bad.test", message("ceo@bad.test", "spf fail"))
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.7.23"), text)
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])

    async def test_dkimPass(self):
        """
        A valid signature: C{dkim=pass} with its domain and selector.
        """
        data = signed(message("ann@signed.test", "dkim pass"), "signed.test")
        code, _ = await self.send("ann@signed.test", data)
        self.assertEqual(code, 250)
        results = self.results((await self.stored())[0])
        self.assertIn("dkim=pass header.d=signed.test header.s=sel", results)
        self.assertIn("spf=none", results)
        self.assertIn("dmarc=none", results)

    async def test_dkimFailAfterBodyChange(self):
        """
        A signature made before the body changed: accepted (no DMARC
        policy), with C{dkim=fail}.
        """
        data = signed(message("ann@signed.test", "dkim broken"), "signed.test")
        data = data.replace(b"Hello alice", b"Hello ALICE")
        code, _ = await self.send("ann@signed.test", data)
        self.assertEqual(code, 250)
        results = self.results((await self.stored())[0])
        self.assertIn("dkim=fail", results)
        self.assertNotIn("dkim=pass", results)

    async def test_dmarcRejectFailure(self):
        """
        A From in a p=reject domain with neither aligned SPF nor DKIM is
        refused after DATA with 550 5.7.1; nothing is stored.
        """
        code, text = await self.send("bulk@elsewhere.test", message("ceo@good.test", "dmarc fail"))
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.7.1"), text)
        await self.send("news@good.test", message("news@good.test", "after"))
        stored = await self.stored()
        self.assertEqual([m["Subject"] for m in stored], ["after"])

    async def test_dmarcPassByDKIM(self):
        """
        A p=reject domain's mail relayed from an address SPF does not cover
        passes DMARC by its aligned DKIM signature.
        """
        data = signed(message("news@good.test", "dkim aligned"), "good.test")
        code, _ = await self.send("bounces@elsewhere.test", data)
        self.assertEqual(code, 250)
        results = self.results((await self.stored())[0])
        self.assertIn("dkim=pass header.d=good.test", results)
        self.assertIn("dmarc=pass", results)

    async def test_forgedResultsRemoved(self):
        """
        An incoming Authentication-Results claiming our host name is removed;
        another server's is kept below ours.
        """
        forged = ("Authentication-Results: mail.example.test;\n\tdkim=pass header.d=good.test\n"
                  "Authentication-Results: other.test; spf=pass smtp.mailfrom=good.test\n")
        code, _ = await self.send("ann@signed.test", message("ann@signed.test", "forged", forged))
        self.assertEqual(code, 250)
        [stored] = await self.stored()
        fields = [" ".join(f.split()) for f in stored.get_all("Authentication-Results")]
        self.assertEqual(len(fields), 2, fields)
        self.assertTrue(fields[0].startswith("mail.example.test;"))
        self.assertNotIn("dkim=pass", fields[0])
        self.assertEqual(fields[1], "other.test; spf=pass smtp.mailfrom=good.test")

    async def test_submissionNotChecked(self):
        """
        Mail from our own authenticated users gets no inbound verdicts.
        """
        await self.submit(lambda c: c.sendmail("bob@example.test", ["alice@example.test"],
                                               message("bob@example.test", "internal").replace(b"\n", b"\r\n")))
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 1)
        with open(maildirFiles(self.dataDir, "alice@example.test")[0], "rb") as f:
            stored = f.read()
        self.assertNotIn(b"Authentication-Results:", stored)
        self.assertNotIn(b"Received-SPF:", stored)

    async def test_dnsAnswersCached(self):
        """
        A second message from the same domain is checked from cached DNS
        answers: the SPF and DMARC records are asked for once each.
        """
        for n in range(2):
            code, _ = await self.send("news@good.test", message("news@good.test", f"cached {n}"))
            self.assertEqual(code, 250)
        self.assertEqual(self.dns.queries.count(("good.test", "TXT")), 1, self.dns.queries)
        self.assertEqual(self.dns.queries.count(("_dmarc.good.test", "TXT")), 1, self.dns.queries)

    async def test_silentDNS(self):
        """
        When the sender domain's DNS does not answer, MAIL gets 451 4.4.3
        within the configured timeout, and meanwhile another session is
        served in full.
        """
        self.dns.setMode(SILENT, "slow.test")

        def slow(client):
            client.ehlo()
            started = time.monotonic()
            code, text = client.mail("someone@slow.test")
            return code, text, time.monotonic() - started

        slowSession = self.smtp(slow)
        # the other client starts while the first waits on DNS
        await waitFor(lambda: ("slow.test", "TXT") in self.dns.queries)
        started = time.monotonic()
        code, _ = await self.send("news@good.test", message("news@good.test", "meanwhile"))
        other = time.monotonic() - started
        self.assertEqual(code, 250)
        code, text, waited = await slowSession
        self.assertEqual((code, text[:5]), (451, b"4.4.3"))
        self.assertLess(waited, 2.0 + 3.0)
        self.assertLess(other, waited)


class QuarantineTests(RunningServerMixin, TestCase):
    """
    With C{dmarc_reject = quarantine}, a p=reject failure goes to Junk.
    """

    configExtra = "\n[inbound]\ndmarc_reject = quarantine\n"

    async def test_toJunk(self):
        """
        The message is accepted and lands in alice's C{.Junk} folder, not her
        INBOX, with C{dmarc=fail} recorded.
        """
        for name, rtype, value in ZONE:
            self.dns.add(name, rtype, value)

        def run(client):
            client.sendmail("bulk@elsewhere.test", ["alice@example.test"],
                            message("ceo@good.test", "quarantined").replace(b"\n", b"\r\n"))

        await self.smtp(run)
        junk = os.path.join(self.dataDir, "mail", "example.test", "alice", ".Junk", "new")
        await waitFor(lambda: os.path.isdir(junk) and len(os.listdir(junk)) == 1)
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])
        with open(os.path.join(junk, os.listdir(junk)[0]), "rb") as f:
            stored = email.message_from_binary_file(f)
        self.assertIn("dmarc=fail", " ".join(stored["Authentication-Results"].split()))
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(junk), "maildirfolder")))

