"""
Tests of L{qutemail.store.diskspace}: the free-space measurement, its
verdicts, and the loop that keeps it up to date through the runner.
"""

import os
import types

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.store.diskspace import (
    DEFAULT_INTERVAL_SECONDS,
    MIN_RESERVE_BYTES,
    DiskSpace,
    DiskSpaceService,
    availableBytes,
    reserveFor,
)
from tests.support import QueuedRunner

MIB = 1024 * 1024
RESERVE = 100 * MIB
# The fake file system's fragment size.
FRAGMENT_BYTES = 4096


class FakeStatvfs:
    """
    A stand-in for C{os.statvfs} reporting C{freeBytes} available.

    @ivar freeBytes: what it reports (rounded down to whole fragments).
    @ivar calls: the paths it was asked about.
    @ivar error: raised instead, when set.
    """

    def __init__(self, freeBytes: int) -> None:
        """
        @param freeBytes: the free space to report.
        """
        self.freeBytes = freeBytes
        self.calls: list[str] = []
        self.error: OSError | None = None

    def __call__(self, path: str) -> types.SimpleNamespace:
        """
        Answer as C{os.statvfs} does, in the fields L{availableBytes} reads.
        """
        self.calls.append(path)
        if self.error is not None:
            raise self.error
        return types.SimpleNamespace(f_bavail=self.freeBytes // FRAGMENT_BYTES, f_frsize=FRAGMENT_BYTES,
                                     f_bfree=self.freeBytes // FRAGMENT_BYTES + 1000)


def measured(freeBytes: int, reserveBytes: int = RESERVE) -> DiskSpace:
    """
    @return: a L{DiskSpace} that has measured C{freeBytes} once, through
        an inline runner.
    """
    space = DiskSpace("/var/qutemail", InlineRunner(), reserveBytes, FakeStatvfs(freeBytes))
    space.refresh()
    return space


class ReserveTests(SynchronousTestCase):
    """
    L{reserveFor} and L{availableBytes}.
    """

    def test_reserve(self):
        """
        The reserve is the larger of twice the size limit and 100 MiB.
        """
        self.assertEqual(MIN_RESERVE_BYTES, 100 * MIB)
        self.assertEqual(reserveFor(25 * MIB), 100 * MIB)
        self.assertEqual(reserveFor(50 * MIB), 100 * MIB)
        self.assertEqual(reserveFor(80 * MIB), 160 * MIB)

    def test_availableBytes(self):
        """
        The space available to an unprivileged process (C{f_bavail}, not
        C{f_bfree}) times the fragment size.
        """
        self.assertEqual(availableBytes(FakeStatvfs(10 * FRAGMENT_BYTES), "/x"), 10 * FRAGMENT_BYTES)

    def test_realStatvfsByDefault(self):
        """
        Unless a test says otherwise, the measurement is C{os.statvfs}.
        """
        self.assertIs(DiskSpace("/var/qutemail", InlineRunner(), RESERVE).statvfs, os.statvfs)


class DiskSpaceTests(SynchronousTestCase):
    """
    L{DiskSpace}: measurements through the runner, and the verdicts.
    """

    def test_unknownRefusesNothing(self):
        """
        Before the first measurement nothing is refused.
        """
        space = DiskSpace("/var/qutemail", InlineRunner(), RESERVE, FakeStatvfs(0))
        self.assertIsNone(space.freeBytes)
        self.assertTrue(space.hasRoomFor(10 ** 15))
        self.assertTrue(space.hasRoomFor(None))

    def test_declaredSize(self):
        """
        A declared size fits when it is no more than the free space above
        the reserve.
        """
        space = measured(RESERVE + 10 * MIB)
        self.assertTrue(space.hasRoomFor(10 * MIB))
        self.assertFalse(space.hasRoomFor(10 * MIB + 1))
        self.assertTrue(space.hasRoomFor(0))

    def test_noDeclaredSize(self):
        """
        Without a declared size, there is room while the free space is not
        under the reserve.
        """
        self.assertTrue(measured(RESERVE).hasRoomFor(None))
        self.assertFalse(measured(RESERVE - FRAGMENT_BYTES).hasRoomFor(None))
        self.assertFalse(measured(RESERVE - FRAGMENT_BYTES).hasRoomFor(0))

    def test_measuredInTheRunner(self):
        """
        L{DiskSpace.refresh} hands C{statvfs} of the data directory to the
        runner; it is not called before the runner runs it, and the
        verdicts change only then.
        """
        statvfs = FakeStatvfs(RESERVE - MIB)
        runner = QueuedRunner()
        space = DiskSpace("/var/qutemail", runner, RESERVE, statvfs)
        d = space.refresh()
        self.assertEqual(statvfs.calls, [])
        self.assertEqual(len(runner.calls), 1)
        self.assertIsNone(space.freeBytes)
        self.assertTrue(space.hasRoomFor(None))
        runner.runNext()
        self.assertEqual(statvfs.calls, ["/var/qutemail"])
        self.assertEqual(runner.ran, [availableBytes])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(space.freeBytes, RESERVE - MIB)
        self.assertFalse(space.hasRoomFor(None))

    def test_failedMeasurement(self):
        """
        A failing C{statvfs} is logged; the last measurement stays and the
        refresh itself does not fail.
        """
        statvfs = FakeStatvfs(RESERVE + MIB)
        space = DiskSpace("/var/qutemail", InlineRunner(), RESERVE, statvfs)
        space.refresh()
        statvfs.error = OSError(5, "Input/output error")
        self.assertIsNone(self.successResultOf(space.refresh()))
        self.assertEqual(space.freeBytes, RESERVE + MIB)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_logsCrossings(self):
        """
        Going under the reserve is logged once as a warning, and coming
        back above it once more.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        statvfs = FakeStatvfs(RESERVE + MIB)
        space = DiskSpace("/var/qutemail", InlineRunner(), RESERVE, statvfs)
        space.refresh()
        statvfs.freeBytes = RESERVE - MIB
        space.refresh()
        space.refresh()
        statvfs.freeBytes = RESERVE + MIB
        space.refresh()
        levels = [e["log_level"] for e in events if e.get("log_namespace", "").endswith("DiskSpace")]
        self.assertEqual(levels, [LogLevel.warn, LogLevel.info])


class DiskSpaceServiceTests(SynchronousTestCase):
    """
    L{DiskSpaceService}: a measurement at start and every few seconds, on
    the clock, always through the runner.
    """

    def setUp(self):
        """
        A service over a fake C{statvfs}, a queued runner and a clock.
        """
        self.statvfs = FakeStatvfs(RESERVE + MIB)
        self.runner = QueuedRunner()
        self.clock = Clock()
        self.space = DiskSpace("/var/qutemail", self.runner, RESERVE, self.statvfs)
        self.service = DiskSpaceService(self.space, self.clock)

    def test_loopUsesTheRunner(self):
        """
        Starting asks the runner for a measurement at once, and again every
        interval; C{statvfs} is only ever called by the runner, never by the
        loop on the reactor thread.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual((len(self.runner.calls), self.statvfs.calls), (1, []))
        self.runner.runNext()
        self.assertEqual(self.space.freeBytes, RESERVE + MIB)
        self.statvfs.freeBytes = RESERVE - MIB
        self.clock.advance(DEFAULT_INTERVAL_SECONDS)
        self.assertEqual((len(self.runner.calls), len(self.statvfs.calls)), (1, 1))
        self.assertEqual(self.space.freeBytes, RESERVE + MIB)
        self.runner.runNext()
        self.assertEqual(self.space.freeBytes, RESERVE - MIB)
        self.assertEqual(self.runner.ran, [availableBytes, availableBytes])

    def test_noOverlap(self):
        """
        While a measurement is running, the next one waits for it.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.clock.advance(DEFAULT_INTERVAL_SECONDS * 3)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.clock.advance(DEFAULT_INTERVAL_SECONDS)
        self.assertEqual(len(self.runner.calls), 1)

    def test_failureKeepsTheLoop(self):
        """
        A failing measurement is logged and the next one still comes.
        """
        self.statvfs.error = OSError(5, "Input/output error")
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.runner.runNext()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.statvfs.error = None
        self.clock.advance(DEFAULT_INTERVAL_SECONDS)
        self.runner.runNext()
        self.assertEqual(self.space.freeBytes, RESERVE + MIB)

    def test_stopWaitsForAMeasurement(self):
        """
        Stopping waits for a measurement still running (the thread pool is
        stopped after this service), and no other is asked for after.
        """
        self.service.startService()
        d = self.service.stopService()
        self.assertNoResult(d)
        self.runner.runNext()
        self.successResultOf(d)
        self.clock.advance(DEFAULT_INTERVAL_SECONDS * 2)
        self.assertEqual(self.runner.calls, [])
