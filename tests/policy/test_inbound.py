"""
Tests for L{qutemail.policy.inbound}: what each combination of SPF, DKIM
and DMARC results gets.  The checkers here hand back fixed results; the
real ones, over real DNS and sockets, are in
L{tests.integration.test_inbound}.
"""

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.pipeline.dkimverify import DKIMResult
from qutemail.message import Envelope, SpooledMessage
from qutemail.policy import inbound
from qutemail.policy.dmarc import DMARCResult, fromFieldDomain, headerFromDomain
from qutemail.policy.inbound import JUNK_FOLDER, InboundChecks
from qutemail.policy.spf import SPFResult
from qutemail.replies import ReplyError

HEADER = b"From: ceo@a.test\nSubject: x\n\n"
MESSAGE = SpooledMessage("Q1", Envelope("x@b.test", ("alice@example.test",)), 40, inline=HEADER + b"body\n")


@attrs.define
class Fixed:
    """
    A checker answering every question with one result, remembering the
    questions.
    """

    result: object
    asked: list = attrs.Factory(list)

    def check(self, *args):
        """SPF."""
        self.asked.append(args)
        return succeed(self.result)

    def verifyBytes(self, data):
        """DKIM."""
        self.asked.append(data)
        return self.result if isinstance(self.result, Deferred) else succeed(self.result)

    def policyFor(self, fromDomain):
        """DMARC policy discovery: nothing to find."""
        return succeed(None)

    def evaluate(self, fromDomain, spf, dkim, found=None):
        """DMARC."""
        self.asked.append((fromDomain, spf, dkim))
        return succeed(self.result)


@attrs.define
class PolicyDMARC:
    """
    A DMARC evaluator noting the policy lookups and what evaluations are
    given.
    """

    policy: object = attrs.Factory(object)
    asked: list = attrs.Factory(list)
    given: list = attrs.Factory(list)

    def policyFor(self, fromDomain):
        """Note the lookup."""
        self.asked.append(fromDomain)
        return succeed(self.policy)

    def evaluate(self, fromDomain, spf, dkim, found=None):
        """Note the policy given; pass."""
        self.given.append(found)
        return succeed(DMARCResult("pass", "none", fromDomain))


def checks(spf="pass", dkim=("none", ""), dmarc=("pass", "none"), **kwargs) -> InboundChecks:
    """
    Checks whose SPF, DKIM and DMARC checkers give fixed results.
    """
    return InboundChecks(
        hostname="mx.example.test",
        spf=Fixed(SPFResult(spf, "why", "b.test", "mailfrom")),
        dkim=Fixed((DKIMResult(dkim[0], dkim[1], "sel" if dkim[1] else "", ""),)),
        dmarc=Fixed(DMARCResult(dmarc[0], dmarc[1], "a.test")),
        **kwargs,
    )


def run(coroutine):
    """
    Run a coroutine that finishes at once; return its result or raise.
    """
    return SynchronousTestCase().successResultOf(ensureDeferred(coroutine))


class SenderTests(SynchronousTestCase):
    """
    L{InboundChecks.checkSender}: SPF at MAIL.
    """

    def test_failRejected(self) -> None:
        """
        C{fail} is 550 5.7.23 by default; tagged only when configured so.
        """
        d = ensureDeferred(checks(spf="fail").checkSender("192.0.2.9", "x@b.test", "h.test"))
        reply = self.failureResultOf(d, ReplyError).value.reply
        self.assertEqual((reply.code, reply.enhanced), (550, "5.7.23"))
        self.assertIn("b.test", reply.text)
        result = run(checks(spf="fail", spfFail="tag").checkSender("192.0.2.9", "x@b.test", "h.test"))
        self.assertEqual(result.result, "fail")

    def test_temperror(self) -> None:
        """
        C{temperror} is 451 4.4.3, whatever the policy.
        """
        for policy in ("reject", "tag"):
            d = ensureDeferred(checks(spf="temperror", spfFail=policy).checkSender("192.0.2.9", "x@b.test", "h"))
            reply = self.failureResultOf(d, ReplyError).value.reply
            self.assertEqual((reply.code, reply.enhanced), (451, "4.4.3"))

    def test_othersPass(self) -> None:
        """
        softfail, neutral, none and permerror are recorded, not refused.
        """
        for result in ("softfail", "neutral", "none", "permerror"):
            self.assertEqual(run(checks(spf=result).checkSender("192.0.2.9", "x@b.test", "h")).result, result)

    def test_traceHeader(self) -> None:
        """
        The Received-SPF field is one LF-terminated line naming our host.
        """
        c = checks()
        header = c.traceHeader(SPFResult("pass", "", "b.test", "mailfrom"), "192.0.2.9", "x@b.test", "h.test")
        self.assertTrue(header.startswith(b"Received-SPF: pass "))
        self.assertTrue(header.endswith(b"\n"))
        self.assertEqual(header.count(b"\n"), 1)
        self.assertIn(b"receiver=mx.example.test", header)


class MessageTests(SynchronousTestCase):
    """
    L{InboundChecks.checkMessage}: DKIM and DMARC after DATA.
    """

    def verdict(self, c: InboundChecks, header: bytes = HEADER):
        """
        The verdict on L{MESSAGE} after an SPF pass.
        """
        return run(c.checkMessage(SPFResult("pass", "", "b.test", "mailfrom"), MESSAGE, header))

    def test_passRecorded(self) -> None:
        """
        A pass is accepted to the INBOX with one Authentication-Results
        field holding all three methods, and DMARC is asked with the From
        domain, the SPF domain and the passing DKIM domains.
        """
        c = checks(dkim=("pass", "a.test"))
        verdict = self.verdict(c)
        self.assertEqual((verdict.reject, verdict.folder), (None, ""))
        added = " ".join(verdict.addedHeaders.split())
        self.assertTrue(added.startswith("Authentication-Results: mx.example.test;"), added)
        for part in ("spf=pass smtp.mailfrom=b.test", "dkim=pass header.d=a.test", "dmarc=pass"):
            self.assertIn(part, added)
        self.assertEqual(c.dmarc.asked, [("a.test", ("pass", "b.test"), (("pass", "a.test"),))])
        self.assertEqual(c.dkim.asked, [MESSAGE.inline])

    def test_rejectPolicy(self) -> None:
        """
        A failure under p=reject is 550 5.7.1, or Junk when configured so;
        under p=quarantine it is Junk; under p=none it is only recorded.
        """
        reply = self.verdict(checks(dmarc=("fail", "reject"))).reject
        self.assertEqual((reply.code, reply.enhanced), (550, "5.7.1"))
        self.assertEqual(self.verdict(checks(dmarc=("fail", "reject"), dmarcReject="quarantine")).folder,
                         JUNK_FOLDER)
        self.assertEqual(self.verdict(checks(dmarc=("fail", "quarantine"))).folder, JUNK_FOLDER)
        verdict = self.verdict(checks(dmarc=("fail", "none")))
        self.assertEqual((verdict.reject, verdict.folder), (None, ""))
        self.assertIn("dmarc=fail", verdict.addedHeaders)

    def test_temporaryTrouble(self) -> None:
        """
        A DMARC temperror, or a p=reject failure while a DKIM check hit a
        DNS error, is 451 4.4.3: the sender tries again.
        """
        for c in (checks(dmarc=("temperror", "none")),
                  checks(dkim=("temperror", "a.test"), dmarc=("fail", "reject"))):
            reply = self.verdict(c).reject
            self.assertEqual((reply.code, reply.enhanced), (451, "4.4.3"))

    def test_noSingleFrom(self) -> None:
        """
        Without a single From domain DMARC is not asked and the result is
        recorded as permerror; an unclear From goes to Junk, a missing one
        to the INBOX.
        """
        c = checks()
        verdict = self.verdict(c, b"From: a@a.test, b@b.test\n\n")
        self.assertEqual((verdict.reject, verdict.folder), (None, JUNK_FOLDER))
        self.assertIn("dmarc=permerror", verdict.addedHeaders)
        self.assertEqual(c.dmarc.asked, [])
        verdict = self.verdict(c, b"From: a@evil.test <a@bank.test>\n\n")
        self.assertEqual(verdict.folder, JUNK_FOLDER)
        verdict = self.verdict(c, b"Subject: no author\n\n")
        self.assertEqual((verdict.reject, verdict.folder), (None, ""))
        self.assertIn("dmarc=permerror", verdict.addedHeaders)


class ReuseTests(SynchronousTestCase):
    """
    Work shared between messages, and lookups of one message overlapped.
    """

    def test_fromParsedOnce(self) -> None:
        """
        Each distinct From value is parsed once, the last
        L{inbound.FROM_DOMAINS_KEPT} of them kept; the domain found is the
        same as L{headerFromDomain}'s.
        """
        parsed = []

        def counting(value):
            """
            Parse, noting the value.
            """
            parsed.append(value)
            return fromFieldDomain(value)

        self.patch(inbound, "fromFieldDomain", counting)
        self.patch(inbound, "FROM_DOMAINS_KEPT", 2)
        c = checks()
        first = [b"From: Ceo <ceo@A.test>\nSubject: 1\n\n", b"Subject: 2\nFrom: Ceo <ceo@A.test>\n\n"]
        for header in first:
            run(c.checkMessage(SPFResult("pass", "", "b.test", "mailfrom"), MESSAGE, header))
        self.assertEqual(len(parsed), 1)
        self.assertEqual([args[0] for args in c.dmarc.asked], [headerFromDomain(first[0])] * 2)
        for header in (b"From: x@b.test\n\n", b"From: y@c.test\n\n", first[0]):
            run(c.checkMessage(SPFResult("pass", "", "b.test", "mailfrom"), MESSAGE, header))
        self.assertEqual(len(parsed), 4)

    def test_dmarcLookupOverlapsDKIM(self) -> None:
        """
        The DMARC policy is looked up while DKIM still verifies, and the
        policy found is what the evaluation gets.
        """
        verifying = Deferred()
        c = checks()
        c.dkim.result = verifying
        c.dmarc = PolicyDMARC()
        d = ensureDeferred(c.checkMessage(SPFResult("pass", "", "b.test", "mailfrom"), MESSAGE, HEADER))
        self.assertEqual(c.dmarc.asked, ["a.test"])
        self.assertNoResult(d)
        verifying.callback((DKIMResult("none", "", "", ""),))
        self.assertIsNone(self.successResultOf(d).reject)
        self.assertEqual(c.dmarc.given, [c.dmarc.policy])

    def test_spfLoggedWithTheMessage(self) -> None:
        """
        An SPF result that lets the mail go on is logged with the message's
        other results, one line a message; one that refuses it at MAIL on
        its own line.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        run(checks().checkSender("192.0.2.9", "x@b.test", "h.test"))
        self.assertEqual(len(events), 0)
        run(checks().checkMessage(SPFResult("pass", "", "b.test", "mailfrom"), MESSAGE, HEADER))
        self.assertEqual(len(events), 1)
        text = formatEvent(events[0])
        self.assertIn("spf=pass", text)
        self.assertIn("dmarc=pass", text)
        self.failureResultOf(ensureDeferred(checks(spf="fail").checkSender("192.0.2.9", "x@b.test", "h")))
        self.assertIn("SPF fail", formatEvent(events[1]))

