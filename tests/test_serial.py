"""
Tests for L{qutemail.serial}: jobs one at a time and waiters woken from a
loop, without recursion however many there are.
"""

import sys

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from qutemail.serial import SerialQueue, Waiters

# Far more than Python's recursion limit allows frames for.
MANY = 5 * sys.getrecursionlimit()


class SerialQueueTests(SynchronousTestCase):
    """
    L{SerialQueue} runs jobs in order, one at a time.
    """

    def test_order(self) -> None:
        """
        A job waits for the one before it; results go to each caller.
        """
        queue = SerialQueue()
        gates = [Deferred(), Deferred()]
        started = []

        def job(i):
            started.append(i)
            return gates[i]

        first = queue.run(lambda: job(0))
        second = queue.run(lambda: job(1))
        self.assertEqual(started, [0])
        self.assertTrue(queue.busy)
        gates[0].callback("a")
        self.assertEqual(self.successResultOf(first), "a")
        self.assertEqual(started, [0, 1])
        gates[1].callback("b")
        self.assertEqual(self.successResultOf(second), "b")
        self.assertFalse(queue.busy)

    def test_notBusyWhenReporting(self) -> None:
        """
        The last job's caller, as it gets its result, sees the queue idle
        (so it may forget the queue); an earlier one's does not.
        """
        queue = SerialQueue()
        gate: Deferred = Deferred()
        seen = []
        queue.run(lambda: gate).addCallback(lambda _: seen.append(queue.busy))
        queue.run(lambda: None).addCallback(lambda _: seen.append(queue.busy))
        gate.callback(None)
        self.assertEqual(seen, [True, False])

    def test_failureGoesToItsCaller(self) -> None:
        """
        A job that fails fails its own caller only; the next job runs.
        """
        queue = SerialQueue()
        bad = queue.run(lambda: fail(ValueError("no")))
        good = queue.run(lambda: 7)
        raising = queue.run(lambda: 1 / 0)
        self.failureResultOf(bad, ValueError)
        self.assertEqual(self.successResultOf(good), 7)
        self.failureResultOf(raising, ZeroDivisionError)

    def test_manyWaitersNoRecursion(self) -> None:
        """
        Thousands of jobs queued behind a slow one, each finishing at once
        when its turn comes, all run when the first finishes: the stack
        does not grow with their number.
        """
        queue = SerialQueue()
        gate: Deferred = Deferred()
        queue.run(lambda: gate)
        results = [queue.run(lambda i=i: succeed(i)) for i in range(MANY)]
        gate.callback(None)
        self.assertEqual([self.successResultOf(d) for d in results], list(range(MANY)))

    def test_jobsAddedByResults(self) -> None:
        """
        A job submitted from another job's result runs after those already
        waiting.
        """
        queue = SerialQueue()
        gate: Deferred = Deferred()
        order = []
        first = queue.run(lambda: gate.addCallback(lambda _: order.append(1)))
        first.addCallback(lambda _: queue.run(lambda: order.append(3)))
        queue.run(lambda: order.append(2))
        gate.callback(None)
        self.assertEqual(order, [1, 2, 3])


class WaitersTests(SynchronousTestCase):
    """
    L{Waiters} wakes everyone from one loop.
    """

    def test_fireAll(self) -> None:
        """
        Every waiter gets the result; later waiters wait for the next one.
        """
        waiters = Waiters()
        ds = [waiters.wait() for _ in range(MANY)]
        self.assertEqual(len(waiters), MANY)
        waiters.fire("x")
        self.assertEqual({self.successResultOf(d) for d in ds}, {"x"})
        later = waiters.wait()
        self.assertNoResult(later)
        waiters.fire("y")
        self.assertEqual(self.successResultOf(later), "y")

    def test_waitFromCallback(self) -> None:
        """
        A waiter that waits again from its callback waits for the next
        event, not this one.
        """
        waiters = Waiters()
        again = []
        waiters.wait().addCallback(lambda _: again.append(waiters.wait()))
        waiters.fire(1)
        self.assertNoResult(again[0])
        waiters.fire(2)
        self.assertEqual(self.successResultOf(again[0]), 2)
