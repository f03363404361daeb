# -*- test-case-name: tests.store.test_encrypted -*-
"""
Tests for L{qutemail.store.encrypted}: sealing internal mail with one QKD
key before local delivery.

Unit tests use the inline runner, the memory key vault and
L{FakeKeySource}; L{RealKMESealTests} seals through the real embedded KME
over loopback mutual TLS, with real threads and the file vault.
"""

import datetime
import email
import errno
import hashlib
import io
import os
import uuid

import attrs
from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.interfaces import Account, IKeyVault, IQKDKeySource, KeyGone, KeySourceError, KMEStatus
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.certs import ensurePKI
from qutemail.qkd.cipher import PLACEHOLDER_SUBJECT, decryptBytes, readEnvelope
from qutemail.qkd.kme import EmbeddedKMEService, EmbeddedKeySource
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from qutemail.qkd.vault import FileKeyVault, InvalidKeyId, KeyVaultError
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, LOCAL_ERROR, STORAGE_FULL, ReplyError
from qutemail.store.encrypted import SEALED_SUFFIX, MessageEncryptor, SealResult, isInternal
from qutemail.store.maildir import MaildirStore, returnPath
from qutemail.store.mailbox import mailboxPath
from qutemail.store.reader import listMessages, readMessage

PEER = "sae-b"
HOSTNAME = "mail.example.test"
RECEIVED_AT = 1700000000.5
SUBJECT = b"Subject: quarterly figures for the board"
ACCOUNTS = (Account("bob@example.test"), Account("carol@example.test"), Account("dave@example.test"))


def messageBytes(n: int = 0, extraLines: int = 3) -> bytes:
    """
    @return: an internal message with LF line ends, each body line unique.
    """
    body = b"".join(b"confidential line %d of message %d\n" % (i, n) for i in range(extraLines))
    return (
        b"Received: from client.example.test by mail.example.test; Mon, 1 Jan 2024 12:00:00 +0000\n"
        b"From: Alice <alice@example.test>\n"
        b"To: bob@example.test, carol@example.test\n"
        b"Date: Mon, 1 Jan 2024 12:00:00 +0000\n"
        b"Message-ID: <%d.internal@example.test>\n" % (n,)
        + SUBJECT + b" %d\n" % (n,)
        + b"\n" + body
    )


def envelope(authenticated: str | None = "alice@example.test", sender: str = "alice@example.test") -> Envelope:
    """
    @return: the envelope of an internal message to L{ACCOUNTS}.
    """
    return Envelope(sender, tuple(a.address for a in ACCOUNTS), "client.example.test", "192.0.2.7",
                    RECEIVED_AT, authenticated)


def inlineMessage(body: bytes, queueId: str = "18B2C0FFEE0001") -> SpooledMessage:
    """
    @return: a small spooled message held inline.
    """
    return SpooledMessage(queueId, envelope(), len(body), inline=body)


@implementer(IQKDKeySource)
@attrs.define
class FakeKeySource:
    """
    A key source that hands out random keys with UUID ids, and can be told
    to fail.

    @ivar remaining: how many keys are left (C{None}: endless).
    @ivar failure: when set, every call fails with a temporary
        L{KeySourceError} carrying this text.
    @ivar badKeyId: hand out this key id instead of a UUID.
    @ivar keyBytes: the length of the keys handed out (C{None}: as asked).
    @ivar repeatKeyId: hand out this key id (one already used) instead of a
        fresh one.
    @ivar keys: every key handed out, by id.
    @ivar calls: the C{(peerSAE, sizeBits)} of each C{encKey} call.
    """

    remaining: int | None = None
    failure: str | None = None
    badKeyId: str | None = None
    keyBytes: int | None = None
    repeatKeyId: str | None = None
    keys: dict = attrs.field(factory=dict)
    calls: list = attrs.field(factory=list)

    def status(self, peerSAE: str):
        """
        See L{IQKDKeySource.status}.
        """
        if self.failure is not None:
            return fail(KeySourceError(self.failure))
        count = 1000 if self.remaining is None else self.remaining
        return succeed(KMEStatus("kme-1", "kme-1", "sae-a", peerSAE, 256, count, 1000, 128, 1024, 64, 0))

    def encKey(self, peerSAE: str, sizeBits: int = 256):
        """
        See L{IQKDKeySource.encKey}.
        """
        self.calls.append((peerSAE, sizeBits))
        if self.failure is not None:
            return fail(KeySourceError(self.failure))
        if self.remaining == 0:
            return fail(KeySourceError("the KME answered 503: out of keys for sae-b"))
        if self.remaining is not None:
            self.remaining -= 1
        keyId = self.badKeyId or self.repeatKeyId or str(uuid.uuid4())
        key = os.urandom(sizeBits // 8 if self.keyBytes is None else self.keyBytes)
        self.keys[keyId] = key
        return succeed((keyId, key))

    def decKey(self, peerSAE: str, keyId: str):
        """
        See L{IQKDKeySource.decKey}.
        """
        if keyId not in self.keys:
            return fail(KeySourceError(f"no key {keyId}", temporary=False))
        return succeed(self.keys[keyId])


@implementer(IKeyVault)
@attrs.define
class FailingVault:
    """
    A key vault whose C{store} fails (Redis down, master key unreadable),
    and whose C{fetch} can be told to fail too.

    @ivar failFetch: whether C{fetch} fails as well.
    @ivar error: what the failures raise.
    @ivar inner: the vault C{fetch} and C{erase} use when they work.
    """

    failFetch: bool = False
    error: Exception = attrs.field(factory=lambda: KeyVaultError("the Redis key vault failed (SET): timeout"))
    inner: MemoryKeyVault = attrs.field(factory=MemoryKeyVault)

    def store(self, keyId: str, key: bytes):
        """
        See L{IKeyVault.store}: always fails.
        """
        return fail(self.error)

    def fetch(self, keyId: str):
        """
        See L{IKeyVault.fetch}.
        """
        return fail(self.error) if self.failFetch else self.inner.fetch(keyId)

    def erase(self, keyId: str):
        """
        See L{IKeyVault.erase}.
        """
        return self.inner.erase(keyId)


@attrs.define
class CountingRunner:
    """
    An inline runner that records the name of each function it runs.

    @ivar jobs: the names, in order.
    """

    jobs: list = attrs.field(factory=list)

    def run(self, f, *args, **kwargs):
        """
        Like L{InlineRunner.run}, noting C{f}'s name.
        """
        self.jobs.append(f.__name__)
        return InlineRunner().run(f, *args, **kwargs)


@attrs.define
class FullDiskRunner:
    """
    An inline runner on a full disk: writing a sealed file fails with
    C{ENOSPC}.
    """

    def run(self, f, *args, **kwargs):
        """
        Like L{InlineRunner.run}, except for the sealed file's write.
        """
        if f.__name__ == "_writeSealed":
            return fail(OSError(errno.ENOSPC, "No space left on device"))
        return InlineRunner().run(f, *args, **kwargs)


def run(testCase, coroutine):
    """
    @return: the result of a coroutine that completes at once (inline
        runner, memory backends).
    """
    return testCase.successResultOf(Deferred.fromCoroutine(coroutine))


def runFailure(testCase, coroutine, *errors):
    """
    @return: the failure of a coroutine that fails at once.
    """
    return testCase.failureResultOf(Deferred.fromCoroutine(coroutine), *errors)


def readFile(path: str) -> bytes:
    """
    @return: a file's bytes.
    """
    with open(path, "rb") as f:
        return f.read()


def sealedBytes(result: SealResult) -> bytes:
    """
    @return: the stored form of a sealed message, in memory or in its file.
    """
    return result.message.inline if result.message.path is None else readFile(result.message.path)


class FakeKeySourceTests(SynchronousTestCase):
    """
    The fake key source and vault keep the interfaces' contract.
    """

    def test_provides(self):
        """
        L{FakeKeySource} provides L{IQKDKeySource}, L{FailingVault} and
        L{MemoryKeyVault} provide L{IKeyVault}.
        """
        self.assertTrue(verifyObject(IQKDKeySource, FakeKeySource()))
        self.assertTrue(verifyObject(IKeyVault, FailingVault()))
        self.assertTrue(verifyObject(IKeyVault, MemoryKeyVault()))

    def test_runsOut(self):
        """
        A fake key source with C{remaining} keys fails with a temporary
        L{KeySourceError} once they are used.
        """
        source = FakeKeySource(remaining=1)
        keyId, key = self.successResultOf(source.encKey(PEER))
        self.assertEqual(len(key), 32)
        error = self.failureResultOf(source.encKey(PEER), KeySourceError).value
        self.assertTrue(error.temporary)


class EncryptorTestsMixin:
    """
    A L{MessageEncryptor} over a fake key source, a memory vault and the
    inline runner, and a Maildir store.
    """

    def setUp(self):
        """
        Fresh directories, key source and vault.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.workDirectory = os.path.join(self.dataDir, "queue", "sealed")
        self.source = FakeKeySource()
        self.vault = MemoryKeyVault()
        self.runner = InlineRunner()
        self.encryptor = self.makeEncryptor()
        self.store = MaildirStore(self.dataDir, self.runner, HOSTNAME, 0)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def makeEncryptor(self, **kwargs) -> MessageEncryptor:
        """
        @return: an encryptor over the test's collaborators.
        """
        arguments = dict(keySource=self.source, vault=self.vault, runner=self.runner, peerSAE=PEER,
                         workDirectory=self.workDirectory)
        return MessageEncryptor(**(arguments | kwargs))

    def spilledMessage(self, body: bytes, queueId: str = "18B2C0FFEE0002") -> SpooledMessage:
        """
        @return: a spooled message whose body is in a spill file.
        """
        os.makedirs(self.dataDir, exist_ok=True)
        path = os.path.join(self.dataDir, f"spill-{queueId}")
        with open(path, "wb") as f:
            f.write(body)
        return SpooledMessage(queueId, envelope(), len(body), path=path)

    def workFiles(self) -> list[str]:
        """
        @return: the names in the work directory.
        """
        return sorted(os.listdir(self.workDirectory)) if os.path.isdir(self.workDirectory) else []

    def seal(self, message: SpooledMessage) -> SealResult:
        """
        @return: the sealed message.
        """
        return run(self, self.encryptor.seal(message))

    def sealFails(self, message: SpooledMessage) -> ReplyError:
        """
        @return: the L{ReplyError} sealing fails with.
        """
        return runFailure(self, self.encryptor.seal(message), ReplyError).value

    def deliverAll(self, result: SealResult, checkExisting: bool = False) -> list[str]:
        """
        Deliver a sealed message to every account of L{ACCOUNTS}.

        @return: the stored names.
        """
        return [self.successResultOf(self.store.deliver(result.message, account, i, checkExisting))
                for i, account in enumerate(ACCOUNTS)]

    def readBack(self, path: str) -> bytes:
        """
        @return: what the reader gives for a stored file.
        """
        body, info = run(self, readMessage(path, self.vault, self.runner))
        with body:
            return body.read()


class SealTests(EncryptorTestsMixin, SynchronousTestCase):
    """
    L{MessageEncryptor.seal} on success.
    """

    def test_sealInline(self):
        """
        A small inline message is encrypted with one fresh 256-bit key asked
        for the peer SAE; the key is in the vault; the result keeps the
        queue id and envelope and holds the ciphertext inline, whose size
        it gives; no file is written.
        """
        original = messageBytes()
        message = inlineMessage(original)
        result = self.seal(message)
        self.assertEqual(self.source.calls, [(PEER, 256)])
        [(keyId, key)] = self.source.keys.items()
        self.assertEqual(result.keyId, keyId)
        self.assertEqual(self.successResultOf(self.vault.fetch(keyId)), key)
        sealed = result.message
        self.assertEqual((sealed.queueId, sealed.envelope, sealed.path), (message.queueId, message.envelope, None))
        self.assertEqual(sealed.size, len(sealed.inline))
        self.assertEqual(result.plaintextBytes, len(original))
        self.assertEqual(result.messageId, "<0.internal@example.test>")
        self.assertEqual(decryptBytes(sealed.inline, key), original)
        self.assertEqual(self.workFiles(), [])

    def test_sealSpilled(self):
        """
        A spilled message is encrypted into a sealed file of the work
        directory, mode 0600, which the result points at and whose size it
        gives.
        """
        original = messageBytes(3)
        message = self.spilledMessage(original)
        result = self.seal(message)
        sealed = result.message
        self.assertEqual((sealed.queueId, sealed.envelope, sealed.inline), (message.queueId, message.envelope, None))
        self.assertEqual(os.path.dirname(sealed.path), self.workDirectory)
        self.assertTrue(sealed.path.endswith(SEALED_SUFFIX))
        self.assertEqual(sealed.size, os.path.getsize(sealed.path))
        self.assertEqual(result.plaintextBytes, len(original))
        self.assertEqual(decryptBytes(readFile(sealed.path), self.source.keys[result.keyId]), original)
        self.assertEqual(os.stat(sealed.path).st_mode & 0o777, 0o600)

    def test_noPlaintext(self):
        """
        The sealed file is a C{multipart/encrypted} message that holds no
        body line nor the subject; the outer Subject is the placeholder.
        """
        original = messageBytes(extraLines=20)
        stored = sealedBytes(self.seal(inlineMessage(original)))
        parsed = email.message_from_bytes(stored)
        self.assertEqual(parsed.get_content_type(), "multipart/encrypted")
        self.assertEqual(parsed["Subject"], PLACEHOLDER_SUBJECT)
        self.assertNotIn(b"quarterly", stored)
        for line in original.split(b"\n\n", 1)[1].splitlines():
            self.assertNotIn(line, stored)

    def test_subject(self):
        """
        The outer Subject can be another placeholder, or the original's
        (C{None}); a placeholder the cipher would refuse is refused at
        construction.
        """
        other = self.makeEncryptor(subject="[sealed]")
        stored = sealedBytes(run(self, other.seal(inlineMessage(messageBytes()))))
        self.assertEqual(email.message_from_bytes(stored)["Subject"], "[sealed]")
        shown = self.makeEncryptor(subject=None)
        stored = sealedBytes(run(self, shown.seal(inlineMessage(messageBytes()))))
        self.assertIn(SUBJECT, stored)
        self.assertRaises(ValueError, self.makeEncryptor, subject="two\nlines")

    def test_collaboratorsChecked(self):
        """
        Something that is not a key source or a vault is refused at
        construction.
        """
        self.assertRaises(TypeError, self.makeEncryptor, keySource=object())
        self.assertRaises(TypeError, self.makeEncryptor, vault=self.source)

    def test_onceForAllRecipients(self):
        """
        One seal serves every recipient: each copy holds the same
        ciphertext after the Maildir's Return-Path, one key is used, and
        each copy reads back as the original.
        """
        original = messageBytes()
        result = self.seal(inlineMessage(original))
        names = self.deliverAll(result)
        stored = sealedBytes(result)
        self.assertEqual(len(self.source.keys), 1)
        for account, name in zip(ACCOUNTS, names):
            path = os.path.join(mailboxPath(self.dataDir, account.address), "new", name)
            self.assertEqual(readFile(path), returnPath(result.message) + stored)
            self.assertEqual(self.readBack(path), original)

    def test_spilledStreamed(self):
        """
        A 5 MB spilled message is sealed from its file, delivered, and read
        back identical through the reader's temporary file.
        """
        spill = os.path.join(self.dataDir, "spill")
        os.makedirs(self.dataDir, exist_ok=True)
        digest = hashlib.sha256()
        with open(spill, "wb") as f:
            head = messageBytes(7, extraLines=0)
            f.write(head)
            digest.update(head)
            size = len(head)
            line = 0
            while size < 5 * 1024 * 1024:
                chunk = b"".join(b"line %08d of a large message, not kept in memory\n" % (line + i)
                                 for i in range(1000))
                line += 1000
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        message = SpooledMessage("18B2C0FFEE0007", envelope(), size, path=spill)
        result = self.seal(message)
        self.assertGreater(result.message.size, size * 4 // 3)
        self.assertEqual(result.plaintextBytes, size)
        [name, _, _] = self.deliverAll(result)
        run(self, self.encryptor.discard(result))
        path = os.path.join(mailboxPath(self.dataDir, ACCOUNTS[0].address), "new", name)
        body, info = run(self, readMessage(path, self.vault, self.runner))
        with body:
            self.assertFalse(isinstance(body, bytes))
            self.assertEqual(info.size, size)
            copy = hashlib.sha256()
            while chunk := body.read(1024 * 1024):
                copy.update(chunk)
        self.assertEqual(copy.hexdigest(), digest.hexdigest())
        self.assertTrue(os.path.exists(spill))
        self.assertEqual(self.workFiles(), [])

    def test_freshKeyEachTime(self):
        """
        Each message gets its own key id.
        """
        ids = {self.seal(inlineMessage(messageBytes(n), f"Q{n}")).keyId for n in range(5)}
        self.assertEqual(len(ids), 5)
        self.assertEqual(len(self.source.keys), 5)

    def test_resealFindsEarlierCopy(self):
        """
        After a crash the same message is sealed again with a second key;
        its sealed size, hence its Maildir name, is the same, so a delivery
        with C{checkExisting} finds the copies stored before the crash.
        """
        message = inlineMessage(messageBytes())
        first = self.seal(message)
        names = self.deliverAll(first)
        second = self.seal(message)
        self.assertNotEqual(first.keyId, second.keyId)
        self.assertEqual(first.message.size, second.message.size)
        self.assertEqual(self.deliverAll(second, checkExisting=True), names)
        for account in ACCOUNTS:
            self.assertEqual(len(listMessages(self.dataDir, account.address)), 1)

    def test_logged(self):
        """
        A seal logs nothing of the key (the router's line per message names
        the key id).
        """
        result = self.seal(inlineMessage(messageBytes()))
        key = self.source.keys[result.keyId]
        self.assertNotIn(key, [v for e in self.events for v in e.values() if isinstance(v, bytes)])

    @settings(max_examples=25)
    @given(st.binary(max_size=4096))
    def test_anyBodyRoundTrips(self, body):
        """
        Any body, whatever its bytes, comes back identical through seal,
        delivery and the reader.
        """
        message = inlineMessage(body, "QPROP")
        result = self.seal(message)
        name = self.successResultOf(self.store.deliver(result.message, ACCOUNTS[0], 0))
        run(self, self.encryptor.discard(result))
        path = os.path.join(mailboxPath(self.dataDir, ACCOUNTS[0].address), "new", name)
        try:
            self.assertEqual(self.readBack(path), body)
        finally:
            os.unlink(path)


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
        self.assertEqual(self.runner.jobs.count("_sealInMemory"), 2)
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
                if f.__name__ == "_writeSealed":
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
        self.assertEqual(self.runner.jobs, ["_sealInMemory", "addKeyFiles", "_sealInMemory", "addKeyFiles"])
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
                if f.__name__ == "_sealInMemory":
                    return fail(RuntimeError("bug"))
                return CountingRunner.run(self, f, *args, **kwargs)

        self.encryptor = self.makeEncryptor(runner=BrokenRunner())
        sealing = self.startSeals(1)
        self.source.answer(0)
        self.failureResultOf(sealing[0], RuntimeError)
        again = self.startSeals(1)
        self.assertEqual(self.source.numbers, [1, 1])
        self.assertNoResult(again[0])
