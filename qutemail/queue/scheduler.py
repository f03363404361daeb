# -*- test-case-name: tests.queue.test_scheduler -*-
"""
The retry scheduler: one C{LoopingCall} on the injected clock over the
deferred queue.

Each tick takes a bounded batch of due entries and retries their deferred
recipients.  A recipient that fails again waits for the next interval of the
retry schedule (the last interval repeats); one still failing when the queue
lifetime has passed is bounced.  A tick never lets an exception escape, since
a C{LoopingCall} stops for good at its first unhandled error.
"""

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.pipeline.dsn import FailedRecipient
from qutemail.queue.deferred import BOUNCED, DEFERRED, DELIVERED, RecipientState, retryDelay
from qutemail.pipeline.router import replyFor

DEFAULT_BATCH = 100


class RetryScheduler(Service):
    """
    Retries deferred local deliveries on the configured schedule.
    """

    _log = Logger()
    name = "retry-scheduler"

    def __init__(self, router: Any, clock: Any, retrySchedule: tuple[float, ...],
                 queueLifetimeSeconds: float, batch: int = DEFAULT_BATCH) -> None:
        """
        @param router: the L{qutemail.pipeline.router.Router}.
        @param clock: an C{IReactorTime}.
        @param retrySchedule: the intervals between attempts, seconds.
        @param queueLifetimeSeconds: how long a message may stay queued.
        @param batch: the most entries retried in one tick.
        """
        self.router = router
        self.clock = clock
        self.retrySchedule = retrySchedule
        self.queueLifetime = queueLifetimeSeconds
        self.batch = batch
        # Tick often enough to honour the shortest interval closely.
        self.intervalSeconds = max(1.0, min(30.0, min(retrySchedule) / 10))
        self._loop = LoopingCall(self._safeTick)
        self._loop.clock = clock
        self._current = None

    def startService(self) -> None:
        """
        Start ticking (the first tick runs at once).
        """
        Service.startService(self)
        self._loop.start(self.intervalSeconds, now=True)

    def stopService(self):
        """
        Stop ticking and wait for a tick in progress.
        """
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        current, self._current = self._current, None
        return current

    def _safeTick(self):
        """
        Run one tick, logging any failure instead of stopping the loop.
        """
        if self._current is not None:
            return None
        d = ensureDeferred(self.tick())
        self._current = d

        def done(result):
            self._current = None
            return None

        d.addErrback(lambda f: self._log.failure("retry tick failed", f))
        d.addBoth(done)
        return None

    def flush(self) -> None:
        """
        Make every deferred recipient due now (C{queue flush}).
        """
        for entry in self.router.queue.entries.values():
            for r in entry.recipients:
                if r.state == DEFERRED:
                    r.nextAttempt = 0.0
        self._safeTick()

    async def tick(self) -> int:
        """
        Retry one batch of due entries.

        @return: the number of entries looked at.
        """
        now = self.clock.seconds()
        # Extra SMTP workers add entries to the same directory.
        await self.router.queue.refresh()
        entries = self.router.queue.due(now, self.batch)
        results = await DeferredList(
            [ensureDeferred(self._retryEntry(entry, now)) for entry in entries], consumeErrors=True
        )
        for ok, result in results:
            if not ok:
                self._log.failure("retrying a queue entry failed", result)
        return len(entries)

    async def _retryEntry(self, entry, now: float) -> None:
        """
        Retry the due recipients of one entry, then save its state.
        """
        message = entry.message
        expired = now >= message.envelope.receivedAt + self.queueLifetime
        bounced: list[tuple[RecipientState, FailedRecipient]] = []
        for r in entry.recipients:
            if r.state != DEFERRED or r.nextAttempt > now:
                continue
            try:
                reply = await self.router.attempt(message, r.address, r.index, True)
            except Exception:
                failure = Failure()
                self._log.failure("retry of {queueId} to {recipient} failed", failure,
                                  queueId=entry.queueId, recipient=r.address)
                reply = replyFor(failure)
            r.attempts += 1
            if reply is None:
                r.state = DELIVERED
                r.lastReply = "delivered"
                self._log.info("delivered {queueId} to {recipient} after {attempts} attempts",
                               queueId=entry.queueId, recipient=r.address, attempts=r.attempts)
                continue
            r.lastReply = str(reply)
            if reply.isTemporary and not expired:
                r.nextAttempt = now + retryDelay(self.retrySchedule, r.attempts)
                self._log.info("deferred {queueId} for {recipient}: {reply}",
                               queueId=entry.queueId, recipient=r.address, reply=r.lastReply)
                continue
            bounced.append((r, FailedRecipient(r.address, reply.enhanced, str(reply))))
        if bounced:
            try:
                await self.router.bounce(message, [failed for _, failed in bounced])
            except Exception:
                # The bounce is not safely queued: keep the recipients
                # deferred so a later tick sends it.
                self._log.failure("could not queue the bounce for {queueId}; retrying later",
                                  Failure(), queueId=entry.queueId)
                for r, _ in bounced:
                    r.nextAttempt = now + retryDelay(self.retrySchedule, r.attempts)
            else:
                for r, failed in bounced:
                    r.state = BOUNCED
                    self._log.info("bounced {queueId} for {recipient} after {attempts} attempts: {reply}",
                                   queueId=entry.queueId, recipient=r.address, attempts=r.attempts,
                                   reply=failed.diagnostic)
        await self.router.queue.update(entry)
