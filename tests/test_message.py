"""
Tests for L{qutemail.message}: the message types at the bottom of the house.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.message import (
    DEFERRED,
    PENDING,
    SENT,
    Envelope,
    QueueEntry,
    QueueIds,
    RecipientState,
    SpooledMessage,
    retryDelay,
)
from tests.support import RETRY


class EnvelopeTests(SynchronousTestCase):
    """
    L{Envelope} survives its JSON form.
    """

    def test_roundTrip(self):
        """
        toJSON then fromJSON gives the same envelope, recipients a tuple.
        """
        envelope = Envelope("bob@example.test", ("a@x.test", "b@y.test"), "helo.test", "192.0.2.1", 12.5,
                            "bob@example.test", "X-Added: 1\n", "Junk")
        self.assertEqual(Envelope.fromJSON(envelope.toJSON()), envelope)


class QueueIdsTests(SynchronousTestCase):
    """
    L{QueueIds} are unique and ordered by time.
    """

    def test_uniqueAndOrdered(self):
        """
        Ids made at one instant differ; a later instant sorts after.
        """
        clock = Clock()
        clock.advance(1_700_000_000)
        ids = QueueIds(clock)
        first = [ids.next() for _ in range(1000)]
        self.assertEqual(len(set(first)), 1000)
        clock.advance(1)
        self.assertGreater(ids.next(), max(first))


class QueueEntryTests(SynchronousTestCase):
    """
    L{QueueEntry} tells which recipients wait and which are due.
    """

    def test_dueAndPending(self):
        """
        Sent recipients are neither pending nor due; waiting ones are due
        once their time comes.
        """
        message = SpooledMessage("Q1", Envelope("", ("a@x.test",)), 1, inline=b"x")
        recipients = [RecipientState("a@x.test", 0, PENDING, nextAttempt=0),
                      RecipientState("b@x.test", 1, DEFERRED, nextAttempt=100),
                      RecipientState("c@x.test", 2, SENT)]
        entry = QueueEntry(message, recipients)
        self.assertEqual([r.index for r in entry.pending()], [0, 1])
        self.assertEqual([r.index for r in entry.due(50)], [0])
        self.assertEqual([r.index for r in entry.due(100)], [0, 1])
        self.assertEqual(entry.queueId, "Q1")


class RetryDelayTests(SynchronousTestCase):
    """
    L{retryDelay} walks the schedule and repeats its last interval.
    """

    def test_schedule(self):
        """
        Attempts 1, 2, 3 wait 300, 600 and 1200 s; later ones repeat 1200.
        """
        self.assertEqual([retryDelay(RETRY, n) for n in (1, 2, 3, 4, 10)], [300.0, 600.0, 1200.0, 1200.0, 1200.0])

    def test_zeroAttempts(self):
        """
        Fewer than one attempt counts as one.
        """
        self.assertEqual(retryDelay(RETRY, 0), 300.0)
