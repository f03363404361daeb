"""
Tests for L{qutemail.pipeline.transitin}: messages that share one
dec_keys request, the rate count of mail naming a peer domain as sender,
sites without peers, and the key log.
"""


from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import InlineRunner
from qutemail.interfaces import KeySourceError
from qutemail.message import Envelope, SpooledMessage
from qutemail.pipeline.transitin import TransitReceiver
from qutemail.replies import RATE_LIMITED, ReplyError

from tests.pipeline.test_transitin import (
    KEY_ID, KEY, OUR_SAE, PEERS, SENDER, ORIGINAL, transitForm, FakeKeySource,
)


class BatchingKeySource(FakeKeySource):
    """
    A KME client that also takes several keys in one C{dec_keys}, as
    the ETSI client does; all or none, as a KME answers.

    @ivar batches: the C{(peerSAE, keyIds)} of each C{decKeys}.
    """

    def __init__(self, keys: dict[str, bytes]) -> None:
        super().__init__(keys)
        self.batches: list[tuple[str, list[str]]] = []
        self.held: list[tuple[Deferred, list[str]]] = []

    def decKey(self, peerSAE: str, keyId: str, sizeBits: int | None = None) -> Deferred:
        """
        One key, refused for good when the KME does not hold it.
        """
        if keyId not in self.keys:
            self.calls.append((peerSAE, keyId))
            return fail(KeySourceError("HTTP 400 (one or more keys specified are not found on KME)",
                                       temporary=False))
        return super().decKey(peerSAE, keyId, sizeBits)

    def decKeys(self, peerSAE: str, keyIds: list[str], sizeBits: int | None = None) -> Deferred:
        """
        See L{qutemail.qkd.etsi014.ETSI014KeySource.decKeys}.
        """
        self.batches.append((peerSAE, list(keyIds)))
        if self.hold:
            d: Deferred = Deferred()
            self.held.append((d, list(keyIds)))
            return d
        if any(k not in self.keys for k in keyIds):
            return fail(KeySourceError("HTTP 400 (one or more keys specified are not found on KME)",
                                       temporary=False))
        return succeed([self.keys[k] for k in keyIds])


class BatchedKeysTests(SynchronousTestCase):
    """
    Keys for transit messages arriving together share C{dec_keys}
    requests; one key the KME will not give costs the others nothing.
    """

    OTHER = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
    THIRD = "8c7b6a5f-4e3d-4c2b-9a1f-0e9d8c7b6a5f"

    def setUp(self) -> None:
        self.keySource = BatchingKeySource({KEY_ID: KEY, self.OTHER: bytes(32), self.THIRD: bytes(range(1, 33))})
        self.receiver = TransitReceiver(peers=PEERS, saeId=OUR_SAE, keySource=self.keySource,
                                        vault=MemoryKeyVault(), runner=InlineRunner())

    def open(self, keyId: str, key: bytes):
        envelope = Envelope(SENDER, ("bob@b.example.test",), "mail.a.example.test", "127.0.0.1", 0.0)
        body = transitForm(keyId=keyId, key=key)
        return self.receiver.open(SpooledMessage(f"Q{keyId[:4]}", envelope, len(body), inline=body))

    def test_sharedRequest(self) -> None:
        """
        While the first request is out, the next messages' keys wait and
        then go in one request together.
        """
        self.keySource.hold = True
        first = self.open(KEY_ID, KEY)
        second = self.open(self.OTHER, bytes(32))
        third = self.open(self.THIRD, bytes(range(1, 33)))
        self.assertEqual(self.keySource.batches, [("site-a", [KEY_ID])])
        self.keySource.hold = False
        d, _ = self.keySource.held.pop()
        d.callback([KEY])
        self.assertEqual(self.keySource.batches[1:], [("site-a", [self.OTHER, self.THIRD])])
        for opened in (first, second, third):
            self.assertEqual(self.successResultOf(opened).inline, ORIGINAL)
        self.assertEqual(self.keySource.calls, [])

    def test_oneUnknownKey(self) -> None:
        """
        A batch the KME refuses for good (a key it does not hold) is asked
        for again one key at a time: the unknown one is refused (554), the
        others open.
        """
        del self.keySource.keys[self.OTHER]
        self.keySource.hold = True
        first = self.open(KEY_ID, KEY)
        second = self.open(self.OTHER, bytes(32))
        third = self.open(self.THIRD, bytes(range(1, 33)))
        self.keySource.hold = False
        d, _ = self.keySource.held.pop()
        d.callback([KEY])
        self.assertEqual(self.keySource.calls, [("site-a", self.OTHER), ("site-a", self.THIRD)])
        self.assertEqual(self.successResultOf(first).inline, ORIGINAL)
        self.assertEqual(self.successResultOf(third).inline, ORIGINAL)
        error = self.failureResultOf(second, ReplyError).value
        self.assertEqual((error.reply.code, error.reply.enhanced), (554, "5.7.1"))


class ChargeTests(SynchronousTestCase):
    """
    Mail naming a peer domain as its sender, which the MTA policy did not
    count at MAIL, is counted here unless it opens as a transit message.
    """

    def setUp(self) -> None:
        self.charged: list[str] = []
        self.refuse = False
        self.receiver = TransitReceiver(peers=PEERS, saeId=OUR_SAE, keySource=FakeKeySource({KEY_ID: KEY}),
                                        vault=MemoryKeyVault(), runner=InlineRunner(), charge=self.charge)

    async def charge(self, peer: str) -> None:
        self.charged.append(peer)
        if self.refuse:
            raise ReplyError(RATE_LIMITED)

    def open(self, body: bytes, sender: str = SENDER):
        envelope = Envelope(sender, ("bob@b.example.test",), "mail.a.example.test", "192.0.2.9", 0.0)
        return self.receiver.open(SpooledMessage("Q1", envelope, len(body), inline=body))

    def test_plainFromPeerDomainCharged(self) -> None:
        """
        A plain message from a peer domain is counted; one from elsewhere
        is not (the policy counted it at MAIL); over the limit, 451.
        """
        self.successResultOf(self.open(ORIGINAL))
        self.successResultOf(self.open(ORIGINAL, "x@remote.test"))
        self.assertEqual(self.charged, ["192.0.2.9"])
        self.refuse = True
        error = self.failureResultOf(self.open(ORIGINAL), ReplyError).value
        self.assertEqual((error.reply.code, error.reply.enhanced), (451, "4.7.0"))

    def test_transitNotCharged(self) -> None:
        """
        A transit message from the peer is not counted.
        """
        self.assertEqual(self.successResultOf(self.open(transitForm())).inline, ORIGINAL)
        self.assertEqual(self.charged, [])

    def test_refusedTransitCharged(self) -> None:
        """
        A refused transit message counts; its refusal stands even past the
        limit.
        """
        self.refuse = True
        error = self.failureResultOf(self.open(transitForm(slave="site-z")), ReplyError).value
        self.assertEqual((error.reply.code, error.reply.enhanced), (550, "5.7.1"))
        self.assertEqual(self.charged, ["192.0.2.9"])


class NoPeersTests(SynchronousTestCase):
    """
    A server without C{[qkd] peers} refuses transit mail rather than
    storing ciphertext its recipient cannot read, without a KME or vault.
    """

    def test_refused(self) -> None:
        receiver = TransitReceiver(peers={}, saeId=OUR_SAE, keySource=None, vault=None, runner=InlineRunner())
        envelope = Envelope(SENDER, ("bob@b.example.test",), "mail.a.example.test", "192.0.2.9", 0.0)
        body = transitForm()
        error = self.failureResultOf(receiver.open(SpooledMessage("Q1", envelope, len(body), inline=body)),
                                     ReplyError).value
        self.assertEqual((error.reply.code, error.reply.enhanced), (550, "5.7.1"))
        plain = SpooledMessage("Q2", envelope, len(ORIGINAL), inline=ORIGINAL)
        self.assertIs(self.successResultOf(receiver.open(plain)), plain)


class KeyLogTests(SynchronousTestCase):
    """
    Each transit key kept is noted for its later erasure.
    """

    def test_noted(self) -> None:
        noted = []

        class Log:
            def note(self, vaultId):
                noted.append(vaultId)
                return succeed(None)

        receiver = TransitReceiver(peers=PEERS, saeId=OUR_SAE, keySource=FakeKeySource({KEY_ID: KEY}),
                                   vault=MemoryKeyVault(), runner=InlineRunner(), keyLog=Log())
        envelope = Envelope(SENDER, ("bob@b.example.test",), "mail.a.example.test", "192.0.2.9", 0.0)
        body = transitForm()
        self.successResultOf(receiver.open(SpooledMessage("Q1", envelope, len(body), inline=body)))
        self.successResultOf(receiver.open(SpooledMessage("Q2", envelope, len(body), inline=body)))
        self.assertEqual(noted, ["transit-" + KEY_ID])
