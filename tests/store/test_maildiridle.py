"""
Tests for the idle gap of L{qutemail.store.maildir.MaildirStore}'s batch
window: a batch starts once deliveries stop coming, never later than the
batch delay.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.maildir import MaildirStore
from tests.store.test_maildir import ALICE, BOB, HOSTNAME, MaildirTestsMixin, message, queueIdOf
from tests.support import QueuedRunner

DELAY = 0.05
IDLE = 0.005


class BatchIdleTests(MaildirTestsMixin, SynchronousTestCase):
    """
    With an idle gap, the batch window closes early when nothing more comes.
    """

    def windowed(self):
        self.clock, self.runner = Clock(), QueuedRunner()
        return MaildirStore(self.dataDir, self.runner, HOSTNAME, self.defaultQuota, self.clock,
                            batchDelaySeconds=DELAY, batchIdleSeconds=IDLE)

    def batches(self) -> list[list[str]]:
        """
        @return: the queue ids of each batch handed to the runner so far.
        """
        return [[queueIdOf(job) for job in call[1][0]] for call in self.runner.calls]

    def test_loneDeliveryAfterTheGap(self):
        """
        A lone delivery is written once the idle gap has passed, not after
        the whole delay, and lands in the mailbox.
        """
        store = self.windowed()
        d = store.deliver(message(queueId="L0"), ALICE)
        self.clock.advance(IDLE - 0.0005)
        self.assertEqual(self.batches(), [])
        self.clock.advance(0.001)
        self.assertEqual(self.batches(), [["L0"]])
        self.runner.runNext()
        self.assertEqual(self.folder(ALICE, "new"), [self.successResultOf(d)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_eachArrivalExtendsTheGap(self):
        """
        Deliveries closer together than the gap share one batch, written a
        gap after the last of them.
        """
        store = self.windowed()
        for i in range(4):
            store.deliver(message(queueId=f"E{i}"), BOB if i % 2 else ALICE, i)
            self.clock.advance(IDLE * 0.8)
        self.clock.advance(IDLE * 0.2 - 0.0005)
        self.assertEqual(self.batches(), [])
        self.clock.advance(0.001)
        self.assertEqual(self.batches(), [[f"E{i}" for i in range(4)]])

    def test_neverPastTheDelay(self):
        """
        Under steady load (a delivery every 4 ms) a batch is written when
        the delay after its first delivery is over; the next one starts a
        new window.
        """
        store = self.windowed()
        step = 0.004
        for i in range(20):
            store.deliver(message(queueId=f"S{i}"), ALICE, i)
            self.clock.advance(step)
        batches = self.batches()
        self.assertEqual(len(batches[0]), int(DELAY / step) + 1)
        self.assertEqual([q for batch in batches for q in batch], [f"S{i}" for i in range(len(sum(batches, [])))])
        self.runner.runAll()
        self.clock.advance(DELAY)
        self.runner.runAll()
        self.assertEqual(len(self.folder(ALICE, "new")), 20)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_withoutGapWholeDelay(self):
        """
        Without an idle gap (the default), a lone delivery waits the whole
        delay, as before.
        """
        clock, runner = Clock(), QueuedRunner()
        store = MaildirStore(self.dataDir, runner, HOSTNAME, self.defaultQuota, clock, batchDelaySeconds=DELAY)
        store.deliver(message(queueId="W0"), ALICE)
        clock.advance(DELAY - 0.001)
        self.assertEqual(runner.calls, [])
        clock.advance(0.001)
        self.assertEqual(len(runner.calls), 1)
