# -*- test-case-name: tests.store.test_reader -*-
"""
Tests for L{qutemail.store.reader}: listing an INBOX and reading stored
messages, decrypting the sealed ones.
"""

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.cipher import encryptBytes
from qutemail.store.encrypted import MessageEncryptor
from qutemail.store.maildir import MaildirStore, returnPath
from qutemail.store.mailbox import mailboxPath
from qutemail.store.reader import MessageInfo, MessageUnreadable, StoredMessage, listMessages, readMessage, storedId
from tests.store.test_encrypted import FailingVault, FakeKeySource

BOB = Account("bob@example.test")
HOSTNAME = "mail.example.test"
ORIGINAL = (
    b"From: Alice <alice@example.test>\n"
    b"To: bob@example.test\n"
    b"Message-ID: <r1@example.test>\n"
    b"Subject: the reader\n"
    b"\n"
    b"first secret line\n"
    b"second secret line\n"
)


class ReaderTestsMixin:
    """
    A Maildir store, a memory vault and an encryptor, with the inline
    runner.
    """

    def setUp(self):
        """
        Fresh directories and backends.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.runner = InlineRunner()
        self.vault = MemoryKeyVault()
        self.source = FakeKeySource()
        self.store = MaildirStore(self.dataDir, self.runner, HOSTNAME, 0)
        self.encryptor = MessageEncryptor(self.source, self.vault, self.runner, "sae-b",
                                          os.path.join(self.dataDir, "queue", "sealed"))

    def message(self, body: bytes = ORIGINAL, queueId: str = "Q1", authenticated="alice@example.test",
                receivedAt: float = 1700000000.0) -> SpooledMessage:
        """
        @return: an inline message to bob.
        """
        envelope = Envelope("alice@example.test", (BOB.address,), "client.test", "192.0.2.7", receivedAt,
                            authenticated)
        return SpooledMessage(queueId, envelope, len(body), inline=body)

    def deliver(self, message: SpooledMessage, seal: bool) -> str:
        """
        Store a message for bob, sealed or as it is.

        @return: the stored file's path.
        """
        if seal:
            result = self.successResultOf(Deferred.fromCoroutine(self.encryptor.seal(message)))
            self.sealed = result
            message = result.message
        name = self.successResultOf(self.store.deliver(message, BOB))
        return os.path.join(mailboxPath(self.dataDir, BOB.address), "new", name)

    def read(self, path: str, vault=None) -> tuple[bytes, MessageInfo]:
        """
        @return: what the reader hands back, read, and its info.
        """
        d = Deferred.fromCoroutine(readMessage(path, vault or self.vault, self.runner))
        body, info = self.successResultOf(d)
        with body:
            return body.read(), info

    def unreadable(self, path: str, vault=None) -> MessageUnreadable:
        """
        @return: the L{MessageUnreadable} reading fails with.
        """
        d = Deferred.fromCoroutine(readMessage(path, vault or self.vault, self.runner))
        return self.failureResultOf(d, MessageUnreadable).value


class ListMessagesTests(ReaderTestsMixin, SynchronousTestCase):
    """
    L{listMessages}.
    """

    def test_noMailbox(self):
        """
        An account without a mailbox yet has no messages.
        """
        self.assertEqual(listMessages(self.dataDir, BOB.address), [])

    def test_newAndCur(self):
        """
        Messages in C{new/} and C{cur/} are listed, oldest delivery first,
        with ids stable across the move to C{cur/} and flags; dot files and
        C{tmp/} are ignored.
        """
        first = self.deliver(self.message(queueId="QA"), seal=False)
        second = self.deliver(self.message(queueId="QB"), seal=True)
        third = self.deliver(self.message(queueId="QC"), seal=False)
        box = mailboxPath(self.dataDir, BOB.address)
        moved = os.path.join(box, "cur", os.path.basename(second) + ":2,S")
        os.rename(second, moved)
        for path, when in ((first, 1000), (moved, 2000), (third, 3000)):
            os.utime(path, (when, when))
        with open(os.path.join(box, "new", ".hidden"), "wb"):
            pass
        with open(os.path.join(box, "tmp", "partial"), "wb"):
            pass
        entries = listMessages(self.dataDir, BOB.address)
        self.assertEqual([e.path for e in entries], [first, moved, third])
        self.assertEqual([e.id for e in entries], [os.path.basename(p) for p in (first, second, third)])
        self.assertEqual([e.mtime for e in entries], [1000, 2000, 3000])
        self.assertEqual([e.size for e in entries], [os.path.getsize(p) for p in (first, moved, third)])
        self.assertIsInstance(entries[0], StoredMessage)
        messageId, path, size, mtime = entries[0]
        self.assertEqual(messageId, entries[0].id)

    def test_sameTimeOrderedById(self):
        """
        Messages delivered in the same second are ordered by id.
        """
        paths = [self.deliver(self.message(queueId=f"Q{n}"), seal=False) for n in (3, 1, 2)]
        for path in paths:
            os.utime(path, (1000, 1000))
        ids = [e.id for e in listMessages(self.dataDir, BOB.address)]
        self.assertEqual(ids, sorted(ids))

    def test_listedOnce(self):
        """
        A message seen in both C{new/} and C{cur/} (moved during a scan) is
        listed once, as its C{cur/} copy.
        """
        path = self.deliver(self.message(), seal=False)
        box = mailboxPath(self.dataDir, BOB.address)
        copy = os.path.join(box, "cur", os.path.basename(path) + ":2,")
        os.link(path, copy)
        [entry] = listMessages(self.dataDir, BOB.address)
        self.assertEqual(entry.path, copy)

    def test_storedId(self):
        """
        An id is the base name without the info.
        """
        self.assertEqual(storedId("1.M2Q3R0.host,S=10:2,RS"), "1.M2Q3R0.host,S=10")
        self.assertEqual(storedId("1.M2Q3R0.host,S=10"), "1.M2Q3R0.host,S=10")


class ReadMessageTests(ReaderTestsMixin, SynchronousTestCase):
    """
    L{readMessage}.
    """

    def test_plain(self):
        """
        A message stored as it came (mail from outside) is returned
        unchanged, Return-Path and all.
        """
        path = self.deliver(self.message(authenticated=None), seal=False)
        with open(path, "rb") as f:
            stored = f.read()
        body, info = self.read(path)
        self.assertEqual(body, stored)
        self.assertEqual(info, MessageInfo(encrypted=False, size=len(stored)))

    def test_plainNotAMessage(self):
        """
        Any file that is not in our format, even binary junk, is returned
        as it is.
        """
        os.makedirs(self.dataDir)
        path = os.path.join(self.dataDir, "junk")
        junk = bytes(range(256)) * 10
        with open(path, "wb") as f:
            f.write(junk)
        self.assertEqual(self.read(path)[0], junk)

    def test_encrypted(self):
        """
        A sealed message is decrypted with its key from the vault: the
        original comes back, with its key id, Message-ID and the Maildir's
        Return-Path line given apart.
        """
        message = self.message()
        path = self.deliver(message, seal=True)
        body, info = self.read(path)
        self.assertEqual(body, ORIGINAL)
        self.assertEqual(info, MessageInfo(encrypted=True, size=len(ORIGINAL), keyId=self.sealed.keyId,
                                           messageId="<r1@example.test>",
                                           returnPathLine=returnPath(message)))

    def test_tempDirectory(self):
        """
        The decrypted copy lives in an anonymous file of the given
        directory: nothing named is left there.
        """
        path = self.deliver(self.message(), seal=True)
        temp = self.mktemp()
        os.makedirs(temp)
        d = Deferred.fromCoroutine(readMessage(path, self.vault, self.runner, tempDirectory=temp))
        body, info = self.successResultOf(d)
        with body:
            self.assertEqual(os.listdir(temp), [])
            self.assertEqual(body.read(), ORIGINAL)

    def test_keyErased(self):
        """
        A message whose key was erased (crypto-erase) is unreadable, with a
        line naming the key and no key material.
        """
        path = self.deliver(self.message(), seal=True)
        key = self.source.keys[self.sealed.keyId]
        self.successResultOf(self.vault.erase(self.sealed.keyId))
        error = self.unreadable(path)
        self.assertEqual(str(error),
                         f"key {self.sealed.keyId} of message {os.path.basename(path)} is no longer in the vault")
        self.assertFalse(error.temporary)
        self.assertNotIn(key.hex(), str(error))

    def test_tampered(self):
        """
        A stored file whose ciphertext was changed fails authentication.
        """
        path = self.deliver(self.message(body=ORIGINAL * 20), seal=True)
        with open(path, "rb") as f:
            stored = f.read()
        head, sep, rest = stored.partition(b"base64\n\n")
        flipped = b"B" if rest[10:11] != b"B" else b"C"
        with open(path, "wb") as f:
            f.write(head + sep + rest[:10] + flipped + rest[11:])
        error = self.unreadable(path)
        self.assertIn("failed authentication", str(error))
        self.assertIn(os.path.basename(path), str(error))
        self.assertNotIn("\n", str(error))
        self.assertFalse(error.temporary)

    def test_wrongKey(self):
        """
        A message whose vault key was replaced fails authentication.
        """
        path = self.deliver(self.message(), seal=True)
        self.successResultOf(self.vault.store(self.sealed.keyId, os.urandom(32)))
        self.assertIn("failed authentication", str(self.unreadable(path)))

    def test_damagedControlPart(self):
        """
        A file in our format whose control part lost its Key-Id is
        reported damaged, not returned raw.
        """
        path = self.deliver(self.message(), seal=True)
        with open(path, "rb") as f:
            stored = f.read()
        with open(path, "wb") as f:
            f.write(stored.replace(b"Key-Id: ", b"Key-Ix: "))
        error = self.unreadable(path)
        self.assertIn("is damaged", str(error))

    def test_plainNamingEncryptedInBody(self):
        """
        A plain message whose body (not header) says "multipart/encrypted"
        is returned as it is; so is one with an empty header section.
        """
        for text in (b"Subject: hi\n\nContent-Type: multipart/encrypted; protocol=x\n",
                     b"\nContent-Type: multipart/encrypted\n"):
            path = self.deliver(self.message(body=text, authenticated=None), seal=False)
            with open(path, "rb") as f:
                stored = f.read()
            self.assertEqual(self.read(path), (stored, MessageInfo(encrypted=False, size=len(stored))))

    def test_damagedHeaderPastFirstChunk(self):
        """
        A damaged file in our format whose header section runs past the
        first chunk read while looking for it is still reported damaged.
        """
        path = self.deliver(self.message(), seal=True)
        with open(path, "rb") as f:
            stored = f.read()
        padding = b"".join(b"Received: from relay%d.example.test\n" % (i,) for i in range(1000))
        with open(path, "wb") as f:
            f.write(padding + stored.replace(b"Key-Id: ", b"Key-Ix: "))
        self.assertIn("is damaged", str(self.unreadable(path)))

    def test_imitation(self):
        """
        Mail from outside that imitates the format, with a made-up key id,
        is unreadable rather than shown raw.
        """
        fake = encryptBytes(ORIGINAL, "made-up-key", os.urandom(32))
        path = self.deliver(self.message(body=fake, authenticated=None), seal=False)
        error = self.unreadable(path)
        self.assertIn("key made-up-key", str(error))

    def test_vaultFails(self):
        """
        A vault that cannot give the key makes the message unreadable for
        now (C{temporary}).
        """
        path = self.deliver(self.message(), seal=True)
        error = self.unreadable(path, FailingVault(failFetch=True))
        self.assertTrue(error.temporary)
        self.assertIn("cannot be read from the vault", str(error))

    def test_missingFile(self):
        """
        A file that is gone fails with the C{OSError}.
        """
        d = Deferred.fromCoroutine(readMessage(os.path.join(self.dataDir, "gone"), self.vault, self.runner))
        self.failureResultOf(d, FileNotFoundError)

    def test_base64Damaged(self):
        """
        A sealed file whose base64 was broken is unreadable.
        """
        path = self.deliver(self.message(), seal=True)
        with open(path, "rb") as f:
            stored = f.read()
        head, sep, rest = stored.partition(b"base64\n\n")
        with open(path, "wb") as f:
            f.write(head + sep + b"!!!!" + rest)
        self.assertIn("failed authentication or is damaged", str(self.unreadable(path)))

    def test_truncated(self):
        """
        A sealed file cut short is unreadable.
        """
        path = self.deliver(self.message(body=ORIGINAL * 50), seal=True)
        with open(path, "rb") as f:
            stored = f.read()
        with open(path, "wb") as f:
            f.write(stored[: len(stored) - 200])
        self.unreadable(path)

    def test_outerCopyIsNotAuthoritative(self):
        """
        The sealed file's base64 is the only source of the body: changing
        the visible outer Subject leaves the original intact.
        """
        path = self.deliver(self.message(), seal=True)
        with open(path, "rb") as f:
            stored = f.read()
        with open(path, "wb") as f:
            f.write(stored.replace(b"Subject: [encrypted message]", b"Subject: [changed]"))
        self.assertEqual(self.read(path)[0], ORIGINAL)
