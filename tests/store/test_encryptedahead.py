"""
Tests for L{qutemail.store.encrypted}: keys taken ahead under load
(C{prefetchKeys}), kept in memory for the next batches.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from qutemail.backends.memory import MemoryKeyVault
from qutemail.interfaces import IKeyVault, KeySourceError
from qutemail.qkd.sparekeys import SPARE_SECONDS
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, ReplyError

from tests.store.test_encrypted import CountingRunner, EncryptorTestsMixin, inlineMessage, messageBytes
from tests.store.test_encryptedbatch import HeldKeySource


class KeysAheadTests(EncryptorTestsMixin, SynchronousTestCase):
    """
    A batch of several seals asks for at least C{prefetchKeys} keys; the
    next seals use the others, each once, for at most
    L{SPARE_SECONDS}; a lone seal takes exactly one key.
    """

    def setUp(self):
        """
        A held key source, a clock, and an encryptor taking 8 keys ahead.
        """
        super().setUp()
        self.source = HeldKeySource()
        self.runner = CountingRunner()
        self.clock = Clock()
        self.encryptor = self.makeEncryptor(prefetchKeys=8, clock=self.clock)
        self.sealed = 0
        self.given: list[tuple[str, bytes]] = []

    def startSeals(self, count: int) -> list[Deferred]:
        """
        @return: the Deferreds of C{count} seals of new messages.
        """
        first, self.sealed = self.sealed, self.sealed + count
        return [Deferred.fromCoroutine(self.encryptor.seal(inlineMessage(messageBytes(n), f"QA{n:04d}")))
                for n in range(first, self.sealed)]

    def answer(self, n: int) -> None:
        """
        Answer request C{n}, remembering the keys given.
        """
        self.given += self.source.answer(n)

    def loaded(self) -> list[Deferred]:
        """
        A lone seal (one key), then a batch of three that takes eight: five
        are kept.

        @return: the four seals.
        """
        sealing = self.startSeals(4)
        self.answer(0)
        self.answer(1)
        self.assertEqual(self.source.numbers, [1, 8])
        return sealing

    def test_batchTakesAhead(self) -> None:
        """
        The keys kept serve the next seals without a request; every seal
        has its own key, one the KME gave.
        """
        sealing = self.loaded() + self.startSeals(5)
        self.assertEqual(self.source.numbers, [1, 8])
        used = [self.successResultOf(d).keyId for d in sealing]
        self.assertEqual(len(set(used)), 9)
        self.assertEqual(sorted(used), sorted(k for k, _ in self.given))
        # The sixth seal after the batch finds none kept.
        self.startSeals(1)
        self.assertEqual(self.source.numbers, [1, 8, 1])

    def test_loneSealTakesOne(self) -> None:
        """
        Seals one at a time (a quiet server) take exactly one key each.
        """
        for n in range(3):
            sealing = self.startSeals(1)
            self.answer(n)
            self.successResultOf(sealing[0])
        self.assertEqual(self.source.numbers, [1, 1, 1])

    def test_keptKeysAge(self) -> None:
        """
        Keys kept longer than L{SPARE_SECONDS} are not used.
        """
        for d in self.loaded():
            self.successResultOf(d)
        self.clock.advance(SPARE_SECONDS + 1)
        sealing = self.startSeals(1)
        self.assertEqual(self.source.numbers, [1, 8, 1])
        self.answer(2)
        self.assertEqual(self.successResultOf(sealing[0]).keyId, self.given[-1][0])

    def test_requestFailsAfterKeptKeys(self) -> None:
        """
        A batch larger than the keys kept uses them and asks for the rest;
        when that request fails, only the seals left without a key fail
        (temporarily).
        """
        held = []

        @implementer(IKeyVault)
        class HeldVault(MemoryKeyVault):
            """
            A memory vault whose first C{store} waits for the test.
            """

            def store(self, keyId, key):
                d = Deferred()
                held.append(d)
                return d.addCallback(lambda _: MemoryKeyVault.store(self, keyId, key))

        self.vault = HeldVault()
        self.encryptor = self.makeEncryptor(prefetchKeys=8, clock=self.clock)

        def release() -> None:
            while held:
                held.pop(0).callback(None)

        # A lone seal, then a batch of two that takes eight: six are kept.
        loaded = self.startSeals(3)
        self.answer(0)
        release()
        self.answer(1)
        release()
        for d in loaded:
            self.successResultOf(d)
        self.assertEqual(self.source.numbers, [1, 8])
        # A lone seal takes one kept key; while its key is being stored,
        # six more seals gather into one batch.
        lone = self.startSeals(1)
        later = self.startSeals(6)
        release()
        loneId = self.successResultOf(lone[0]).keyId
        # The batch took the five kept keys and asked for eight more.
        self.assertEqual(self.source.numbers, [1, 8, 8])
        self.source.asked[-1][1].errback(KeySourceError("KME down"))
        release()
        sealedIds = [self.successResultOf(d).keyId for d in later[:5]]
        self.assertEqual(len(set(sealedIds + [loneId])), 6)
        reply = self.failureResultOf(later[5], ReplyError).value.reply
        self.assertEqual(reply.code, KEY_SOURCE_UNAVAILABLE.code)
