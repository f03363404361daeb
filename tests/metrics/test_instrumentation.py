"""
The parts that count: sessions, AUTH, quota at RCPT and at delivery, the
deferred queue, the inbound checks and the content scanners each move
their metric.
"""

from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.content.results import ClamdResult, RspamdResult, ScanError
from qutemail.content.scanner import ContentScanner
from qutemail.metrics.registry import Metrics
from qutemail.policy.envelope import RecipientPolicy
from qutemail.policy.sessions import SessionLimits
from qutemail.policy.throttle import AuthThrottle
from qutemail.replies import ReplyError
from tests.metrics.test_registry import value
from tests.policy.test_inbound import MESSAGE, checks
from tests.queue.test_scheduler import ALICE, StackTestsMixin


class SessionAndAuthTests(SynchronousTestCase):
    """
    L{SessionLimits} and L{AuthThrottle}.
    """

    def test_sessions(self) -> None:
        """
        An admitted session counts until it is released; a refused one
        never does.
        """
        metrics = Metrics(private=True)
        limits = SessionLimits(maxSessions=1, metrics=metrics)
        ticket = limits.admit("smtp", "192.0.2.1", "submission")
        limits.admit("smtp", "192.0.2.2", "submission").release()
        self.assertEqual(value(metrics, "qutemail_sessions", protocol="smtp", listener="submission"), 1)
        ticket.release()
        ticket.release()
        self.assertEqual(value(metrics, "qutemail_sessions", protocol="smtp", listener="submission"), 0)

    def test_auth(self) -> None:
        """
        Failures and successes count.
        """
        metrics = Metrics(private=True)
        throttle = AuthThrottle(metrics=metrics)
        throttle.failed("192.0.2.1", 0.0, "bob")
        throttle.failed("192.0.2.1", 1.0, "bob")
        throttle.succeeded("192.0.2.1", "bob")
        self.assertEqual([value(metrics, "qutemail_auth_attempts_total", result=r) for r in ("failure", "success")],
                         [2, 1])


class QuotaAtRcptTests(SynchronousTestCase):
    """
    L{RecipientPolicy} counts a full mailbox at RCPT.
    """

    def test_full(self) -> None:
        """
        RCPT to a full mailbox counts one quota refusal.
        """
        metrics = Metrics(private=True)

        class Users:
            def getAccount(self, address):
                return succeed(object())

        class Store:
            def isFull(self, account, extra):
                return succeed(True)

        policy = RecipientPolicy(Users(), Store(), ("example.test",), 1000, metrics)
        d = ensureDeferred(policy.checkRecipient(ALICE, None, None))
        self.failureResultOf(d, ReplyError)
        self.assertEqual(value(metrics, "qutemail_quota_refusals_total", stage="rcpt"), 1)


class QueueTests(StackTestsMixin, SynchronousTestCase):
    """
    The router and the scheduler: a delivery refused for quota is deferred,
    and the queue's size and oldest age follow the clock.
    """

    def test_deferredForQuota(self) -> None:
        """
        Alice's mailbox is too small: one deferral, one quota refusal at
        delivery; the scheduler then reports one deferred message whose
        age grows with the clock.
        """
        metrics = Metrics(private=True)
        self.stack.router.metrics = metrics
        self.stack.scheduler.metrics = metrics
        self.submit()
        self.assertEqual(value(metrics, "qutemail_recipients_total", outcome="deferred"), 1)
        self.assertEqual(value(metrics, "qutemail_quota_refusals_total", stage="delivery"), 1)
        self.startScheduler()
        self.assertEqual(value(metrics, "qutemail_queue_messages", state="deferred"), 1)
        self.stack.clock.advance(self.stack.scheduler.intervalSeconds)
        self.assertEqual(value(metrics, "qutemail_queue_oldest_message_age_seconds"),
                         self.stack.scheduler.intervalSeconds)


class InboundAndContentTests(SynchronousTestCase):
    """
    L{InboundChecks} and L{ContentScanner}.
    """

    def test_inbound(self) -> None:
        """
        SPF at MAIL, then DKIM and DMARC at the end of DATA, by result.
        """
        metrics = Metrics(private=True)
        inbound = checks(spf="softfail", dkim=("pass", "b.test"), dmarc=("pass", "none"), metrics=metrics)
        spf = self.successResultOf(ensureDeferred(inbound.checkSender("192.0.2.1", "x@b.test", "b.test")))
        self.successResultOf(ensureDeferred(inbound.checkMessage(spf, MESSAGE, b"From: x@b.test\n")))
        self.assertEqual([value(metrics, "qutemail_inbound_checks_total", check=c, result=r)
                          for c, r in (("spf", "softfail"), ("dkim", "pass"), ("dmarc", "pass"))], [1, 1, 1])

    def test_scans(self) -> None:
        """
        Each scanner's verdict counts: rspamd's action, clamd's clean or
        found, and errors.
        """
        metrics = Metrics(private=True)

        class Answer:
            def __init__(self, result):
                self.result = result

            def check(self, message):
                return succeed(self.result)

            scan = check

        for rspamd, clamd in ((RspamdResult("add header", 8.0, 15.0), ClamdResult()),
                              (ScanError("rspamd: down"), ClamdResult("Eicar"))):
            scanner = ContentScanner(clock=Clock(), rspamd=Answer(rspamd), clamd=Answer(clamd), maxScanBytes=10**6,
                                     metrics=metrics)
            self.successResultOf(scanner.scan(MESSAGE))
        self.assertEqual([value(metrics, "qutemail_content_scans_total", scanner=s, verdict=v)
                          for s, v in (("rspamd", "add header"), ("rspamd", "error"), ("clamd", "clean"),
                                       ("clamd", "found"))], [1, 1, 1, 1])
