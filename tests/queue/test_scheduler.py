"""
Tests for L{qutemail.queue.scheduler} and the routing it drives
(L{qutemail.pipeline.router}, L{qutemail.queue.deferred}): deferral on a
full mailbox, retries on the schedule, bounces past the queue lifetime.

Everything runs on the stack of L{tests.support.buildStack}: an inline
runner and a L{Clock}, so each tick completes synchronously.
"""

import email
import email.utils
import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.message import Envelope, SpooledMessage
from qutemail.queue.deferred import DeferredQueue
from qutemail.message import BOUNCED, DEFERRED, PENDING, RecipientState
from qutemail.queue.journal import Journal, parseSegment
from qutemail.replies import LOCAL_ERROR, MAILBOX_FULL
from tests.support import buildStack

ALICE = "alice@example.test"
BOB = "bob@example.test"
BODY = b"Subject: over quota\nFrom: <bob@example.test>\n\n" + b"x" * 200 + b"\n"


class StackTestsMixin:
    """
    A stack with alice's quota too small for L{BODY}.
    """

    lifetime = 5 * 86400.0

    def setUp(self):
        """
        Build the stack and shrink alice's quota.
        """
        self.stack = buildStack(self.mktemp(), lifetime=self.lifetime)
        self.stack.users.setQuota(ALICE, 100)
        self.deferredDir = os.path.join(self.stack.dataDir, "queue", "deferred")
        self.journalDir = os.path.join(self.stack.dataDir, "queue", "journal")
        self.addCleanup(self.stack.journal._closeFile)

    def submit(self, sender: str = BOB, recipients=(ALICE,), body: bytes = BODY) -> SpooledMessage:
        """
        Commit a message to the journal and route it, as the listener does
        after DATA.

        @return: the message.
        """
        env = Envelope(sender, tuple(recipients), "client.test", "192.0.2.7", self.stack.clock.seconds())
        message = SpooledMessage(self.stack.intake.queueIds.next(), env, len(body), inline=body)
        self.assertEqual(self.successResultOf(self.stack.intake.accept(message)).code, 250)
        return message

    def startScheduler(self) -> None:
        """
        Start the scheduler service (its first tick runs now).
        """
        self.stack.scheduler.startService()
        self.addCleanup(self.stack.scheduler.stopService)

    def state(self, queueId: str, index: int = 0) -> RecipientState:
        """
        @return: one recipient's state in the deferred queue.
        """
        return self.stack.queue.entries[queueId].recipients[index]

    def attemptsOf(self, queueId: str, address: str) -> int:
        """
        @return: the attempts made for one recipient of a queued message.
        """
        [r] = [r for r in self.stack.queue.entries[queueId].recipients if r.address == address]
        return r.attempts

    def journalRecords(self) -> tuple[list[str], set[str]]:
        """
        @return: the queue ids of every C{M} record and every C{D} record
            in the journal's segments.
        """
        messages, done = [], set()
        for name in sorted(os.listdir(self.journalDir)):
            with open(os.path.join(self.journalDir, name), "rb") as f:
                m, d, torn = parseSegment(f.read())
            self.assertFalse(torn)
            messages += [x.queueId for x in m]
            done |= d
        return messages, done

    def allStoredFiles(self) -> list[str]:
        """
        @return: every file in any Maildir's C{new/}.
        """
        found = []
        for root, dirs, files in os.walk(os.path.join(self.stack.dataDir, "mail")):
            if os.path.basename(root) == "new":
                found += [os.path.join(root, f) for f in files]
        return found


class DeferralTests(StackTestsMixin, SynchronousTestCase):
    """
    A local delivery that fails for now goes to the deferred queue.
    """

    def test_overQuotaDeferred(self):
        """
        A message to alice over her quota becomes a deferred entry with the
        452 4.2.2 reply and its first retry 300 s on; nothing is stored, the
        entry's files are on disk, and the journal marks it done.
        """
        message = self.submit()
        qid = message.queueId
        self.assertEqual(list(self.stack.queue.entries), [qid])
        self.assertEqual(self.state(qid), RecipientState(ALICE, 0, DEFERRED, 1, 300.0, str(MAILBOX_FULL)))
        self.assertIn("4.2.2", self.state(qid).lastReply)
        self.assertEqual(self.stack.newFiles(ALICE), [])
        self.assertEqual(sorted(os.listdir(self.deferredDir)), [qid + ".json", qid + ".msg"])
        with open(os.path.join(self.deferredDir, qid + ".msg"), "rb") as f:
            self.assertEqual(f.read(), BODY)
        self.stack.clock.advance(1)
        self.assertEqual(self.journalRecords(), ([qid], {qid}))
        self.assertEqual(Journal(self.journalDir, InlineRunner(), self.stack.clock).recover(), [])

    def test_onlyFailingRecipientDeferred(self):
        """
        Of alice (over quota) and bob, bob gets the message at once and only
        alice, with her envelope index, is queued.
        """
        message = self.submit(recipients=(BOB, ALICE))
        self.assertEqual(len(self.stack.newFiles(BOB)), 1)
        self.assertEqual(self.stack.queue.entries[message.queueId].recipients,
                         [RecipientState(ALICE, 1, DEFERRED, 1, 300.0, str(MAILBOX_FULL))])

    def test_remoteRecipientQueuedForRelay(self):
        """
        A remote recipient is queued in the C{relay} state, not attempted.
        """
        message = self.submit(recipients=("x@remote.test",))
        [r] = self.stack.queue.entries[message.queueId].recipients
        self.assertEqual((r.address, r.state, r.attempts), ("x@remote.test", PENDING, 0))

    def test_unknownUserBouncedAtOnce(self):
        """
        A recipient with no account (removed after RCPT) is bounced at once
        to a local sender, and nothing is queued.
        """
        self.stack.users.removeUser(ALICE)
        self.submit()
        self.assertEqual(self.stack.queue.entries, {})
        [bounce] = self.stack.newFiles(BOB)
        self.assertIn(b"Status: 5.1.1\n", bounce)

    def test_loadRestoresEntry(self):
        """
        A deferred queue loaded from disk after a restart has the same
        entry, with the body now read from its C{.msg} file.
        """
        message = self.submit()
        queue = DeferredQueue(self.deferredDir, InlineRunner())
        [entry] = queue.load()
        self.assertEqual(entry.recipients, self.stack.queue.entries[message.queueId].recipients)
        self.assertEqual(entry.message.envelope, message.envelope)
        self.assertEqual(entry.message.path, os.path.join(self.deferredDir, message.queueId + ".msg"))


class RetryTests(StackTestsMixin, SynchronousTestCase):
    """
    The scheduler retries deferred recipients on the schedule.
    """

    def test_deliveredAfterQuotaRaised(self):
        """
        Once the quota is raised, the retry after the first interval stores
        the message exactly once and removes the entry and its files.
        """
        message = self.submit()
        self.startScheduler()
        self.stack.users.setQuota(ALICE, None)
        self.stack.clock.advance(299)
        self.assertEqual(self.stack.newFiles(ALICE), [])
        self.assertEqual(self.state(message.queueId).attempts, 1)
        self.stack.clock.advance(1)
        self.assertEqual(self.stack.newFiles(ALICE), [b"Return-Path: <bob@example.test>\n" + BODY])
        self.assertEqual(self.stack.queue.entries, {})
        self.assertEqual(os.listdir(self.deferredDir), [])
        self.stack.clock.advance(3 * 1200)
        self.assertEqual(len(self.stack.newFiles(ALICE)), 1)

    def test_retryTimes(self):
        """
        A recipient still over quota is retried at +300 s and +900 s, each
        time waiting for the next interval of the schedule.
        """
        message = self.submit()
        qid = message.queueId
        self.startScheduler()
        self.stack.clock.advance(300)
        self.assertEqual((self.state(qid).attempts, self.state(qid).nextAttempt), (2, 900.0))
        self.stack.clock.advance(599)
        self.assertEqual((self.state(qid).attempts, self.state(qid).nextAttempt), (2, 900.0))
        self.stack.clock.advance(1)
        self.assertEqual((self.state(qid).attempts, self.state(qid).nextAttempt), (3, 2100.0))
        self.stack.clock.advance(1200)
        self.assertEqual((self.state(qid).attempts, self.state(qid).nextAttempt), (4, 3300.0))
        self.assertEqual(self.state(qid).lastReply, str(MAILBOX_FULL))
        self.assertEqual(self.stack.newFiles(ALICE), [])
        with open(os.path.join(self.deferredDir, qid + ".json"), "rb") as f:
            self.assertIn(b'"nextAttempt": 3300.0', f.read())

    def test_flush(self):
        """
        C{flush} makes every deferred recipient due and retries at once.
        """
        message = self.submit()
        self.stack.users.setQuota(ALICE, None)
        self.stack.scheduler.flush()
        self.assertEqual(len(self.stack.newFiles(ALICE)), 1)
        self.assertNotIn(message.queueId, self.stack.queue.entries)


class ExpiryTests(StackTestsMixin, SynchronousTestCase):
    """
    A recipient still failing past the queue lifetime is bounced.
    """

    lifetime = 1000.0

    def expire(self, message: SpooledMessage) -> None:
        """
        Run the retries at 300 s and 900 s (inside the lifetime) and the one
        at 2100 s (past it).
        """
        self.startScheduler()
        self.stack.clock.advance(300)
        self.stack.clock.advance(600)
        self.assertEqual(self.attemptsOf(message.queueId, ALICE), 3)
        self.stack.clock.advance(1200)

    def test_bounceToLocalSender(self):
        """
        Past the lifetime the entry is dropped and exactly one RFC 3464
        report reaches the local sender: multipart/report of type
        delivery-status, naming alice with C{Action: failed} and the last
        reply, and quoting the original header.
        """
        message = self.submit()
        self.expire(message)
        self.assertEqual(self.stack.queue.entries, {})
        self.assertEqual(os.listdir(self.deferredDir), [])
        [stored] = self.stack.newFiles(BOB)
        self.assertTrue(stored.startswith(b"Return-Path: <>\n"))
        report = email.message_from_bytes(stored)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        self.assertEqual(report["To"], "<bob@example.test>")
        parts = report.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        perMessage, perRecipient = parts[1].get_payload()
        self.assertEqual(perMessage["Reporting-MTA"], "dns; mail.example.test")
        self.assertEqual(perMessage["X-QutEmail-Queue-ID"], message.queueId)
        self.assertEqual(dict(perRecipient.items()), {
            "Final-Recipient": "rfc822; alice@example.test",
            "Action": "failed",
            "Status": "5.4.7",
            "Diagnostic-Code": "smtp; 452 4.2.2 Mailbox full (gave up after 4 attempts: Delivery time expired)",
        })
        self.assertEqual(parts[2].get_payload(), "Subject: over quota\nFrom: <bob@example.test>\n")

        self.stack.clock.advance(5 * 1200)
        self.assertEqual(len(self.stack.newFiles(BOB)), 1)
        self.assertEqual(self.stack.newFiles(ALICE), [])

    def test_bounceIsJournalled(self):
        """
        The bounce is committed to the journal as a message of its own from
        the null sender, and both it and the original end up done.
        """
        message = self.submit()
        self.expire(message)
        self.stack.clock.advance(1)
        ids, done = self.journalRecords()
        self.assertEqual(len(ids), 2)
        self.assertEqual(ids[0], message.queueId)
        self.assertEqual(done, set(ids))

    def test_noBounceForNullSender(self):
        """
        A message from the null sender is dropped silently past the
        lifetime: no report is stored or journalled anywhere.
        """
        message = self.submit(sender="")
        self.expire(message)
        self.assertEqual(self.stack.queue.entries, {})
        self.assertEqual(os.listdir(self.deferredDir), [])
        self.assertEqual(self.allStoredFiles(), [])
        self.assertEqual(self.journalRecords()[0], [message.queueId])

    def test_deliveredOnLastAttempt(self):
        """
        An attempt made past the lifetime that succeeds delivers instead of
        bouncing.
        """
        message = self.submit()
        self.startScheduler()
        self.stack.clock.advance(300)
        self.stack.clock.advance(600)
        self.stack.users.setQuota(ALICE, None)
        self.stack.clock.advance(1200)
        self.assertEqual(len(self.stack.newFiles(ALICE)), 1)
        self.assertEqual(self.stack.newFiles(BOB), [])
        self.assertNotIn(message.queueId, self.stack.queue.entries)

    def test_bouncedStateWithOtherPending(self):
        """
        When one recipient is bounced and another still waits for the relay,
        the entry stays with the first marked C{bounced}.
        """
        message = self.submit(recipients=(ALICE, "x@remote.test"))
        self.expire(message)
        states = [(r.address, r.state) for r in self.stack.queue.entries[message.queueId].recipients]
        self.assertEqual(states, [("x@remote.test", PENDING), (ALICE, BOUNCED)])
        self.assertEqual(len(self.stack.newFiles(BOB)), 1)


    def test_bounceRetriedAfterJournalFailure(self):
        """
        When the bounce cannot be committed to the journal (disk error), the
        recipient is not lost: a later tick sends the bounce.
        """
        message = self.submit()
        self.startScheduler()
        self.stack.clock.advance(300)
        self.stack.clock.advance(600)

        def broken(*args):
            """
            Fail as a dying disk would.
            """
            raise OSError(5, "Input/output error")

        self.stack.journal._writeBatch = broken
        self.stack.clock.advance(1200)
        self.flushLoggedErrors(OSError)
        del self.stack.journal._writeBatch
        for _ in range(10):
            self.stack.clock.advance(1200)
        self.assertEqual(len(self.stack.newFiles(BOB)), 1)
        self.assertNotIn(message.queueId, self.stack.queue.entries)



class DelayWarningTests(StackTestsMixin, SynchronousTestCase):
    """
    C{[relay] delay_warning}: one C{Action: delayed} notice per message.
    """

    lifetime = 5000.0

    def setUp(self):
        """
        The stack, with delay notices after 1000 s.
        """
        StackTestsMixin.setUp(self)
        self.stack.scheduler.delayWarning = 1000.0

    def reports(self) -> list:
        """
        @return: the reports in bob's mailbox, parsed.
        """
        return [email.message_from_bytes(b) for b in self.stack.newFiles(BOB)]

    def test_oneNoticeThenBounce(self):
        """
        Retried at 300 and 900 s, nothing yet; at the 2100 s retry the
        message has waited past 1000 s and bob gets one delay notice
        naming alice with C{Action: delayed}, her last 4.2.2 reply and
        the retry deadline; later retries send none; at the lifetime the
        bounce still comes.
        """
        message = self.submit()
        self.startScheduler()
        self.stack.clock.advance(300)
        self.stack.clock.advance(600)
        self.assertEqual(self.reports(), [])
        self.stack.clock.advance(1200)
        [notice] = self.reports()
        self.assertEqual(notice["Subject"], "Delayed Mail (still being retried)")
        text, status, headers = notice.get_payload()
        self.assertIn("You do not need to send it again.", text.get_payload())
        perMessage, perRecipient = status.get_payload()
        self.assertEqual(perMessage["X-QutEmail-Queue-ID"], message.queueId)
        self.assertEqual((perRecipient["Final-Recipient"], perRecipient["Action"], perRecipient["Status"]),
                         ("rfc822; alice@example.test", "delayed", "4.2.2"))
        self.assertEqual(perRecipient["Will-Retry-Until"],
                         email.utils.formatdate(message.envelope.receivedAt + self.lifetime))
        self.assertTrue(self.stack.queue.entries[message.queueId].delayWarned)
        self.stack.clock.advance(2400)
        self.assertEqual(len(self.reports()), 1)
        self.stack.clock.advance(4800)
        self.assertEqual(self.stack.queue.entries, {})
        self.assertEqual([r.get_payload()[1].get_payload()[1]["Action"] for r in self.reports()],
                         ["delayed", "failed"])

    def test_notTwiceAfterRestart(self):
        """
        The notice is recorded in the entry on disk: a queue loaded again
        (a restart) does not send a second one.
        """
        message = self.submit()
        self.startScheduler()
        for step in (300, 600, 1200):
            self.stack.clock.advance(step)
        self.assertEqual(len(self.reports()), 1)
        reloaded = DeferredQueue(self.deferredDir, InlineRunner())
        reloaded.load()
        self.assertTrue(reloaded.entries[message.queueId].delayWarned)
        self.stack.queue.entries.clear()
        self.stack.queue.load()
        self.stack.clock.advance(2400)
        self.assertEqual(len(self.reports()), 1)

    def test_nullSenderAndOff(self):
        """
        Nothing for the null sender, and nothing with C{delay_warning = 0}.
        """
        self.submit(sender="")
        self.startScheduler()
        for step in (300, 600, 1200):
            self.stack.clock.advance(step)
        self.assertEqual(self.allStoredFiles(), [])
        self.stack.scheduler.delayWarning = 0.0
        self.submit()
        for step in (300, 600, 1200, 2400):
            self.stack.clock.advance(step)
        self.assertEqual(self.reports(), [])


class FailingTickTests(StackTestsMixin, SynchronousTestCase):
    """
    An error in a tick is logged and the loop goes on.
    """

    def test_attemptRaises(self):
        """
        An attempt that raises is logged, counts as a temporary local error
        (451 4.3.0) with the next interval, and the next retry still runs.
        """
        message = self.submit()
        self.startScheduler()

        async def broken(*args):
            """
            Fail the attempt with a programming error.
            """
            raise RuntimeError("store exploded")

        self.stack.local._attempt = broken
        self.stack.clock.advance(300)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        state = self.state(message.queueId)
        self.assertEqual((state.attempts, state.nextAttempt, state.lastReply), (2, 900.0, str(LOCAL_ERROR)))

        del self.stack.local._attempt
        self.stack.users.setQuota(ALICE, None)
        self.stack.clock.advance(600)
        self.assertEqual(len(self.stack.newFiles(ALICE)), 1)
        self.assertEqual(self.stack.queue.entries, {})

    def test_tickRaises(self):
        """
        A tick that fails outright is logged as a failed tick, and later
        ticks still run.
        """
        message = self.submit()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.startScheduler()

        def broken(now, limit, busy=()):
            """
            Fail the whole tick.
            """
            raise RuntimeError("index corrupt")

        self.stack.queue.due = broken
        for _ in range(10):
            self.stack.clock.advance(30)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 10)
        self.assertEqual([e["log_format"] for e in events if "log_failure" in e], ["retry tick failed"] * 10)
        self.assertEqual(self.state(message.queueId).attempts, 1)

        del self.stack.queue.due
        self.stack.users.setQuota(ALICE, None)
        self.stack.clock.advance(30)
        self.assertEqual(len(self.stack.newFiles(ALICE)), 1)
        self.assertEqual(self.stack.queue.entries, {})

    def test_stopService(self):
        """
        After C{stopService} no more ticks run.
        """
        self.submit()
        self.stack.scheduler.startService()
        self.stack.scheduler.stopService()
        self.stack.users.setQuota(ALICE, None)
        self.stack.clock.advance(3600)
        self.assertEqual(self.stack.newFiles(ALICE), [])


class OverlappingTickTests(StackTestsMixin, SynchronousTestCase):
    """
    Two ticks that overlap (the loop's, and a kick for fresh mail) never
    try one entry twice at once: a remote recipient would get the message
    twice (seen with the inter-site benchmark before the fix).
    """

    def test_oneAttemptPerEntry(self):
        """
        Both ticks wait on C{due()} and are given the same entry; only the
        first starts an attempt.
        """
        from twisted.internet.defer import Deferred

        message = self.submit()
        self.startScheduler()
        answers = []
        realDue = self.stack.queue.due

        def slowDue(now, limit, busy=()):
            """
            Answer later, with what the queue says now.
            """
            d = Deferred()
            answers.append((d, realDue(now, limit, busy)))
            return d

        attempts = []
        release = Deferred()
        realRetry = self.stack.scheduler._retryEntry

        async def countingRetry(entry, now):
            """
            Note the attempt, and keep it in progress until released.
            """
            attempts.append(entry.queueId)
            await release
            await realRetry(entry, now)

        self.stack.scheduler._retryEntry = countingRetry
        self.stack.queue.due = slowDue
        self.stack.users.setQuota(ALICE, None)
        self.stack.clock.advance(300)
        self.stack.scheduler.kick()
        self.stack.clock.advance(0)
        self.assertEqual(len(answers), 2)
        for d, result in answers:
            d.callback(self.successResultOf(result))
        self.assertEqual(attempts, [message.queueId])
        release.callback(None)
        self.assertEqual(len(self.stack.newFiles(ALICE)), 1)
