"""
Tests for L{qutemail.stopsignals}.
"""

import os
import signal
import threading

from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher, textFileLogObserver
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from qutemail.stopsignals import installStopHandlers, stopFromSignal, stopHandler


class FakeReactor:
    """
    What the handlers use of a reactor: C{callFromThread} is recorded,
    C{stop} counted (and refused once stopped, as a real reactor's is).
    """

    def __init__(self) -> None:
        self.calls: list = []
        self.stops = 0
        self._exitSignal = None

    def callFromThread(self, f, *args) -> None:
        self.calls.append((f, args))

    def stop(self) -> None:
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("already stopping")

    def sigInt(self, number, frame) -> None:
        """
        Stands for the reactor's own SIGINT handler.
        """

    def runCalls(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class StopHandlerTests(SynchronousTestCase):
    """
    The handler hands the stop to the reactor's loop and logs nothing
    itself.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_onlyHandsOver(self) -> None:
        """
        In the handler: the exit signal is recorded, the stop is handed to
        the loop, nothing is logged; in the loop the signal is logged and
        the reactor stopped.
        """
        stopHandler(self.reactor)(signal.SIGTERM, None)
        self.assertEqual((self.reactor._exitSignal, self.reactor.stops, len(self.events)), (signal.SIGTERM, 0, 0))
        self.assertEqual(self.reactor.calls, [(stopFromSignal, (self.reactor, signal.SIGTERM))])
        self.reactor.runCalls()
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual([(e["log_format"], e["signal"]) for e in self.events],
                         [("Received {signal}, shutting down.", "SIGTERM")])

    def test_secondSignal(self) -> None:
        """
        A second signal while the reactor stops changes nothing (and raises
        nothing).
        """
        handler = stopHandler(self.reactor)
        handler(signal.SIGTERM, None)
        handler(signal.SIGINT, None)
        self.reactor.runCalls()
        self.assertEqual(self.reactor.stops, 2)
        self.assertEqual(self.reactor._exitSignal, signal.SIGINT)

    def test_logFileCaughtMidLock(self) -> None:
        """
        The handler returns while the log file's lock is caught as a signal
        can catch it in the reactor thread (its inner lock taken, its owner
        not yet recorded), where a handler that logs waits forever (Twisted
        issue #7736).
        """
        directory = self.mktemp()
        os.makedirs(directory)
        logFile = LogFile("twistd.log", directory)
        self.addCleanup(logFile.close)
        observer = textFileLogObserver(logFile)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        logFile.write("first line, which makes the lock\n")
        caught = logFile._threadable_lock._block
        caught.acquire()
        self.addCleanup(caught.release)
        returned = threading.Event()

        def signalled() -> None:
            stopHandler(self.reactor)(signal.SIGTERM, None)
            returned.set()

        thread = threading.Thread(target=signalled, daemon=True)
        thread.start()
        self.assertTrue(returned.wait(5), "the signal handler waited for the log file")
        self.assertEqual(len(self.reactor.calls), 1)


class InstallTests(SynchronousTestCase):
    """
    L{installStopHandlers} replaces the reactor's handlers.
    """

    def setUp(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        self.reactor = FakeReactor()

    def test_replacesTheReactors(self) -> None:
        """
        SIGTERM and the reactor's own SIGINT handler are replaced by ones
        that hand the stop over.
        """
        signal.signal(signal.SIGINT, self.reactor.sigInt)
        installStopHandlers(self.reactor)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        self.assertEqual(self.reactor.calls, [(stopFromSignal, (self.reactor, signal.SIGTERM)),
                                              (stopFromSignal, (self.reactor, signal.SIGINT))])

    def test_otherSIGINTKept(self) -> None:
        """
        A SIGINT handler that is not the reactor's (a debugger's) stays.
        """
        def other(number, frame) -> None:
            """
            Someone else's handler.
            """
        signal.signal(signal.SIGINT, other)
        installStopHandlers(self.reactor)
        self.assertIs(signal.getsignal(signal.SIGINT), other)
