# -*- test-case-name: tests.store.test_diskspace,tests.listener.test_storagefull -*-
"""
Room left for mail: L{DiskSpace} knows how many bytes are free on the file
system that holds C{data_dir} (the journal, the spill files, the queues and
the Maildirs all live there), so that the SMTP session can refuse a message
with C{452 4.3.1} before its body arrives rather than after.

The free space is measured with C{statvfs} in a worker thread (through the
L{qutemail.blocking.BlockingRunner}) by L{DiskSpaceService}, at start and
then every L{DEFAULT_INTERVAL_SECONDS} on the injected clock; a check at
MAIL or DATA only reads the last measurement, so it never blocks the
reactor and costs nothing.

The reserve (L{reserveFor}) is the larger of twice the largest message
allowed and L{MIN_RESERVE_BYTES}: room for the messages already on their
way (a measurement can be a few seconds old), for the copies an accepted
message still needs (the deferred queue, every recipient's Maildir), the
journal and the logs.  The session policy refuses
  - C{MAIL} with C{SIZE=n} when C{free - reserve < n};
  - C{MAIL} without C{SIZE}, and C{DATA}, when C{free < reserve}.

Until the first measurement nothing is refused on these grounds; a failed
measurement is logged and the last one stays.  Either way, a write that
finds the disk full still fails the message with C{452 4.3.1} at the end of
DATA (L{qutemail.replies.replyFor}).
"""

import os
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qutemail.durable import makeDirectories

# The smallest reserve, whatever the size limit.
MIN_RESERVE_BYTES = 100 * 1024 * 1024
# How old a measurement can get.
DEFAULT_INTERVAL_SECONDS = 5.0


def reserveFor(maxMessageBytes: int) -> int:
    """
    The free space kept back: the larger of two messages of the largest
    size allowed and L{MIN_RESERVE_BYTES}.

    @param maxMessageBytes: C{[smtp] max_message_size}.
    @return: the reserve in bytes.
    """
    return max(2 * maxMessageBytes, MIN_RESERVE_BYTES)


def availableBytes(statvfs: Callable[[str], Any], path: str) -> int:
    """
    The bytes an unprivileged process may still write on the file system
    holding C{path}.  Blocking.

    @param statvfs: C{os.statvfs}, or a fake.
    @return: free blocks available to us times the fragment size.
    """
    result = statvfs(path)
    return result.f_bavail * result.f_frsize


@attrs.define(eq=False)
class DiskSpace:
    """
    The last measurement of the free space under C{data_dir}, and the
    verdicts drawn from it.

    @ivar path: C{data_dir}.
    @ivar runner: runs C{statvfs} off the reactor thread.
    @ivar reserveBytes: the free space kept back (see L{reserveFor}).
    @ivar statvfs: C{os.statvfs}; tests pass a fake.
    @ivar freeBytes: the last measurement, C{None} before the first.
    """

    _log = Logger()

    path: str
    runner: Any
    reserveBytes: int
    statvfs: Callable[[str], Any] = os.statvfs
    freeBytes: int | None = attrs.field(default=None, init=False)

    def hasRoomFor(self, sizeBytes: int | None) -> bool:
        """
        Whether a message may be accepted: its declared size fits in the
        free space above the reserve.  Reads the last measurement only.

        @param sizeBytes: the declared size (C{SIZE=}), or C{None} when
            there is none (then the free space must not be under the
            reserve).
        @return: C{True} when it may, or when the free space is not known.
        """
        if self.freeBytes is None:
            return True
        return self.freeBytes - self.reserveBytes >= (sizeBytes or 0)

    def refresh(self) -> Deferred:
        """
        Measure the free space again, in a worker thread.

        @return: a Deferred firing with C{None} once the measurement is
            kept; it never fails (a failure is logged and the last
            measurement stays).
        """
        d = self.runner.run(availableBytes, self.statvfs, self.path)
        d.addCallbacks(self._measured, self._failed)
        return d

    def _measured(self, freeBytes: int) -> None:
        """
        Keep a measurement, logging when the free space crosses the
        reserve.
        """
        wasLow = self.freeBytes is not None and self.freeBytes < self.reserveBytes
        self.freeBytes = freeBytes
        isLow = freeBytes < self.reserveBytes
        if isLow and not wasLow:
            self._log.warn(
                "only {freeBytes} bytes free under {path}, less than the reserve of {reserveBytes}: "
                "new mail is refused with 452 4.3.1", freeBytes=freeBytes, path=self.path,
                reserveBytes=self.reserveBytes)
        elif wasLow and not isLow:
            self._log.info("{freeBytes} bytes free under {path} again: mail is accepted",
                           freeBytes=freeBytes, path=self.path)

    def _failed(self, failure: Any) -> None:
        """
        Log a failed measurement; the last one stays.
        """
        self._log.failure("cannot measure the free space under {path}", failure, path=self.path)


class DiskSpaceService(Service):
    """
    Measures the free space at start and then every C{intervalSeconds} on
    the injected clock.  Measurements never overlap, and a failed one does
    not stop the loop.
    """

    _log = Logger()
    name = "disk-space"

    def __init__(self, space: DiskSpace, clock: Any, intervalSeconds: float = DEFAULT_INTERVAL_SECONDS) -> None:
        """
        @param space: the L{DiskSpace} to keep up to date.
        @param clock: an C{IReactorTime} driving the loop.
        @param intervalSeconds: the time between two measurements.
        """
        self.space = space
        self.clock = clock
        self.intervalSeconds = intervalSeconds
        self._loop: LoopingCall | None = None
        self._pending: Deferred | None = None

    def startService(self) -> None:
        """
        Start the loop; the first measurement is asked for now.
        """
        Service.startService(self)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.intervalSeconds, now=True).addErrback(
            lambda failure: self._log.failure("the disk space loop stopped", failure))

    def _tick(self) -> Deferred:
        """
        One measurement (L{DiskSpace.refresh} never fails, so the loop
        goes on).
        """
        d = self._pending = self.space.refresh()

        def done(result: Any) -> Any:
            self._pending = None
            return result

        return d.addBoth(done)

    def stopService(self) -> Deferred | None:
        """
        Stop the loop; wait for a measurement still running, so that the
        thread pool (stopped after this) is not stopped under it.
        """
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._pending is None:
            return None
        waiting: Deferred = Deferred()
        self._pending.addBoth(lambda result: waiting.callback(None) or result)
        return waiting


def watchDiskSpace(dataDir: str, runner: Any, clock: Any, maxMessageBytes: int, parent: Any) -> DiskSpace:
    """
    Set up the free-space measurement of C{data_dir}: a L{DiskSpace} with
    the reserve of L{reserveFor}, kept up to date by a
    L{DiskSpaceService} added to C{parent}.  C{data_dir} must exist to be
    measured: a missing one is made here, mode 0700 (blocking: call it
    while the server is assembled, before the reactor runs).

    @param runner: the L{qutemail.blocking.BlockingRunner} (started before
        C{parent}'s later children).
    @param clock: an C{IReactorTime}.
    @param maxMessageBytes: C{[smtp] max_message_size}.
    @param parent: the C{MultiService} that starts and stops the loop.
    @return: the L{DiskSpace} the session policies ask.
    """
    makeDirectories(dataDir)
    space = DiskSpace(dataDir, runner, reserveFor(maxMessageBytes))
    DiskSpaceService(space, clock).setServiceParent(parent)
    return space
