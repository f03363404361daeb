"""
Tests of the runners.
"""

import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner, InlineRunner


class BlockingRunnerTests(TestCase):
    """
    The thread-pool runner, with the real reactor.
    """

    async def test_runsInAnotherThread(self):
        """
        The callable runs off the reactor thread and its result arrives on it.
        """
        runner = BlockingRunner(reactor)
        runner.startService()
        self.addCleanup(runner.stopService)
        ident = await runner.run(threading.get_ident)
        self.assertNotEqual(ident, threading.get_ident())

    async def test_errorsArrive(self):
        """
        What the callable raises fails the Deferred.
        """
        runner = BlockingRunner(reactor)
        runner.startService()
        self.addCleanup(runner.stopService)
        with self.assertRaises(ZeroDivisionError):
            await runner.run(lambda: 1 / 0)

    async def test_threadSurvivesError(self):
        """
        A call that raises does not cost the pool its thread: with a single
        thread, calls after several failures still run.
        """
        runner = BlockingRunner(reactor, minThreads=1, maxThreads=1)
        runner.startService()
        self.addCleanup(runner.stopService)
        for _ in range(3):
            with self.assertRaises(ZeroDivisionError):
                await runner.run(lambda: 1 / 0)
        self.assertEqual(await runner.run(lambda: 6 * 7), 42)

    async def test_moreCallsThanThreads(self):
        """
        Calls beyond the thread limit wait their turn and all complete, on
        no more threads than the limit.
        """
        runner = BlockingRunner(reactor, minThreads=1, maxThreads=3)
        runner.startService()
        self.addCleanup(runner.stopService)
        gate = threading.Event()
        seen = set()

        def work(n):
            seen.add(threading.get_ident())
            gate.wait(10)
            return n

        ds = [runner.run(work, n) for n in range(20)]
        reactor.callLater(0.05, gate.set)
        results = await gatherResults(ds)
        self.assertEqual(results, list(range(20)))
        self.assertLessEqual(len(seen), 3)
        self.assertGreater(len(seen), 1)

    def test_stopFinishesQueued(self):
        """
        Stopping lets every call already queued run, then ends the threads.
        """
        runner = BlockingRunner(reactor, minThreads=1, maxThreads=1)
        runner.startService()
        done = []
        gate = threading.Event()
        runner.run(gate.wait, 10)
        for n in range(5):
            runner.run(done.append, n)
        before = threading.active_count()
        gate.set()
        runner.stopService()
        self.assertEqual(done, list(range(5)))
        self.assertEqual(threading.active_count(), before - 1)
        self.failureResultOf(runner.run(int), RuntimeError)

    def test_notRunning(self):
        """
        A runner that is not started fails at once rather than hanging.
        """
        self.failureResultOf(BlockingRunner(reactor).run(int), RuntimeError)


class InlineRunnerTests(SynchronousTestCase):
    """
    The inline runner used by unit tests and the command line.
    """

    def test_inline(self):
        """
        It runs the callable at once, on this thread, and fires with its
        result or failure.
        """
        self.assertEqual(self.successResultOf(InlineRunner().run(threading.get_ident)), threading.get_ident())
        self.failureResultOf(InlineRunner().run(lambda: 1 / 0), ZeroDivisionError)
