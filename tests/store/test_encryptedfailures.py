"""
Tests for L{qutemail.store.encrypted}: seals that fail (key source,
vault, disk), discarded seals, and which mail counts as internal.
"""

import errno
import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from qutemail.interfaces import KeyGone
from qutemail.message import SpooledMessage
from qutemail.qkd.vault import InvalidKeyId
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, LOCAL_ERROR, STORAGE_FULL
from qutemail.store.encrypted import SEALED_SUFFIX, isInternal

from tests.store.test_encrypted import (
    messageBytes, envelope, inlineMessage, FailingVault, CountingRunner, FullDiskRunner, run, runFailure,
    EncryptorTestsMixin,
)


class SealFailureTests(EncryptorTestsMixin, SynchronousTestCase):
    """
    L{MessageEncryptor.seal} when something fails: always a temporary reply,
    nothing left behind.
    """

    def assertNothingLeft(self):
        """
        No sealed file and no key were left behind.
        """
        self.assertEqual(self.workFiles(), [])
        for keyId in self.source.keys:
            self.failureResultOf(self.vault.fetch(keyId), KeyGone, InvalidKeyId)

    def test_keySourceDown(self):
        """
        A failing key source (KME unreachable, 503) gives
        C{KEY_SOURCE_UNAVAILABLE}, a 4xx reply naming the reason.
        """
        self.source.failure = "cannot connect to the KME at https://localhost:1: connection refused"
        reply = self.sealFails(inlineMessage(messageBytes())).reply
        self.assertEqual((reply.code, reply.enhanced), (KEY_SOURCE_UNAVAILABLE.code, KEY_SOURCE_UNAVAILABLE.enhanced))
        self.assertTrue(reply.isTemporary)
        self.assertIn("connection refused", reply.text)
        self.assertNotIn("\n", reply.text)
        self.assertNothingLeft()

    def test_outOfKeys(self):
        """
        A key source out of keys gives C{KEY_SOURCE_UNAVAILABLE}.
        """
        self.source.remaining = 0
        reply = self.sealFails(inlineMessage(messageBytes())).reply
        self.assertEqual(reply.code, KEY_SOURCE_UNAVAILABLE.code)
        self.assertIn("out of keys", reply.text)
        self.assertNothingLeft()

    def test_reasonIsOneLine(self):
        """
        A reason with line breaks or control characters becomes one line.
        """
        self.source.failure = "garbled\r\nanswer\x00" + "x" * 500
        text = self.sealFails(inlineMessage(messageBytes())).reply.text
        self.assertTrue(text.isprintable())
        self.assertLess(len(text), 300)

    def test_badKeyId(self):
        """
        A key id that could escape a directory is garbage from the key
        source: C{KEY_SOURCE_UNAVAILABLE}, nothing stored.
        """
        self.source.badKeyId = "../../etc/passwd"
        reply = self.sealFails(inlineMessage(messageBytes())).reply
        self.assertEqual(reply.code, KEY_SOURCE_UNAVAILABLE.code)
        self.assertIn("invalid key id", reply.text)
        self.assertNothingLeft()

    def test_wrongKeySize(self):
        """
        A key of another size than asked is refused.
        """
        self.source.keyBytes = 8
        reply = self.sealFails(inlineMessage(messageBytes())).reply
        self.assertEqual(reply.code, KEY_SOURCE_UNAVAILABLE.code)
        self.assertIn("wrong size", reply.text)
        self.assertNothingLeft()

    def test_reusedKeyId(self):
        """
        A key id the vault already holds is refused, and the older key is
        kept: replacing it would make an older message unreadable.
        """
        first = self.seal(inlineMessage(messageBytes()))
        old = self.source.keys[first.keyId]
        self.source.repeatKeyId = first.keyId
        reply = self.sealFails(inlineMessage(messageBytes(1), "Q2")).reply
        self.assertEqual(reply.code, KEY_SOURCE_UNAVAILABLE.code)
        self.assertIn("again", reply.text)
        self.assertEqual(self.successResultOf(self.vault.fetch(first.keyId)), old)
        self.assertEqual(self.workFiles(), [])

    def test_vaultFails(self):
        """
        A vault that cannot store the key gives a 4xx C{LOCAL_ERROR}, and
        the sealed file is removed.
        """
        self.encryptor = self.makeEncryptor(vault=FailingVault())
        reply = self.sealFails(inlineMessage(messageBytes())).reply
        self.assertEqual((reply.code, reply.enhanced), (LOCAL_ERROR.code, LOCAL_ERROR.enhanced))
        self.assertIn("Key vault unavailable", reply.text)
        self.assertIn("timeout", reply.text)
        self.assertEqual(self.workFiles(), [])

    def test_vaultFetchFails(self):
        """
        A vault that cannot say whether a key id is new gives a 4xx
        C{LOCAL_ERROR}, and nothing is left behind.
        """
        self.encryptor = self.makeEncryptor(vault=FailingVault(failFetch=True, error=OSError(errno.EIO, "I/O error")))
        reply = self.sealFails(inlineMessage(messageBytes())).reply
        self.assertEqual(reply.code, LOCAL_ERROR.code)
        self.assertIn("I/O error", reply.text)
        self.assertEqual(self.workFiles(), [])

    def test_workDirectoryUnwritable(self):
        """
        A sealed file that cannot be written gives C{LOCAL_ERROR}, and the
        key is not stored.
        """
        os.makedirs(os.path.dirname(self.workDirectory))
        with open(self.workDirectory, "wb"):
            pass
        reply = self.sealFails(self.spilledMessage(messageBytes())).reply
        self.assertEqual(reply, LOCAL_ERROR)
        self.assertNothingLeft()

    def test_diskFull(self):
        """
        A full disk gives C{STORAGE_FULL}, and the key is not stored.
        """
        self.encryptor = self.makeEncryptor(runner=FullDiskRunner())
        reply = self.sealFails(self.spilledMessage(messageBytes())).reply
        self.assertEqual(reply, STORAGE_FULL)
        self.assertNothingLeft()

    def test_missingSpill(self):
        """
        A spilled message whose file is gone gives C{LOCAL_ERROR}, and no
        sealed file is left.
        """
        message = SpooledMessage("Q9", envelope(), 10, path=os.path.join(self.dataDir, "gone"))
        self.assertEqual(self.sealFails(message).reply, LOCAL_ERROR)
        self.assertNothingLeft()


class DiscardTests(EncryptorTestsMixin, SynchronousTestCase):
    """
    L{MessageEncryptor.discard} and L{MessageEncryptor.cleanup}.
    """

    def test_discard(self):
        """
        Discarding removes the sealed file, keeps the key, and may be done
        twice; the sealed message itself may be passed.
        """
        result = self.seal(self.spilledMessage(messageBytes()))
        self.assertEqual(len(self.workFiles()), 1)
        run(self, self.encryptor.discard(result))
        self.assertEqual(self.workFiles(), [])
        run(self, self.encryptor.discard(result.message))
        self.assertEqual(self.successResultOf(self.vault.fetch(result.keyId)), self.source.keys[result.keyId])

    def test_discardRefusesOtherFiles(self):
        """
        Only sealed files of the work directory are discarded: not an
        original's spill file, not an inline message.
        """
        spill = os.path.join(self.dataDir, "spill")
        os.makedirs(self.dataDir, exist_ok=True)
        with open(spill, "wb") as f:
            f.write(b"x")
        runFailure(self, self.encryptor.discard(SpooledMessage("Q", envelope(), 1, path=spill)), ValueError)
        outside = os.path.join(self.dataDir, "x" + SEALED_SUFFIX)
        runFailure(self, self.encryptor.discard(SpooledMessage("Q", envelope(), 1, path=outside)), ValueError)
        self.assertTrue(os.path.exists(spill))

    def test_discardInMemory(self):
        """
        A message sealed in memory has no file: discarding it does nothing,
        and needs no worker thread.
        """
        result = self.seal(inlineMessage(messageBytes()))
        jobs = []
        self.encryptor.runner = attrs.evolve(CountingRunner(), jobs=jobs)
        run(self, self.encryptor.discard(result))
        run(self, self.encryptor.discard(result.message))
        self.assertEqual(jobs, [])

    def test_cleanup(self):
        """
        C{cleanup} removes sealed files older than the limit and keeps
        younger ones and anything else.
        """
        old = self.seal(self.spilledMessage(messageBytes(), "QOLD")).message.path
        young = self.seal(self.spilledMessage(messageBytes(), "QYOUNG")).message.path
        other = os.path.join(self.workDirectory, "notes.txt")
        with open(other, "wb"):
            pass
        now = 2_000_000_000.0
        os.utime(old, (now - 7200, now - 7200))
        os.utime(young, (now - 60, now - 60))
        os.utime(other, (now - 7200, now - 7200))
        self.assertEqual(self.encryptor.cleanup(now, maxAgeSeconds=3600), 1)
        self.assertEqual(self.workFiles(), sorted([os.path.basename(young), "notes.txt"]))

    def test_cleanupNoDirectory(self):
        """
        C{cleanup} without a work directory removes nothing.
        """
        self.assertEqual(self.encryptor.cleanup(2_000_000_000.0), 0)


class IsInternalTests(SynchronousTestCase):
    """
    L{isInternal}.
    """

    domains = ("example.test", "Other.Test")

    def test_internal(self):
        """
        An authenticated sender of one of our domains sends internal mail,
        whatever the case of the domain.
        """
        self.assertTrue(isInternal(envelope(), self.domains))
        self.assertTrue(isInternal(envelope(sender="x@OTHER.test", authenticated="x@other.test"), self.domains))

    def test_notAuthenticated(self):
        """
        Mail that did not authenticate is not internal, even with one of
        our domains in its reverse path.
        """
        self.assertFalse(isInternal(envelope(authenticated=None), self.domains))
        self.assertFalse(isInternal(envelope(authenticated=""), self.domains))

    def test_otherDomain(self):
        """
        An authenticated sender of another domain is not internal.
        """
        self.assertFalse(isInternal(envelope(sender="alice@elsewhere.test"), self.domains))
        self.assertFalse(isInternal(envelope(sender="alice@sub.example.test"), self.domains))

    def test_nullSender(self):
        """
        The null sender (a bounce) is not internal.
        """
        self.assertFalse(isInternal(envelope(sender=""), self.domains))
