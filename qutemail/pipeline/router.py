# -*- test-case-name: tests.pipeline.test_router -*-
"""
The router: what happens to a message once the journal holds it.

Each recipient is local (an account in one of our domains) or remote.  Local
recipients are delivered to their Maildir at once (L{LocalDelivery}); a
recipient whose delivery fails for now (quota, a store error, no QKD key)
and every remote recipient go to the relay queue (L{IRelayQueue}), remote
ones with the message's DKIM signature made once.  The router answers with
the recipients that failed for good; the intake bounces them and then marks
the message done in the journal.
"""

from typing import Any

from twisted.logger import Logger

from qutemail.address import domainOf
from qutemail.message import DEFERRED, PENDING, FailedRecipient, RecipientState, SpooledMessage, retryDelay
from qutemail.replies import MAILBOX_FULL, logDeliveryFailure, replyFor


class Router:
    """
    Routes journalled messages to mailboxes and the relay queue.
    """

    _log = Logger()

    def __init__(self, *, local: Any, queue: Any, clock: Any, retrySchedule: tuple[float, ...],
                 signer: Any = None, sealedDomains: frozenset[str] = frozenset(), metrics: Any = None) -> None:
        """
        @param local: the L{qutemail.store.delivery.LocalDelivery}.
        @param queue: the L{qutemail.interfaces.IRelayQueue}.
        @param clock: an C{IReactorTime}.
        @param retrySchedule: the retry intervals, seconds.
        @param signer: makes the DKIM-Signature of mail leaving for other
            domains (L{qutemail.pipeline.signing.OutboundSigner}), or C{None}.
        @param sealedDomains: domains (lower case) whose mail always leaves
            in the QKD transit form (peers under C{peer_policy = require}):
            that form is signed when it is made, so a message going only
            there is not signed here too.
        @param metrics: counts each recipient's outcome and delivery time
            (L{qutemail.metrics.registry.Metrics}), or C{None}.
        """
        self.metrics = metrics
        self.local = local
        self.queue = queue
        self.clock = clock
        self.retrySchedule = retrySchedule
        self.signer = signer
        self.sealedDomains = sealedDomains

    async def route(self, message: SpooledMessage, recovering: bool) -> list[FailedRecipient]:
        """
        Deliver or queue every recipient.

        @param message: the message, durable in the journal.
        @param recovering: it was found in the journal after a restart, so
            some copies may already be stored.
        @return: the recipients that failed for good (to be bounced).
        """
        envelope = message.envelope
        attempts: list[tuple[int, str]] = []
        queued: list[RecipientState] = []
        now = self.clock.seconds()
        for index, address in enumerate(envelope.recipients):
            if not self.local.isLocal(address):
                queued.append(RecipientState(address, index, PENDING, nextAttempt=now,
                                             lastReply="waiting for the first relay attempt"))
                continue
            attempts.append((index, address))
        results, keyId = await self.local.deliver(message, attempts, recovering)
        bounced: list[FailedRecipient] = []
        outcomes: list[str] = [f"{r.address}: {r.lastReply}" for r in queued]
        metrics = self.metrics
        for (index, address), (ok, result) in zip(attempts, results):
            if ok and result is None:
                if metrics is not None:
                    metrics.recipientOutcome("delivered", envelope.receivedAt, self.clock.seconds(), "local")
                outcomes.append(f"{address}: delivered" + (f" encrypted (key {keyId})" if keyId else ""))
                continue
            reply = result if ok else replyFor(result)
            if not ok:
                logDeliveryFailure(self._log, result, "delivery of {queueId} to {recipient} failed",
                                   queueId=message.queueId, recipient=address)
            if metrics is not None:
                metrics.recipientOutcome("deferred" if reply.isTemporary else "bounced")
                if reply.enhanced == MAILBOX_FULL.enhanced:
                    metrics.quotaRefused("delivery")
            if reply.isTemporary:
                queued.append(RecipientState(address, index, DEFERRED, attempts=1,
                                             nextAttempt=now + retryDelay(self.retrySchedule, 1),
                                             lastReply=str(reply)))
                outcomes.append(f"{address}: deferred ({reply})")
            else:
                bounced.append(FailedRecipient(address, reply.enhanced, str(reply)))
                outcomes.append(f"{address}: bounced ({reply})")
        if queued:
            dkimHeader = ""
            if self.signer is not None and any(r.state == PENDING and domainOf(r.address)
                                               not in self.sealedDomains for r in queued):
                dkimHeader = await self.signer.headerFor(message)
            await self.queue.add(message, queued, dkimHeader)
        # The one line per message: who sent what to whom, and what became of it.
        self._log.info(
            "{queueId} from=<{sender}> size={size} peer={peer} {result}",
            queueId=message.queueId, sender=envelope.sender, size=message.size,
            peer=envelope.peer, recipients=list(envelope.recipients), result="; ".join(outcomes),
        )
        return bounced
