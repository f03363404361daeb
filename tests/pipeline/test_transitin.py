# -*- test-case-name: tests.pipeline.test_transitin -*-
"""
Tests for L{qutemail.pipeline.transitin}: transit mail from peer sites is
opened in the intake, its key fetched from our KME once and kept in the
vault, and anything not from a peer, not for us, or tampered with is
refused with the right reply.
"""

import os

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import InlineRunner
from qutemail.interfaces import KeyGone, KeySourceError
from qutemail.message import Envelope, SpooledMessage
from qutemail.pipeline.transitin import TransitReceiver
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.transit import TRANSIT
from qutemail.replies import ReplyError

KEY_ID = "3e9b1f70-52a4-4c6d-8e0f-7a1b2c3d4e5f"
KEY = bytes(range(100, 132))
OUR_SAE = "site-b"
PEERS = {"a.example.test": "site-a", "A2.Example.Test": "site-a", "c.example.test": "site-c"}
SENDER = "alice@a.example.test"
ORIGINAL = (b"Received: from mx.a.example.test by mx.b.example.test\r\n"
            b"From: Alice <alice@a.example.test>\n"
            b"To: bob@b.example.test\n"
            b"Message-ID: <1@a.example.test>\n"
            b"Subject: plans \xc3\xa9\n\n"
            b"first line\r\nsecond line \xff\n" + b"filler\n" * 20000)


def transitForm(master: str = "site-a", slave: str = OUR_SAE, keyId: str = KEY_ID, key: bytes = KEY,
                original: bytes = ORIGINAL) -> bytes:
    """
    @return: C{original} in the transit form, from C{master} to C{slave}.
    """
    return encryptBytes(original, keyId, key, fmt=TRANSIT, parties=(master, slave))


class FakeKeySource:
    """
    A KME for the receiving site, recording what it is asked.

    @ivar calls: the C{(peerSAE, keyId)} of each C{decKey}.
    @ivar keys: key id to key.
    @ivar error: what every C{decKey} fails with, if set.
    @ivar hold: whether answers wait in C{pending} until fired by the test.
    """

    def __init__(self, keys: dict[str, bytes]) -> None:
        """
        Answering from C{keys}.
        """
        self.calls: list[tuple[str, str]] = []
        self.keys = keys
        self.error: Exception | None = None
        self.hold = False
        self.pending: list[Deferred] = []

    def decKey(self, peerSAE: str, keyId: str, sizeBits: int | None = None) -> Deferred:
        """
        See L{qutemail.interfaces.IQKDKeySource.decKey}.
        """
        self.calls.append((peerSAE, keyId))
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        if self.error is not None:
            return fail(self.error)
        return succeed(self.keys[keyId])


@attrs.define
class BrokenVault:
    """
    A vault whose C{store} (and optionally C{fetch}) fails.

    @ivar fetchError: what C{fetch} fails with.
    @ivar storeError: what C{store} fails with.
    """

    fetchError: Exception
    storeError: Exception

    def fetch(self, keyId: str) -> Deferred:
        """
        Fail.
        """
        return fail(self.fetchError)

    def store(self, keyId: str, key: bytes) -> Deferred:
        """
        Fail.
        """
        return fail(self.storeError)


class TransitReceiverTests(SynchronousTestCase):
    """
    L{TransitReceiver.open} with an inline runner, a memory vault and a
    fake KME.
    """

    def setUp(self) -> None:
        """
        A receiver for site-b whose peers are site-a (two domains) and
        site-c.
        """
        self.keySource = FakeKeySource({KEY_ID: KEY})
        self.vault = MemoryKeyVault()
        self.receiver = self.makeReceiver(self.vault)
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def makeReceiver(self, vault: object) -> TransitReceiver:
        """
        @return: a receiver using C{vault}.
        """
        return TransitReceiver(peers=PEERS, saeId=OUR_SAE, keySource=self.keySource, vault=vault,
                               runner=InlineRunner())

    def message(self, body: bytes, sender: str = SENDER, spilled: bool = False,
                queueId: str = "Q1") -> SpooledMessage:
        """
        @return: a spooled message holding C{body}, inline or in a spill
            file.
        """
        envelope = Envelope(sender, ("bob@b.example.test",), helo="mx.a.example.test", peer="192.0.2.1",
                            receivedAt=1000.0)
        if not spilled:
            return SpooledMessage(queueId, envelope, len(body), inline=body)
        path = os.path.join(self.directory, queueId + ".msg")
        with open(path, "wb") as f:
            f.write(body)
        return SpooledMessage(queueId, envelope, len(body), path=path)

    def assertRefused(self, d: Deferred, code: int, enhanced: str) -> ReplyError:
        """
        C{d} failed with a L{ReplyError} of C{code} and C{enhanced}.

        @return: the error.
        """
        error = self.failureResultOf(d, ReplyError).value
        self.assertEqual((error.reply.code, error.reply.enhanced), (code, enhanced))
        return error

    def assertNothingOpened(self, message: SpooledMessage) -> None:
        """
        No plaintext file, final or temporary, was left beside a spilled
        message.
        """
        self.assertFalse(os.path.exists(message.path + ".plain"))
        self.assertFalse(os.path.exists(message.path + ".plain.tmp"))

    def test_plainInline(self) -> None:
        """
        A message not in the transit form comes back as it is, and the
        KME is not asked.
        """
        message = self.message(ORIGINAL)
        self.assertIs(self.successResultOf(self.receiver.open(message)), message)
        self.assertEqual(self.keySource.calls, [])

    def test_plainSpilled(self) -> None:
        """
        A spilled message not in the transit form comes back as it is, its
        file untouched.
        """
        message = self.message(ORIGINAL, spilled=True)
        self.assertIs(self.successResultOf(self.receiver.open(message, traceBytes=10)), message)
        with open(message.path, "rb") as f:
            self.assertEqual(f.read(), ORIGINAL)
        self.assertEqual(os.listdir(self.directory), ["Q1.msg"])
        self.assertEqual(self.keySource.calls, [])

    def test_atRestNotOpened(self) -> None:
        """
        A message in the at-rest form is not a transit message: it is left
        alone.
        """
        message = self.message(encryptBytes(ORIGINAL, KEY_ID, KEY))
        self.assertIs(self.successResultOf(self.receiver.open(message)), message)
        self.assertEqual(self.keySource.calls, [])

    def test_opensInline(self) -> None:
        """
        A transit message from a peer's domain opens to the original,
        marked with its key id; the key is asked of the KME once, naming
        the master SAE, and kept in the vault under C{transit-<key id>}.
        """
        message = self.message(transitForm())
        opened = self.successResultOf(self.receiver.open(message))
        self.assertEqual(opened.inline, ORIGINAL)
        self.assertEqual((opened.size, opened.path), (len(ORIGINAL), None))
        self.assertEqual(opened.envelope, attrs.evolve(message.envelope, transitKeyId=KEY_ID))
        self.assertEqual(opened.queueId, "Q1")
        self.assertEqual(self.keySource.calls, [("site-a", KEY_ID)])
        self.assertEqual(self.successResultOf(self.vault.fetch("transit-" + KEY_ID)), KEY)
        self.failureResultOf(self.vault.fetch(KEY_ID))

    def test_opensSpilled(self) -> None:
        """
        A spilled transit message opens to a new file ending C{.plain}
        holding the original; the transit spill file is removed.
        """
        message = self.message(transitForm(), spilled=True)
        opened = self.successResultOf(self.receiver.open(message))
        self.assertEqual(opened.path, message.path + ".plain")
        self.assertIsNone(opened.inline)
        self.assertFalse(os.path.exists(message.path))
        with open(opened.path, "rb") as f:
            self.assertEqual(f.read(), ORIGINAL)
        self.assertEqual(opened.size, len(ORIGINAL))
        self.assertEqual(opened.envelope.transitKeyId, KEY_ID)
        self.assertEqual(os.listdir(self.directory), ["Q1.msg.plain"])

    def test_traceBytesInline(self) -> None:
        """
        Our own trace fields before the transit form stay on top of the
        opened original.
        """
        prefix = b"Received: from x by y\n"
        opened = self.successResultOf(self.receiver.open(self.message(prefix + transitForm()),
                                                         traceBytes=len(prefix)))
        self.assertEqual(opened.inline, prefix + ORIGINAL)
        self.assertEqual(opened.size, len(prefix) + len(ORIGINAL))

    def test_traceBytesSpilled(self) -> None:
        """
        The same for a spilled message.
        """
        prefix = b"Received: from x by y\n"
        opened = self.successResultOf(self.receiver.open(self.message(prefix + transitForm(), spilled=True),
                                                         traceBytes=len(prefix)))
        with open(opened.path, "rb") as f:
            self.assertEqual(f.read(), prefix + ORIGINAL)
        self.assertEqual(opened.size, len(prefix) + len(ORIGINAL))

    def test_keyInVault(self) -> None:
        """
        A resend of a message whose key is already in the vault opens
        without asking the KME.
        """
        self.successResultOf(self.vault.store("transit-" + KEY_ID, KEY))
        opened = self.successResultOf(self.receiver.open(self.message(transitForm())))
        self.assertEqual(opened.inline, ORIGINAL)
        self.assertEqual(self.keySource.calls, [])

    def test_resendUsesVault(self) -> None:
        """
        Opening the same message twice asks the KME only the first time.
        """
        for _ in range(2):
            opened = self.successResultOf(self.receiver.open(self.message(transitForm())))
            self.assertEqual(opened.inline, ORIGINAL)
        self.assertEqual(self.keySource.calls, [("site-a", KEY_ID)])

    def test_senderDomainCase(self) -> None:
        """
        The sender's domain matches the peers whatever its case, and
        another domain of the same peer site is as good.
        """
        for sender in ("alice@A.EXAMPLE.TEST", "carol@a2.example.test"):
            opened = self.successResultOf(self.receiver.open(self.message(transitForm(), sender=sender)))
            self.assertEqual(opened.inline, ORIGINAL)

    def test_senderNotAPeer(self) -> None:
        """
        A transit message whose sender's domain is no peer's is refused
        with 550 5.7.1 before the KME is asked.
        """
        self.assertRefused(self.receiver.open(self.message(transitForm(), sender="mallory@x.example.test")),
                           550, "5.7.1")
        self.assertEqual(self.keySource.calls, [])

    def test_masterNotTheSendersPeer(self) -> None:
        """
        A master SAE that is a peer, but not the one of the sender's
        domain, is refused with 550 5.7.1.
        """
        message = self.message(transitForm(master="site-c"), spilled=True)
        self.assertRefused(self.receiver.open(message), 550, "5.7.1")
        self.assertEqual(self.keySource.calls, [])
        self.assertNothingOpened(message)

    def test_slaveNotUs(self) -> None:
        """
        A transit message meant for another site is refused with 550
        5.7.1.
        """
        self.assertRefused(self.receiver.open(self.message(transitForm(slave="site-z"))), 550, "5.7.1")
        self.assertEqual(self.keySource.calls, [])

    def test_nullSenderFromPeer(self) -> None:
        """
        From the null sender, any configured peer may be the master.
        """
        opened = self.successResultOf(self.receiver.open(self.message(transitForm(master="site-c"), sender="")))
        self.assertEqual(opened.inline, ORIGINAL)
        self.assertEqual(self.keySource.calls, [("site-c", KEY_ID)])

    def test_nullSenderFromStranger(self) -> None:
        """
        From the null sender, a master that is no peer is refused with 550
        5.7.1.
        """
        self.assertRefused(self.receiver.open(self.message(transitForm(master="site-x"), sender="")),
                           550, "5.7.1")
        self.assertEqual(self.keySource.calls, [])

    def test_kmeTemporaryFailure(self) -> None:
        """
        A KME that cannot answer now gives 451 4.3.0, and nothing is kept
        in the vault.
        """
        self.keySource.error = KeySourceError("KME unreachable", temporary=True)
        self.assertRefused(self.receiver.open(self.message(transitForm())), 451, "4.3.0")
        self.failureResultOf(self.vault.fetch("transit-" + KEY_ID))

    def test_kmePermanentFailure(self) -> None:
        """
        A KME that says no (the key is unknown or not ours) gives 554
        5.7.1.
        """
        self.keySource.error = KeySourceError("no such key", temporary=False)
        self.assertRefused(self.receiver.open(self.message(transitForm())), 554, "5.7.1")
        self.failureResultOf(self.vault.fetch("transit-" + KEY_ID))

    def test_tamperedInline(self) -> None:
        """
        A ciphertext changed in transit fails the tag check: 554 5.7.1.
        """
        transit = transitForm()
        start = transit.index(b"base64\n\n") + 8 + 77 * 3 + 10
        tampered = transit[:start] + (b"A" if transit[start:start + 1] != b"A" else b"B") + transit[start + 1:]
        self.assertRefused(self.receiver.open(self.message(tampered)), 554, "5.7.1")

    def test_tamperedSpilled(self) -> None:
        """
        A tampered spilled message is refused with 554 5.7.1 and leaves no
        plaintext file.
        """
        transit = transitForm()
        start = transit.index(b"base64\n\n") + 8 + 77 * 2
        tampered = transit[:start] + (b"A" if transit[start:start + 1] != b"A" else b"B") + transit[start + 1:]
        message = self.message(tampered, spilled=True)
        self.assertRefused(self.receiver.open(message), 554, "5.7.1")
        self.assertNothingOpened(message)

    def test_wrongKey(self) -> None:
        """
        A key from the KME that does not open the message gives 554 5.7.1.
        """
        self.keySource.keys = {KEY_ID: bytes(32)}
        message = self.message(transitForm(), spilled=True)
        self.assertRefused(self.receiver.open(message), 554, "5.7.1")
        self.assertNothingOpened(message)

    def test_malformedControlPart(self) -> None:
        """
        A transit message whose control part has no Nonce is malformed:
        554 5.6.0, and the KME is not asked.
        """
        transit = transitForm()
        nonceAt = transit.index(b"\nNonce: ")
        malformed = transit[:nonceAt] + transit[transit.index(b"\n", nonceAt + 1):]
        for spilled in (False, True):
            error = self.assertRefused(self.receiver.open(self.message(malformed, spilled=spilled)), 554, "5.6.0")
            self.assertIn("Nonce", error.reply.text)
        self.assertEqual(self.keySource.calls, [])

    def test_keyIdNotAUUID(self) -> None:
        """
        A Key-Id of the format's alphabet that is not a UUID (ETSI key ids
        are) is malformed: 554 5.6.0, the KME and the vault not asked.
        """
        transit = transitForm(keyId="k" * 128)
        error = self.assertRefused(self.receiver.open(self.message(transit)), 554, "5.6.0")
        self.assertIn("not a UUID", error.reply.text)
        self.assertEqual(self.keySource.calls, [])

    def test_vaultStoreFails(self) -> None:
        """
        When the key cannot be kept in the vault the message is refused
        for now, 451 4.3.0, and the loss is logged as an error.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        receiver = self.makeReceiver(BrokenVault(KeyGone("transit-" + KEY_ID), OSError("disk full")))
        self.assertRefused(receiver.open(self.message(transitForm())), 451, "4.3.0")
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["keyId"], KEY_ID)
        self.assertIn("disk full", errors[0]["problem"])
        self.assertEqual(self.keySource.calls, [("site-a", KEY_ID)])

    def test_vaultFetchFails(self) -> None:
        """
        A vault that cannot be read gives 451 4.3.0 without asking the KME
        (which hands a key out only once).
        """
        receiver = self.makeReceiver(BrokenVault(OSError("vault unreadable"), OSError("disk full")))
        self.assertRefused(receiver.open(self.message(transitForm())), 451, "4.3.0")
        self.assertEqual(self.keySource.calls, [])

    def test_concurrentOpens(self) -> None:
        """
        Two copies of one transit message opened while the KME has not yet
        answered cause one KME request, and both open.
        """
        self.keySource.hold = True
        first = self.receiver.open(self.message(transitForm(), queueId="Q1"))
        second = self.receiver.open(self.message(transitForm(), queueId="Q2", spilled=True))
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(self.keySource.calls, [("site-a", KEY_ID)])
        self.keySource.hold = False
        self.keySource.pending.pop().callback(KEY)
        self.assertEqual(self.successResultOf(first).inline, ORIGINAL)
        with open(self.successResultOf(second).path, "rb") as f:
            self.assertEqual(f.read(), ORIGINAL)
        self.assertEqual(self.keySource.calls, [("site-a", KEY_ID)])
        self.assertEqual(self.receiver._locks, {})

    def test_concurrentOpensDifferentKeys(self) -> None:
        """
        Messages under different key ids do not wait for each other.
        """
        otherKeyId = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
        self.keySource.hold = True
        first = self.receiver.open(self.message(transitForm()))
        second = self.receiver.open(self.message(transitForm(keyId=otherKeyId, key=bytes(32))))
        self.assertEqual(self.keySource.calls, [("site-a", KEY_ID), ("site-a", otherKeyId)])
        self.keySource.pending[1].callback(bytes(32))
        self.assertEqual(self.successResultOf(second).inline, ORIGINAL)
        self.assertNoResult(first)
        self.keySource.pending[0].callback(KEY)
        self.assertEqual(self.successResultOf(first).inline, ORIGINAL)
