"""
Tests of deferred internal mail sealed in the queue under the queue key
(L{qutemail.queue.deferred.DeferredQueue} with L{qutemail.queue.sealedbody}).
"""

import json
import os
import stat
from functools import partial

import attrs
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.message import DEFERRED, Envelope, RecipientState, SpooledMessage
from qutemail.qkd.vault import MasterKeyError, deriveQueueKey, loadMasterKey, loadQueueKey
from qutemail.queue.deferred import DeferredQueue
from qutemail.queue.sealedbody import SealedBodyError
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, ReplyError
from qutemail.store.encrypted import isInternal
from tests.support import buildStack

DOMAINS = ("example.test",)
INTERNAL = Envelope("bob@example.test", ("alice@example.test",), "c.test", "127.0.0.1", 1700000000.0,
                    authenticated="bob@example.test")
OUTSIDE = Envelope("s@remote.test", ("alice@example.test",), "c.test", "192.0.2.1", 1700000000.0)
MARKER = b"Zebra-Quokka-7731"
BODY = b"From: bob@example.test\nTo: alice@example.test\nSubject: quarterly numbers\n\n" + MARKER + b" secret\n"


def _recipients() -> list[RecipientState]:
    """
    @return: one deferred local recipient.
    """
    return [RecipientState("alice@example.test", 0, DEFERRED, 1, 300.0, "451 4.3.0 QKD key source unavailable")]


class SealedQueueTests(SynchronousTestCase):
    """
    Internal mail is sealed in C{queue/deferred/}; everything reads it
    through C{openBody}.
    """

    def setUp(self) -> None:
        """
        A queue directory and a master key path beside it.
        """
        base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(base, "queue", "deferred")
        self.masterKey = os.path.join(base, "keys", "master.key")

    def queue(self, seal: bool = True) -> DeferredQueue:
        """
        @return: a queue on the directory, sealing internal mail when
            C{seal}.
        """
        return DeferredQueue(self.directory, InlineRunner(), queueKey=partial(loadQueueKey, self.masterKey),
                             sealIf=partial(isInternal, domains=DOMAINS) if seal else None)

    def files(self, queueId: str) -> tuple[bytes, dict]:
        """
        @return: an entry's C{.msg} bytes and C{.json} contents.
        """
        base = os.path.join(self.directory, queueId)
        with open(base + ".msg", "rb") as f, open(base + ".json", "rb") as g:
            return f.read(), json.load(g)

    def read(self, message: SpooledMessage) -> bytes:
        """
        @return: the body as C{openBody} gives it.
        """
        with message.openBody() as f:
            return f.read()

    def test_internalInlineSealed(self) -> None:
        """
        An internal message is sealed on disk (no plaintext, not RFC 5322),
        its C{.json} says so, and C{openBody} gives the plaintext, also
        after a restart.
        """
        queue = self.queue()
        queue.load()
        entry = self.successResultOf(queue.add(SpooledMessage("Q1", INTERNAL, len(BODY), inline=BODY), _recipients()))
        stored, meta = self.files("Q1")
        for clear in (MARKER, b"quarterly", b"secret", b"From:", b"Subject"):
            self.assertNotIn(clear, stored)
        self.assertEqual(meta["sealedBody"], 1)
        self.assertEqual(meta["size"], len(BODY))
        self.assertEqual(entry.sealedBody, 1)
        self.assertEqual(self.read(entry.message), BODY)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.directory, "Q1.msg")).st_mode), 0o600)
        restarted = self.queue()
        [loaded] = restarted.load()
        self.assertEqual(loaded.sealedBody, 1)
        self.assertEqual(self.read(loaded.message), BODY)
        self.assertTrue(os.path.exists(self.masterKey))

    def test_internalSpilledSealed(self) -> None:
        """
        A spilled internal message (several chunks) is sealed the same way,
        read from its spill file a chunk at a time.
        """
        spill = os.path.abspath(self.mktemp())
        body = BODY + b"x" * (200 * 1024) + b"\n"
        with open(spill, "wb") as f:
            f.write(body)
        queue = self.queue()
        entry = self.successResultOf(queue.add(SpooledMessage("Q2", INTERNAL, len(body), path=spill), _recipients()))
        stored, meta = self.files("Q2")
        self.assertNotIn(MARKER, stored)
        self.assertNotIn(b"x" * 64, stored)
        self.assertEqual(meta["sealedBody"], 1)
        self.assertEqual(self.read(entry.message), body)
        self.assertTrue(os.path.exists(spill))

    def test_outsideMailInClear(self) -> None:
        """
        Mail from outside is queued as it came (it is stored so anyway).
        """
        queue = self.queue()
        entry = self.successResultOf(queue.add(SpooledMessage("Q3", OUTSIDE, len(BODY), inline=BODY), _recipients()))
        stored, meta = self.files("Q3")
        self.assertEqual(stored, BODY)
        self.assertEqual(meta["sealedBody"], 0)
        self.assertIsNone(entry.message.opener)
        self.assertEqual(self.read(entry.message), BODY)

    def test_sealingOff(self) -> None:
        """
        With no C{sealIf} (QKD encryption off), internal mail is queued as
        it came.
        """
        entry = self.successResultOf(
            self.queue(seal=False).add(SpooledMessage("Q4", INTERNAL, len(BODY), inline=BODY), _recipients()))
        self.assertEqual(self.files("Q4")[0], BODY)
        self.assertEqual(entry.sealedBody, 0)

    def test_oldEntryReadInClear(self) -> None:
        """
        An entry written before sealing existed (no C{sealedBody}) is read
        as it is.
        """
        self.successResultOf(
            self.queue(seal=False).add(SpooledMessage("Q5", INTERNAL, len(BODY), inline=BODY), _recipients()))
        metaPath = os.path.join(self.directory, "Q5.json")
        with open(metaPath) as f:
            meta = json.load(f)
        del meta["sealedBody"]
        with open(metaPath, "w") as f:
            json.dump(meta, f)
        [loaded] = self.queue().load()
        self.assertEqual(loaded.sealedBody, 0)
        self.assertEqual(self.read(loaded.message), BODY)

    def test_removeDeletesSealedBody(self) -> None:
        """
        Removing the entry removes its sealed body.
        """
        queue = self.queue()
        queue.load()
        self.successResultOf(queue.add(SpooledMessage("Q6", INTERNAL, len(BODY), inline=BODY), _recipients()))
        self.assertTrue(self.successResultOf(queue.remove("Q6")))
        self.assertEqual(os.listdir(self.directory), [])

    def test_masterKeyLost(self) -> None:
        """
        Without the master key, a sealed entry is still listed but its body
        cannot be opened (queued internal mail is lost with master.key).
        """
        self.successResultOf(
            self.queue().add(SpooledMessage("Q7", INTERNAL, len(BODY), inline=BODY), _recipients()))
        os.unlink(self.masterKey)
        [loaded] = self.queue().load()
        self.assertRaises(MasterKeyError, loaded.message.openBody)
        self.assertFalse(os.path.exists(self.masterKey))

    def test_keyReadAtLoad(self) -> None:
        """
        Loading a queue with a sealed entry reads the queue key then, so a
        later open (the relay's, on the reactor thread) reads no file.
        """
        self.successResultOf(
            self.queue().add(SpooledMessage("QA", INTERNAL, len(BODY), inline=BODY), _recipients()))
        restarted = self.queue()
        [loaded] = restarted.load()
        os.unlink(self.masterKey)
        self.assertEqual(self.read(loaded.message), BODY)

    def test_otherMasterKey(self) -> None:
        """
        Under another master key, the body fails authentication.
        """
        self.successResultOf(
            self.queue().add(SpooledMessage("Q8", INTERNAL, len(BODY), inline=BODY), _recipients()))
        os.unlink(self.masterKey)
        loadMasterKey(self.masterKey)
        [loaded] = self.queue().load()
        self.assertRaises(SealedBodyError, loaded.message.openBody)

    def test_noKey(self) -> None:
        """
        A queue built without a key cannot open a sealed entry, and says so.
        """
        self.successResultOf(
            self.queue().add(SpooledMessage("Q9", INTERNAL, len(BODY), inline=BODY), _recipients()))
        [loaded] = DeferredQueue(self.directory, InlineRunner()).load()
        self.assertRaises(LookupError, loaded.message.openBody)


class QueueKeyTests(SynchronousTestCase):
    """
    The queue key is derived from the master key, never the master key.
    """

    def test_derived(self) -> None:
        """
        The queue key is 32 bytes, fixed for a master key, different from
        it and from another master key's.
        """
        master = bytes(range(32))
        key = deriveQueueKey(master)
        self.assertEqual(len(key), 32)
        self.assertEqual(key, deriveQueueKey(master))
        self.assertNotEqual(key, master)
        self.assertNotEqual(key, deriveQueueKey(bytes(32)))

    def test_loadUsesTheMasterKeyFile(self) -> None:
        """
        C{loadQueueKey} reads the master key file (creating it only when
        asked, under the vault's rules) and derives from it.
        """
        path = os.path.join(os.path.abspath(self.mktemp()), "master.key")
        self.assertRaises(MasterKeyError, loadQueueKey, path, False)
        key = loadQueueKey(path, True)
        master, _, created = loadMasterKey(path, False)
        self.assertFalse(created)
        self.assertEqual(key, deriveQueueKey(master))
        self.assertEqual(loadQueueKey(path, False), key)


class _NoKeys:
    """
    An encryptor whose key source is always down.
    """

    async def seal(self, message: SpooledMessage) -> None:
        """
        @raise ReplyError: always C{KEY_SOURCE_UNAVAILABLE}.
        """
        raise ReplyError(KEY_SOURCE_UNAVAILABLE)


class SealedStackTests(SynchronousTestCase):
    """
    A sealed entry in the whole stack (inline runner, a L{Clock}): retried,
    bounced with its plaintext header, never copied sealed into a mailbox.
    """

    def setUp(self) -> None:
        """
        A stack whose queue seals internal mail and whose QKD key source is
        down.
        """
        self.stack = buildStack(self.mktemp(), lifetime=900.0)
        self.addCleanup(self.stack.journal._closeFile)
        self.stack.queue.queueKey = partial(loadQueueKey, os.path.abspath(
            os.path.join(self.stack.dataDir, "keys", "master.key")))
        self.stack.queue.sealIf = partial(isInternal, domains=DOMAINS)
        self.stack.local.encryptor = _NoKeys()
        self.stack.scheduler.startService()
        self.addCleanup(self.stack.scheduler.stopService)

    def submit(self) -> str:
        """
        Bob (authenticated) sends alice L{BODY}.

        @return: its queue id.
        """
        message = SpooledMessage(self.stack.intake.queueIds.next(), attrs.evolve(
            INTERNAL, receivedAt=self.stack.clock.seconds()), len(BODY), inline=BODY)
        self.assertEqual(self.successResultOf(self.stack.intake.accept(message)).code, 250)
        return message.queueId

    def test_bounceReadsPlaintextHead(self) -> None:
        """
        Past the queue lifetime, bob's report quotes the original header,
        read from the sealed queue file; the entry and its files go.
        """
        queueId = self.submit()
        self.assertEqual(self.stack.queue.entries[queueId].sealedBody, 1)
        for _ in range(4):
            self.stack.clock.advance(300)
        self.assertNotIn(queueId, self.stack.queue.entries)
        self.assertFalse(os.path.exists(os.path.join(self.stack.dataDir, "queue", "deferred", queueId + ".msg")))
        [report] = self.stack.newFiles("bob@example.test")
        self.assertIn(b"Subject: quarterly numbers", report)
        self.assertIn(b"4.3.0", report)
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])

    def test_neverStoredSealedWithoutEncryption(self) -> None:
        """
        With QKD encryption turned off meanwhile, a sealed entry is not
        copied into the mailbox as it is (it would be unreadable): it waits,
        and says why.
        """
        queueId = self.submit()
        self.stack.local.encryptor = None
        self.stack.clock.advance(300)
        [r] = self.stack.queue.entries[queueId].recipients
        self.assertEqual(r.attempts, 2)
        self.assertIn("Sealed in the queue", r.lastReply)
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])
