"""
Tests for L{qutemail.queue.adopt}: the queue lock, and moving a stopped
node's deferred entries and unfinished journal messages into this node's
queue and journal, on real files, once.
"""

import os
import socket
from functools import partial

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.message import DEFERRED, PENDING, SENT, Envelope, QueueIds, RecipientState, SpooledMessage
from qutemail.pipeline.intake import Intake
from qutemail.qkd.vault import loadQueueKey
from qutemail.queue.adopt import ADOPTED_NOTE, QueueAdopter, QueueInUse, QueueLock, takeQueueLock
from qutemail.queue.control import ControlCommands, controlPath, shortSocketPath
from qutemail.queue.deferred import DeferredQueue
from qutemail.queue.journal import Journal, encodeDone, encodeMessage, parseSegment, unfinished

INTERNAL = Envelope("bob@example.test", ("alice@example.test", "erin@remote.test"), "c.test", "192.0.2.1",
                    1700000000.0, authenticated="bob@example.test")
OUTSIDE = Envelope("s@remote.test", ("alice@example.test",), "c.remote.test", "192.0.2.9", 1700000100.0)


class RecordingRouter:
    """
    Routes nothing; notes what it was given.

    @ivar routed: C{(message, recovering, body)} in order.
    """

    def __init__(self) -> None:
        self.routed: list[tuple[SpooledMessage, bool, bytes]] = []

    def route(self, message: SpooledMessage, recovering: bool):
        with message.openBody() as f:
            self.routed.append((message, recovering, f.read()))
        return succeed([])


def _writeJournal(directory: str, records: list[bytes]) -> None:
    """
    Write one journal segment as a server would have left it.
    """
    os.makedirs(directory)
    with open(os.path.join(directory, "0000000000.log"), "wb") as f:
        f.write(b"".join(records))


class AdoptTests(SynchronousTestCase):
    """
    L{QueueAdopter.adopt} on a stopped node's real queue directory.
    """

    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.ours = os.path.join(base, "ours")
        self.theirs = os.path.join(base, "theirs")
        self.clock = Clock()
        self.clock.advance(1700000500)
        self.runner = InlineRunner()
        for dataDir in (self.ours, self.theirs):
            os.makedirs(os.path.join(dataDir, "keys"), mode=0o700)
        # Each node its own master key: the stopped node's sealed bodies
        # are opened with its key and sealed again under ours.
        self.theirQueue = self.queueOf(self.theirs)
        self.queue = self.queueOf(self.ours)
        self.queue.load()
        self.router = RecordingRouter()
        self.journal = Journal(os.path.join(self.ours, "queue", "journal"), self.runner, self.clock)
        self.journal.recover()
        self.intake = Intake(journal=self.journal, router=self.router, clock=self.clock, runner=self.runner,
                             queueIds=QueueIds(self.clock), spoolDirectory=os.path.join(self.ours, "queue", "large"),
                             hostname="ours.example.test")
        self.adopter = QueueAdopter(intake=self.intake, queue=self.queue, runner=self.runner, clock=self.clock,
                                    dataDir=self.ours, hostname="ours.example.test",
                                    masterKeyPath=os.path.join(self.ours, "keys", "master.key"))

    def queueOf(self, dataDir: str) -> DeferredQueue:
        """
        A node's deferred queue, sealing every body under its own key.
        """
        return DeferredQueue(os.path.join(dataDir, "queue", "deferred"), self.runner,
                             queueKey=partial(loadQueueKey, os.path.join(dataDir, "keys", "master.key")),
                             sealIf=lambda envelope: True)

    def theirEntry(self, queueId: str, body: bytes, recipients: list[RecipientState]):
        """
        Queue an entry on the stopped node.
        """
        return self.successResultOf(self.theirQueue.add(SpooledMessage(queueId, INTERNAL, len(body), inline=body),
                                                        recipients))

    def adopt(self) -> str:
        return self.successResultOf(self.adopter.adopt(self.theirs))

    def test_deferredEntries(self) -> None:
        """
        Every deferred entry moves with its recipients' states and its
        body, which is sealed under this node's key, and leaves the
        stopped node.
        """
        self.theirEntry("A1", b"one\n", [RecipientState("erin@remote.test", 1, DEFERRED, 2, 1700000600.0, "451 later"),
                                         RecipientState("alice@example.test", 0, SENT, 1, 0.0, "delivered")])
        self.theirEntry("A2", b"two\n", [RecipientState("erin@remote.test", 1, PENDING, 0, 1700000000.0, "")])
        self.assertEqual(self.adopt(), f"ok adopted 2 deferred entries and 0 unfinished messages from {self.theirs}")
        self.assertEqual(sorted(self.queue.entries), ["A1", "A2"])
        first = self.queue.entries["A1"]
        self.assertEqual([(r.address, r.state, r.attempts, r.nextAttempt) for r in first.recipients],
                         [("erin@remote.test", DEFERRED, 2, 1700000600.0), ("alice@example.test", SENT, 1, 0.0)])
        self.assertTrue(first.sealedBody)
        with first.message.openBody() as f:
            self.assertEqual(f.read(), b"one\n")
        with open(os.path.join(self.ours, "queue", "deferred", "A1.msg"), "rb") as f:
            self.assertNotIn(b"one", f.read())
        # What a restart of our node reads: the same entries, from disk.
        reread = self.queueOf(self.ours)
        self.assertEqual(sorted(e.queueId for e in reread.load()), ["A1", "A2"])
        self.assertEqual(os.listdir(os.path.join(self.theirs, "queue", "deferred")), [])
        with open(os.path.join(self.theirs, "queue", ADOPTED_NOTE)) as f:
            self.assertIn("2 deferred entries and 0 unfinished messages adopted by ours.example.test", f.read())

    def test_unfinishedMessages(self) -> None:
        """
        Messages the stopped node's journals hold without a done record,
        inline or spilled, are journalled here and routed as recovered;
        those marked done are not; the old journals are removed.
        """
        large = b"x" * 1000 + b"\n"
        spilled = SpooledMessage("S3", OUTSIDE, len(large), path="/elsewhere/queue/large/S3")
        queueDir = os.path.join(self.theirs, "queue")
        _writeJournal(os.path.join(queueDir, "journal"), [
            encodeMessage(SpooledMessage("J1", OUTSIDE, 4, inline=b"one\n")),
            encodeMessage(SpooledMessage("J2", OUTSIDE, 4, inline=b"two\n")), encodeDone("J2"),
            encodeMessage(spilled)])
        os.makedirs(os.path.join(queueDir, "large"))
        with open(os.path.join(queueDir, "large", "S3"), "wb") as f:
            f.write(large)
        _writeJournal(os.path.join(queueDir, "journal-1"), [
            encodeMessage(SpooledMessage("W4", OUTSIDE, 5, inline=b"four\n"))])
        self.assertEqual(self.adopt(), f"ok adopted 0 deferred entries and 3 unfinished messages from {self.theirs}")
        self.assertEqual([(m.queueId, recovering, body) for m, recovering, body in self.router.routed],
                         [("J1", True, b"one\n"), ("S3", True, large), ("W4", True, b"four\n")])
        self.assertEqual(self.router.routed[1][0].path, os.path.join(self.ours, "queue", "large", "S3"))
        self.assertEqual(sorted(os.listdir(queueDir)), [ADOPTED_NOTE, "deferred", "lock"])
        # Each made durable in our journal (before the stopped node's
        # copy went), and marked done there once routed.
        ourJournal = os.path.join(self.ours, "queue", "journal")
        with open(os.path.join(ourJournal, "0000000000.log"), "rb") as f:
            self.assertEqual([m.queueId for m in parseSegment(f.read())[0]], ["J1", "S3", "W4"])
        self.clock.advance(2)
        self.assertEqual(unfinished(ourJournal), [])

    def test_again(self) -> None:
        """
        An adoption cut short and run again delivers nothing twice: an
        entry already here under its id is only removed from the stopped
        node; a second run finds nothing.
        """
        entry = self.theirEntry("A1", b"one\n", [RecipientState("erin@remote.test", 1, DEFERRED, 1, 1.0, "451")])
        self.successResultOf(self.queue.add(entry.message, entry.recipients))
        self.queue.entries["A1"].recipients[0].state = SENT
        self.assertEqual(self.adopt(), f"ok adopted 1 deferred entry and 0 unfinished messages from {self.theirs}")
        self.assertEqual(self.queue.entries["A1"].recipients[0].state, SENT)
        self.assertEqual(os.listdir(os.path.join(self.theirs, "queue", "deferred")), [])
        self.assertEqual(self.adopt(), f"ok adopted 0 deferred entries and 0 unfinished messages from {self.theirs}")

    def test_sameIdAnotherMessage(self) -> None:
        """
        A different message under an id this node already uses is left on
        the stopped node and reported.
        """
        self.theirEntry("A1", b"one\n", [RecipientState("erin@remote.test", 1, DEFERRED, 1, 1.0, "451")])
        self.successResultOf(self.queue.add(SpooledMessage("A1", OUTSIDE, 6, inline=b"other\n"),
                                            [RecipientState("alice@example.test", 0, DEFERRED, 1, 1.0, "452")]))
        reply = self.adopt()
        self.assertTrue(reply.startswith("error adopted 0 deferred entries"), reply)
        self.assertIn("1 could not be", reply)
        self.assertEqual(sorted(os.listdir(os.path.join(self.theirs, "queue", "deferred"))), ["A1.json", "A1.msg"])
        self.assertEqual(self.queue.entries["A1"].message.envelope, OUTSIDE)
        self.flushLoggedErrors()

    def test_runningNode(self) -> None:
        """
        A queue whose lock is held, or whose control socket answers, is a
        running node's: refused, and nothing moves.
        """
        self.theirEntry("A1", b"one\n", [RecipientState("erin@remote.test", 1, DEFERRED, 1, 1.0, "451")])
        fd = takeQueueLock(os.path.join(self.theirs, "queue"))
        self.assertIn("is in use by a running server", self.adopt())
        os.close(fd)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
            bindPath, directoryFd = shortSocketPath(controlPath(self.theirs))
            listening.bind(bindPath)
            listening.listen(1)
            self.assertIn("is running (its control socket answers)", self.adopt())
        if directoryFd is not None:
            os.close(directoryFd)
        self.assertEqual(self.queue.entries, {})
        self.assertEqual(len(os.listdir(os.path.join(self.theirs, "queue", "deferred"))), 2)

    def test_notAQueue(self) -> None:
        """
        Our own directory, a relative path and a directory without a
        queue are refused with a reason.
        """
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        self.assertEqual(self.successResultOf(self.adopter.adopt(empty)),
                         f"error {empty} has no queue/ directory: not a QutEmail data_dir")
        self.assertEqual(self.successResultOf(self.adopter.adopt(self.ours)),
                         f"error {self.ours} is this node's own data_dir")
        self.assertEqual(self.successResultOf(self.adopter.adopt("theirs")), "error 'theirs' is not an absolute path")


class QueueLockTests(SynchronousTestCase):
    """
    L{QueueLock}: one server per C{data_dir}.
    """

    def test_oneHolder(self) -> None:
        """
        A second lock on a queue directory fails while the first is held,
        and succeeds once it is released.
        """
        queueDir = self.mktemp()
        first = QueueLock(queueDir)
        first.startService()
        self.assertRaises(QueueInUse, QueueLock(queueDir).startService)
        first.stopService()
        second = QueueLock(queueDir)
        second.startService()
        second.stopService()


class ControlAdoptTests(SynchronousTestCase):
    """
    The control socket's C{adopt} request.
    """

    def test_pathWithSpaces(self) -> None:
        """
        The rest of the line is the directory, spaces and UTF-8 included.
        """
        asked = []

        class Adopter:
            async def adopt(self, directory):
                asked.append(directory)
                return "ok adopted"

        commands = ControlCommands(None, Adopter())
        reply = self.successResultOf(Deferred.fromCoroutine(commands.answer("adopt /srv/node 2/dätä".encode())))
        self.assertEqual((reply, asked), ("ok adopted", ["/srv/node 2/dätä"]))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(ControlCommands(None).answer(b"adopt /x"))),
                         "error this server cannot adopt a queue")
