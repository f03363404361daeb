"""
Tests for L{qutemail.content.scanner}: two answers make one verdict, a
scanner that does not answer in time is an error, and C{on_error} says
what an error costs.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.content.results import ClamdResult, RspamdResult, ScanError
from qutemail.content.scanner import ContentScanner, decide
from qutemail.message import Envelope, SpooledMessage

HAM = RspamdResult("no action", 1.5, 15.0)
SPAM = RspamdResult("add header", 8.0, 15.0, (("QT_TEST_SPAM", 8.0),))
REJECTED = RspamdResult("reject", 20.0, 15.0, (("QT_TEST_REJECT", 20.0),), smtpMessage="Go away\r\nnow")
SOFT = RspamdResult("soft reject", 0.0, 15.0, smtpMessage="Later")
CLEAN = ClamdResult()
INFECTED = ClamdResult("Eicar-Test-Signature")
DOWN = ScanError("rspamd: request failed: ConnectionRefusedError")
MESSAGE = SpooledMessage("Q1", Envelope("a@remote.test", ("b@example.test",)), 10, inline=b"Subject: x\n")


class DecideTests(SynchronousTestCase):
    """
    L{decide}: which answer wins.
    """

    def test_clean(self) -> None:
        """
        Ham and a clean scan: delivered to the INBOX with both fields.
        """
        verdict = decide(HAM, CLEAN, "tempfail")
        self.assertEqual((verdict.reject, verdict.folder), (None, ""))
        self.assertEqual(verdict.headers, "X-Spamd-Result: default: False [1.50 / 15.00]\n"
                                          "X-Spam-Status: No, score=1.50 required=15.00 action=no action\n"
                                          "X-Virus-Scanned: clamd; clean\n")
        self.assertEqual(verdict.summary, "rspamd=no action (1.50/15.00), clamd=clean")

    def test_malwareWinsOverEverything(self) -> None:
        """
        Malware is refused with 554 5.7.0 naming it, whatever rspamd said
        or whether it answered.
        """
        for rspamd in (HAM, REJECTED, SOFT, DOWN, None):
            reply = decide(rspamd, INFECTED, "tempfail").reject
            self.assertEqual((reply.code, reply.enhanced), (554, "5.7.0"), rspamd)
            self.assertIn("Eicar-Test-Signature", reply.text)

    def test_rejectWithRspamdsText(self) -> None:
        """
        rspamd's reject is 550 5.7.1 with its text, made one line.
        """
        reply = decide(REJECTED, CLEAN, "tempfail").reject
        self.assertEqual((reply.code, reply.enhanced, reply.text), (550, "5.7.1", "Go away now"))
        self.assertEqual(decide(REJECTED, DOWN, "tempfail").reject.code, 550)

    def test_softReject(self) -> None:
        """
        Soft reject and greylisting are 451 4.7.1.
        """
        reply = decide(SOFT, CLEAN, "tempfail").reject
        self.assertEqual((reply.code, reply.enhanced, reply.text), (451, "4.7.1", "Later"))
        reply = decide(RspamdResult("greylist", 4.0, 15.0), CLEAN, "tempfail").reject
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.1"))

    def test_spamToJunk(self) -> None:
        """
        "add header" and "rewrite subject" file the message in Junk.
        """
        self.assertEqual(decide(SPAM, CLEAN, "tempfail").folder, "Junk")
        self.assertEqual(decide(RspamdResult("rewrite subject", 7.0, 15.0), CLEAN, "tempfail").folder, "Junk")
        self.assertIn("X-Spam-Status: Yes, score=8.00", decide(SPAM, None, "tempfail").headers)

    def test_errorTempfails(self) -> None:
        """
        A scanner without an answer is 451 4.3.0 under C{tempfail}.
        """
        for rspamd, clamd in ((DOWN, CLEAN), (HAM, ScanError("clamd: no answer within 30s"))):
            verdict = decide(rspamd, clamd, "tempfail")
            self.assertEqual((verdict.reject.code, verdict.reject.enhanced), (451, "4.3.0"))
            self.assertEqual(len(verdict.errors), 1)

    def test_errorAccepted(self) -> None:
        """
        Under C{accept}, the message goes on, with a field saying what was
        not known.
        """
        verdict = decide(DOWN, CLEAN, "accept")
        self.assertIsNone(verdict.reject)
        self.assertIn("X-Spam-Status: Unknown, rspamd: request failed", verdict.headers)
        self.assertEqual(verdict.summary, "rspamd=error, clamd=clean")

    def test_fieldsCannotBeInjected(self) -> None:
        """
        Text from a scanner cannot start a header field of its own.
        """
        verdict = decide(RspamdResult("no action", 0.0, 15.0, (("A\nX-Evil: 1", 1.0),)),
                         ClamdResult("Bad\r\nX-Evil: 2"), "tempfail")
        self.assertNotIn("\nX-Evil", verdict.headers)
        self.assertIn("A X-Evil: 1(1.00)", verdict.headers)


class ContentScannerTests(SynchronousTestCase):
    """
    L{ContentScanner}: both scanners at once, each within its timeout.
    """

    def setUp(self) -> None:
        """
        A clock and scanners whose answers the test sets.
        """
        self.clock = Clock()
        self.calls: list[str] = []

    def scanner(self, rspamd, clamd, **kwargs) -> ContentScanner:
        """
        @param rspamd: what rspamd's call returns (a Deferred).
        @param clamd: what clamd's call returns.
        """

        class Client:
            def __init__(client, name, result):
                client.name, client.result = name, result

            def check(client, message):
                self.calls.append(client.name)
                return client.result

            scan = check

        return ContentScanner(clock=self.clock, rspamd=Client("rspamd", rspamd), clamd=Client("clamd", clamd),
                              maxScanBytes=100, timeoutSeconds=5, **kwargs)

    def test_concurrent(self) -> None:
        """
        Both scanners are asked before either answers.
        """
        rspamd, clamd = Deferred(), Deferred()
        d = self.scanner(rspamd, clamd).scan(MESSAGE)
        self.assertEqual(self.calls, ["rspamd", "clamd"])
        rspamd.callback(HAM)
        self.assertNoResult(d)
        clamd.callback(CLEAN)
        self.assertIsNone(self.successResultOf(d).reject)

    def test_timeout(self) -> None:
        """
        A scanner silent past the timeout is cancelled and counts as an
        error: 451 4.3.0, logged.
        """
        silent = Deferred()
        d = self.scanner(succeed(HAM), silent).scan(MESSAGE)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        verdict = self.successResultOf(d)
        self.assertEqual((verdict.reject.code, verdict.reject.enhanced), (451, "4.3.0"))
        self.assertEqual(verdict.errors, ("clamd: no answer within 5s",))

    def test_timeoutAccepted(self) -> None:
        """
        Under C{on_error = accept}, the silent scanner's message goes on.
        """
        d = self.scanner(Deferred(), succeed(CLEAN), onError="accept").scan(MESSAGE)
        self.clock.advance(6)
        verdict = self.successResultOf(d)
        self.assertIsNone(verdict.reject)
        self.assertIn("X-Spam-Status: Unknown, rspamd: no answer within 5s", verdict.headers)

    def test_unexpectedFailure(self) -> None:
        """
        A failure that is not a L{ScanError} is logged and is an error too.
        """
        d = self.scanner(fail(ZeroDivisionError("bug")), succeed(CLEAN)).scan(MESSAGE)
        self.assertEqual(self.successResultOf(d).reject.code, 451)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_tooLargeSkipped(self) -> None:
        """
        A message over C{max_scan_size} is not sent to either scanner; it
        is delivered with fields saying so.
        """
        big = SpooledMessage("Q2", MESSAGE.envelope, 101, path="/nonexistent")
        verdict = self.successResultOf(self.scanner(Deferred(), Deferred()).scan(big))
        self.assertEqual(self.calls, [])
        self.assertIsNone(verdict.reject)
        self.assertIn("X-Virus-Scanned: clamd; not scanned, 101 bytes is over max_scan_size (100)\n", verdict.headers)

    def test_wants(self) -> None:
        """
        Mail from outside is always scanned; our users' mail only under
        C{scan_submission}.
        """
        outside = Envelope("a@remote.test", ("b@example.test",))
        ours = Envelope("b@example.test", ("c@example.test",), authenticated="b@example.test")
        self.assertEqual([self.scanner(None, None).wants(e) for e in (outside, ours)], [True, True])
        quiet = self.scanner(None, None, scanSubmission=False)
        self.assertEqual([quiet.wants(e) for e in (outside, ours)], [True, False])
