"""
The L{IRelayQueue} contract, run against the disk queue and the memory one.
"""

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryRelayQueue
from qutemail.blocking import InlineRunner
from qutemail.interfaces import IRelayQueue
from qutemail.message import DEFERRED, PENDING, SENT, Envelope, RecipientState, SpooledMessage
from qutemail.queue.deferred import DeferredQueue

BODY = b"Subject: queued\n\nbody\n"


def message(queueId: str) -> SpooledMessage:
    """
    @return: a small inline message from bob.
    """
    return SpooledMessage(queueId, Envelope("bob@example.test", ("a@x.test", "b@x.test")), len(BODY), inline=BODY)


class RelayQueueContractMixin:
    """
    The behaviour every L{IRelayQueue} has.  Subclasses provide
    C{makeQueue()}, an empty queue whose Deferreds have fired when they
    are returned.
    """

    def setUp(self) -> None:
        """
        A fresh queue.
        """
        self.queue = self.makeQueue()

    def add(self, queueId: str, *recipients: RecipientState, dkimHeader: str = ""):
        """
        @return: the entry added.
        """
        return self.successResultOf(self.queue.add(message(queueId), list(recipients), dkimHeader))

    def test_provides(self) -> None:
        """
        The backend provides the interface.
        """
        self.assertTrue(verifyObject(IRelayQueue, self.queue))

    def test_addAndGet(self) -> None:
        """
        An added entry keeps its envelope, recipients and DKIM field, and
        can be got back by its queue id; an unknown id gives C{None}.
        """
        entry = self.add("Q1", RecipientState("a@x.test", 0, PENDING), dkimHeader="DKIM-Signature: x")
        self.assertEqual((entry.queueId, entry.dkimHeader), ("Q1", "DKIM-Signature: x"))
        got = self.successResultOf(self.queue.get("Q1"))
        self.assertEqual((got.message.envelope, [r.address for r in got.recipients]),
                         (message("Q1").envelope, ["a@x.test"]))
        self.assertIsNone(self.successResultOf(self.queue.get("nope")))

    def test_body(self) -> None:
        """
        The queued message's body reads back as it was given.
        """
        entry = self.add("Q1", RecipientState("a@x.test", 0, PENDING))
        with entry.message.openBody() as f:
            self.assertEqual(f.read(), BODY)

    def test_addTwiceKeepsFirst(self) -> None:
        """
        Adding a message already queued (routed again after a crash) keeps
        the entry already there.
        """
        first = self.add("Q1", RecipientState("a@x.test", 0, DEFERRED, attempts=3))
        again = self.add("Q1", RecipientState("a@x.test", 0, PENDING))
        self.assertEqual([r.attempts for r in again.recipients], [3])
        self.assertEqual(first.queueId, again.queueId)

    def test_subscribersTold(self) -> None:
        """
        Every subscriber is told of every entry added.
        """
        told: list = []
        self.queue.subscribe(lambda entry: told.append(entry.queueId))
        self.add("Q1", RecipientState("a@x.test", 0, PENDING))
        self.add("Q2", RecipientState("a@x.test", 0, PENDING))
        self.assertEqual(told, ["Q1", "Q2"])

    def test_dueOrder(self) -> None:
        """
        Due entries come never-tried first, then the longest waiting; not
        yet due, busy and over-the-limit ones are left out.
        """
        self.add("OLD", RecipientState("a@x.test", 0, DEFERRED, attempts=2, nextAttempt=10))
        self.add("OLDER", RecipientState("a@x.test", 0, DEFERRED, attempts=1, nextAttempt=5))
        self.add("FRESH", RecipientState("a@x.test", 0, PENDING, nextAttempt=50))
        self.add("LATER", RecipientState("a@x.test", 0, DEFERRED, attempts=1, nextAttempt=500))
        due = self.successResultOf(self.queue.due(100, 10))
        self.assertEqual([e.queueId for e in due], ["FRESH", "OLDER", "OLD"])
        due = self.successResultOf(self.queue.due(100, 2, {"FRESH"}))
        self.assertEqual([e.queueId for e in due], ["OLDER", "OLD"])

    def test_updateKeepsWaiting(self) -> None:
        """
        An update with a recipient still waiting keeps the entry, with the
        new state.
        """
        entry = self.add("Q1", RecipientState("a@x.test", 0, PENDING), RecipientState("b@x.test", 1, PENDING))
        entry.recipients[0].state = SENT
        entry.recipients[1].state, entry.recipients[1].attempts = DEFERRED, 1
        self.successResultOf(self.queue.update(entry))
        got = self.successResultOf(self.queue.get("Q1"))
        self.assertEqual([(r.state, r.attempts) for r in got.recipients], [(SENT, 0), (DEFERRED, 1)])
        self.assertEqual([e.queueId for e in self.successResultOf(self.queue.waiting())], ["Q1"])

    def test_updateRemovesDone(self) -> None:
        """
        An update that leaves nobody waiting removes the entry.
        """
        entry = self.add("Q1", RecipientState("a@x.test", 0, PENDING))
        entry.recipients[0].state = SENT
        self.successResultOf(self.queue.update(entry))
        self.assertIsNone(self.successResultOf(self.queue.get("Q1")))
        self.assertEqual(self.successResultOf(self.queue.waiting()), [])

    def test_remove(self) -> None:
        """
        Removing says whether the entry was there; a removed entry stays
        removed even if an update for it comes late.
        """
        entry = self.add("Q1", RecipientState("a@x.test", 0, PENDING))
        self.assertTrue(self.successResultOf(self.queue.remove("Q1")))
        self.assertFalse(self.successResultOf(self.queue.remove("Q1")))
        entry.recipients[0].attempts = 1
        self.successResultOf(self.queue.update(entry))
        self.assertIsNone(self.successResultOf(self.queue.get("Q1")))

    def test_refresh(self) -> None:
        """
        Refreshing an unchanged queue finds nothing new.
        """
        self.add("Q1", RecipientState("a@x.test", 0, PENDING))
        self.assertEqual(self.successResultOf(self.queue.refresh()), 0)


class MemoryRelayQueueTests(RelayQueueContractMixin, SynchronousTestCase):
    """
    L{MemoryRelayQueue} keeps the contract.
    """

    def makeQueue(self) -> MemoryRelayQueue:
        """
        @return: an empty memory queue.
        """
        return MemoryRelayQueue()


class DeferredQueueTests(RelayQueueContractMixin, SynchronousTestCase):
    """
    L{DeferredQueue} keeps the contract, on disk, running inline.
    """

    def makeQueue(self) -> DeferredQueue:
        """
        @return: an empty queue in a new directory.
        """
        directory = os.path.abspath(self.mktemp())
        queue = DeferredQueue(directory, InlineRunner())
        queue.load()
        return queue

    def test_refreshFindsOthers(self) -> None:
        """
        An entry another process wrote is found by refresh.
        """
        other = DeferredQueue(self.queue._directory, InlineRunner())
        self.successResultOf(other.add(message("Q9"), [RecipientState("a@x.test", 0, PENDING)]))
        self.assertEqual(self.successResultOf(self.queue.refresh()), 1)
        self.assertIsNotNone(self.successResultOf(self.queue.get("Q9")))
