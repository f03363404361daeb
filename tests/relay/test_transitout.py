# -*- test-case-name: tests.relay.test_transitout -*-
"""
Tests for L{qutemail.relay.transitout}: queued mail for a peer site is
sealed once per peer with a fresh KME key, recorded in its queue entry
before it leaves, reused on every retry, and handled per C{peer_policy}
when no key can be had.
"""

import io
import os
import stat
import uuid

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.interfaces import KeySourceError
from qutemail.message import Envelope, QueueEntry, RecipientState, SpooledMessage
from qutemail.qkd.cipher import decryptBytes
from qutemail.qkd.transit import TRANSIT, readTransitEnvelope
from qutemail.relay.transitout import MAX_KEYS_PER_REQUEST, SPARE_SECONDS, Outgoing, TransitSealer
from qutemail.replies import ReplyError

OUR_SAE = "site-a"
PEERS = {"b.example.test": "site-b", "B2.Example.Test": "site-b", "c.example.test": "site-c"}
DKIM_HEADER = "DKIM-Signature: v=1; a=rsa-sha256; d=a.example.test; s=sel; b=c2lnbmF0dXJl\n"
ORIGINAL = (b"From: Alice <alice@a.example.test>\r\n"
            b"To: bob@b.example.test, carol@c.example.test\n"
            b"Message-ID: <7@a.example.test>\n"
            b"Subject: quarterly \xc3\xa9\n\n"
            b"body line\r\n\xff\xfe 8-bit\n" + b"more body\n" * 5000)


class FakeKeySource:
    """
    A KME for the sending site, recording what it is asked.  The sealer
    takes keys with C{encKeys} (one request for several waiting seals).

    @ivar calls: the C{(peerSAE, sizeBits, number)} of each C{encKeys}.
    @ivar issued: key id to key, for every key handed out.
    @ivar error: what requests fail with, if set (held ones: when
        released).
    @ivar hold: whether answers wait in C{pending} until L{release}.
    """

    def __init__(self) -> None:
        """
        Answering with fresh keys.
        """
        self.calls: list[tuple[str, int, int]] = []
        self.issued: dict[str, bytes] = {}
        self.error: Exception | None = None
        self.hold = False
        self.pending: list[tuple[Deferred, list[tuple[str, bytes]]]] = []

    def encKeys(self, peerSAE: str, sizeBits: int = 256, number: int = 1) -> Deferred:
        """
        See L{qutemail.qkd.etsi014.ETSI014KeySource.encKeys}.
        """
        self.calls.append((peerSAE, sizeBits, number))
        keys = [(str(uuid.uuid4()), os.urandom(sizeBits // 8)) for _ in range(number)]
        if self.hold:
            d: Deferred = Deferred()
            self.pending.append((d, keys))
            return d
        if self.error is not None:
            return fail(self.error)
        self.issued.update(keys)
        return succeed(keys)

    def release(self) -> None:
        """
        Stop holding, and answer every held request.
        """
        self.hold = False
        while self.pending:
            d, keys = self.pending.pop(0)
            if self.error is not None:
                d.errback(self.error)
            else:
                self.issued.update(keys)
                d.callback(keys)


class FakeSigner:
    """
    A DKIM signer recording what it signs.

    @ivar signed: each message asked about, with its file's contents then.
    """

    def __init__(self) -> None:
        """
        Nothing signed yet.
        """
        self.signed: list[tuple[SpooledMessage, bytes]] = []

    async def headerFor(self, message: SpooledMessage) -> str:
        """
        See L{qutemail.pipeline.signing.OutboundSigner.headerFor}.
        """
        with open(message.path, "rb") as f:
            self.signed.append((message, f.read()))
        return DKIM_HEADER


class TransitSealerTests(SynchronousTestCase):
    """
    L{TransitSealer} with an inline runner, a fake KME, a fake signer and
    a recording C{save}.
    """

    def setUp(self) -> None:
        """
        A sealer for site-a, whose peers are site-b (two domains) and
        site-c.
        """
        self.keySource = FakeKeySource()
        self.signer = FakeSigner()
        self.saved: list[tuple[QueueEntry, dict, bool]] = []
        self.directory = os.path.join(self.mktemp(), "queue", "transit")
        self.sealer = self.makeSealer("require")

    def makeSealer(self, policy: str, signer: object = "default") -> TransitSealer:
        """
        @return: a sealer under C{policy}.
        """
        return TransitSealer(peers=PEERS, saeId=OUR_SAE, policy=policy, keySource=self.keySource,
                             runner=InlineRunner(), directory=self.directory,
                             signer=self.signer if signer == "default" else signer, save=self.save)

    async def save(self, entry: QueueEntry) -> None:
        """
        Record the entry as it is now.
        """
        self.saved.append((entry, {sae: dict(made) for sae, made in entry.transit.items()}, entry.transitWarned))

    def entry(self, queueId: str = "18F0A1B2C3D40001", body: bytes = ORIGINAL) -> QueueEntry:
        """
        @return: a queue entry with an inline body and recipients at both
            peer sites.
        """
        envelope = Envelope("alice@a.example.test", ("bob@b.example.test", "carol@c.example.test"))
        message = SpooledMessage(queueId, envelope, len(body), inline=body)
        return QueueEntry(message, [RecipientState("bob@b.example.test", 0),
                                    RecipientState("carol@c.example.test", 1)])

    def readOutgoing(self, outgoing: Outgoing) -> bytes:
        """
        @return: what the relay would send.
        """
        with outgoing.body() as f:
            return f.read()

    def assertRefused(self, d: Deferred, code: int, enhanced: str) -> ReplyError:
        """
        C{d} failed with a L{ReplyError} of C{code} and C{enhanced}.
        """
        error = self.failureResultOf(d, ReplyError).value
        self.assertEqual((error.reply.code, error.reply.enhanced), (code, enhanced))
        return error

    def test_notAPeer(self) -> None:
        """
        A domain that is no peer's gets the message as it is: C{None}, and
        neither the KME nor the disk is touched.
        """
        entry = self.entry()
        self.assertIsNone(self.successResultOf(self.sealer.prepare(entry, "d.example.test")))
        self.assertEqual(self.keySource.calls, [])
        self.assertEqual(self.saved, [])
        self.assertEqual(entry.transit, {})
        self.assertFalse(os.path.exists(self.directory))

    def test_peerOf(self) -> None:
        """
        L{TransitSealer.peerOf} gives a domain's peer SAE whatever the
        case, or C{None}.
        """
        self.assertEqual([self.sealer.peerOf(d) for d in ("B.EXAMPLE.TEST", "b2.example.test", "x.test")],
                         ["site-b", "site-b", None])

    def test_sealed(self) -> None:
        """
        A peer domain gets a transit copy that opens, with the key the KME
        gave for that peer, to the original; it is from us to the peer,
        and the entry records its key id, size and DKIM-Signature.
        """
        entry = self.entry()
        outgoing = self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        self.assertEqual(self.keySource.calls, [("site-b", 256, 1)])
        [(keyId, key)] = self.keySource.issued.items()
        sent = self.readOutgoing(outgoing)
        self.assertEqual(decryptBytes(sent, key, TRANSIT), ORIGINAL)
        envelope = readTransitEnvelope(io.BytesIO(sent))
        self.assertEqual((envelope.keyId, envelope.parties), (keyId, (OUR_SAE, "site-b")))
        path = self.sealer.pathFor(entry.queueId, "site-b")
        self.assertEqual(outgoing.size, len(sent))
        self.assertEqual(os.path.getsize(path), len(sent))
        self.assertEqual(outgoing.prefix, DKIM_HEADER.encode("ascii"))
        self.assertEqual(entry.transit, {"site-b": {"keyId": keyId, "size": len(sent), "dkimHeader": DKIM_HEADER}})
        self.assertNotIn(b"quarterly", sent)

    def test_signedOverTransitForm(self) -> None:
        """
        The DKIM signer is given the transit copy (its file, size, queue id
        and envelope), not the original.
        """
        entry = self.entry()
        outgoing = self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        [(signed, contents)] = self.signer.signed
        self.assertEqual(signed.path, self.sealer.pathFor(entry.queueId, "site-b"))
        self.assertEqual((signed.queueId, signed.envelope, signed.size, signed.inline),
                         (entry.queueId, entry.message.envelope, outgoing.size, None))
        self.assertEqual(contents, self.readOutgoing(outgoing))

    def test_unsigned(self) -> None:
        """
        Without a signer the copy has no DKIM-Signature.
        """
        entry = self.entry()
        outgoing = self.successResultOf(self.makeSealer("require", signer=None).prepare(entry, "b.example.test"))
        self.assertEqual(outgoing.prefix, b"")
        self.assertEqual(entry.transit["site-b"]["dkimHeader"], "")

    def test_spilledBody(self) -> None:
        """
        A message whose body is in a spill file is sealed from that file.
        """
        spill = self.mktemp()
        with open(spill, "wb") as f:
            f.write(ORIGINAL)
        entry = self.entry()
        entry.message = SpooledMessage(entry.queueId, entry.message.envelope, len(ORIGINAL), path=spill)
        outgoing = self.successResultOf(self.sealer.prepare(entry, "c.example.test"))
        [key] = self.keySource.issued.values()
        self.assertEqual(decryptBytes(self.readOutgoing(outgoing), key, TRANSIT), ORIGINAL)

    def test_copyIsPrivate(self) -> None:
        """
        The transit copy is mode 0600, and no temporary file is left.
        """
        entry = self.entry()
        self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        path = self.sealer.pathFor(entry.queueId, "site-b")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), [os.path.basename(path)])

    def test_recordedNotSaved(self) -> None:
        """
        The transit record is in the entry when C{prepare} returns; it is
        not written in a save of its own (the scheduler saves it with the
        attempt's outcome).
        """
        entry = self.entry()
        self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        self.assertEqual(list(entry.transit), ["site-b"])
        self.assertIn(entry.transit["site-b"]["keyId"], self.keySource.issued)
        self.assertEqual(self.saved, [])

    def test_reusedCopy(self) -> None:
        """
        Another prepare for the same entry and peer site, by the same or
        another of its domains, gives the same copy without a new key or
        save.
        """
        entry = self.entry()
        first = self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        sent = self.readOutgoing(first)
        record = dict(entry.transit["site-b"])
        for domain in ("b.example.test", "b2.example.test"):
            again = self.successResultOf(self.sealer.prepare(entry, domain))
            self.assertEqual((again.size, again.prefix), (first.size, first.prefix))
            self.assertEqual(self.readOutgoing(again), sent)
        self.assertEqual(len(self.keySource.calls), 1)
        self.assertEqual(entry.transit, {"site-b": record})
        self.assertEqual(self.saved, [])

    def test_otherPeerOtherCopy(self) -> None:
        """
        Another peer site gets its own copy under its own key.
        """
        entry = self.entry()
        toB = self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        toC = self.successResultOf(self.sealer.prepare(entry, "c.example.test"))
        self.assertEqual(self.keySource.calls, [("site-b", 256, 1), ("site-c", 256, 1)])
        self.assertNotEqual(self.sealer.pathFor(entry.queueId, "site-b"), self.sealer.pathFor(entry.queueId, "site-c"))
        self.assertEqual(sorted(entry.transit), ["site-b", "site-c"])
        keyC = self.keySource.issued[entry.transit["site-c"]["keyId"]]
        self.assertEqual(readTransitEnvelope(io.BytesIO(self.readOutgoing(toC))).parties, (OUR_SAE, "site-c"))
        self.assertEqual(decryptBytes(self.readOutgoing(toC), keyC, TRANSIT), ORIGINAL)
        self.assertEqual(readTransitEnvelope(io.BytesIO(self.readOutgoing(toB))).parties, (OUR_SAE, "site-b"))

    def test_lostCopyRemade(self) -> None:
        """
        A recorded copy whose file is gone is made again under a new key.
        """
        entry = self.entry()
        self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        firstKeyId = entry.transit["site-b"]["keyId"]
        os.unlink(self.sealer.pathFor(entry.queueId, "site-b"))
        outgoing = self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        secondKeyId = entry.transit["site-b"]["keyId"]
        self.assertNotEqual(firstKeyId, secondKeyId)
        self.assertEqual(decryptBytes(self.readOutgoing(outgoing), self.keySource.issued[secondKeyId], TRANSIT),
                         ORIGINAL)

    def test_changedCopyRemade(self) -> None:
        """
        A recorded copy whose file no longer has the recorded size (cut
        short) is made again under a new key, not sent.
        """
        entry = self.entry()
        self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        firstKeyId = entry.transit["site-b"]["keyId"]
        path = self.sealer.pathFor(entry.queueId, "site-b")
        os.truncate(path, 100)
        outgoing = self.successResultOf(self.sealer.prepare(entry, "b.example.test"))
        self.assertNotEqual(entry.transit["site-b"]["keyId"], firstKeyId)
        self.assertEqual(outgoing.size, os.path.getsize(path))
        key = self.keySource.issued[entry.transit["site-b"]["keyId"]]
        self.assertEqual(decryptBytes(self.readOutgoing(outgoing), key, TRANSIT), ORIGINAL)

    def test_keySize(self) -> None:
        """
        The key size configured is the one asked of the KME.
        """
        sealer = TransitSealer(peers=PEERS, saeId=OUR_SAE, policy="require", keySource=self.keySource,
                               runner=InlineRunner(), directory=self.directory, keySizeBits=512)
        self.successResultOf(sealer.prepare(self.entry(), "b.example.test"))
        self.assertEqual(self.keySource.calls, [("site-b", 512, 1)])

    def test_concurrentPrepares(self) -> None:
        """
        Two domains of one peer site prepared at once, while the KME has
        not answered, share one key and one copy.
        """
        self.keySource.hold = True
        entry = self.entry()
        first = self.sealer.prepare(entry, "b.example.test")
        second = self.sealer.prepare(entry, "b2.example.test")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.keySource.release()
        one, two = self.successResultOf(first), self.successResultOf(second)
        self.assertEqual(self.keySource.calls, [("site-b", 256, 1)])
        self.assertEqual(self.readOutgoing(one), self.readOutgoing(two))
        self.assertEqual(len(self.keySource.issued), 1)
        self.assertEqual(self.sealer._locks, {})

    def test_concurrentMessagesShareRequest(self) -> None:
        """
        Messages for one peer waiting while a request is under way share
        the next request, each with a key of its own.
        """
        self.keySource.hold = True
        entries = [self.entry(f"18F0A1B2C3D4000{n}") for n in range(1, 4)]
        results = [self.sealer.prepare(entry, "b.example.test") for entry in entries]
        self.assertEqual(self.keySource.calls, [("site-b", 256, 1)])
        self.keySource.release()
        self.assertEqual(self.keySource.calls, [("site-b", 256, 1), ("site-b", 256, 2)])
        keyIds = [entry.transit["site-b"]["keyId"] for entry in entries]
        self.assertEqual(len(set(keyIds)), 3)
        for d, keyId in zip(results, keyIds):
            sent = self.readOutgoing(self.successResultOf(d))
            self.assertEqual(readTransitEnvelope(io.BytesIO(sent)).keyId, keyId)
            self.assertEqual(decryptBytes(sent, self.keySource.issued[keyId], TRANSIT), ORIGINAL)

    def test_requestSizeBounded(self) -> None:
        """
        One request asks for at most L{MAX_KEYS_PER_REQUEST} keys; the
        rest wait for the next.
        """
        self.keySource.hold = True
        count = MAX_KEYS_PER_REQUEST + 6
        entries = [self.entry(f"18F0A1B2C3D4{n:04X}", body=b"Subject: x\n\nhi\n") for n in range(count)]
        results = [self.sealer.prepare(entry, "c.example.test") for entry in entries]
        self.keySource.release()
        self.assertEqual([number for _, _, number in self.keySource.calls], [1, MAX_KEYS_PER_REQUEST, 5])
        self.assertEqual(len({entry.transit["site-c"]["keyId"] for entry in entries}), count)
        for d in results:
            self.assertIsInstance(self.successResultOf(d), Outgoing)

    def test_peersAskedApart(self) -> None:
        """
        A request under way for one peer does not hold up another peer's.
        """
        self.keySource.hold = True
        entry = self.entry()
        toB = self.sealer.prepare(entry, "b.example.test")
        toC = self.sealer.prepare(entry, "c.example.test")
        self.assertEqual(self.keySource.calls, [("site-b", 256, 1), ("site-c", 256, 1)])
        self.keySource.release()
        self.assertIsInstance(self.successResultOf(toB), Outgoing)
        self.assertIsInstance(self.successResultOf(toC), Outgoing)

    def test_failedRequestFailsAllWaiting(self) -> None:
        """
        When the KME fails, every seal waiting on it is deferred, and the
        next prepare asks again.
        """
        self.keySource.hold = True
        entries = [self.entry(f"18F0A1B2C3D4000{n}") for n in range(1, 4)]
        results = [self.sealer.prepare(entry, "b.example.test") for entry in entries]
        self.keySource.error = KeySourceError("KME unreachable")
        self.keySource.release()
        for d in results:
            self.assertRefused(d, 451, "4.3.0")
        self.assertEqual(len(self.keySource.calls), 2)
        self.keySource.error = None
        self.assertIsInstance(self.successResultOf(self.sealer.prepare(entries[0], "b.example.test")), Outgoing)
        self.assertEqual(len(self.keySource.calls), 3)

    def test_shortOrRaisingAnswer(self) -> None:
        """
        A key source that answers with fewer keys than asked fails the
        seals left without one (451), and one that raises at once fails
        them all; neither leaves the peer stuck.
        """
        self.keySource.hold = True
        entries = [self.entry(f"18F0A1B2C3D4100{n}") for n in range(1, 3)]
        results = [self.sealer.prepare(entry, "b.example.test") for entry in entries]
        [(held, keys)] = self.keySource.pending
        self.keySource.pending.clear()
        self.keySource.hold = False
        held.callback([])  # the first request, for the first seal alone
        self.assertRefused(results[0], 451, "4.3.0")
        self.assertIsInstance(self.successResultOf(results[1]), Outgoing)

        def raising(peerSAE, sizeBits=256, number=1):
            raise KeySourceError("client not configured")

        self.keySource.encKeys = raising
        self.assertRefused(self.sealer.prepare(self.entry("18F0A1B2C3D41009"), "b.example.test"), 451, "4.3.0")
        self.assertRefused(self.sealer.prepare(self.entry("18F0A1B2C3D4100A"), "b.example.test"), 451, "4.3.0")

    def test_requireNoKey(self) -> None:
        """
        Under C{require}, no key defers the recipients: 451 4.3.0 naming
        the peer SAE and the KME's problem; nothing is recorded or
        written.
        """
        self.keySource.error = KeySourceError("KME unreachable: connection refused")
        entry = self.entry()
        error = self.assertRefused(self.sealer.prepare(entry, "b.example.test"), 451, "4.3.0")
        self.assertIn("site-b", error.reply.text)
        self.assertIn("connection refused", error.reply.text)
        self.assertEqual((entry.transit, entry.transitWarned, self.saved), ({}, False, []))
        self.assertFalse(os.path.exists(self.sealer.pathFor(entry.queueId, "site-b")))

    def test_requirePermanentNoKey(self) -> None:
        """
        Even a KME that says no for good only defers under C{require}:
        nothing leaves in clear.
        """
        self.keySource.error = KeySourceError("unknown SAE", temporary=False)
        self.assertRefused(self.sealer.prepare(self.entry(), "c.example.test"), 451, "4.3.0")

    def test_preferNoKey(self) -> None:
        """
        Under C{prefer}, no key sends the message as it is (C{None}); the
        entry is marked and saved once and one warning is logged, however
        often it is tried.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.keySource.error = KeySourceError("KME out of keys")
        sealer = self.makeSealer("prefer")
        entry = self.entry()
        for domain in ("b.example.test", "b2.example.test", "c.example.test"):
            self.assertIsNone(self.successResultOf(sealer.prepare(entry, domain)))
        self.assertTrue(entry.transitWarned)
        self.assertEqual([(e, warned) for e, _, warned in self.saved], [(entry, True)])
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["queueId"], warnings[0]["sae"]), (entry.queueId, "site-b"))
        self.assertEqual(len(self.keySource.calls), 3)
        self.assertEqual(entry.transit, {})

    def test_preferWithKey(self) -> None:
        """
        Under C{prefer}, a key seals the message as under C{require}.
        """
        entry = self.entry()
        outgoing = self.successResultOf(self.makeSealer("prefer").prepare(entry, "b.example.test"))
        self.assertIsInstance(outgoing, Outgoing)
        self.assertFalse(entry.transitWarned)

    def test_discard(self) -> None:
        """
        L{TransitSealer.discard} removes every copy of the entry, and only
        those.
        """
        entry, other = self.entry(), self.entry("18F0A1B2C3D40002")
        for domain in ("b.example.test", "c.example.test"):
            self.successResultOf(self.sealer.prepare(entry, domain))
        self.successResultOf(self.sealer.prepare(other, "b.example.test"))
        self.assertEqual(len(os.listdir(self.directory)), 3)
        self.successResultOf(self.sealer.discard(entry))
        self.assertEqual(os.listdir(self.directory), [os.path.basename(self.sealer.pathFor(other.queueId, "site-b"))])
        self.successResultOf(self.sealer.discard(entry))

    def test_sweep(self) -> None:
        """
        L{TransitSealer.sweep} removes the copies of messages no longer
        queued, left temporary files included, and keeps the others.
        """
        live, gone = self.entry("18F0A1B2C3D40001"), self.entry("18F0A1B2C3D40002")
        for entry in (live, gone):
            for domain in ("b.example.test", "c.example.test"):
                self.successResultOf(self.sealer.prepare(entry, domain))
        with open(self.sealer.pathFor(gone.queueId, "site-b") + ".tmp", "wb") as f:
            f.write(b"half written")
        self.assertEqual(self.successResultOf(self.sealer.sweep({live.queueId, "18F0A1B2C3D4FFFF"})), 3)
        self.assertEqual(sorted(os.listdir(self.directory)),
                         sorted(os.path.basename(self.sealer.pathFor(live.queueId, sae))
                                for sae in ("site-b", "site-c")))

    def test_sweepNoDirectory(self) -> None:
        """
        Sweeping before any copy was made removes nothing.
        """
        self.assertEqual(self.successResultOf(self.sealer.sweep(set())), 0)


class PrefetchTests(SynchronousTestCase):
    """
    With C{prefetchKeys}, one C{enc_keys} takes keys ahead; later seals of
    that site use them until they are L{SPARE_SECONDS} old.
    """

    def setUp(self) -> None:
        self.keySource = FakeKeySource()
        self.clock = Clock()
        self.sealer = TransitSealer(peers=PEERS, saeId=OUR_SAE, policy="require", keySource=self.keySource,
                                    runner=InlineRunner(), directory=os.path.join(self.mktemp(), "transit"),
                                    prefetchKeys=4, clock=self.clock)

    def seal(self, queueId: str, domain: str = "b.example.test") -> str:
        """
        @return: the key id a new entry was sealed with for C{domain}.
        """
        envelope = Envelope("alice@a.example.test", ("bob@b.example.test", "carol@c.example.test"))
        entry = QueueEntry(SpooledMessage(queueId, envelope, len(ORIGINAL), inline=ORIGINAL),
                           [RecipientState("bob@b.example.test", 0)])
        self.assertIsInstance(self.successResultOf(self.sealer.prepare(entry, domain)), Outgoing)
        return entry.transit[PEERS[domain]]["keyId"]

    def test_keysTakenAhead(self) -> None:
        """
        Four seals for site-b cost one request of four keys, each seal its
        own key; the fifth asks again; site-c has keys of its own.
        """
        ids = [self.seal(f"18F0A1B2C3D4200{n}") for n in range(1, 5)]
        self.assertEqual(self.keySource.calls, [("site-b", 256, 4)])
        self.assertEqual(len(set(ids)), 4)
        self.assertTrue(set(ids) <= set(self.keySource.issued))
        self.seal("18F0A1B2C3D42005")
        self.seal("18F0A1B2C3D42006", "c.example.test")
        self.assertEqual(self.keySource.calls, [("site-b", 256, 4), ("site-b", 256, 4), ("site-c", 256, 4)])

    def test_spareKeysAge(self) -> None:
        """
        Keys kept longer than L{SPARE_SECONDS} are not used.
        """
        self.seal("18F0A1B2C3D43001")
        self.clock.advance(SPARE_SECONDS + 1)
        self.seal("18F0A1B2C3D43002")
        self.assertEqual(len(self.keySource.calls), 2)
