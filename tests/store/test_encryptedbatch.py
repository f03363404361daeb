"""
Tests for L{qutemail.store.encrypted}: sealing through the real embedded
KME over loopback mutual TLS, and seals sharing one key request.
"""

import datetime
import errno
import email
import io
import os
import uuid

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import BlockingRunner
from qutemail.interfaces import IKeyVault, IQKDKeySource, KeySourceError, KMEStatus
from qutemail.qkd.certs import ensurePKI
from qutemail.qkd.cipher import decryptBytes, readEnvelope
from qutemail.qkd.kme import EmbeddedKMEService, EmbeddedKeySource
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from qutemail.qkd.vault import FileKeyVault, KeyVaultError
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, LOCAL_ERROR, ReplyError
from qutemail.store.encrypted import MessageEncryptor
from qutemail.store.sealwork import sealBodies
from qutemail.store.maildir import MaildirStore
from qutemail.store.reader import listMessages, readMessage

from tests.store.test_encrypted import (
    PEER, HOSTNAME, SUBJECT, ACCOUNTS, messageBytes, inlineMessage, CountingRunner, sealedBytes,
    EncryptorTestsMixin,
)


class RealKMESealTests(TestCase):
    """
    Sealing through the real embedded KME over loopback mutual TLS, with a
    real thread pool and the file vault.
    """

    timeout = 60

    async def _start(self):
        """
        Start the KME (no refill), the runner and the encryptor.
        """
        base = os.path.abspath(self.mktemp())
        self.dataDir = os.path.join(base, "data")
        pki = ensurePKI(os.path.join(base, "qkd"), ["sae-a", PEER], datetime.datetime.now(datetime.timezone.utc))
        link = QKDLink(PoolSettings(maxKeyCount=100, refillKeysPerSecond=0))
        self.kme = EmbeddedKMEService(reactor, KME("kme-1", ["sae-a", PEER], link), pki)
        self.kme.startService()
        self.addCleanup(self.kme.stopService)
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        self.source = EmbeddedKeySource.forSAE(self.kme, "sae-a")
        self.addCleanup(self.source.close)
        self.vault = FileKeyVault(os.path.join(self.dataDir, "keys", "vault"),
                                  os.path.join(self.dataDir, "keys", "master.key"), self.runner)
        self.encryptor = MessageEncryptor(self.source, self.vault, self.runner, PEER,
                                          os.path.join(self.dataDir, "queue", "sealed"))
        self.store = MaildirStore(self.dataDir, self.runner, HOSTNAME, 0)
        await self.kme.whenListening()

    def setUp(self):
        """
        See L{_start}.
        """
        return Deferred.fromCoroutine(self._start())

    async def test_twentyMessages(self):
        """
        Twenty messages sealed at once take twenty distinct keys from the
        KME's pool in two requests; each sealed message is
        C{multipart/encrypted} with none of the body or subject in it;
        delivered and read back through the file vault, each is
        byte-identical to its original.
        """
        before = (await self.source.status(PEER)).storedKeyCount
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        originals = [messageBytes(n, extraLines=50 + n) for n in range(20)]
        results = await gatherResults(
            [Deferred.fromCoroutine(self.encryptor.seal(inlineMessage(body, f"QREAL{n:02d}")))
             for n, body in enumerate(originals)], consumeErrors=True)
        after = (await self.source.status(PEER)).storedKeyCount
        self.assertEqual(before - after, 20)
        # The first seal's request goes out alone; the other 19 wait for it
        # and share the next one.
        self.assertEqual([e["keyCount"] for e in events if e.get("operation") == "enc_keys"], [1, 19])
        self.assertEqual(len({r.keyId for r in results}), 20)
        byMessageId = {}
        for n, (body, result) in enumerate(zip(originals, results)):
            stored = sealedBytes(result)
            parsed = email.message_from_bytes(stored)
            self.assertEqual(parsed.get_content_type(), "multipart/encrypted")
            self.assertTrue(parsed.is_multipart())
            self.assertNotIn(SUBJECT[len("Subject: "):], stored)
            for line in body.split(b"\n\n", 1)[1].splitlines():
                self.assertNotIn(line, stored)
            self.assertEqual(readEnvelope(io.BytesIO(stored)).keyId, result.keyId)
            await self.store.deliver(result.message, ACCOUNTS[0], 0)
            await self.encryptor.discard(result)
            byMessageId[result.messageId] = body
        self.assertFalse(os.path.exists(self.encryptor.workDirectory))
        entries = await self.runner.run(listMessages, self.dataDir, ACCOUNTS[0].address)
        self.assertEqual(len(entries), 20)
        for entry in entries:
            body, info = await readMessage(entry.path, self.vault, self.runner)
            with body:
                plain = await self.runner.run(body.read)
            self.assertTrue(info.encrypted)
            self.assertEqual(plain, byMessageId.pop(info.messageId))


@implementer(IQKDKeySource)
class HeldKeySource:
    """
    A key source whose requests wait until the test answers them.

    @ivar asked: C{(number, Deferred)} of each request, in order.
    """

    def __init__(self) -> None:
        """
        No request yet.
        """
        self.asked: list[tuple[int, Deferred]] = []

    def status(self, peerSAE: str):
        """
        See L{IQKDKeySource.status}.
        """
        return succeed(KMEStatus("kme-1", "kme-1", "sae-a", peerSAE, 256, 1000, 1000, 128, 1024, 64, 0))

    def encKey(self, peerSAE: str, sizeBits: int = 256):
        """
        See L{IQKDKeySource.encKey}: held.
        """
        d = Deferred()
        self.asked.append((1, d))
        return d

    def encKeys(self, peerSAE: str, sizeBits: int = 256, number: int = 1):
        """
        Several keys at once: held.
        """
        d = Deferred()
        self.asked.append((number, d))
        return d

    def decKey(self, peerSAE: str, keyId: str):
        """
        See L{IQKDKeySource.decKey}: never used here.
        """
        return fail(KeySourceError("not here", temporary=False))

    def answer(self, n: int, count: int | None = None) -> list[tuple[str, bytes]]:
        """
        Answer request C{n} with fresh keys (as many as it asked, or
        C{count}).

        @return: the keys given.
        """
        number, d = self.asked[n]
        keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(number if count is None else count)]
        d.callback(keys[0] if number == 1 and count is None else keys)
        return keys

    @property
    def numbers(self) -> list[int]:
        """
        How many keys each request asked for.
        """
        return [n for n, _ in self.asked]


class BatchTests(EncryptorTestsMixin, SynchronousTestCase):
    """
    Seals share requests, worker jobs and vault writes with the seals that
    wait beside them, and still each get their own key.
    """

    def setUp(self):
        """
        A held key source and a counting runner.
        """
        super().setUp()
        self.source = HeldKeySource()
        self.runner = CountingRunner()
        self.encryptor = self.makeEncryptor()

    def startSeals(self, count: int, spilled: int = 0) -> list[Deferred]:
        """
        @return: the Deferreds of C{count} seals of inline messages, then
            C{spilled} of spilled ones, all started now.
        """
        messages = [inlineMessage(messageBytes(n), f"QB{n}") for n in range(count)]
        messages += [self.spilledMessage(messageBytes(n), f"QS{n}") for n in range(spilled)]
        return [Deferred.fromCoroutine(self.encryptor.seal(m)) for m in messages]

    def test_coalesced(self):
        """
        Seals asking while a request is out wait for the next one, which
        takes exactly their number of keys; each gets its own key, and the
        inline messages of one batch are encrypted by one worker job.
        """
        sealing = self.startSeals(5)
        self.assertEqual(self.source.numbers, [1])
        [first] = self.source.answer(0)
        self.assertEqual(self.source.numbers, [1, 4])
        results = [self.successResultOf(sealing[0])]
        self.assertEqual(results[0].keyId, first[0])
        for d in sealing[1:]:
            self.assertNoResult(d)
        rest = self.source.answer(1)
        results += [self.successResultOf(d) for d in sealing[1:]]
        self.assertEqual([r.keyId for r in results[1:]], [k for k, _ in rest])
        self.assertEqual(self.runner.jobs.count("sealBodies"), 2)
        for n, ((keyId, key), result) in enumerate(zip([first] + rest, results)):
            self.assertEqual(self.successResultOf(self.vault.fetch(keyId)), key)
            self.assertEqual(decryptBytes(result.message.inline, key), messageBytes(n))

    def test_requestCapped(self):
        """
        One request takes at most C{maxKeysPerRequest} keys; the seals past
        it wait for the next request.
        """
        self.encryptor = self.makeEncryptor(maxKeysPerRequest=3)
        sealing = self.startSeals(8)
        self.source.answer(0)
        self.source.answer(1)
        self.source.answer(2)
        self.assertEqual(self.source.numbers, [1, 3, 3, 1])
        self.source.answer(3)
        self.assertEqual(len({self.successResultOf(d).keyId for d in sealing}), 8)

    def test_nextBatchWaits(self):
        """
        The next request goes out only once the previous batch's keys are
        stored: the seals that arrive meanwhile wait, and then share one
        request.
        """
        held = Deferred()

        @implementer(IKeyVault)
        class SlowVault(MemoryKeyVault):
            """
            A memory vault whose C{store} waits for C{held}.
            """

            def store(self, keyId, key):
                """
                Store once C{held} fires.
                """
                return held.addCallback(lambda _: MemoryKeyVault.store(self, keyId, key))

        self.vault = SlowVault()
        self.encryptor = self.makeEncryptor()
        sealing = self.startSeals(1)
        self.source.answer(0)
        later = self.startSeals(3)
        self.assertEqual(self.source.numbers, [1])
        self.assertNoResult(sealing[0])
        held.callback(None)
        self.successResultOf(sealing[0])
        self.assertEqual(self.source.numbers, [1, 3])
        self.source.answer(1)
        self.assertEqual(len({self.successResultOf(d).keyId for d in later}), 3)

    def pacedEncryptor(self, **kwargs) -> MessageEncryptor:
        """
        @return: an encryptor that paces its requests by C{self.clock}, 50
            ms apart.
        """
        self.clock = Clock()
        self.clock.advance(1000)
        return self.makeEncryptor(clock=self.clock, requestInterval=0.05, **kwargs)

    def test_pacedWhileBusy(self):
        """
        With a clock, seals that ask less than C{requestInterval} after the
        last request started wait until it is over, then share one request;
        a seal after a quiet spell asks at once.
        """
        self.encryptor = self.pacedEncryptor()
        first = self.startSeals(1)
        self.assertEqual(self.source.numbers, [1])
        self.source.answer(0)
        self.successResultOf(first[0])
        self.clock.advance(0.01)
        later = self.startSeals(3)
        self.clock.advance(0.039)
        self.assertEqual(self.source.numbers, [1])
        self.clock.advance(0.001)
        self.assertEqual(self.source.numbers, [1, 3])
        self.source.answer(1)
        self.assertEqual(len({self.successResultOf(d).keyId for d in later}), 3)
        self.clock.advance(0.05)
        self.startSeals(1)
        self.assertEqual(self.source.numbers, [1, 3, 1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fullRequestNotPaced(self):
        """
        Seals enough for a whole request go at once, interval or not; the
        ones past it wait for the interval after that request.
        """
        self.encryptor = self.pacedEncryptor(maxKeysPerRequest=3)
        self.startSeals(1)
        self.source.answer(0)
        self.clock.advance(0.01)
        waiting = self.startSeals(2)
        self.assertEqual(self.source.numbers, [1])
        waiting += self.startSeals(3)
        self.assertEqual(self.source.numbers, [1, 3])
        self.source.answer(1)
        self.clock.advance(0.049)
        self.assertEqual(self.source.numbers, [1, 3])
        self.clock.advance(0.001)
        self.assertEqual(self.source.numbers, [1, 3, 2])
        self.source.answer(2)
        self.assertEqual(len({self.successResultOf(d).keyId for d in waiting}), 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sealerFailsOver(self):
        """
        Inline messages go to the C{sealer} when there is one; when it
        fails (the delivery process died), the runner seals them.
        """
        class Sealer:
            """
            Seals as the delivery process does, then fails.
            """

            def __init__(self) -> None:
                self.batches: list[int] = []
                self.broken = False

            def sealInline(self, subject, items):
                self.batches.append(len(items))
                if self.broken:
                    return fail(OSError(errno.EIO, "the delivery process ended"))
                return succeed(sealBodies(subject, items))

        sealer = Sealer()
        self.encryptor = self.makeEncryptor(sealer=sealer)
        first = self.startSeals(1)
        self.source.answer(0)
        sealer.broken = True
        later = self.startSeals(2)
        self.source.answer(1)
        self.source.answer(2)
        self.assertEqual((sealer.batches, self.runner.jobs.count("sealBodies")), ([1, 1, 1], 2))
        for n, d in enumerate(first + later):
            result = self.successResultOf(d)
            key = self.successResultOf(self.vault.fetch(result.keyId))
            self.assertEqual(decryptBytes(result.message.inline, key), messageBytes(0 if n == 0 else n - 1))

    def test_spilledDoesNotHold(self):
        """
        A spilled message is sealed on its own: while its file is being
        written, the next batch goes on.
        """
        written = Deferred()

        @attrs.define
        class SlowFileRunner(CountingRunner):
            """
            An inline runner that writes sealed files once C{written} fires.
            """

            def run(self, f, *args, **kwargs):
                """
                Run C{f} now, or a sealed file's write once C{written} fires.
                """
                if f.__name__ == "writeSealed":
                    return written.addCallback(lambda _: CountingRunner.run(self, f, *args, **kwargs))
                return CountingRunner.run(self, f, *args, **kwargs)

        self.encryptor = self.makeEncryptor(runner=SlowFileRunner())
        large = self.startSeals(0, spilled=1)
        self.source.answer(0)
        small = self.startSeals(1)
        self.assertEqual(self.source.numbers, [1, 1])
        self.source.answer(1)
        self.successResultOf(small[0])
        self.assertNoResult(large[0])
        written.callback(None)
        result = self.successResultOf(large[0])
        self.assertEqual(os.listdir(self.workDirectory), [os.path.basename(result.message.path)])

    def test_failureAndShortAnswer(self):
        """
        A failed request fails every seal it was for; an answer with fewer
        keys than asked fails them all too; the next request goes out.
        """
        sealing = self.startSeals(3)
        self.source.asked[0][1].errback(KeySourceError("the KME answered 503: out of keys"))
        reply = self.failureResultOf(sealing[0], ReplyError).value.reply
        self.assertEqual(reply.code, KEY_SOURCE_UNAVAILABLE.code)
        self.assertIn("503", reply.text)
        self.assertEqual(self.source.numbers, [1, 2])
        self.source.answer(1, count=1)
        for d in sealing[1:]:
            self.assertIn("asked the KME for 2 keys, got 1",
                          self.failureResultOf(d, ReplyError).value.reply.text)
        again = self.startSeals(1)
        self.source.answer(2)
        self.successResultOf(again[0])
        self.assertEqual(self.workFiles(), [])

    def test_sameIdTwice(self):
        """
        A key id given twice in one answer is used for the first seal only.
        """
        sealing = self.startSeals(3)
        self.source.answer(0)
        keyId, key = str(uuid.uuid4()), os.urandom(32)
        self.source.asked[1][1].callback([(keyId, key), (keyId, os.urandom(32))])
        self.assertEqual(self.successResultOf(sealing[1]).keyId, keyId)
        self.assertIn("twice", self.failureResultOf(sealing[2], ReplyError).value.reply.text)
        self.assertEqual(self.successResultOf(self.vault.fetch(keyId)), key)

    def test_fileVaultOneWrite(self):
        """
        With the file vault, the keys of a batch are stored by one worker
        job (and no C{fetch}); an id the vault already holds fails its seal
        only, and its older key is kept.
        """
        self.vault = FileKeyVault(os.path.join(self.dataDir, "vault"), os.path.join(self.dataDir, "master.key"),
                                  self.runner)
        self.encryptor = self.makeEncryptor()
        held, old = str(uuid.uuid4()), os.urandom(32)
        self.successResultOf(self.vault.store(held, old))
        del self.runner.jobs[:]
        sealing = self.startSeals(4)
        self.source.answer(0)
        self.source.asked[1][1].callback([(held, os.urandom(32))] + [(str(uuid.uuid4()), os.urandom(32))
                                                                     for _ in range(2)])
        self.assertEqual(self.runner.jobs, ["sealBodies", "addKeyFiles", "sealBodies", "addKeyFiles"])
        self.assertIn(f"key id {held} again", self.failureResultOf(sealing[1], ReplyError).value.reply.text)
        self.assertEqual(self.successResultOf(self.vault.fetch(held)), old)
        for d in (sealing[0],) + tuple(sealing[2:]):
            result = self.successResultOf(d)
            self.assertIsNotNone(self.successResultOf(self.vault.fetch(result.keyId)))

    def test_vaultBatchFails(self):
        """
        A vault that fails a batch fails all its seals with C{LOCAL_ERROR},
        and their sealed files are removed.
        """

        @implementer(IKeyVault)
        class BrokenBatchVault(MemoryKeyVault):
            """
            A memory vault whose batch store always fails.
            """

            def addKeys(self, keys):
                """
                Fail, as with an unreadable master key.
                """
                return fail(KeyVaultError("the master key is unreadable"))

        self.vault = BrokenBatchVault()
        self.encryptor = self.makeEncryptor()
        sealing = self.startSeals(1, spilled=2)
        self.source.answer(0)
        self.source.answer(1)
        for d in sealing:
            reply = self.failureResultOf(d, ReplyError).value.reply
            self.assertEqual(reply.code, LOCAL_ERROR.code)
            self.assertIn("master key is unreadable", reply.text)
        self.assertEqual(self.workFiles(), [])

    def test_unexpectedFailure(self):
        """
        Something unexpected in a batch (a bug) fails its seals with that
        error, not a reply, so the router logs it and retries; the next
        batch still goes out.
        """

        @attrs.define
        class BrokenRunner(CountingRunner):
            """
            An inline runner whose in-memory seals hit a bug.
            """

            def run(self, f, *args, **kwargs):
                """
                Run C{f}, except an in-memory seal, which raises.
                """
                if f.__name__ == "sealBodies":
                    return fail(RuntimeError("bug"))
                return CountingRunner.run(self, f, *args, **kwargs)

        self.encryptor = self.makeEncryptor(runner=BrokenRunner())
        sealing = self.startSeals(1)
        self.source.answer(0)
        self.failureResultOf(sealing[0], RuntimeError)
        again = self.startSeals(1)
        self.assertEqual(self.source.numbers, [1, 1])
        self.assertNoResult(again[0])
