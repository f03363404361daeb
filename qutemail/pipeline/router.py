# -*- test-case-name: tests.queue.test_scheduler,tests.test_service -*-
"""
The router: what happens to a message once the journal holds it.

Each recipient is local (an account in one of our domains) or remote.  Local
recipients are delivered to their Maildir at once; a recipient whose
delivery fails for now (quota, a store error) and every remote recipient go
to the deferred queue.  Only when every recipient is delivered or durably
queued is the message marked done in the journal.
"""

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger

from qutemail.pipeline.dsn import buildReport, originalHeader
from qutemail.message import QueueIds, FailedRecipient
from qutemail.message import Envelope, SpooledMessage
from qutemail.queue.deferred import DeferredQueue
from qutemail.message import DEFERRED, PENDING, RecipientState, retryDelay
from qutemail.store.encrypted import isInternal
from qutemail.replies import NO_SUCH_USER, Reply, ReplyError, replyFor

# How long to wait before retrying a message whose routing itself failed
# (for example the deferred queue could not be written).
ROUTE_RETRY_SECONDS = 60.0


class Router:
    """
    Routes journalled messages to Maildirs and the deferred queue.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        journal: Any,
        store: Any,
        users: Any,
        queue: DeferredQueue,
        clock: Any,
        hostname: str,
        domains: tuple[str, ...],
        queueIds: QueueIds,
        retrySchedule: tuple[float, ...],
        runner: Any,
        signer: Any = None,
        encryptor: Any = None,
    ) -> None:
        """
        @param journal: the L{qutemail.queue.journal.Journal}.
        @param store: the L{qutemail.interfaces.IMessageStore}.
        @param users: the L{qutemail.interfaces.IUserDirectory}.
        @param queue: the deferred queue.
        @param clock: an C{IReactorTime}.
        @param hostname: this server's name (bounces come from it).
        @param domains: the local domains.
        @param queueIds: the queue id source (for bounces).
        @param retrySchedule: the retry intervals, seconds.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param signer: makes the DKIM-Signature of mail leaving for other
            domains (L{qutemail.pipeline.signing.OutboundSigner}), or C{None}.
        @param encryptor: seals internal mail before it reaches a mailbox
            (L{qutemail.store.encrypted.MessageEncryptor}), or C{None} to
            store everything as it came.
        """
        self.encryptor = encryptor
        self.runner = runner
        self.signer = signer
        # Called with each entry queued, so the scheduler can start at once.
        self.onQueued = None
        self.journal = journal
        self.store = store
        self.users = users
        self.queue = queue
        self.clock = clock
        self.hostname = hostname
        self.domains = domains
        self.queueIds = queueIds
        self.retrySchedule = retrySchedule
        self._inflight: set[Deferred] = set()

    def isLocal(self, address: str) -> bool:
        """
        @return: whether C{address} is in one of our domains.
        """
        return address.rpartition("@")[2].lower() in self.domains

    def accept(self, message: SpooledMessage, recovering: bool = False) -> None:
        """
        Route a journalled message in the background.

        @param message: the message, durable in the journal.
        @param recovering: it was found in the journal after a restart, so
            some copies may already be stored.
        """
        d = ensureDeferred(self._route(message, recovering))
        self._inflight.add(d)

        def failed(failure):
            self._log.failure("routing {queueId} failed; retrying in {seconds}s", failure,
                              queueId=message.queueId, seconds=ROUTE_RETRY_SECONDS)
            self.clock.callLater(ROUTE_RETRY_SECONDS, self.accept, message, True)

        d.addErrback(failed)
        d.addBoth(lambda _: self._inflight.discard(d))

    async def _route(self, message: SpooledMessage, recovering: bool) -> None:
        """
        Deliver or queue every recipient, then mark the message done.
        """
        envelope = message.envelope
        attempts: list[tuple[int, str]] = []
        queued: list[RecipientState] = []
        now = self.clock.seconds()
        for index, address in enumerate(envelope.recipients):
            if not self.isLocal(address):
                queued.append(RecipientState(address, index, PENDING, nextAttempt=now,
                                             lastReply="waiting for the first relay attempt"))
                continue
            attempts.append((index, address))
        results, keyId = await self.deliverLocal(message, attempts, recovering)
        bounced: list[FailedRecipient] = []
        outcomes: list[str] = [f"{r.address}: {r.lastReply}" for r in queued]
        for (index, address), (ok, result) in zip(attempts, results):
            if ok and result is None:
                outcomes.append(f"{address}: delivered" + (f" encrypted (key {keyId})" if keyId else ""))
                continue
            reply = result if ok else replyFor(result)
            if not ok:
                self._log.failure("delivery of {queueId} to {recipient} failed", result,
                                  queueId=message.queueId, recipient=address)
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
            if self.signer is not None and any(r.state == PENDING for r in queued):
                dkimHeader = await self.signer.headerFor(message)
            entry = await self.queue.add(message, queued, dkimHeader)
            if self.onQueued is not None:
                self.onQueued(entry)
        if bounced:
            await self.bounce(message, bounced)
        # The one line per message: who sent what to whom, and what became of it.
        self._log.info(
            "{queueId} from=<{sender}> size={size} peer={peer} {result}",
            queueId=message.queueId, sender=envelope.sender, size=message.size,
            peer=envelope.peer, recipients=list(envelope.recipients), result="; ".join(outcomes),
        )
        self.journal.markDone(message.queueId, message.path)

    async def deliverLocal(self, message: SpooledMessage, targets: list[tuple[int, str]],
                           checkExisting: bool) -> tuple[list[tuple[bool, Any]], str | None]:
        """
        Deliver to local recipients: internal mail sealed once for all of
        them (one key per message), anything else as it came.

        @param targets: C{(index, address)} of each recipient.
        @return: per target, as C{DeferredList} gives it: C{(True, None)}
            stored, C{(True, reply)} not stored and why, C{(False,
            failure)} an unexpected error; and the id of the key the copies
            were sealed with, if they were.
        """
        if not targets:
            return [], None
        delivered = message
        sealed = None
        if self.encryptor is not None and isInternal(message.envelope, self.domains):
            try:
                sealed = await self.encryptor.seal(message)
            except ReplyError as e:
                self._log.info("{queueId} not sealed: {reply}", queueId=message.queueId, reply=str(e.reply))
                return [(True, e.reply)] * len(targets), None
            delivered = sealed.message
        try:
            results = await DeferredList(
                [ensureDeferred(self.attempt(delivered, address, index, checkExisting)) for index, address in targets],
                consumeErrors=True)
            return results, sealed.keyId if sealed is not None else None
        finally:
            if sealed is not None:
                await self.encryptor.discard(sealed)

    async def attempt(self, message: SpooledMessage, address: str, index: int, checkExisting: bool) -> Reply | None:
        """
        Try one local delivery.

        @return: C{None} when stored, else the L{Reply} saying why not (a
            temporary one for failures worth retrying).
        """
        account = await self.users.getAccount(address)
        if account is None:
            return NO_SUCH_USER
        try:
            await self.store.deliver(message, account, index, checkExisting)
        except ReplyError as e:
            return e.reply
        return None

    async def bounce(self, message: SpooledMessage, failed: list[FailedRecipient]) -> None:
        """
        Send the sender a delivery status notification, unless the sender is
        null (RFC 5321 §4.5.5: never bounce a bounce).

        @param message: the original message.
        @param failed: the recipients it failed for.
        """
        sender = message.envelope.sender
        if not sender:
            return
        header = originalHeader(await self._readHead(message))
        now = self.clock.seconds()
        report = buildReport(self.hostname, sender, message.queueId,
                             message.envelope.receivedAt, now, failed, header)
        envelope = Envelope("", (sender,), helo=self.hostname, peer="127.0.0.1", receivedAt=now)
        bounce = SpooledMessage(self.queueIds.next(), envelope, len(report), inline=report)
        await self.journal.commit(bounce)
        self.accept(bounce)

    async def _readHead(self, message: SpooledMessage) -> bytes:
        """
        @return: the first bytes of a message, enough for its header.
        """
        if message.inline is not None:
            return message.inline[:65536]

        def read():
            with open(message.path, "rb") as f:
                return f.read(65536)

        return await self.runner.run(read)

    def stop(self) -> Deferred:
        """
        @return: a Deferred that fires when background routing is done.
        """
        return DeferredList(list(self._inflight), consumeErrors=True)
