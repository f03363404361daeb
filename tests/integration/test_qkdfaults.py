"""
Issue 4, acceptance item 4: internal mail while the KME is stopped, out of
keys or answering garbage is deferred (visible in C{queue list} with the
reason), nothing lands in clear in the Maildir, and once the KME is back
and the clock advances the mail is delivered encrypted.

Issue 20: while it waits, its C{queue/deferred/*.msg} is sealed under the
queue key (derived from C{master.key}), not in clear; C{queue show} prints
it decrypted; a remote recipient of the same message gets the plaintext.

The stack runs on a L{Clock} with an inline runner; the KMEs are real,
serving ETSI GS QKD 014 over loopback mutual TLS.
"""

import email
import json
import os
from functools import partial

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import BlockingRunner
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.cipher import readEnvelope
from qutemail.qkd.kme import EmbeddedKeySource, listenTLS, serverTLSOptions
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from qutemail.qkd.kmeweb import KMESite
from qutemail.message import DEFERRED, SENT
from qutemail.qkd.vault import loadQueueKey
from qutemail.queue.sealedbody import MAGIC
from qutemail.relay.mx import MXResolver
from qutemail.relay.sender import Relay
from qutemail.store.encrypted import MessageEncryptor, isInternal
from qutemail.store.reader import readMessage
from tests.dnsserver import startDNSServer
from tests.integration.support import runCLI, waitFor, writeConfig
from tests.relay.remote import startRemote
from tests.qkd.test_etsi014 import CannedKME, keySource
from tests.qkd.test_kmeservice import makePKI, startKME
from tests.support import DOMAINS, buildStack

SAE = "sae-a"
BOB = "bob@example.test"
ALICE = "alice@example.test"
DAVE = "dave@remote.test"
MARKER = b"Zebra-Quokka-7731"
BODY = (b"From: bob@example.test\nTo: alice@example.test\nSubject: quarterly numbers\n\nThe numbers are secret.\n"
        + MARKER + b"\n")
ZONE = [("remote.test", "MX", (10, "mx.remote.test")), ("mx.remote.test", "A", "127.0.0.1")]


class KeySourceFaultTests(TestCase):
    """
    Internal mail waits in the queue, never in clear, while no key can be had.
    """

    async def setUp(self) -> None:
        """
        A stack with an encryptor whose key source each test chooses.
        """
        self.pki = makePKI(self)
        self.stack = buildStack(self.mktemp())
        self.addCleanup(self.stack.journal._closeFile)
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        self.vault = MemoryKeyVault()
        # As the server wires it (assembly.buildBackends): internal mail is
        # sealed in the queue under a key derived from data_dir's master.key.
        self.stack.queue.queueKey = partial(loadQueueKey, os.path.abspath(
            os.path.join(self.stack.dataDir, "keys", "master.key")))
        self.stack.queue.sealIf = partial(isInternal, domains=DOMAINS)
        self.stack.scheduler.startService()
        self.addCleanup(self.stack.scheduler.stopService)

    def useKeySource(self, source) -> None:
        """
        Seal internal mail with keys from C{source}.
        """
        self.stack.local.encryptor = MessageEncryptor(
            source, self.vault, self.runner, SAE, os.path.join(self.stack.dataDir, "queue", "sealed"))

    async def embedded(self, settings: PoolSettings, clock=None):
        """
        A real KME and its key source for L{SAE}.
        """
        service = await startKME(self, self.pki, KME("kme-1", (SAE,), QKDLink(settings)), clock)
        source = EmbeddedKeySource.forSAE(service, SAE, timeoutSeconds=5)
        self.addCleanup(source.close)
        return service, source

    def submit(self, recipients: tuple[str, ...] = (ALICE,)) -> str:
        """
        Bob (authenticated) sends alice a message; route it.

        @return: its queue id.
        """
        envelope = Envelope(BOB, recipients, "client.test", "127.0.0.1", self.stack.clock.seconds(),
                            authenticated=BOB)
        message = SpooledMessage(self.stack.intake.queueIds.next(), envelope, len(BODY), inline=BODY)
        self.assertEqual(self.successResultOf(self.stack.intake.accept(message)).code, 250)
        return message.queueId

    async def kmeDown(self) -> None:
        """
        Seal with keys from a KME that is no longer listening.
        """
        service, _ = await self.embedded(PoolSettings())
        url = service.baseURL
        await service.stopService()
        self.useKeySource(keySource(self, self.pki, url, SAE, timeoutSeconds=2))

    async def assertDeferredInClearNowhere(self, queueId: str, reason: str, stored: int = 0) -> None:
        """
        The message waits in the queue with C{reason}, C{queue list} says
        so, and alice's mailbox holds only the C{stored} earlier messages,
        none in clear.
        """
        entries = self.stack.queue.entries
        await waitFor(lambda: queueId in entries and entries[queueId].recipients[0].attempts >= 1
                      and not self.stack.scheduler.busy(queueId) and not self.stack.intake._inflight)
        self.assertSealedInQueue(queueId)
        [r] = entries[queueId].recipients
        self.assertEqual(r.state, DEFERRED)
        self.assertIn(reason, r.lastReply)
        files = self.stack.newFiles(ALICE)
        self.assertEqual(len(files), stored)
        self.assertFalse([f for f in files if b"secret" in f or b"quarterly" in f])
        sealed = os.path.join(self.stack.dataDir, "queue", "sealed")
        self.assertEqual(os.listdir(sealed) if os.path.isdir(sealed) else [], [])
        config = writeConfig(os.path.abspath(self.mktemp() + ".ini"), os.path.abspath(self.stack.dataDir))
        listing = await _inThread(runCLI, config, "queue", "list")
        self.assertIn(f"{ALICE}  deferred  attempts=1", listing.stdout)
        self.assertIn("451 4.3.0 QKD key source unavailable", listing.stdout)

    def queueFiles(self, queueId: str) -> tuple[str, str]:
        """
        @return: the C{.msg} and C{.json} paths of a queue entry.
        """
        base = os.path.join(self.stack.dataDir, "queue", "deferred", queueId)
        return base + ".msg", base + ".json"

    def assertSealedInQueue(self, queueId: str) -> None:
        """
        The entry's body on disk is sealed: none of the message shows (body,
        Subject, marker), it is not an RFC 5322 message, and its C{.json}
        records the format.
        """
        bodyPath, metaPath = self.queueFiles(queueId)
        with open(bodyPath, "rb") as f:
            stored = f.read()
        for clear in (MARKER, b"secret", b"quarterly", b"Subject", b"From:", BODY[:40]):
            self.assertNotIn(clear, stored)
        self.assertTrue(stored.startswith(MAGIC))
        parsed = email.message_from_bytes(stored)
        self.assertEqual([parsed.get(name) for name in ("From", "To", "Subject")], [None, None, None])
        with open(metaPath, "rb") as f:
            self.assertEqual(json.load(f)["sealedBody"], 1)

    async def assertDeliveredEncrypted(self, queueId: str) -> str:
        """
        After the clock passes the first retry, alice has the message,
        stored encrypted and readable as it was sent.

        @return: its key id.
        """
        self.stack.clock.advance(300)
        [stored] = await waitFor(lambda: self.stack.newFiles(ALICE))
        await waitFor(lambda: queueId not in self.stack.queue.entries)
        self.assertEqual(email.message_from_bytes(stored).get_content_type(), "multipart/encrypted")
        self.assertNotIn(b"secret", stored)
        self.assertNotIn(b"quarterly", stored)
        path = os.path.join(self.stack.mailbox(ALICE), "new", os.listdir(os.path.join(self.stack.mailbox(ALICE),
                                                                                       "new"))[0])
        body, info = await readMessage(path, self.vault, self.runner)
        with body:
            self.assertEqual(body.read(), BODY)
        self.assertTrue(info.encrypted)
        self.assertEqual([p for p in self.queueFiles(queueId) if os.path.exists(p)], [])
        return info.keyId

    async def test_kmeStopped(self) -> None:
        """
        Nothing listening where the KME should be: deferred; with the KME
        back, delivered encrypted at the next retry.
        """
        await self.kmeDown()
        queueId = self.submit()
        await self.assertDeferredInClearNowhere(queueId, "QKD key source unavailable")
        _, source = await self.embedded(PoolSettings())
        self.useKeySource(source)
        await self.assertDeliveredEncrypted(queueId)

    async def test_queueShowDecrypts(self) -> None:
        """
        C{queue show} of a sealed entry says it is sealed and prints the
        message decrypted, exactly as sent.
        """
        await self.kmeDown()
        queueId = self.submit()
        await self.assertDeferredInClearNowhere(queueId, "QKD key source unavailable")
        config = writeConfig(os.path.abspath(self.mktemp() + ".ini"), os.path.abspath(self.stack.dataDir))
        shown = await _inThread(partial(runCLI, config, "queue", "show", queueId, binary=True))
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn(b"sealed under the queue key (format 1), shown decrypted", shown.stdout)
        self.assertTrue(shown.stdout.endswith(b"\n\n" + BODY))

    async def test_remoteRecipientGetsPlaintext(self) -> None:
        """
        An internal message to alice and to a remote recipient, while the
        KME is down: the relay sends the remote the plaintext (opened from
        the sealed queue file), alice's copy waits sealed in the queue, and
        is delivered encrypted once the KME is back.
        """
        dns = await startDNSServer(self, ZONE)
        remote = await startRemote(self)
        runner = BlockingRunner(reactor)
        runner.startService()
        self.addCleanup(runner.stopService)
        self.stack.scheduler.relay = Relay(
            reactor=reactor, resolver=MXResolver(runner, dns.nameservers, timeoutSeconds=2.0),
            hostname="mail.example.test", mxPort=remote.port)
        await self.kmeDown()
        queueId = self.submit((ALICE, DAVE))
        entries = self.stack.queue.entries
        await waitFor(lambda: queueId in entries)
        self.stack.clock.advance(0)  # the scheduler's kick
        [received] = await waitFor(lambda: remote.received)
        self.assertEqual(received.recipients, [DAVE])
        self.assertEqual(received.data.replace(b"\r\n", b"\n"), BODY)
        await waitFor(lambda: queueId in entries and not self.stack.scheduler.busy(queueId)
                      and not self.stack.intake._inflight
                      and {r.address: r.state for r in entries[queueId].recipients} == {ALICE: DEFERRED,
                                                                                        DAVE: SENT})
        self.assertSealedInQueue(queueId)
        self.assertEqual(self.stack.newFiles(ALICE), [])
        _, source = await self.embedded(PoolSettings())
        self.useKeySource(source)
        await self.assertDeliveredEncrypted(queueId)
        self.assertEqual(len(remote.received), 1)

    async def test_outOfKeys(self) -> None:
        """
        An empty pool (503): deferred; once the pool refills on the KME's
        clock, delivered encrypted, with a new key.
        """
        kmeClock = Clock()
        _, source = await self.embedded(PoolSettings(maxKeyCount=1, refillKeysPerSecond=1 / 600), kmeClock)
        self.useKeySource(source)
        first = self.submit()
        [stored] = await waitFor(lambda: self.stack.newFiles(ALICE))
        firstKey = readEnvelope(_io(stored)).keyId
        self.assertNotIn(first, self.stack.queue.entries)
        second = self.submit()
        await self.assertDeferredInClearNowhere(second, "QKD key source unavailable", stored=1)
        kmeClock.advance(600)
        self.stack.clock.advance(300)
        files = await waitFor(lambda: (lambda f: f if len(f) == 2 else None)(self.stack.newFiles(ALICE)))
        keys = {readEnvelope(_io(data)).keyId for data in files}
        self.assertEqual(len(keys), 2)
        self.assertIn(firstKey, keys)

    async def test_garbage(self) -> None:
        """
        A KME answering garbage: deferred, then delivered once a real KME
        answers.
        """
        listener = await listenTLS(reactor, "tcp:0:interface=127.0.0.1", serverTLSOptions(self.pki),
                                   KMESite(CannedKME((200, b"{this is not json")), reactor))
        self.addCleanup(listener.stop)
        self.useKeySource(keySource(self, self.pki, f"https://localhost:{listener.portNumber}", SAE))
        queueId = self.submit()
        await self.assertDeferredInClearNowhere(queueId, "QKD key source unavailable")
        _, source = await self.embedded(PoolSettings())
        self.useKeySource(source)
        await self.assertDeliveredEncrypted(queueId)


def _io(data: bytes):
    """
    @return: a binary file holding C{data}.
    """
    import io

    return io.BytesIO(data)


def _inThread(f, *args):
    """
    Run a blocking call in a thread.
    """
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)
