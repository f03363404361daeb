"""
Tests for L{qutemail.policy.dmarc}: Organizational Domains, DMARC
records, the From domain, and evaluation against the loopback DNS server.
"""

from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner
from qutemail.policy.dmarc import (
    DMARCEvaluator, DMARCRecord, DMARCResult, evaluateBlocking, headerFromDomain, organisationalDomain,
    parseRecord,
)
from tests.dnsserver import SERVFAIL, SILENT, startDNSServer

DNS_TIMEOUT_SECONDS = 1.0
NO_SPF = ("none", "")


class OrganisationalDomainTests(SynchronousTestCase):
    """
    L{organisationalDomain} applies the public suffix rule of RFC 7489
    §3.2 with the built-in list.
    """

    def test_singleLabelSuffix(self):
        """
        Under a TLD, the Organizational Domain has two labels.
        """
        self.assertEqual(organisationalDomain("mail.sub.example.test"), "example.test")
        self.assertEqual(organisationalDomain("example.test"), "example.test")
        self.assertEqual(organisationalDomain("Mail.Example.COM."), "example.com")

    def test_multiLabelSuffix(self):
        """
        Under a listed multi-label suffix it has one label more.
        """
        self.assertEqual(organisationalDomain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(organisationalDomain("shop.example.com.au"), "example.com.au")
        self.assertEqual(organisationalDomain("project.github.io"), "project.github.io")

    def test_suffixItself(self):
        """
        A public suffix, or a single label, is its own Organizational
        Domain.
        """
        self.assertEqual(organisationalDomain("co.uk"), "co.uk")
        self.assertEqual(organisationalDomain("test"), "test")

    def test_injectedSuffixes(self):
        """
        Another list can be given.
        """
        self.assertEqual(organisationalDomain("a.b.corp.test", frozenset({"corp.test"})), "b.corp.test")

    def test_internationalised(self):
        """
        U-labels are compared as A-labels.
        """
        self.assertEqual(organisationalDomain("mail.bücher.test"), "xn--bcher-kva.test")

    @given(st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), min_size=1, max_size=6))
    def test_suffixOfInput(self, labels):
        """
        The Organizational Domain is always a suffix of the name, and its
        own Organizational Domain.
        """
        name = ".".join(labels)
        org = organisationalDomain(name)
        self.assertTrue(name == org or name.endswith("." + org))
        self.assertEqual(organisationalDomain(org), org)


class ParseRecordTests(SynchronousTestCase):
    """
    L{parseRecord} reads RFC 7489 §6.3 records.
    """

    def test_full(self):
        """
        Every tag we use is read, in any case of names and keywords.
        """
        self.assertEqual(parseRecord("v=DMARC1; P=Reject; sp=quarantine; ADKIM=s; aspf=s; pct=25; rua=mailto:x@a.test"),
                         DMARCRecord("reject", "quarantine", "s", "s", 25))

    def test_defaults(self):
        """
        Without C{sp=} the subdomains get C{p=}; alignment is relaxed and
        C{pct} 100 by default; white space around tags is fine.
        """
        self.assertEqual(parseRecord(" v = DMARC1 ; p = none ;"), DMARCRecord("none", "none", "r", "r", 100))

    def test_badOptionalValues(self):
        """
        Bad C{adkim=}, C{aspf=} and C{pct=} values give the defaults, and
        pieces that are no tag are ignored (§6.3).
        """
        self.assertEqual(parseRecord("v=DMARC1; p=reject; adkim=x; aspf=; pct=500; junk; p=none"),
                         DMARCRecord("reject", "reject", "r", "r", 100))

    def test_notDMARC(self):
        """
        A record that does not start with C{v=DMARC1} is none.
        """
        for text in ("p=reject; v=DMARC1", "v=spf1 -all", "v=DMARC2; p=reject", "v=dmarc1; p=reject",
                     "v=DMARC1x; p=reject", ""):
            self.assertIsNone(parseRecord(text), text)

    def test_policyMissing(self):
        """
        Without a valid C{p=} (or with a bad C{sp=}) the record is unusable,
        unless it has a valid C{rua=}: then it counts as C{p=none}
        (§6.6.3).
        """
        self.assertIsNone(parseRecord("v=DMARC1"))
        self.assertIsNone(parseRecord("v=DMARC1; p=block"))
        self.assertIsNone(parseRecord("v=DMARC1; p=reject; sp=maybe"))
        self.assertIsNone(parseRecord("v=DMARC1; rua=nonsense"))
        self.assertEqual(parseRecord("v=DMARC1; rua=mailto:reports@a.test"), DMARCRecord("none", "none"))
        self.assertEqual(parseRecord("v=DMARC1; p=block; rua=mailto:r@a.test!10m"), DMARCRecord("none", "none"))

    @given(st.text(max_size=100))
    def test_neverRaises(self, text):
        """
        Any text gives a record or C{None}.
        """
        record = parseRecord("v=DMARC1;" + text)
        if record is not None:
            self.assertIn(record.policy, ("none", "quarantine", "reject"))
            self.assertTrue(0 <= record.percent <= 100)


class HeaderFromDomainTests(SynchronousTestCase):
    """
    L{headerFromDomain} finds the one author domain (RFC 7489 §6.6.1).
    """

    def test_single(self):
        """
        One From field with one address gives its domain, in lower case,
        whatever the display name, comments and folding.
        """
        self.assertEqual(headerFromDomain(b"To: b@b.test\nFrom: a@Example.TEST\nSubject: x\n"), "example.test")
        self.assertEqual(headerFromDomain(b'from: "A (x)" <a@Sub.A.test> (c)\r\n'), "sub.a.test")
        self.assertEqual(headerFromDomain(b"From:\n Alice\n <alice@a.test>\n"), "a.test")

    def test_bodyIgnored(self):
        """
        Only the header section counts.
        """
        self.assertEqual(headerFromDomain(b"From: a@a.test\n\nFrom: b@b.test\n"), "a.test")
        self.assertIsNone(headerFromDomain(b"Subject: x\n\nFrom: b@b.test\n"))

    def test_unevaluable(self):
        """
        No From field, two of them, several addresses, no address or an
        address literal give C{None}.
        """
        for header in (b"Subject: x\n", b"From: a@a.test\nFrom: b@b.test\n", b"From: a@a.test, b@b.test\n",
                       b"From: nobody\n", b"From: \n", b"From: a@[192.0.2.1]\n", b"From: <<<\n", b""):
            self.assertIsNone(headerFromDomain(header), header)

    def test_ambiguous(self):
        """
        A From field that does not parse cleanly, where a mail reader might
        show another address than a parser picks, gives C{None}; so does
        one that makes the parser fail.  Obsolete but clear syntax is
        fine.
        """
        for header in (b"From: a@evil.test <a@bank.test>\n", b"From: x <a@bank.test\n", b"From: h=from;From:\n"):
            self.assertIsNone(headerFromDomain(header), header)
        self.assertEqual(headerFromDomain(b"From: <@route.test:a@bank.test>\n"), "bank.test")
        self.assertEqual(headerFromDomain(b"From: a @bank . test\n"), "bank.test")

    def test_internationalised(self):
        """
        A UTF-8 domain is given as its A-label.
        """
        self.assertEqual(headerFromDomain("From: a@bücher.test\n".encode("utf-8")), "xn--bcher-kva.test")

    @given(st.binary(max_size=200))
    def test_neverRaises(self, header):
        """
        Any bytes give a domain or C{None}.
        """
        result = headerFromDomain(b"From: " + header)
        self.assertTrue(result is None or isinstance(result, str))


class DMARCResultTests(SynchronousTestCase):
    """
    L{DMARCResult.authResultsPart} writes RFC 7489 §11.2 C{resinfo}s.
    """

    def test_parts(self):
        """
        Pass and fail name the policy in a comment; the others give their
        reason.
        """
        self.assertEqual(DMARCResult("fail", "reject", "a.test", "x").authResultsPart(),
                         "dmarc=fail (p=reject) header.from=a.test")
        self.assertEqual(DMARCResult("pass", "none", "a.test").authResultsPart(),
                         "dmarc=pass (p=none) header.from=a.test")
        self.assertEqual(DMARCResult("none", "none", "a.test", "no DMARC record").authResultsPart(),
                         'dmarc=none reason="no DMARC record" header.from=a.test')
        self.assertEqual(DMARCResult.unevaluable("no single From domain").authResultsPart(),
                         'dmarc=permerror reason="no single From domain"')


class EvaluateTests(TestCase):
    """
    L{DMARCEvaluator} in worker threads against the loopback DNS server.
    """

    timeout = 30

    def setUp(self):
        """
        Start a thread pool for the blocking lookups.
        """
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    async def evaluate(self, records, fromDomain="a.test", spf=NO_SPF, dkim=(), mode="answer",
                       randomValue=0.0) -> DMARCResult:
        """
        Serve C{records} and evaluate one message.

        @return: the result.
        """
        self.server = await startDNSServer(self, records, mode=mode)
        evaluator = DMARCEvaluator(self.server.nameservers, DNS_TIMEOUT_SECONDS, self.runner,
                                   random=lambda: randomValue)
        return await evaluator.evaluate(fromDomain, spf, dkim)

    def again(self, fromDomain: str, spf: tuple[str, str], dkim: tuple, timeoutSeconds: float = 1.0):
        """
        Evaluate another message against the same server, in a worker
        thread (the server answers on the reactor thread), the policy
        applied in full.

        @return: a Deferred firing with the result.
        """
        return self.runner.run(evaluateBlocking, fromDomain, spf, dkim, self.server.nameservers, timeoutSeconds)

    async def test_rejectFail(self):
        """
        Without an aligned pass, a C{p=reject} domain's mail fails with
        policy C{reject}; passes of other domains do not help.
        """
        result = await self.evaluate([("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")],
                                     spf=("pass", "evil.test"), dkim=(("pass", "evil.test"), ("fail", "a.test")))
        self.assertEqual((result.result, result.policy, result.fromDomain), ("fail", "reject", "a.test"))
        self.assertEqual(result.authResultsPart(), "dmarc=fail (p=reject) header.from=a.test")

    async def test_alignedDKIM(self):
        """
        A DKIM pass of the From domain, or of a subdomain under relaxed
        alignment, passes.
        """
        records = [("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")]
        result = await self.evaluate(records, dkim=(("fail", "x.test"), ("pass", "a.test")))
        self.assertEqual((result.result, result.policy), ("pass", "reject"))
        result = await self.again("a.test", NO_SPF, (("pass", "mail.a.test"),))
        self.assertEqual(result.result, "pass")

    async def test_alignedSPF(self):
        """
        An SPF pass for a subdomain of the From domain passes under relaxed
        alignment.
        """
        result = await self.evaluate([("_dmarc.a.test", "TXT", "v=DMARC1; p=quarantine")],
                                     spf=("pass", "bounces.a.test"))
        self.assertEqual((result.result, result.policy), ("pass", "quarantine"))

    async def test_strictAlignment(self):
        """
        Under strict alignment a subdomain does not align, the same name
        does.
        """
        records = [("_dmarc.a.test", "TXT", "v=DMARC1; p=reject; aspf=s; adkim=s")]
        result = await self.evaluate(records, spf=("pass", "bounces.a.test"), dkim=(("pass", "mail.a.test"),))
        self.assertEqual((result.result, result.policy), ("fail", "reject"))
        result = await self.again("a.test", ("pass", "A.TEST"), ())
        self.assertEqual(result.result, "pass")

    async def test_organisationalFallback(self):
        """
        Mail from a subdomain without a record of its own gets the
        Organizational Domain's record, with its C{sp=}; a subdomain with
        its own record gets that record's C{p=}.
        """
        records = [("_dmarc.a.test", "TXT", "v=DMARC1; p=reject; sp=quarantine"),
                   ("_dmarc.own.a.test", "TXT", "v=DMARC1; p=none; sp=reject")]
        result = await self.evaluate(records, fromDomain="Mail.Sub.A.test")
        self.assertEqual((result.result, result.policy, result.fromDomain), ("fail", "quarantine", "mail.sub.a.test"))
        self.assertEqual(self.server.queries, [("_dmarc.mail.sub.a.test", "TXT"), ("_dmarc.a.test", "TXT")])
        result = await self.again("own.a.test", NO_SPF, ())
        self.assertEqual(result.policy, "none")
        result = await self.again("a.test", NO_SPF, ())
        self.assertEqual(result.policy, "reject")

    async def test_fallbackWithoutSubdomainPolicy(self):
        """
        Without C{sp=}, C{p=} applies to subdomains; the fallback follows
        multi-label public suffixes.
        """
        records = [("_dmarc.example.co.uk", "TXT", "v=DMARC1; p=reject")]
        result = await self.evaluate(records, fromDomain="news.example.co.uk", spf=("pass", "example.co.uk"))
        self.assertEqual((result.result, result.policy), ("pass", "reject"))
        self.assertEqual(self.server.queries[-1], ("_dmarc.example.co.uk", "TXT"))

    async def test_noRecord(self):
        """
        No record at the domain or its Organizational Domain is C{none},
        policy C{none}; so is a name with only other TXT records.
        """
        result = await self.evaluate([("a.test", "TXT", "v=spf1 -all"), ("_dmarc.a.test", "TXT", "hello")],
                                     fromDomain="x.a.test")
        self.assertEqual((result.result, result.policy), ("none", "none"))
        self.assertEqual(result.authResultsPart(), 'dmarc=none reason="no DMARC record" header.from=x.a.test')

    async def test_dnsFailure(self):
        """
        SERVFAIL, or no answer at all, is a C{temperror}, at the domain or
        at the fallback.
        """
        result = await self.evaluate([("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")], mode=SERVFAIL)
        self.assertEqual((result.result, result.policy), ("temperror", "none"))
        self.server.setMode(SILENT)
        result = await self.again("a.test", NO_SPF, (), timeoutSeconds=0.5)
        self.assertEqual(result.result, "temperror")
        self.server.setMode("answer")
        self.server.setMode(SILENT, "_dmarc.a.test")
        result = await self.again("sub.a.test", NO_SPF, (), timeoutSeconds=0.5)
        self.assertEqual(result.result, "temperror")
        self.assertIn("_dmarc.a.test", result.reason)

    async def test_badRecords(self):
        """
        A C{v=DMARC1} record without a usable policy is a C{permerror};
        two DMARC records are C{none} without a fallback (§6.6.3); a bad
        C{p=} with a valid C{rua=} counts as C{p=none}.
        """
        result = await self.evaluate([("_dmarc.a.test", "TXT", "v=DMARC1; p=never"),
                                      ("_dmarc.two.a.test", "TXT", "v=DMARC1; p=reject"),
                                      ("_dmarc.two.a.test", "TXT", "v=DMARC1; p=none"),
                                      ("_dmarc.rua.a.test", "TXT", "v=DMARC1; p=x; rua=mailto:r@a.test")])
        self.assertEqual((result.result, result.policy), ("permerror", "none"))
        result = await self.again("two.a.test", NO_SPF, ())
        self.assertEqual((result.result, result.policy), ("none", "none"))
        self.assertIn("several", result.reason)
        self.assertNotIn(("_dmarc.a.test", "TXT"), self.server.queries[1:])
        result = await self.again("rua.a.test", NO_SPF, ())
        self.assertEqual((result.result, result.policy), ("fail", "none"))

    async def test_percentSampling(self):
        """
        With C{pct=50}, a failing message drawn outside the sample gets the
        next weaker policy (§6.6.4); one drawn inside gets the policy.
        """
        records = [("_dmarc.a.test", "TXT", "v=DMARC1; p=reject; pct=50")]
        result = await self.evaluate(records, randomValue=0.9)
        self.assertEqual((result.result, result.policy), ("fail", "quarantine"))
        self.assertIn("pct=50", result.reason)
        evaluator = DMARCEvaluator(self.server.nameservers, 1.0, self.runner, random=lambda: 0.1)
        result = await evaluator.evaluate("a.test", NO_SPF, ())
        self.assertEqual(result.policy, "reject")
        result = await self.again("a.test", NO_SPF, ())
        self.assertEqual(result.policy, "reject")
