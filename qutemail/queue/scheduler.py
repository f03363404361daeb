# -*- test-case-name: tests.queue.test_scheduler -*-
"""
The retry scheduler: one C{LoopingCall} on the injected clock over the
deferred queue, for deferred local deliveries and for relay alike.

Each tick takes a bounded batch of due entries, never-tried ones first, and
starts an attempt for each that is not already in progress; a slow remote
holds up only its own entry.  Local recipients are tried one by one; remote
ones are grouped by domain, one relay session per domain.  Every outcome is
written to the entry before anything else happens, so a crash never sends
twice to a recipient already done.  A recipient that fails for now waits for
the next interval of the retry schedule (the last interval repeats); a
permanent failure, or a temporary one once the queue lifetime has passed,
is bounced.  A tick never lets an exception escape, since a C{LoopingCall}
stops for good at its first unhandled error.
"""

from collections import defaultdict
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.message import FailedRecipient
from qutemail.replies import logDeliveryFailure, replyFor
from qutemail.message import BOUNCED, DEFERRED, PENDING, SENT, QueueEntry, RecipientState, retryDelay
from qutemail.serial import SerialQueue
from qutemail.replies import DELETED_BY_ADMIN, LOCAL_ERROR, QUEUE_EXPIRED, Reply, ReplyError, enhancedOf

DEFAULT_BATCH = 100
# The longest wait between ticks: how late a fresh entry written by an
# extra SMTP worker (which has no scheduler) may be picked up.
MAX_TICK_SECONDS = 5.0


class RetryScheduler(Service):
    """
    Delivers what waits in the deferred queue, on the configured schedule.
    """

    _log = Logger()
    name = "retry-scheduler"

    def __init__(self, *, queue: Any, local: Any, bounce: Any, clock: Any, retrySchedule: tuple[float, ...],
                 queueLifetimeSeconds: float, batch: int = DEFAULT_BATCH, relay: Any = None,
                 delayWarningSeconds: float = 0.0, transit: Any = None, metrics: Any = None) -> None:
        """
        @param queue: the L{qutemail.interfaces.IRelayQueue} it works on; it
            is told of each entry added, and starts it at once.
        @param local: delivers to local recipients
            (L{qutemail.store.delivery.LocalDelivery}).
        @param bounce: C{bounce(message, failedRecipients)}, an async
            callable that makes the sender's report durable (the intake's).
        @param clock: an C{IReactorTime}.
        @param retrySchedule: the intervals between attempts, seconds.
        @param queueLifetimeSeconds: how long a message may stay queued.
        @param batch: the most entries in progress at once.
        @param relay: the L{qutemail.relay.sender.Relay}, or C{None} to
            leave remote recipients waiting.
        @param delayWarningSeconds: after this long in the queue, the sender
            of a message some recipients of which are still deferred gets
            one delay notice (C{[relay] delay_warning}; 0: never).  The
            C{bounce} callable makes it, given C{retryUntil}.
        @param transit: seals mail for QKD peer sites before it is relayed
            (L{qutemail.relay.transitout.TransitSealer}), or C{None}.
        @param metrics: counts recipient outcomes and follows the queue's
            size (L{qutemail.metrics.registry.Metrics}), or C{None}.
        """
        self.metrics = metrics
        self.queue = queue
        self.local = local
        self._bounceReport = bounce
        self.clock = clock
        self.retrySchedule = retrySchedule
        self.queueLifetime = queueLifetimeSeconds
        self.batch = batch
        self.relay = relay
        self.delayWarning = delayWarningSeconds
        self.transit = transit
        if transit is not None:
            transit.save = self._save
        self.intervalSeconds = max(1.0, min(MAX_TICK_SECONDS, min(retrySchedule) / 10))
        self._loop = LoopingCall(self._safeTick)
        self._loop.clock = clock
        self._ticks: set[Deferred] = set()
        self._inflight: dict[str, Deferred] = {}
        self._writes: dict[str, SerialQueue] = {}
        self._kick = None
        self._reportedAt = float("-inf")
        queue.subscribe(lambda entry: self.kick())

    def startService(self) -> None:
        """
        Start ticking (the first tick runs at once).
        """
        Service.startService(self)
        if self.transit is not None:
            # Transit copies a crash left behind, of messages no longer queued.
            self.queue.waiting().addCallback(
                lambda entries: self.transit.sweep({e.queueId for e in entries})).addErrback(
                lambda failure: self._log.failure("sweeping transit copies failed", failure))
        self._loop.start(self.intervalSeconds, now=True)

    def stopService(self) -> Deferred:
        """
        Stop ticking, drop relay sessions in progress (their recipients stay
        queued as they were) and wait for attempts to settle.
        """
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        if self._kick is not None and self._kick.active():
            self._kick.cancel()
        if self.relay is not None:
            self.relay.stop()
        return DeferredList(list(self._ticks) + list(self._inflight.values()), consumeErrors=True)

    def _safeTick(self) -> None:
        """
        Run one tick, logging any failure instead of stopping the loop.
        """
        self._kick = None
        d = ensureDeferred(self.tick())
        self._ticks.add(d)
        d.addErrback(lambda f: self._log.failure("retry tick failed", f))
        d.addBoth(lambda _: self._ticks.discard(d))

    def kick(self) -> None:
        """
        Tick soon (fresh mail was queued), without waiting for the loop.
        """
        if self.running and self._kick is None:
            self._kick = self.clock.callLater(0, self._safeTick)

    def flush(self) -> Deferred:
        """
        Make every waiting recipient due now (C{queue flush}).

        @return: a Deferred firing with the number of entries made due.
        """
        return Deferred.fromCoroutine(self._flush())

    async def _flush(self) -> int:
        """
        See L{flush}.
        """
        await self.queue.refresh()
        entries = await self.queue.waiting()
        for entry in entries:
            for r in entry.pending():
                r.nextAttempt = 0.0
        self._safeTick()
        return len(entries)

    async def delete(self, queueId: str) -> bool:
        """
        Remove an entry whatever its state (C{queue delete}).  A relay
        session already in progress for it may still complete.

        @return: whether there was such an entry.
        """
        await self.queue.refresh()
        if not await self.queue.remove(queueId):
            return False
        self._log.info("{queueId} deleted from the queue by the administrator", queueId=queueId)
        return True

    async def bounceNow(self, queueId: str) -> bool:
        """
        Give up on every waiting recipient of an entry and send the sender
        one bounce (C{queue bounce}).

        @return: whether there was such an entry.
        """
        await self.queue.refresh()
        entry = await self.queue.get(queueId)
        if entry is None:
            return False
        waiting = entry.pending()
        bounced = [(r, FailedRecipient(r.address, DELETED_BY_ADMIN.enhanced,
                                       f"{DELETED_BY_ADMIN} (last reply: {r.lastReply or 'none'})"))
                   for r in waiting]
        if bounced:
            await self._bounce(entry, bounced, self.clock.seconds())
        return True

    def busy(self, queueId: str) -> bool:
        """
        @return: whether an attempt for this entry is in progress.
        """
        return queueId in self._inflight

    async def tick(self) -> int:
        """
        Start attempts for one batch of due entries and wait for them.

        @return: the number of entries started.
        """
        now = self.clock.seconds()
        # Extra SMTP workers add entries to the same directory.
        await self.queue.refresh()
        if self.metrics is not None and now - self._reportedAt >= self.intervalSeconds:
            # Once per interval, however often kicks come.
            self._reportedAt = now
            await self._reportQueue(now)
        room = self.batch - len(self._inflight)
        entries = await self.queue.due(now, room, self._inflight) if room > 0 else []
        started = []
        for entry in entries:
            if entry.queueId in self._inflight:
                # Another tick (a kick) took it while we waited for due():
                # one attempt at a time per entry, or a message goes twice.
                continue
            d = ensureDeferred(self._retryEntry(entry, now))
            self._inflight[entry.queueId] = d
            d.addErrback(lambda f, queueId=entry.queueId: self._log.failure(
                "retrying {queueId} failed", f, queueId=queueId))
            d.addBoth(self._finished, entry.queueId)
            started.append(d)
        await DeferredList(started, consumeErrors=True)
        return len(started)

    async def _reportQueue(self, now: float) -> None:
        """
        Give the metrics the queue's messages by state (C{pending}: some
        recipient not tried yet; else C{deferred}) and the oldest's age.
        """
        counts = {PENDING: 0, DEFERRED: 0}
        oldest = now
        for entry in await self.queue.waiting():
            counts[PENDING if any(r.state == PENDING for r in entry.recipients) else DEFERRED] += 1
            oldest = min(oldest, entry.message.envelope.receivedAt)
        self.metrics.queueState(counts, now - oldest)

    def _finished(self, result: Any, queueId: str) -> None:
        """
        Forget an attempt that is over.  (Returning the popped Deferred
        from its own callback would chain it to itself and hang it.)
        """
        self._inflight.pop(queueId, None)

    async def _save(self, entry: QueueEntry) -> None:
        """
        Write an entry's state; one write at a time per entry.
        """
        writes = self._writes.setdefault(entry.queueId, SerialQueue())
        try:
            await writes.run(lambda: self.queue.update(entry))
        finally:
            if not writes.busy:
                self._writes.pop(entry.queueId, None)

    async def _retryEntry(self, entry: QueueEntry, now: float) -> None:
        """
        Try the due recipients of one entry, saving each outcome, then
        bounce what failed for good.
        """
        message = entry.message
        expired = now >= message.envelope.receivedAt + self.queueLifetime
        due = entry.due(now)
        bounced: list[tuple[RecipientState, FailedRecipient]] = []
        local = [r for r in due if self.local.isLocal(r.address)]
        remote: dict[str, list[RecipientState]] = defaultdict(list)
        if self.relay is not None:
            for r in due:
                if r not in local:
                    remote[r.address.rpartition("@")[2].lower()].append(r)
        results, _ = await self.local.deliver(message, [(r.index, r.address) for r in local], True)
        for r, (ok, result) in zip(local, results):
            if not ok:
                logDeliveryFailure(self._log, result, "retry of {queueId} to {recipient} failed",
                                   queueId=entry.queueId, recipient=r.address)
                result = replyFor(result)
            self._record(entry, r, result, now, expired, bounced)
        if local:
            await self._save(entry)
        await DeferredList([ensureDeferred(self._relayDomain(entry, domain, rs, now, expired, bounced))
                            for domain, rs in remote.items()], consumeErrors=True)
        if bounced:
            await self._bounce(entry, bounced, now)
        await self._warnIfDelayed(entry, now)
        if self.transit is not None and entry.transit and not entry.pending():
            await self.transit.discard(entry)

    async def _warnIfDelayed(self, entry: QueueEntry, now: float) -> None:
        """
        Send the sender its one delay notice once the message has waited
        C{delay_warning} with recipients still deferred.  The entry says so
        on disk first: a crash may cost the notice, never send it twice.
        """
        message = entry.message
        if (not self.delayWarning or entry.delayWarned or not message.envelope.sender
                or now < message.envelope.receivedAt + self.delayWarning):
            return
        waiting = [r for r in entry.recipients if r.state == DEFERRED]
        if not waiting:
            return
        entry.delayWarned = True
        await self._save(entry)
        retryUntil = message.envelope.receivedAt + self.queueLifetime
        delayed = [FailedRecipient(r.address, _delayStatus(r.lastReply), r.lastReply) for r in waiting]
        try:
            await self._bounceReport(message, delayed, retryUntil)
        except Exception:
            self._log.failure("could not queue the delay notice for {queueId}", Failure(), queueId=entry.queueId)
            return
        self._log.info("{queueId} delayed: notice sent to <{sender}> for {count} recipients",
                       queueId=entry.queueId, sender=message.envelope.sender, count=len(delayed))

    async def _relayDomain(self, entry: QueueEntry, domain: str, recipients: list[RecipientState],
                           now: float, expired: bool, bounced: list) -> None:
        """
        One relay session for one domain's recipients; save the outcome.
        """
        message = entry.message
        body, size, prefix = message.openBody, message.size, entry.dkimHeader.encode("ascii", "replace")
        try:
            outgoing = None if self.transit is None else await self.transit.prepare(entry, domain)
        except ReplyError as e:
            for r in recipients:
                self._record(entry, r, e.reply, now, expired, bounced)
            await self._save(entry)
            return
        except Exception:
            self._log.failure("sealing {queueId} for {domain} failed", Failure(), queueId=entry.queueId,
                              domain=domain)
            for r in recipients:
                self._record(entry, r, LOCAL_ERROR, now, expired, bounced)
            await self._save(entry)
            return
        if outgoing is not None:
            body, size, prefix = outgoing.body, outgoing.size, outgoing.prefix
        try:
            replies = await self.relay.deliver(
                domain=domain, sender=message.envelope.sender, recipients=[r.address for r in recipients],
                body=body, sizeBytes=size, prefix=prefix)
        except Exception:
            self._log.failure("relay of {queueId} to {domain} failed", Failure(),
                              queueId=entry.queueId, domain=domain)
            replies = {}
        for r in recipients:
            self._record(entry, r, replies.get(r.address, LOCAL_ERROR), now, expired, bounced)
        await self._save(entry)

    def _record(self, entry: QueueEntry, r: RecipientState, reply: Reply | None, now: float,
                expired: bool, bounced: list) -> None:
        """
        Note one recipient's outcome: sent, deferred, or to be bounced.
        """
        r.attempts += 1
        metrics = self.metrics
        if reply is None or 200 <= reply.code < 300:
            if metrics is not None:
                local = self.local.isLocal(r.address)
                metrics.recipientOutcome("delivered" if local else "relayed", entry.message.envelope.receivedAt,
                                         now, "local" if local else "remote")
            r.state = SENT
            r.lastReply = "delivered" if reply is None else str(reply)
            self._log.info("{queueId} to=<{recipient}> sent after {attempts} attempts: {reply}",
                           queueId=entry.queueId, recipient=r.address, attempts=r.attempts, reply=r.lastReply)
            return
        r.lastReply = str(reply)
        if metrics is not None:
            metrics.recipientOutcome("deferred" if reply.isTemporary and not expired else "bounced")
        if reply.isTemporary and not expired:
            r.state = DEFERRED
            r.nextAttempt = now + retryDelay(self.retrySchedule, r.attempts)
            self._log.info("{queueId} to=<{recipient}> deferred: {reply}",
                           queueId=entry.queueId, recipient=r.address, reply=r.lastReply)
            return
        if reply.isTemporary:
            # RFC 3464 §2.3.4: a failed action carries a 5.x.x status.
            failed = FailedRecipient(r.address, QUEUE_EXPIRED.enhanced,
                                     f"{reply} (gave up after {r.attempts} attempts: {QUEUE_EXPIRED.text})")
        else:
            failed = FailedRecipient(r.address, reply.enhanced, str(reply))
        bounced.append((r, failed))

    async def _bounce(self, entry: QueueEntry, bounced: list, now: float) -> None:
        """
        Send the sender one report for the recipients that failed for good.
        """
        try:
            await self._bounceReport(entry.message, [failed for _, failed in bounced])
        except Exception:
            # The bounce is not safely queued: keep the recipients waiting
            # so a later tick sends it.
            self._log.failure("could not queue the bounce for {queueId}; retrying later",
                              Failure(), queueId=entry.queueId)
            for r, _ in bounced:
                r.state = DEFERRED
                r.nextAttempt = now + retryDelay(self.retrySchedule, r.attempts)
        else:
            for r, failed in bounced:
                r.state = BOUNCED
                self._log.info("{queueId} to=<{recipient}> bounced after {attempts} attempts: {reply}",
                               queueId=entry.queueId, recipient=r.address, attempts=r.attempts,
                               reply=failed.diagnostic)
        await self._save(entry)


def _delayStatus(lastReply: str) -> str:
    """
    The RFC 3464 status of a delayed recipient: the enhanced code of its
    last (temporary) reply, or C{4.0.0}.
    """
    return enhancedOf(lastReply, 4) or "4.0.0"
