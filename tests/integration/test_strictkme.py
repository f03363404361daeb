"""
Internal mail against a KME pair that behaves as vendor KMEs do (issue 13):
it refuses a master naming itself as the slave, hands out one key per
request, and only 512-bit keys.  The real server is configured with
C{[qkd] rest_sae}, C{key_size} and C{kme_id} for it.
"""

import os
import smtplib

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
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
from tests.qkd.test_kmeservice import makePKI, startKME

SITE = "site-a"
ESCROW = "escrow"
# The embedded PKI's KME certificate has this subject CN.
KME_ID = "QutEmail embedded KME"
STRICT = PoolSettings(keySizeBits=512, minKeySizeBits=512, maxKeySizeBits=512, maxKeyPerRequest=1,
                      allowSelfSlave=False)


class StrictPairSetup(TestCase):
    """
    The server's QKD client against a strict KME pair (set-up only; the
    tests are in the subclasses).
    """

    timeout = 120

    settings = STRICT

    async def setUp(self):
        """
        Two KMEs on one link: ours (serving this site's SAE) and the
        escrow's, both strict.
        """
        self.pki = makePKI(self, (SITE, ESCROW))
        link = QKDLink(self.settings)
        self.ours = await startKME(self, self.pki, KME(KME_ID, (SITE,), link))
        self.escrow = await startKME(self, self.pki, KME("kme-escrow", (ESCROW,), link))
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.dataDir = os.path.join(base, "var")
        self.port, self.submissionPort = freePort(), freePort()

    def startServer(self, restSae: str, extra: str = "") -> ServerProcess:
        """
        Start the server against our KME, with bob and alice.

        @param extra: more C{[qkd]} lines.
        """
        client = self.pki.client(SITE)
        qkd = (f"\n[qkd]\nkme_url = {self.ours.baseURL}\nsae_id = {SITE}\nclient_cert = {client.certPath}\n"
               f"client_key = {client.keyPath}\nca_cert = {self.pki.ca.certPath}\nrest_sae = {restSae}\n"
               f"key_size = 512\nkme_id = {KME_ID}\n{extra}")
        self.configPath = os.path.join(self.base, "q.ini")
        configPath = writeConfig(self.configPath, self.dataDir, mtaPort=self.port,
                                 submissionPort=self.submissionPort, extra=qkd)
        for address in ("bob@example.test", "alice@example.test"):
            result = runCLI(configPath, "user", "add", address, "--password-stdin", stdin="pw\n")
            self.assertEqual(result.returncode, 0, result.stderr)
        server = ServerProcess(configPath, os.path.join(self.base, "out.log"), self.port)
        self.addCleanup(server.kill)
        server.start()
        return server

    def submit(self, count: int):
        """
        Bob sends alice C{count} messages over submission.
        """

        def send():
            client = smtplib.SMTP("127.0.0.1", self.submissionPort, local_hostname="c.test", timeout=CLIENT_TIMEOUT)
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw")
            for i in range(count):
                client.sendmail("bob@example.test", ["alice@example.test"],
                                b"Subject: plan %d\r\n\r\nThe secret plan number %d.\r\n" % (i, i))
            client.quit()

        return deferToThread(send)

    def log(self) -> str:
        """
        @return: the server's log so far.
        """
        with open(os.path.join(self.base, "out.log")) as f:
            return f.read()


class StrictKMEPairTests(StrictPairSetup):
    """
    Internal mail with C{rest_sae}, and without it.
    """

    async def test_internalMailDelivered(self):
        """
        With C{rest_sae} naming the escrow SAE, internal mail is stored
        encrypted at once (nothing deferred), one key per request, and
        each message's key is one the escrow SAE (and only it) can fetch
        by C{dec_keys}.
        """
        server = self.startServer(ESCROW)
        await self.submit(3)
        files = await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 3
                              and maildirFiles(self.dataDir, "alice@example.test"), timeout=30)
        keyIds = []
        for path in files:
            with open(path, "rb") as f:
                stored = f.read()
            self.assertIn(b"multipart/encrypted", stored)
            self.assertNotIn(b"secret plan", stored)
            keyIds.append(stored.split(b"Key-Id: ")[1].split(b"\n")[0].strip().decode("ascii"))
        self.assertNotIn("deferred", self.log())
        await deferToThread(server.stop)
        escrow = keySource(self, self.pki, self.escrow.baseURL, ESCROW)
        for keyId in keyIds:
            key = await escrow.decKey(SITE, keyId, 512)
            self.assertEqual(len(key), 64)

    async def test_selfAsSlaveRefused(self):
        """
        The control: without C{rest_sae} the client names its own SAE as
        the slave, the strict KME refuses, and the message waits deferred.
        """
        self.startServer("")
        await self.submit(1)
        await waitFor(lambda: "deferred" in self.log(), timeout=30)
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])


class KeyPoolAdmissionTests(StrictPairSetup):
    """
    C{[qkd] min_pool_keys} against the strict pair with a pool of 8 keys
    that never refills, and a minimum above that.
    """

    settings = PoolSettings(keySizeBits=512, minKeySizeBits=512, maxKeySizeBits=512, maxKeyPerRequest=1,
                            allowSelfSlave=False, maxKeyCount=8, refillKeysPerSecond=0)

    async def test_lowPoolRefusesInternalMail(self):
        """
        With fewer keys than C{min_pool_keys}, an authenticated user's RCPT
        to a local user gets 452 4.3.1 naming the key pool; mail from
        outside to the same user is still taken and delivered; C{qkd
        status} says internal mail is refused.
        """
        self.startServer(ESCROW, "min_pool_keys = 20\n")
        await waitFor(lambda: "under min_pool_keys 20" in self.log(), timeout=30)

        def internal():
            client = smtplib.SMTP("127.0.0.1", self.submissionPort, local_hostname="c.test", timeout=CLIENT_TIMEOUT)
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw")
            client.mail("bob@example.test")
            answer = client.rcpt("alice@example.test")
            client.quit()
            return answer

        code, text = await deferToThread(internal)
        self.assertEqual(code, 452)
        self.assertIn(b"4.3.1 QKD key pool low", text)

        def outside():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="c.test", timeout=CLIENT_TIMEOUT)
            client.sendmail("someone@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nfrom outside\r\n")
            client.quit()

        await deferToThread(outside)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 1, timeout=30)
        result = await deferToThread(runCLI, self.configPath, "qkd", "status")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("slave_SAE_ID: escrow", result.stdout)
        self.assertIn("stored_key_count: 8", result.stdout)
        self.assertIn("internal mail: refused (452 4.3.1), min_pool_keys 20", result.stdout)
