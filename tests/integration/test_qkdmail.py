"""
Internal mail through the whole server (issue 4): submitted over 587,
sealed with keys from the embedded KME, stored encrypted, read back by the
owner; mail from outside stays as it came.
"""

import email
import os
import smtplib
import subprocess
import sys

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.qkd.cipher import readEnvelope
from tests.integration.support import (
    CLIENT_TIMEOUT,
    ServerProcess,
    freePort,
    insecureContext,
    maildirFiles,
    readAsOwner,
    runCLI,
    waitFor,
)
from tests.integration.test_mta import RunningServerMixin

COUNT = 200
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class InternalMailTests(RunningServerMixin, TestCase):
    """
    Two hundred internal messages, each with its own key.
    """

    timeout = 120
    configExtra = "\n[qkd]\npool_keys = 500\nrefill_per_second = 0\n"

    async def poolCount(self) -> int:
        """
        @return: the embedded KME's stored key count, asked over ETSI 014.
        """
        source = self.root.encryptor.keySource
        return (await source.status("mail.example.test")).storedKeyCount

    async def test_twoHundredDistinctKeys(self) -> None:
        """
        Bob sends alice 200 messages over 587: 200 stored files, each
        multipart/encrypted with no plaintext line, 200 distinct key ids,
        the KME pool 200 keys smaller, and each reads back as sent.
        """
        before = await self.poolCount()

        def send(client):
            for i in range(COUNT):
                client.sendmail("bob@example.test", ["alice@example.test"],
                                b"From: bob@example.test\r\nSubject: secret %d\r\n\r\nconfidential body %d\r\n"
                                % (i, i))

        await self.submit(send)
        paths = await waitFor(lambda: (lambda p: p if len(p) >= COUNT else None)(
            maildirFiles(self.dataDir, "alice@example.test")))
        self.assertEqual(len(paths), COUNT)
        keyIds = set()
        seen = set()
        for path in paths:
            with open(path, "rb") as f:
                stored = f.read()
            self.assertEqual(email.message_from_bytes(stored).get_content_type(), "multipart/encrypted")
            self.assertNotIn(b"confidential", stored)
            self.assertNotIn(b"Subject: secret", stored)
            with open(path, "rb") as f:
                keyIds.add(readEnvelope(f).keyId)
            plain = await readAsOwner(self.dataDir, path)
            self.assertIn(b"\nSubject: secret ", plain)
            seen.add(int(plain.split(b"confidential body ")[1].split(b"\n")[0]))
        self.assertEqual(len(keyIds), COUNT)
        self.assertEqual(seen, set(range(COUNT)))
        self.assertEqual(before - await self.poolCount(), COUNT)

    async def test_fromOutsideInClear(self) -> None:
        """
        A message from outside (port 25) to alice is stored as it came,
        apart from the trace headers.
        """
        body = b"From: x@remote.test\r\nSubject: hello from outside\r\n\r\nplain words\r\n"
        await self.smtp(lambda client: client.sendmail("x@remote.test", ["alice@example.test"], body))
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            stored = f.read()
        self.assertTrue(stored.endswith(body.replace(b"\r\n", b"\n")))
        self.assertTrue(stored.startswith(b"Return-Path: <x@remote.test>\nAuthentication-Results: "))
        self.assertIn(b"\nReceived-SPF: none ", stored)
        self.assertIn(b"\nReceived: from client.test", stored)


class DevelopmentConfigTests(TestCase):
    """
    Issue 4, acceptance item 1, with C{etc/qutemail.ini} itself (embedded
    KME), its data directory and ports moved by environment overrides.
    """

    timeout = 120

    async def test_storedEncryptedShownExactly(self) -> None:
        """
        Bob submits to alice over 587: her Maildir file holds no line of the
        body or the subject, names a key id, parses as a multipart/encrypted
        RFC 5322 message; C{mail show} prints the message as delivered
        (our Received field, then exactly what bob sent, LF line ends).
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        dataDir = os.path.join(base, "var")
        port, submission = freePort(), freePort()
        env = dict(os.environ, QUTEMAIL_SERVER_DATA_DIR=dataDir, QUTEMAIL_SMTP_MTA_PORT=str(port),
                   QUTEMAIL_SMTP_SUBMISSION_PORT=str(submission), QUTEMAIL_SMTP_SMTPS_PORT="0",
                   QUTEMAIL_RELAY_NAMESERVERS="127.0.0.1:9", QUTEMAIL_METRICS_PORT=str(freePort()))
        config = os.path.join(ROOT, "etc", "qutemail.ini")
        for user in ("alice", "bob"):
            added = await deferToThread(runCLI, config, "user", "add", f"{user}@example.test", "--password-stdin",
                                        stdin=f"pw-{user}\n", env=env)
            self.assertEqual(added.returncode, 0, added.stderr)
        server = ServerProcess(config, os.path.join(base, "twistd.log"), port, env=env)
        self.addCleanup(server.kill)
        await deferToThread(server.start)
        sent = (b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: Board minutes, draft 3\r\n"
                b"Message-ID: <minutes-3@example.test>\r\nMIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                b"Item 1: the merger is approved.\r\n.Item 2 starts with a dot.\r\n\xc3\xa9t\xc3\xa9\r\n")

        def submit():
            client = smtplib.SMTP("127.0.0.1", submission, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw-bob")
            client.sendmail("bob@example.test", ["alice@example.test"], sent)
            client.quit()

        await deferToThread(submit)
        [path] = await waitFor(lambda: maildirFiles(dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            stored = f.read()
        for line in sent.split(b"\r\n")[7:] + [b"Subject: Board minutes, draft 3"]:
            if line:
                self.assertNotIn(line, stored)
        parsed = email.message_from_bytes(stored)
        self.assertEqual(parsed.get_content_type(), "multipart/encrypted")
        with open(path, "rb") as f:
            keyId = readEnvelope(f).keyId
        self.assertIn(f"Key-Id: {keyId}".encode(), stored)

        listing = await deferToThread(runCLI, config, "mail", "list", "alice@example.test", env=env)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        [line] = listing.stdout.splitlines()
        messageId = line.split()[0]
        self.assertTrue(line.endswith("  encrypted"), line)
        shown = await deferToThread(runCLI, config, "mail", "show", "alice@example.test", messageId, env=env,
                                    binary=True)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        original = sent.replace(b"\r\n", b"\n")
        self.assertTrue(shown.stdout.endswith(original), shown.stdout[:300])
        trace = shown.stdout[:-len(original)].split(b"\n")[:-1]
        self.assertTrue(trace[0].startswith(b"Received: from client.test"), trace)
        self.assertTrue(all(t[:1] in (b" ", b"\t") for t in trace[1:]), trace)

        status = await deferToThread(runCLI, config, "qkd", "status", env=env)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn(": reachable\n", status.stdout)
        self.assertIn("slave_SAE_ID: mail.example.test\n", status.stdout)
        self.assertIn("max_key_count: 10000\n", status.stdout)

        missing = await deferToThread(runCLI, config, "mail", "show", "alice@example.test", "nope", env=env)
        self.assertEqual((missing.returncode, missing.stderr), (1, "qutemail: no message nope for alice@example.test\n"))
        self.assertIn(await deferToThread(server.stop), (0, -15, 143))
        down = await deferToThread(runCLI, config, "qkd", "status", env=env)
        self.assertEqual(down.returncode, 1)
        self.assertIn("is unreachable", down.stderr)


class StandaloneKMETests(TestCase):
    """
    C{qutemail kme} serves ETSI GS QKD 014 on its own.
    """

    timeout = 60

    async def test_serves(self) -> None:
        """
        The command prints where it listens and the SAE's credentials; an
        ETSI 014 client with them gets the link's status and a key.
        """
        from twisted.internet import reactor

        from qutemail.qkd.etsi014 import ETSI014KeySource

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        config = os.path.join(ROOT, "etc", "qutemail.ini")
        env = dict(os.environ, QUTEMAIL_SERVER_DATA_DIR=os.path.join(base, "var"))
        port = freePort()
        process = subprocess.Popen(
            [sys.executable, "-m", "qutemail.cli", "--config", config, "kme", "--port", str(port),
             "--sae", "sae-1", "--pool-keys", "5", "--refill", "0", "--directory", os.path.join(base, "kme")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.addCleanup(lambda: (process.poll() is None and process.kill(), process.wait(10)))
        lines = [(await deferToThread(process.stdout.readline)).decode() for _ in range(3)]
        self.assertEqual(lines[0], f"KME qutemail-kme listening at https://localhost:{port}\n")
        ca = lines[1].split(": ", 1)[1].strip()
        cert, key = lines[2].split(": ", 1)[1].split()
        source = ETSI014KeySource.fromFiles(reactor, f"https://localhost:{port}", cert, key, ca)
        self.addCleanup(source.close)
        self.assertEqual((await source.status("sae-1")).storedKeyCount, 5)
        keyId, material = await source.encKey("sae-1", 256)
        self.assertEqual(len(material), 32)
        self.assertEqual((await source.status("sae-1")).storedKeyCount, 4)
        process.terminate()
        self.assertEqual(await deferToThread(process.wait, 10), 0)


class RedisVaultTests(RunningServerMixin, TestCase):
    """
    With C{[redis] url} set, message keys live in Redis (shared by nodes),
    wrapped, and C{mail show} reads them from there.
    """

    timeout = 60

    async def setUp(self) -> None:
        """
        Start a real redis-server on a free loopback port, then the server
        configured to use it.
        """
        from tests.backends.test_redislimiter import startRedis

        self.redisPort = startRedis(self)
        self.configExtra = f"\n[redis]\nurl = redis://127.0.0.1:{self.redisPort}/3\n"
        await super().setUp()

    async def test_keysInRedis(self) -> None:
        """
        Bob's message to alice is sealed with a key kept in Redis database
        3, never in the file vault and never in the clear; the command line
        decrypts it through Redis; once the key is deleted from Redis it
        refuses in one line.
        """
        body = b"From: bob@example.test\r\nSubject: redis\r\n\r\nkept elsewhere\r\n"

        await self.submit(lambda c: c.sendmail("bob@example.test", ["alice@example.test"], body))
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            keyId = readEnvelope(f).keyId
        self.assertFalse(os.path.exists(os.path.join(self.dataDir, "keys", "vault", keyId + ".key")))
        stored = await deferToThread(_redis, self.redisPort, b"SELECT", b"3", b"GET", b"qutemail:vault:" + keyId.encode())
        self.assertTrue(stored.startswith(b"+OK\r\n$"), stored)
        messageId = os.path.basename(path).split(":")[0]
        shown = await deferToThread(runCLI, self.configPath, "mail", "show", "alice@example.test", messageId,
                                    binary=True)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertTrue(shown.stdout.endswith(body.replace(b"\r\n", b"\n")))
        await deferToThread(_redis, self.redisPort, b"SELECT", b"3", b"DEL", b"qutemail:vault:" + keyId.encode())
        gone = await deferToThread(runCLI, self.configPath, "mail", "show", "alice@example.test", messageId)
        self.assertEqual(gone.returncode, 1)
        self.assertIn("is no longer in the vault", gone.stderr)


def _redis(port: int, *words: bytes) -> bytes:
    """
    Send Redis commands (pairs: a command and its argument) and return the
    raw replies.
    """
    import socket
    import time

    request = b""
    for command, argument in zip(words[::2], words[1::2]):
        request += b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(command), command, len(argument), argument)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        time.sleep(0.2)
        return s.recv(65536)
