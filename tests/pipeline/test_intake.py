"""
Tests for L{qutemail.pipeline.intake}: every way in goes through the
intake (SMTP, journal recovery, the router's bounces and the scheduler's),
and the intake commits before it answers, marks done after routing, and
answers our own failures with a 4xx.
"""

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account
from qutemail.message import Envelope, FailedRecipient, QueueIds, SpooledMessage
from qutemail.pipeline.intake import ROUTE_RETRY_SECONDS, InboundContext, Intake
from qutemail.replies import NO_SUCH_USER, RELAY_DENIED
from qutemail.service import SpoolService
from tests.listener.test_smtp import ENVELOPE
from tests.support import QueuedRunner, buildStack, connect, converse

BOB = "bob@example.test"
ALICE = "alice@example.test"
BODY = b"From: bob@example.test\nSubject: in\n\nbody\n"


class RecordingIntake(Intake):
    """
    The real intake, noting each way a message came in.

    @ivar ways: C{(way, queueId)} for each call, in order.
    """

    def __init__(self, **kwargs) -> None:
        """
        Nothing recorded yet.
        """
        super().__init__(**kwargs)
        self.ways: list[tuple[str, str]] = []

    def submit(self, queueId, writer, envelope, checks=None):
        """
        Record an SMTP submission.
        """
        self.ways.append(("submit", queueId))
        return super().submit(queueId, writer, envelope, checks)

    def accept(self, message):
        """
        Record a message taken in whole.
        """
        self.ways.append(("accept", message.queueId))
        return super().accept(message)

    def recover(self, message):
        """
        Record a recovered message.
        """
        self.ways.append(("recover", message.queueId))
        return super().recover(message)

    async def bounce(self, message, failed):
        """
        Record a bounce.
        """
        self.ways.append(("bounce", message.queueId))
        return await super().bounce(message, failed)


class WaysInTests(SynchronousTestCase):
    """
    SMTP, recovery and both kinds of bounce reach the system through the
    intake.
    """

    def stack(self, dataDir: str | None = None, **kwargs):
        """
        @return: a stack whose intake records its calls.
        """
        stack = buildStack(dataDir or self.mktemp(), intakeClass=RecordingIntake, **kwargs)
        self.addCleanup(stack.journal._closeFile)
        return stack

    def test_smtp(self) -> None:
        """
        A message over SMTP is submitted to the intake, which gives the 250
        and gets it delivered.
        """
        stack = self.stack()
        proto, transport = connect(stack.factory)
        replies = converse(proto, transport, ENVELOPE + b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as", replies)
        [(way, queueId)] = stack.intake.ways
        self.assertEqual(way, "submit")
        self.assertIn(queueId.encode(), replies)
        self.assertEqual(len(stack.newFiles(ALICE)), 1)

    def test_recovery(self) -> None:
        """
        A message acknowledged but not delivered before a crash is handed
        to the intake at the next start, and delivered.
        """
        dataDir = self.mktemp()
        first = buildStack(dataDir)
        self.successResultOf(first.store.usage(Account(ALICE)))
        first.store._writer.runner = QueuedRunner()  # deliveries never finish
        proto, transport = connect(first.factory)
        self.assertIn(b"250 2.0.0", converse(proto, transport, ENVELOPE + b"Subject: x\r\n\r\nbody\r\n.\r\n"))
        first.journal._closeFile()
        stack = self.stack(dataDir)
        service = SpoolService(stack.intake, stack.queue, os.path.join(dataDir, "queue", "large"))
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([way for way, _ in stack.intake.ways], ["recover"])
        self.assertEqual(len(stack.newFiles(ALICE)), 1)

    def test_routerBounce(self) -> None:
        """
        A recipient that fails for good at delivery (the account went away
        after RCPT) is bounced through the intake, and the report reaches
        the sender.
        """
        stack = self.stack()
        envelope = Envelope(BOB, ("gone@example.test",), "client.test", "192.0.2.7", 0.0)
        message = SpooledMessage(stack.intake.queueIds.next(), envelope, len(BODY), inline=BODY)
        self.assertEqual(self.successResultOf(stack.intake.accept(message)).code, 250)
        self.assertEqual([way for way, _ in stack.intake.ways], ["accept", "bounce"])
        [report] = stack.newFiles(BOB)
        self.assertIn(NO_SUCH_USER.enhanced.encode(), report)

    def test_schedulerBounce(self) -> None:
        """
        A deferred recipient whose time runs out is bounced by the
        scheduler through the intake.
        """
        stack = self.stack(lifetime=600.0)
        stack.users.setQuota(ALICE, 10)
        envelope = Envelope(BOB, (ALICE,), "client.test", "192.0.2.7", 0.0)
        message = SpooledMessage(stack.intake.queueIds.next(), envelope, len(BODY), inline=BODY)
        self.successResultOf(stack.intake.accept(message))
        stack.scheduler.startService()
        self.addCleanup(stack.scheduler.stopService)
        stack.clock.advance(1200)
        self.assertEqual([way for way, _ in stack.intake.ways], ["accept", "bounce"])
        self.assertEqual(len(stack.newFiles(BOB)), 1)


class FakeJournal:
    """
    A journal whose commits the test completes.

    @ivar commits: the Deferred of each commit, by queue id.
    @ivar done: the queue ids marked done, in order.
    """

    def __init__(self) -> None:
        """
        Nothing committed.
        """
        self.commits: dict[str, Deferred] = {}
        self.done: list[str] = []

    def commit(self, message):
        """
        @return: a Deferred the test fires.
        """
        self.commits[message.queueId] = Deferred()
        return self.commits[message.queueId]

    def markDone(self, queueId, path=None):
        """
        Note it.
        """
        self.done.append(queueId)


class FakeRouter:
    """
    A router that answers from a list, one answer per call.

    @ivar routed: C{(queueId, recovering)} of each call.
    @ivar answers: what the next calls return (a list of failed
        recipients, or an exception to raise).
    """

    def __init__(self, *answers) -> None:
        """
        @param answers: see C{answers}.
        """
        self.routed: list[tuple[str, bool]] = []
        self.answers = list(answers)

    def route(self, message, recovering):
        """
        Note the call and give the next answer.
        """
        self.routed.append((message.queueId, recovering))
        answer = self.answers.pop(0) if self.answers else []
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)


class FakeWriter:
    """
    A spool writer that has the body already.

    @ivar aborted: whether it was aborted.
    @ivar discarded: whether it was discarded.
    @ivar traceBytes: no trace fields of ours.
    """

    traceBytes = 0

    def __init__(self, envelope=None) -> None:
        """
        Not finished yet.
        """
        self.aborted = self.discarded = False

    def finish(self, queueId, envelope):
        """
        @return: the message, inline.
        """
        return succeed(SpooledMessage(queueId, envelope, len(BODY), inline=BODY))

    def abort(self):
        """
        Note it.
        """
        self.aborted = True

    def discard(self):
        """
        Note it.
        """
        self.discarded = True
        return succeed(None)


class IntakeTests(SynchronousTestCase):
    """
    The order of things inside the intake.
    """

    def setUp(self) -> None:
        """
        An intake over a fake journal and router.
        """
        self.clock = Clock()
        self.journal = FakeJournal()
        self.router = FakeRouter()
        self.intake = self.makeIntake()

    def makeIntake(self, inbound=None) -> Intake:
        """
        @return: an intake over the fakes.
        """
        return Intake(journal=self.journal, router=self.router, clock=self.clock, runner=InlineRunner(),
                      queueIds=QueueIds(self.clock), spoolDirectory=self.mktemp(), hostname="mx.example.test",
                      inbound=inbound)

    def submit(self, envelope=None, checks=None):
        """
        @return: the reply's Deferred and the writer.
        """
        writer = FakeWriter()
        envelope = envelope or Envelope(BOB, (ALICE,), "client.test", "192.0.2.7", 0.0)
        return self.intake.submit("Q1", writer, envelope, checks), writer

    def test_commitBeforeReply(self) -> None:
        """
        The 250 comes only once the journal commit is done; routing starts
        after it, and the message is marked done after routing.
        """
        d, _ = self.submit()
        self.assertNoResult(d)
        self.assertEqual(self.router.routed, [])
        self.journal.commits["Q1"].callback(None)
        self.assertEqual(self.successResultOf(d).code, 250)
        self.assertEqual((self.router.routed, self.journal.done), ([("Q1", False)], ["Q1"]))

    def test_replyBeforeRouting(self) -> None:
        """
        Whoever waits for the reply gets it before routing starts (in the
        same turn): routing never delays a 250.
        """
        order = []
        route = self.router.route
        self.router.route = lambda message, recovering: order.append("route") or route(message, recovering)
        d, _ = self.submit()
        d.addCallback(lambda reply: order.append(reply.code))
        self.journal.commits["Q1"].callback(None)
        self.assertEqual(order, [250, "route"])

    def test_commitFails(self) -> None:
        """
        A commit that fails (our fault) gets a 4xx, the spooled body is
        dropped, and nothing is routed.
        """
        d, writer = self.submit()
        self.journal.commits["Q1"].errback(OSError(5, "I/O error"))
        reply = self.successResultOf(d)
        self.assertEqual((reply.code, reply.enhanced), (451, "4.3.0"))
        self.assertTrue(writer.aborted)
        self.assertEqual(self.router.routed, [])
        self.flushLoggedErrors(OSError)

    def test_inboundReject(self) -> None:
        """
        Mail from outside that its checks refuse gets their reply; its body
        is discarded and nothing is committed.
        """

        class Verdict:
            reject = RELAY_DENIED

        class Checks:
            def checkMessage(self, spf, message, header):
                return succeed(Verdict())

        self.intake = self.makeIntake(inbound=Checks())
        d, writer = self.submit(checks=InboundContext("spf", b"From: x\n\n"))
        self.assertEqual(self.successResultOf(d), RELAY_DENIED)
        self.assertTrue(writer.discarded)
        self.assertEqual(self.journal.commits, {})

    def test_routingRetried(self) -> None:
        """
        When routing itself fails, the message is routed again (as a
        recovery) a minute later, and only then marked done.
        """
        self.router.answers = [RuntimeError("queue unwritable")]
        d, _ = self.submit()
        self.journal.commits["Q1"].callback(None)
        self.assertEqual(self.successResultOf(d).code, 250)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.journal.done, [])
        self.clock.advance(ROUTE_RETRY_SECONDS)
        self.assertEqual(self.router.routed, [("Q1", False), ("Q1", True)])
        self.assertEqual(self.journal.done, ["Q1"])

    def test_bounceBeforeDone(self) -> None:
        """
        Recipients that failed for good are bounced (a report committed to
        the journal and routed) before the original is marked done; the
        null sender gets none.
        """
        self.router.answers = [[FailedRecipient(ALICE, "5.1.1", "550 5.1.1 no such user")]]
        d, _ = self.submit()
        self.journal.commits["Q1"].callback(None)
        [reportId] = [q for q in self.journal.commits if q != "Q1"]
        self.assertEqual(self.journal.done, [])
        self.journal.commits[reportId].callback(None)
        self.assertEqual(self.journal.done, [reportId, "Q1"])
        self.successResultOf(d)
        self.router.answers = [[FailedRecipient(ALICE, "5.1.1", "550 5.1.1 no such user")]]
        d, _ = self.submit(Envelope("", (ALICE,), "client.test", "192.0.2.7", 0.0))
        self.journal.commits["Q1"].callback(None)
        self.assertEqual(self.journal.done[-1], "Q1")
        self.assertEqual(len(self.journal.commits), 2)
