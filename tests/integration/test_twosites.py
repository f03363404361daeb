"""
Two QutEmail sites on one QKD link (issue 13), end to end: two real
C{twistd qutemail} processes, A (C{a.example.test}, SAE C{site-a}) and B
(C{b.example.test}, SAE C{site-b}), each with its own KME; the two KMEs
share one simulated QKD link and behave as a strict vendor pair (512-bit
keys, one key per request, no SAE its own slave).  Mail from A to B is
sealed at A with a key from A's C{enc_keys} and opened at B with the same
key from B's C{dec_keys}.
"""

import datetime
import os
import signal
import smtplib
import threading
import time

import attrs
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.interfaces import KeySourceError
from qutemail.qkd.certs import ensureHostCertificate
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.kme import EmbeddedKMEService
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from qutemail.qkd.transit import TRANSIT
from tests.integration.support import (
    CLIENT_TIMEOUT,
    ServerProcess,
    freePort,
    insecureContext,
    maildirFiles,
    runCLI,
    waitFor,
    writeConfig,
)
from tests.qkd.test_etsi014 import keySource
from tests.qkd.test_kmeservice import makePKI

STRICT = PoolSettings(keySizeBits=512, minKeySizeBits=512, maxKeySizeBits=512, maxKeyPerRequest=1,
                      allowSelfSlave=False, refillKeysPerSecond=0)
ALICE, BOB = "alice@a.example.test", "bob@b.example.test"
ORIGINAL = (b"From: Alice <alice@a.example.test>\r\nTo: bob@b.example.test\r\nSubject: the merger plan\r\n"
            b"Message-ID: <plan-1@a.example.test>\r\n\r\nWe buy the other firm on Friday.\r\n"
            b"Tell nobody outside the two offices.\r\n")


@attrs.define(eq=False)
class RecordingKME(KME):
    """
    A KME that notes every key it hands out: C{(method, caller, other SAE,
    key id)}.
    """

    handedOut: list = attrs.field(factory=list)

    def encKeys(self, caller, slave, number, sizeBits, now):
        keys = super().encKeys(caller, slave, number, sizeBits, now)
        self.handedOut += [("enc_keys", caller, slave, k.keyId) for k in keys]
        return keys

    def decKeys(self, caller, master, keyIds):
        keys = super().decKeys(caller, master, keyIds)
        self.handedOut += [("dec_keys", caller, master, k.keyId) for k in keys]
        return keys


class TwoSites(TestCase):
    """
    Set-up: the KME pair and the two sites' configurations; the tests
    start the servers they need.
    """

    timeout = 180
    settings = STRICT
    policy = "require"
    minPoolKeys = 0
    initialKeys: int | None = None
    # Whether B presents a certificate from the sites' CA (else its own
    # self-signed one, which A must not accept).
    trustedB = True
    # B's [limits] messages_per_ip_hour, when set.
    limitB: int | None = None
    # Whether B names A as its peer.
    peersB = True

    async def setUp(self):
        self.pki = makePKI(self, ("site-a", "site-b", "site-c"))
        # The link's pool runs on this clock, never on its own.
        self.clock = Clock()
        self.link = QKDLink(self.settings)
        if self.initialKeys is not None:
            self.link.take("site-a", "site-c", self.link.storedKeyCount(0) - self.initialKeys, 512, 0)
        self.kmeA = RecordingKME("kme-a", ("site-a",), self.link)
        self.kmeB = RecordingKME("kme-b", ("site-b", "site-c"), self.link)
        self.kmePortA, self.kmePortB = freePort(), freePort()
        self.serviceA = await self.startKME(self.kmeA, self.kmePortA)
        self.serviceB = await self.startKME(self.kmeB, self.kmePortB)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.ports = {site: (freePort(), freePort(), freePort()) for site in "ab"}
        self.configs = {site: self.writeSite(site) for site in "ab"}
        self.servers: dict[str, ServerProcess] = {}

    async def startKME(self, kme: KME, port: int) -> EmbeddedKMEService:
        """
        Start a KME on a fixed loopback port (so it can come back there).
        """
        service = EmbeddedKMEService(reactor, kme, self.pki, name=kme.kmeId, clock=self.clock,
                                     endpoint=f"tcp:{port}:interface=127.0.0.1")
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.whenListening()
        return service

    def dataDir(self, site: str) -> str:
        return os.path.join(self.base, f"site-{site}")

    def writeSite(self, site: str) -> str:
        """
        One site's configuration: its KME, our peer, a route to it.
        """
        peer = "b" if site == "a" else "a"
        mta, submission, imap = self.ports[site]
        kmePort = self.kmePortA if site == "a" else self.kmePortB
        client = self.pki.client(f"site-{site}")
        tls = ""
        if site == "a" or self.trustedB:
            host = ensureHostCertificate(self.pki, f"mail.{site}.example.test",
                                         datetime.datetime.now(datetime.timezone.utc))
            tls = f"\n[tls]\ncert = {host.certPath}\nkey = {host.keyPath}\n"
        extra = (f"\n[qkd]\nkme_url = https://localhost:{kmePort}\nsae_id = site-{site}\n"
                 f"client_cert = {client.certPath}\nclient_key = {client.keyPath}\nca_cert = {self.pki.ca.certPath}\n"
                 f"rest_sae = site-c\nkey_size = 512\n"
                 f"peers = {peer + '.example.test=site-' + peer if site == 'a' or self.peersB else ''}\n"
                 f"peer_policy = {self.policy}\nmin_pool_keys = {self.minPoolKeys}\n"
                 f"\n[relay]\nroutes = {peer}.example.test=localhost:{self.ports[peer][0]}\n"
                 f"tls_ca = {self.pki.ca.certPath}\n"
                 f"retry_schedule = 10m\n\n[inbound]\nchecks = no\n\n[imap]\nport = {imap}\ntls_port = 0\n{tls}")
        if site == "b" and self.limitB is not None:
            extra += f"\n[limits]\nmessages_per_ip_hour = {self.limitB}\n"
        path = writeConfig(os.path.join(self.base, f"site-{site}.ini"), self.dataDir(site), mtaPort=mta,
                           submissionPort=submission, extra=extra)
        text = open(path).read().replace("domains = example.test, example.org", f"domains = {site}.example.test")
        text = text.replace("hostname = mail.example.test", f"hostname = mail.{site}.example.test")
        # The template's own [imap] section gives way to ours.
        text = text.replace("[imap]\nport = 0\ntls_port = 0\n", "", 1)
        with open(path, "w") as f:
            f.write(text)
        address = ALICE if site == "a" else BOB
        result = runCLI(path, "user", "add", address, "--password-stdin", stdin="pw\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        return path

    def start(self, site: str) -> ServerProcess:
        server = ServerProcess(self.configs[site], os.path.join(self.base, f"site-{site}.log"), self.ports[site][0])
        self.addCleanup(server.kill)
        server.start()
        self.servers[site] = server
        return server

    def log(self, site: str) -> str:
        with open(os.path.join(self.base, f"site-{site}.log")) as f:
            return f.read()

    def submit(self, message: bytes = ORIGINAL, recipient: str = BOB):
        """
        Alice sends C{message} to bob (or C{recipient}) over A's submission
        port.
        """

        def send():
            client = smtplib.SMTP("127.0.0.1", self.ports["a"][1], local_hostname="c.test", timeout=30)
            client.starttls(context=insecureContext())
            client.login(ALICE, "pw")
            client.sendmail(ALICE, [recipient], message)
            client.quit()

        return deferToThread(send)

    def transitCopies(self) -> list[str]:
        directory = os.path.join(self.dataDir("a"), "queue", "transit")
        if not os.path.isdir(directory):
            return []
        return [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".msg")]

    def handedOut(self, method: str) -> list[tuple]:
        return [h for h in self.kmeA.handedOut + self.kmeB.handedOut if h[0] == method]

    async def flushA(self):
        result = await deferToThread(runCLI, self.configs["a"], "queue", "flush")
        self.assertEqual(result.returncode, 0, result.stderr)

    def bobsMessages(self) -> list[str]:
        return maildirFiles(self.dataDir("b"), BOB)


def fetchOverIMAP(port: int) -> list[bytes]:
    """
    Bob's messages as his IMAP client reads them (blocking).
    """
    import imaplib
    client = imaplib.IMAP4("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    client.starttls(insecureContext())
    client.login(BOB, "pw")
    client.select("INBOX")
    _, data = client.fetch("1:*", "(BODY.PEEK[])")
    client.logout()
    return [d[1] for d in data if isinstance(d, tuple)]


def withoutTrace(message: bytes) -> bytes:
    """
    @return: a message without its leading trace fields (Return-Path,
        Received and their continuation lines).
    """
    lines = message.split(b"\r\n")
    while lines and (lines[0][:1] in (b" ", b"\t") or lines[0].lower().startswith((b"received:", b"return-path:"))):
        lines.pop(0)
    return b"\r\n".join(lines)


def keyIdOf(data: bytes) -> str:
    return data.split(b"\nKey-Id: ")[1].split(b"\n")[0].strip().decode("ascii")


class InterSiteTests(TwoSites):
    """
    The path of one message from A to B, and who got its key.
    """

    async def test_sealedInTransitOpenedAtB(self):
        """
        A seals the message for site B; what waits to leave A holds no
        line of the body or subject and names the key; a third SAE cannot
        have the key; B opens it with the key from its own KME, stores it
        encrypted at rest under another key, and bob reads over IMAP what
        alice sent.  Each KME handed the transit key out exactly once.
        """
        self.start("a")  # B is not up yet: the message waits at A, sealed.
        await self.submit()
        copies = await waitFor(self.transitCopies, timeout=30)
        await waitFor(lambda: "deferred" in self.log("a"), timeout=30)
        with open(copies[0], "rb") as f:
            transit = f.read()
        for line in ORIGINAL.split(b"\r\n\r\n")[1].split(b"\r\n"):
            if line:
                self.assertNotIn(line, transit)
        self.assertNotIn(b"merger", transit)
        self.assertIn(b"Master-Sae: site-a\n", transit)
        transitKey = keyIdOf(transit)

        # SAE site-c, on B's own KME, asks for the key meant for site-b.
        thief = keySource(self, self.pki, self.serviceB.baseURL, "site-c")
        error = await self.assertFailure(thief.decKey("site-a", transitKey), KeySourceError)
        self.assertIn("HTTP 401", str(error))

        self.start("b")
        await self.flushA()
        files = await waitFor(self.bobsMessages, timeout=30)
        self.assertEqual(len(files), 1)
        with open(files[0], "rb") as f:
            stored = f.read()
        self.assertIn(b"multipart/encrypted", stored)
        self.assertNotIn(b"merger", stored)
        self.assertNotEqual(keyIdOf(stored), transitKey)

        [read] = await deferToThread(fetchOverIMAP, self.ports["b"][2])
        self.assertEqual(withoutTrace(read), ORIGINAL)
        self.assertEqual([h for h in self.handedOut("enc_keys") if h[3] == transitKey],
                         [("enc_keys", "site-a", "site-b", transitKey)])
        self.assertEqual([h for h in self.handedOut("dec_keys") if h[3] == transitKey],
                         [("dec_keys", "site-b", "site-a", transitKey)])
        await waitFor(lambda: not self.transitCopies(), timeout=30)
        # B noted the transit key for its erasure after queue_lifetime.
        with open(os.path.join(self.dataDir("b"), "keys", "transit-keys")) as f:
            self.assertIn(f"transit-{transitKey} ", f.read())

    async def test_internalMailAtBothSites(self):
        """
        The strict pair also keys each site's own internal mail
        (C{rest_sae}), with no deferral.
        """
        self.start("a")
        self.start("b")
        await self.submit(b"From: alice@a.example.test\r\nTo: alice@a.example.test\r\nSubject: note\r\n\r\nself\r\n",
                          ALICE)
        await waitFor(lambda: maildirFiles(self.dataDir("a"), ALICE), timeout=30)
        self.assertNotIn("deferred", self.log("a"))


class FaultTests(TwoSites):
    """
    What goes wrong between sites, and what becomes of the mail.
    """

    async def test_receiverKMEDown(self):
        """
        B's KME is down when the message arrives: B answers 451 and keeps
        nothing; once it is back, A's retry is delivered once.
        """
        self.start("a")
        self.start("b")
        await self.serviceB.stopService()
        await self.submit()
        await waitFor(lambda: "451 4.3.0 QKD key for this transit message unavailable" in self.log("a"),
                      timeout=30)
        self.assertEqual(self.bobsMessages(), [])
        self.serviceB = await self.startKME(self.kmeB, self.kmePortB)
        await self.flushA()
        await waitFor(self.bobsMessages, timeout=30)
        await waitFor(lambda: "sent after 2 attempts" in self.log("a"), timeout=30)
        self.assertEqual(len(self.bobsMessages()), 1)

    async def test_senderKMEEmpty(self):
        """
        A's KME has no key left: under C{require} the message waits at A,
        and C{queue list} says why; nothing reaches B.
        """
        self.link.take("site-a", "site-c", self.link.storedKeyCount(0), 512, 0)
        self.start("a")
        self.start("b")
        await self.submit()
        await waitFor(lambda: "no QKD key for peer SAE site-b" in self.log("a"), timeout=30)
        listing = await deferToThread(runCLI, self.configs["a"], "queue", "list")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("QKD transit key unavailable for peer SAE site-b", listing.stdout)
        self.assertEqual(self.bobsMessages(), [])
        self.assertEqual(self.transitCopies(), [])

    async def sendForged(self, sender: str, tamper: bool):
        """
        Play a site A that sends B a transit message under a real key from
        A's KME, from C{sender}, its ciphertext changed if C{tamper}.

        @return: the SMTP error B answered with.
        """
        source = keySource(self, self.pki, self.serviceA.baseURL, "site-a")
        keyId, key = await source.encKey("site-b", 512)
        transit = encryptBytes(ORIGINAL.replace(b"\r\n", b"\n"), keyId, key, fmt=TRANSIT,
                               parties=("site-a", "site-b"))
        if tamper:
            at = transit.index(b"base64\n\n") + 20
            transit = transit[:at] + (b"A" if transit[at:at + 1] != b"A" else b"B") + transit[at + 1:]

        def send():
            client = smtplib.SMTP("127.0.0.1", self.ports["b"][0], local_hostname="mail.a.example.test",
                                  timeout=CLIENT_TIMEOUT)
            try:
                client.sendmail(sender, [BOB], transit.replace(b"\n", b"\r\n"))
            except smtplib.SMTPDataError as e:
                return e
            finally:
                client.quit()

        return await deferToThread(send)

    async def test_tamperedCiphertext(self):
        """
        A transit message whose ciphertext was changed is refused with a
        5xx, and nothing is stored.
        """
        self.start("b")
        error = await self.sendForged(ALICE, tamper=True)
        self.assertEqual(error.smtp_code, 554)
        self.assertIn(b"5.7.1", error.smtp_error)
        self.assertEqual(self.bobsMessages(), [])

    async def test_notFromThatPeer(self):
        """
        A transit message naming site A's SAE but sent from an address
        outside A's domain is refused with a 5xx; nothing is stored.
        """
        self.start("b")
        error = await self.sendForged("mallory@elsewhere.test", tamper=False)
        self.assertEqual(error.smtp_code, 550)
        self.assertIn(b"5.7.1", error.smtp_error)
        self.assertEqual(self.bobsMessages(), [])

    async def test_receiverKilledBeforeReply(self):
        """
        B is killed (SIGKILL) after it got the key by C{dec_keys} and kept
        it, before its 250; A's retry is read with the key from B's vault
        (B's KME has handed it out already), and bob gets the message once.
        """
        self.start("a")
        b = self.start("b")
        vault = os.path.join(self.dataDir("b"), "keys", "vault")
        killed = threading.Event()

        def killOnKey():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if os.path.isdir(vault) and any(n.startswith("transit-") for n in os.listdir(vault)):
                    os.kill(b.process.pid, signal.SIGKILL)
                    killed.set()
                    return
                time.sleep(0.001)

        watcher = threading.Thread(target=killOnKey)
        watcher.start()
        # Large enough that decrypting it keeps B busy after the key is kept.
        body = b"".join(b"line %07d of a long report on the merger, kept between the sites\r\n" % i
                        for i in range(180_000))
        await self.submit(ORIGINAL + body)
        await deferToThread(watcher.join)
        self.assertTrue(killed.is_set())
        b.process.wait(10)
        await waitFor(lambda: "deferred" in self.log("a"), timeout=60)
        self.assertEqual(self.bobsMessages(), [])
        self.start("b")
        await self.flushA()
        await waitFor(lambda: "sent after 2 attempts" in self.log("a"), timeout=60)
        await waitFor(self.bobsMessages, timeout=30)
        self.assertEqual(len(self.bobsMessages()), 1)
        self.assertEqual(len(self.handedOut("dec_keys")), 1)
        self.assertIn("opened QKD transit message", self.log("b"))


class PreferPolicyTests(TwoSites):
    """
    C{peer_policy = prefer}: no key, so the message goes with TLS alone,
    and the log says so.
    """

    policy = "prefer"

    async def test_sentWithoutTransitKey(self):
        self.link.take("site-a", "site-c", self.link.storedKeyCount(0), 512, 0)
        self.start("a")
        self.start("b")
        await self.submit()
        await waitFor(self.bobsMessages, timeout=30)
        self.assertIn("sent without transit encryption ([qkd] peer_policy = prefer)", self.log("a"))
        self.assertEqual(self.log("a").count("sent without transit encryption"), 1)
        self.assertEqual(self.handedOut("dec_keys"), [])


class AdmissionTests(TwoSites):
    """
    C{min_pool_keys} above what the link holds: our users' mail to the
    peer and to each other waits at RCPT (452 4.3.1); mail from outside
    does not.
    """

    settings = attrs.evolve(STRICT, maxKeyCount=40, refillKeysPerSecond=1)
    minPoolKeys = 20
    initialKeys = 8

    def rcpt(self, port: int, sender: str, recipient: str, login: bool):
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="c.test", timeout=CLIENT_TIMEOUT)
        client.ehlo()
        if login:
            client.starttls(context=insecureContext())
            client.login(ALICE, "pw")
        code, text = client.mail(sender)
        if code != 250:
            client.quit()
            return code, text
        answer = client.rcpt(recipient)
        client.quit()
        return answer

    async def test_lowPoolRefusesAtRcpt(self):
        self.start("a")
        await waitFor(lambda: "mail to peer site site-b is refused" in self.log("a"), timeout=30)
        mta, submission, _ = self.ports["a"]
        code, text = await deferToThread(self.rcpt, submission, ALICE, BOB, True)
        self.assertEqual((code, b"4.3.1" in text, b"peer site site-b" in text), (452, True, True))
        code, text = await deferToThread(self.rcpt, submission, ALICE, ALICE, True)
        self.assertEqual((code, b"4.3.1" in text), (452, True))
        code, _ = await deferToThread(self.rcpt, mta, "someone@remote.test", ALICE, False)
        self.assertEqual(code, 250)
        status = await deferToThread(runCLI, self.configs["a"], "qkd", "status")
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("link to SAE site-b (peer site b.example.test):", status.stdout)
        self.assertIn("mail to b.example.test: refused (452 4.3.1), min_pool_keys 20", status.stdout)
        self.assertIn("internal mail: refused (452 4.3.1), min_pool_keys 20", status.stdout)

        # The link refills (its clock is the KMEs' own): admission opens.
        self.clock.advance(60)
        await waitFor(lambda: "site-b holds" in self.log("a") and "again: mail to peer site" in self.log("a"),
                      timeout=30)
        code, text = await deferToThread(self.rcpt, submission, ALICE, BOB, True)
        self.assertEqual(code, 250, text)


class UnverifiedPeerTests(TwoSites):
    """
    Mail to a peer goes over verified TLS only: B presenting a certificate
    the sites' CA did not issue gets nothing.
    """

    trustedB = False

    async def test_untrustedCertificate(self):
        self.start("a")
        self.start("b")
        await self.submit()
        await waitFor(lambda: "4.7.5" in self.log("a"), timeout=30)
        self.assertIn("deferred", self.log("a"))
        self.assertEqual(self.bobsMessages(), [])
        self.assertNotIn("opened QKD transit message", self.log("b"))


class PeerRateLimitTests(TwoSites):
    """
    B's per-IP rate limit does not throttle site A's relay, and a forger
    naming A's domain in plain mail is still counted.
    """

    limitB = 2

    async def test_peerNotThrottled(self):
        self.start("a")
        self.start("b")
        for n in range(4):
            await self.submit(ORIGINAL.replace(b"plan-1@", b"plan-%d@" % (n + 10)))
        await waitFor(lambda: len(self.bobsMessages()) == 4, timeout=60)
        self.assertNotIn("Rate limit", self.log("a"))

        def forge():
            codes = []
            client = smtplib.SMTP("127.0.0.1", self.ports["b"][0], local_hostname="mail.a.example.test",
                                  timeout=CLIENT_TIMEOUT)
            for n in range(3):
                try:
                    client.sendmail(ALICE, [BOB], b"Subject: plain %d\r\n\r\nnot in transit\r\n" % n)
                    codes.append(250)
                except smtplib.SMTPDataError as e:
                    codes.append((e.smtp_code, e.smtp_error[:5]))
                    client.rset()
            client.quit()
            return codes

        self.assertEqual(await deferToThread(forge), [250, 250, (451, b"4.7.0")])
        await waitFor(lambda: len(self.bobsMessages()) == 6, timeout=30)


class ReceiverWithoutPeersTests(TwoSites):
    """
    A site that does not name the sender's site as a peer refuses its
    transit mail (550 5.7.1) rather than store ciphertext bob cannot read;
    alice gets the bounce.
    """

    peersB = False

    async def test_refusedAndBounced(self):
        self.start("a")
        self.start("b")
        await self.submit()
        bounces = await waitFor(lambda: maildirFiles(self.dataDir("a"), ALICE), timeout=30)
        with open(bounces[0], "rb") as f:
            report = f.read()
        self.assertIn(b"550 5.7.1 QKD transit message not from a configured peer site", report)
        self.assertEqual(self.bobsMessages(), [])
