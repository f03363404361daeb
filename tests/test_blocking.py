"""
Tests of the runners.
"""

import threading

from twisted.internet import reactor
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
