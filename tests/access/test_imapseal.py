# -*- test-case-name: tests.access.test_imapseal -*-
"""
Tests for L{qutemail.access.imapseal}: messages saved with APPEND are
stored encrypted, through the sealer alone and through a real IMAP
listener over TLS.
"""

import os

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.access.imapaccount import imapPortal
from qutemail.access.imapseal import AppendSealer, SealUnavailable
from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import InlineRunner
from qutemail.qkd.cipher import decryptBytes, readEnvelope
from qutemail.store.encrypted import MessageEncryptor
from tests.access import test_imaploopback
from tests.store.test_encrypted import FakeKeySource

SAVED = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: my sent copy\r\n"
         b"Message-ID: <saved-1@example.test>\r\n\r\nwhat I told bob\r\n")


def makeSealer(dataDir: str, source: FakeKeySource, vault: MemoryKeyVault, runner) -> AppendSealer:
    """
    A sealer over a real encryptor with the given key source and vault.
    """
    encryptor = MessageEncryptor(keySource=source, vault=vault, runner=runner, peerSAE="sae-b",
                                 workDirectory=os.path.join(dataDir, "queue", "sealed"))
    return AppendSealer(encryptor, runner, os.path.join(dataDir, "queue", "append"))


class AppendSealerTests(SynchronousTestCase):
    """
    L{AppendSealer} with the inline runner.
    """

    def setUp(self) -> None:
        """
        A sealer over a fake key source and a memory vault.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.source, self.vault = FakeKeySource(), MemoryKeyVault()
        self.sealer = makeSealer(self.dataDir, self.source, self.vault, InlineRunner())

    def plain(self) -> str:
        """
        @return: a literal written where APPEND writes it.
        """
        path = os.path.join(self.sealer.directory, "tmp", "1.M1P1Rx.host,S=10")
        with open(path, "wb") as f:
            f.write(SAVED)
        return path

    def test_sealed(self) -> None:
        """
        The result is ciphertext under a fresh key kept in the vault, which
        decrypts to the literal; the plaintext file is gone.
        """
        plain = self.plain()
        d = self.sealer.seal(plain, len(SAVED), "alice@example.test")
        path = self.successResultOf(ensureDeferred(d))
        with open(path, "rb") as f:
            stored = f.read()
        self.assertNotIn(b"what I told bob", stored)
        with open(path, "rb") as f:
            keyId = readEnvelope(f).keyId
        key = self.successResultOf(self.vault.fetch(keyId))
        self.assertEqual(decryptBytes(stored, key), SAVED)
        self.assertFalse(os.path.exists(plain))
        self.assertEqual(len(self.source.calls), 1)

    def test_noKey(self) -> None:
        """
        When the key source fails, L{SealUnavailable} says why, and neither
        the plaintext nor any sealed file is left.
        """
        self.source.failure = "the KME answered 503: out of keys for sae-b"
        plain = self.plain()
        d = ensureDeferred(self.sealer.seal(plain, len(SAVED), "alice@example.test"))
        failure = self.failureResultOf(d, SealUnavailable)
        self.assertIn("out of keys", str(failure.value))
        self.assertFalse(os.path.exists(plain))
        sealedDir = os.path.join(self.dataDir, "queue", "sealed")
        self.assertEqual(os.listdir(sealedDir) if os.path.isdir(sealedDir) else [], [])

    def test_leftoversRemoved(self) -> None:
        """
        Plaintext left by an interrupted APPEND is removed when the server
        is assembled.
        """
        plain = self.plain()
        makeSealer(self.dataDir, self.source, self.vault, InlineRunner())
        self.assertFalse(os.path.exists(plain))


class SealedAppendLoopbackTests(TestCase):
    """
    APPEND through a real listener over TLS, with a sealer (the set-up and
    helpers of L{test_imaploopback.LoopbackTests}, without its tests).
    """

    listen = test_imaploopback.LoopbackTests.listen
    imap = test_imaploopback.LoopbackTests.imap

    def setUp(self) -> None:
        """
        The listeners of L{LoopbackTests}, plus one whose portal seals.
        """
        test_imaploopback.LoopbackTests.setUp(self)
        self.source = FakeKeySource()
        sealer = makeSealer(self.dataDir, self.source, self.vault, self.runner)
        portal = imapPortal(self.users, self.dataDir, self.vault, self.runner, sealer=sealer)
        self.sealedPort = self.listen(True, portal)

    async def test_appendStoredEncrypted(self) -> None:
        """
        An APPENDed message is ciphertext in the folder and reads back
        decrypted, byte for byte.
        """

        def session(client):
            status, _ = client.append("Sent", None, None, SAVED)
            client.select("Sent")
            return status, client.fetch("1", "(BODY.PEEK[])")[1][0][1]

        status, fetched = await self.imap(session, port=self.sealedPort)
        self.assertEqual((status, fetched), ("OK", SAVED))
        sentCur = os.path.join(self.inbox, ".Sent", "cur")
        [name] = os.listdir(sentCur)
        with open(os.path.join(sentCur, name), "rb") as f:
            stored = f.read()
        self.assertIn(b"multipart/encrypted", stored)
        self.assertNotIn(b"what I told bob", stored)
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "append", "tmp")), [])

    async def test_appendRefusedWithoutKey(self) -> None:
        """
        With the KME out of keys, APPEND gets NO [UNAVAILABLE] and nothing
        is stored, in plaintext or otherwise.
        """
        self.source.remaining = 0

        def session(client):
            return client.append("Sent", None, None, SAVED)

        status, data = await self.imap(session, port=self.sealedPort)
        self.assertEqual(status, "NO")
        self.assertIn(b"[UNAVAILABLE]", data[0])
        self.assertEqual(os.listdir(os.path.join(self.inbox, ".Sent", "cur")), [])
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "append", "tmp")), [])

