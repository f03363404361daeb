# -*- test-case-name: tests.store.test_encrypted -*-
"""
Tests for L{qutemail.store.encrypted}: sealing internal mail with one QKD
key before local delivery.

Unit tests use the inline runner, the memory key vault and
L{FakeKeySource}; C{tests.store.test_encryptedbatch.RealKMESealTests} seals
through the real embedded KME over loopback mutual TLS, with real threads
and the file vault.  Failures are in C{test_encryptedfailures}.
"""

import email
import errno
import hashlib
import os
import uuid

import attrs
from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, IKeyVault, IQKDKeySource, KeySourceError, KMEStatus
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.cipher import PLACEHOLDER_SUBJECT, decryptBytes
from qutemail.qkd.vault import KeyVaultError
from qutemail.replies import ReplyError
from qutemail.store.encrypted import SEALED_SUFFIX, MessageEncryptor, SealResult
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
        if f.__name__ == "writeSealed":
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
