# -*- test-case-name: tests.pipeline.test_intake -*-
"""
The intake: the one way a message enters the system.

Every way in goes through it: SMTP on every port (L{submit}), bounces
(L{bounce}, for the router's permanent failures and the retry scheduler's),
journal recovery after a restart (L{recover}) and a stopped node's
journal moved here by C{queue adopt} (L{adopt}); later ways in (JMAP
submission) plug in here too.  For each message it owns the whole sequence:

  1. the body is made durable in the spool (L{SpoolWriter.finish});
  2. mail from outside gets its DKIM and DMARC checks, which may refuse it
     or say where it goes (the SPF half ran at C{MAIL FROM}); a message a
     peer site sent in the QKD transit form is then opened (its key from
     our KME, see L{qutemail.pipeline.transitin}), or refused;
     then the content scanners (rspamd, clamd; L{qutemail.content}) see it,
     still in plaintext for internal mail, and may refuse it or file it
     in Junk;
  3. the journal commits it (fsync; only then may the listener say 250);
  4. the router delivers or queues each recipient in the background;
  5. permanent failures are bounced, through this same intake;
  6. the journal marks it done.

The journal has this one owner: nothing else commits to it or marks a
message done.
"""

import os
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.message import Envelope, FailedRecipient, SpooledMessage
from qutemail.pipeline.dsn import buildReport, originalHeader
from qutemail.pipeline.spool import SpoolWriter
from qutemail.replies import QUEUED, Reply, ReplyError, replyFor

# How long to wait before routing again a message whose routing itself
# failed (for example the relay queue could not be written).
ROUTE_RETRY_SECONDS = 60.0
# Enough of a message to find its header for a bounce.
_HEAD_BYTES = 65536


@attrs.frozen
class InboundContext:
    """
    What the checks of mail from outside need at the end of DATA.

    @ivar spf: the SPF result of C{MAIL FROM}
        (L{qutemail.policy.inbound.InboundChecks.checkSender}).
    @ivar header: the header section as received (for DMARC's From).
    """

    spf: Any
    header: bytes


class Intake:
    """
    Takes messages in: spool, checks, journal, routing, bounces.
    """

    _log = Logger()

    def __init__(self, *, journal: Any, router: Any, clock: Any, runner: Any, queueIds: Any,
                 spoolDirectory: str, hostname: str, inbound: Any = None, transit: Any = None,
                 content: Any = None) -> None:
        """
        @param journal: the L{qutemail.queue.journal.Journal}, which only
            the intake writes.
        @param router: the L{qutemail.pipeline.router.Router}.
        @param clock: an C{IReactorTime}.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param queueIds: the L{qutemail.message.QueueIds} source.
        @param spoolDirectory: where bodies too large for the journal are
            spilled while they arrive.
        @param hostname: this server's name (bounces come from it).
        @param inbound: the L{qutemail.policy.inbound.InboundChecks} for
            mail from outside, or C{None} for none.
        @param transit: the L{qutemail.pipeline.transitin.TransitReceiver}
            that opens mail from peer sites (and refuses transit mail when
            there are none), or C{None}: transit mail is not looked for.
        @param content: the L{qutemail.content.scanner.ContentScanner}, or
            C{None} for no content scanning.
        """
        self.journal = journal
        self.router = router
        self.clock = clock
        self.runner = runner
        self.queueIds = queueIds
        self.spoolDirectory = spoolDirectory
        self.hostname = hostname
        self.inbound = inbound
        self.transit = transit
        self.content = content
        self._inflight: set[Deferred] = set()

    def newMessage(self) -> tuple[str, SpoolWriter]:
        """
        Start receiving a message.

        @return: its queue id and the writer its body goes into.
        """
        queueId = self.queueIds.next()
        return queueId, SpoolWriter(self.runner, os.path.join(self.spoolDirectory, queueId))

    def submit(self, queueId: str, writer: SpoolWriter, envelope: Envelope,
               checks: InboundContext | None = None) -> Deferred:
        """
        Take in a message whose body has all been written.

        @param queueId: from L{newMessage}.
        @param writer: the writer holding its body.
        @param envelope: its envelope.
        @param checks: for mail from outside, what its checks need.
        @return: a Deferred firing with the L{Reply} to give the sender:
            250 once the message is durable, or why it was refused (our
            own failures are temporary).  It never fails.
        """
        return self._replyThenRoute(Deferred.fromCoroutine(self._submit(queueId, writer, envelope, checks)))

    async def _submit(self, queueId: str, writer: SpoolWriter, envelope: Envelope,
                      checks: InboundContext | None) -> tuple[Reply, SpooledMessage | None]:
        """
        See L{submit}.

        @return: the reply, and the message to route once it is given.
        """
        try:
            message = await writer.finish(queueId, envelope)
        except Exception:
            return self._failed(Failure(), queueId, writer.abort), None
        return await self._accept(message, checks, writer.discard, writer.abort, writer.traceBytes)

    def _replyThenRoute(self, outcome: Deferred) -> Deferred:
        """
        Give the reply first (whoever waits for it sends it at once), then
        start routing an accepted message, in the same turn of the reactor:
        routing work never delays a 250.

        @param outcome: fires with C{(reply, message to route or None)}.
        @return: a Deferred firing with the reply.
        """
        replied: Deferred = Deferred()

        def give(result: tuple[Reply, SpooledMessage | None]) -> None:
            reply, message = result
            replied.callback(reply)
            if message is not None:
                self._route(message, recovering=False)

        outcome.addCallback(give)
        return replied

    def accept(self, message: SpooledMessage) -> Deferred:
        """
        Take in a message already complete in the spool (a body held
        inline, or a spill file already synced): ways in other than SMTP.

        @return: like L{submit}.
        """
        return self._replyThenRoute(Deferred.fromCoroutine(self._accept(message, None, None, lambda: None)))

    async def _accept(self, message: SpooledMessage, checks: InboundContext | None,
                      discard: Any, abort: Any, traceBytes: int = 0) -> tuple[Reply, SpooledMessage | None]:
        """
        Check and commit a spooled message.

        @param discard: removes a refused message's spill file, or C{None}.
        @param abort: removes the spill file after a failure.
        @param traceBytes: how many first bytes are our own trace fields.
        @return: the reply, and the message to route once it is given
            (C{None} when it was refused).
        """
        try:
            if checks is not None and self.inbound is not None:
                verdict = await self.inbound.checkMessage(checks.spf, message, checks.header)
                if verdict.reject is not None:
                    if discard is not None:
                        await discard()
                    self._log.info("rejected message {queueId} from {peer}: {reply}", queueId=message.queueId,
                                   peer=message.envelope.peer, reply=str(verdict.reject))
                    return verdict.reject, None
                message = attrs.evolve(message, envelope=attrs.evolve(
                    message.envelope, addedHeaders=verdict.addedHeaders, folder=verdict.folder))
            if self.transit is not None and not message.envelope.authenticated:
                try:
                    message = await self.transit.open(message, traceBytes)
                except ReplyError as e:
                    if discard is not None:
                        await discard()
                    self._log.info("refused message {queueId} from {peer}: {reply}", queueId=message.queueId,
                                   peer=message.envelope.peer, reply=str(e.reply))
                    return e.reply, None
            if self.content is not None and self.content.wants(message.envelope):
                refused, message = await self._scanContent(message)
                if refused is not None:
                    if discard is not None:
                        await discard()
                    return refused, None
            await self.journal.commit(message)
        except Exception:
            return self._failed(Failure(), message.queueId, abort), None
        return QUEUED.withText(f"Ok: queued as {message.queueId}"), message

    async def _scanContent(self, message: SpooledMessage) -> tuple[Reply | None, SpooledMessage]:
        """
        Have the content scanners look at a message.

        @return: the reply that refuses it (or C{None}), and the message
            with the scanners' trace fields and folder in its envelope.
        """
        scanned = await self.content.scan(message)
        envelope = message.envelope
        if scanned.reject is not None:
            self._log.info("refused message {queueId} from {peer}: {reply} ({scan})", queueId=message.queueId,
                           peer=envelope.peer, reply=str(scanned.reject), scan=scanned.summary)
            return scanned.reject, message
        self._log.info("scanned message {queueId}: {scan}", queueId=message.queueId, scan=scanned.summary)
        # Our users' mail and a peer site's is stored encrypted: fields in
        # clear beside the ciphertext would tell what it hides.  The log
        # line has the verdict.
        internal = envelope.authenticated is not None or envelope.transitKeyId
        added = envelope.addedHeaders + ("" if internal else scanned.headers)
        return None, attrs.evolve(message, envelope=attrs.evolve(
            envelope, addedHeaders=added, folder=scanned.folder or envelope.folder))

    def _failed(self, failure: Failure, queueId: str, abort: Any) -> Reply:
        """
        Our fault (disk full, I/O error): log, clean up, and tell the
        sender to try again.
        """
        self._log.failure("could not spool {queueId}", failure, queueId=queueId)
        abort()
        return replyFor(failure)

    def recover(self, message: SpooledMessage) -> None:
        """
        Route a message found in the journal after a restart (some copies
        may already be stored).
        """
        self._route(message, recovering=True)

    async def adopt(self, message: SpooledMessage) -> None:
        """
        Take in an unfinished message from a stopped node's journal
        (C{qutemail queue adopt}): it was checked and scanned there, so it
        is only made durable in this journal, then routed as a recovered
        message (copies already stored are found, not stored again).

        @param message: held inline, or spilled into L{spoolDirectory}.
        @return: once it is durable here; routing goes on in the
            background.
        """
        await self.journal.commit(message)
        self._route(message, recovering=True)

    async def bounce(self, message: SpooledMessage, failed: list[FailedRecipient],
                     retryUntil: float | None = None) -> None:
        """
        Send the sender a delivery status notification, unless the sender
        is null (RFC 5321 §4.5.5: never bounce a bounce).

        @param message: the original message.
        @param failed: the recipients it failed for.
        @param retryUntil: makes it a delay notice (C{Action: delayed})
            for recipients still retried until then; C{None} for a bounce.
        @raise Exception: the report could not be made durable (the caller
            keeps the recipients waiting and tries again later).
        """
        sender = message.envelope.sender
        if not sender:
            return
        header = originalHeader(await self._readHead(message))
        now = self.clock.seconds()
        report = buildReport(self.hostname, sender, message.queueId,
                             message.envelope.receivedAt, now, failed, header, retryUntil)
        await self.originate("", [sender], report)

    async def originate(self, sender: str, recipients: list[str], body: bytes) -> str:
        """
        Take in a message the server itself wrote (a bounce, a TLS report):
        made durable, then routed like any other.

        @param body: the whole message, LF line ends.
        @return: its queue id.
        @raise Exception: it could not be made durable.
        """
        envelope = Envelope(sender, tuple(recipients), helo=self.hostname, peer="127.0.0.1",
                            receivedAt=self.clock.seconds())
        message = SpooledMessage(self.queueIds.next(), envelope, len(body), inline=body)
        await self.journal.commit(message)
        self._route(message, recovering=False)
        return message.queueId

    def _route(self, message: SpooledMessage, recovering: bool) -> None:
        """
        Route a journalled message in the background; retry later if
        routing itself fails.
        """
        d = ensureDeferred(self._routeAndFinish(message, recovering))
        self._inflight.add(d)

        def failed(failure: Failure) -> None:
            self._log.failure("routing {queueId} failed; retrying in {seconds}s", failure,
                              queueId=message.queueId, seconds=ROUTE_RETRY_SECONDS)
            self.clock.callLater(ROUTE_RETRY_SECONDS, self._route, message, True)

        d.addErrback(failed)
        d.addBoth(lambda _: self._inflight.discard(d))

    async def _routeAndFinish(self, message: SpooledMessage, recovering: bool) -> None:
        """
        Route, bounce what failed for good, then mark the message done.
        """
        bounced = await self.router.route(message, recovering)
        if bounced:
            await self.bounce(message, bounced)
        self.journal.markDone(message.queueId, message.path)

    async def _readHead(self, message: SpooledMessage) -> bytes:
        """
        @return: the first bytes of a message, enough for its header.
        """
        if message.inline is not None:
            return message.inline[:_HEAD_BYTES]

        def read() -> bytes:
            # Through openBody: a deferred internal message is sealed in
            # the queue, and this reads its plaintext head.
            with message.openBody() as f:
                return f.read(_HEAD_BYTES)

        return await self.runner.run(read)

    def stop(self) -> Deferred:
        """
        @return: a Deferred that fires when background routing is done.
        """
        return DeferredList(list(self._inflight), consumeErrors=True)
