# -*- test-case-name: tests.policy.test_spf -*-
"""
Tests for L{qutemail.policy.spf}: header values without DNS, and checks
against the loopback DNS server of L{tests.dnsserver}, through a real
thread pool.
"""

import threading
import time

import spf
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.policy.spf import RESULTS, SPFChecker, SPFResult, checkBlocking
from tests.dnsserver import SERVFAIL, SILENT, startDNSServer

CLIENT = "192.0.2.1"
OTHER = "198.51.100.7"


class SPFResultTests(SynchronousTestCase):
    """
    The header values made from an L{SPFResult}.
    """

    def test_receivedSPFPass(self):
        """
        A pass names the receiver, sender and client in its comment and
        gives the RFC 7208 §9.1 key-value pairs, the sender quoted.
        """
        result = SPFResult("pass", "sender SPF authorized", "a.test", "mailfrom")
        self.assertEqual(
            result.receivedSPF("mx.example.test", CLIENT, "bob@a.test", "mail.a.test"),
            "pass (mx.example.test: domain of bob@a.test designates 192.0.2.1 as permitted sender) "
            'client-ip=192.0.2.1; envelope-from="bob@a.test"; helo=mail.a.test; receiver=mx.example.test; '
            "identity=mailfrom;")

    def test_receivedSPFWording(self):
        """
        Every result starts the value and has its own comment.
        """
        comments = set()
        for name in RESULTS:
            value = SPFResult(name, "", "a.test", "mailfrom").receivedSPF("mx.test", CLIENT, "bob@a.test", "h.a.test")
            self.assertTrue(value.startswith(name + " (mx.test: "), value)
            comments.add(value.split(")")[0])
        self.assertEqual(len(comments), len(RESULTS))

    def test_receivedSPFHelo(self):
        """
        For a null sender the HELO identity is named; there is no
        envelope-from.
        """
        value = SPFResult("fail", "", "mail.a.test", "helo").receivedSPF("mx.test", CLIENT, "", "mail.a.test")
        self.assertEqual(
            value,
            "fail (mx.test: domain of mail.a.test does not designate 192.0.2.1 as permitted sender) "
            "client-ip=192.0.2.1; helo=mail.a.test; receiver=mx.test; identity=helo;")

    def test_receivedSPFProblem(self):
        """
        An error carries its explanation as C{problem}; an IPv6 address,
        not a dot-atom, is quoted.
        """
        value = SPFResult("temperror", "DNS timeout", "a.test", "mailfrom").receivedSPF(
            "mx.test", "2001:db8::1", "bob@a.test", "h.a.test")
        self.assertIn('client-ip="2001:db8::1";', value)
        self.assertIn('problem="DNS timeout"; receiver=mx.test; identity=mailfrom;', value)

    def test_receivedSPFInjection(self):
        """
        CR, LF and other controls in what the client sent never reach the
        value; quotes and backslashes are escaped in quoted-strings, and
        parentheses in the comment, so no field or comment ends early.
        """
        sender = 'evil"\\@a.test\r\nX-Injected: yes'
        helo = "h(x)\r\n\tReceived-SPF: pass\x00"
        result = SPFResult("fail", "exp\r\ntext", "a.test", "mailfrom")
        value = result.receivedSPF("mx.test", CLIENT, sender, helo)
        self.assertNotIn("\r", value)
        self.assertNotIn("\n", value)
        self.assertNotIn("\x00", value)
        self.assertNotIn("\t", value)
        self.assertIn('envelope-from="evil\\"\\\\@a.testX-Injected: yes";', value)
        self.assertIn('helo="h(x)Received-SPF: pass";', value)
        self.assertIn("(mx.test: domain of evil\"\\\\@a.testX-Injected: yes does not designate", value)
        comment = value[value.index("(") + 1:value.index(") client-ip=")]
        self.assertNotIn("(", comment.replace("\\(", ""))

    def test_receivedSPFLength(self):
        """
        A very long HELO name is cut, so the value stays a valid header
        line.
        """
        value = SPFResult("none", "", "h.test", "helo").receivedSPF("mx.test", CLIENT, "", "h" * 5000 + ".test")
        self.assertLess(len(value), 998 - len("Received-SPF: "))

    def test_authResultsPart(self):
        """
        The Authentication-Results part names the method, result and
        checked identity's domain.
        """
        self.assertEqual(SPFResult("pass", "", "a.test", "mailfrom").authResultsPart(),
                         "spf=pass smtp.mailfrom=a.test")
        self.assertEqual(SPFResult("none", "", "mail.a.test", "helo").authResultsPart(),
                         "spf=none smtp.helo=mail.a.test")

    def test_authResultsPartQuoted(self):
        """
        A domain that is not an RFC 2045 token is quoted and stripped of
        controls.
        """
        self.assertEqual(SPFResult("none", "", "[192.0.2.1]", "helo").authResultsPart(),
                         'spf=none smtp.helo="[192.0.2.1]"')
        self.assertEqual(SPFResult("none", "", 'a;b"\r\n.test', "helo").authResultsPart(),
                         'spf=none smtp.helo="a;b\\".test"')

    def test_validation(self):
        """
        Only RFC 7208 results and the two scopes are accepted.
        """
        self.assertRaises(ValueError, SPFResult, "unknown", "", "a.test", "mailfrom")
        self.assertRaises(ValueError, SPFResult, "pass", "", "a.test", "pra")


class CheckWithoutDNSTests(SynchronousTestCase):
    """
    Outcomes decided before any DNS lookup, and pyspf's surprises.
    """

    def check(self, clientIp: str = CLIENT, sender: str = "bob@a.test", helo: str = "mail.a.test") -> SPFResult:
        """
        Check with a nameserver that is never asked: port 9 (discard) on
        loopback, which would turn any lookup into C{temperror}.
        """
        return checkBlocking((("127.0.0.1", 9),), 0.2, clientIp, sender, helo)

    def test_badAddress(self):
        """
        A client address that is not an IP address is a C{permerror}.
        """
        result = self.check(clientIp="not-an-ip")
        self.assertEqual((result.result, result.scope, result.domain), ("permerror", "mailfrom", "a.test"))

    def test_malformedDomain(self):
        """
        RFC 7208 §4.3: a single-label name, a domain literal, an empty
        label or one over 63 characters gives C{none} without DNS.
        """
        for sender, helo in [("", "OEMCOMPUTER"), ("", "[192.0.2.1]"), ("bob@a..test", "h.test"),
                             ("bob@" + "x" * 64 + ".test", "h.test"), ("", "")]:
            self.assertEqual(self.check(sender=sender, helo=helo).result, "none", (sender, helo))

    def test_pyspfRaises(self):
        """
        Anything pyspf raises unexpectedly is a C{temperror} (our fault,
        so the sender retries), and is logged.
        """

        def broken(query, record=None):
            """
            Fail the way a pyspf bug would.
            """
            raise AssertionError("Too many levels of recursion")

        self.patch(spf.query, "check", broken)
        result = self.check()
        self.assertEqual(result.result, "temperror")
        self.assertIn("AssertionError", result.explanation)
        self.assertEqual(len(self.flushLoggedErrors(AssertionError)), 1)

    def test_oldResultNames(self):
        """
        pyspf's pre-RFC 7208 names are mapped to the RFC's, and a name we
        do not know is a C{temperror}.
        """
        for given, expected in [("unknown", "permerror"), ("error", "temperror"), ("ambiguous", "temperror"),
                                ("softfail", "softfail")]:
            self.patch(spf.query, "check", lambda query, record=None, given=given: (given, 250, "text"))
            self.assertEqual(self.check().result, expected, given)

    def test_inlineChecker(self):
        """
        L{SPFChecker} hands the check to its runner and fires with the
        result; nameservers may be given as lists.
        """
        checker = SPFChecker([["127.0.0.1", "9"]], 0.2, InlineRunner())
        self.assertEqual(checker.nameservers, (("127.0.0.1", 9),))
        result = self.successResultOf(checker.check("bogus", "bob@a.test", "h.a.test"))
        self.assertEqual(result.result, "permerror")


class CheckTests(TestCase):
    """
    L{checkBlocking} and L{SPFChecker} against a real DNS server on
    loopback.
    """

    def setUp(self):
        """
        Start a thread pool for the blocking checks.
        """
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    async def check(self, records, clientIp: str = CLIENT, sender: str = "bob@a.test", helo: str = "mail.a.test",
                    timeoutSeconds: float = 5.0, server=None) -> SPFResult:
        """
        Start a DNS server with the records (or use C{server}) and check
        in a worker thread.

        @return: the result; the server is C{self.server}.
        """
        self.server = server or await startDNSServer(self, records)
        return await self.runner.run(checkBlocking, self.server.nameservers, timeoutSeconds, clientIp, sender, helo)

    async def assertResult(self, records, expected: str, **kwargs) -> SPFResult:
        """
        Assert a check gives C{expected}.

        @return: the result.
        """
        result = await self.check(records, **kwargs)
        self.assertEqual(result.result, expected, result)
        return result

    async def test_pass(self):
        """
        A client the domain's record lists passes; the result names the
        MAIL FROM domain, and DNS was asked only for its TXT record.
        """
        result = await self.assertResult([("a.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")], "pass")
        self.assertEqual((result.domain, result.scope), ("a.test", "mailfrom"))
        self.assertEqual(self.server.queries, [("a.test", "TXT")])

    async def test_fail(self):
        """
        A client the record does not list, under C{-all}, fails, with the
        domain's C{exp=} text as explanation (RFC 7208 §6.2).
        """
        result = await self.assertResult([("a.test", "TXT", "v=spf1 ip4:203.0.113.0/24 -all exp=why.a.test"),
                                          ("why.a.test", "TXT", "%{i} may not send for %{d}")], "fail")
        self.assertEqual(result.explanation, f"{CLIENT} may not send for a.test")

    async def test_softfailAndNeutral(self):
        """
        C{~all} gives C{softfail}; C{?all} gives C{neutral}.
        """
        await self.assertResult([("a.test", "TXT", "v=spf1 ~all")], "softfail")
        await self.assertResult([("a.test", "TXT", "v=spf1 ?all")], "neutral")

    async def test_mechanisms(self):
        """
        C{mx}, C{a}, C{include} and C{redirect} are followed through DNS.
        """
        zone = [("a.test", "TXT", "v=spf1 mx include:b.test -all"), ("a.test", "MX", (10, "mx.a.test")),
                ("mx.a.test", "A", CLIENT), ("b.test", "TXT", "v=spf1 redirect=c.test"),
                ("c.test", "TXT", "v=spf1 a:out.c.test -all"), ("out.c.test", "A", OTHER)]
        await self.assertResult(zone, "pass")
        await self.assertResult(zone, "pass", clientIp=OTHER, server=self.server)
        await self.assertResult(zone, "fail", clientIp="203.0.113.9", server=self.server)

    async def test_none(self):
        """
        A domain without an SPF record, or one that does not exist, gives
        C{none}.
        """
        await self.assertResult([("a.test", "TXT", "some other record"), ("a.test", "A", CLIENT)], "none")
        await self.assertResult([], "none", sender="bob@nowhere.test")

    async def test_spfTypeIgnored(self):
        """
        RFC 7208 §3.1: a record of the retired SPF type (99) does not
        count; only TXT is asked for.
        """
        await self.assertResult([("a.test", "SPF", "v=spf1 +all")], "none")
        self.assertEqual(self.server.queries, [("a.test", "TXT")])

    async def test_twoRecords(self):
        """
        RFC 7208 §4.5: two SPF records are a C{permerror}.
        """
        result = await self.assertResult([("a.test", "TXT", "v=spf1 -all"), ("a.test", "TXT", "v=spf1 +all")],
                                         "permerror")
        self.assertIn("Two or more", result.explanation)

    async def test_syntaxError(self):
        """
        An unknown mechanism is a C{permerror}.
        """
        await self.assertResult([("a.test", "TXT", "v=spf1 moo -all")], "permerror")

    async def test_servfail(self):
        """
        A server answering SERVFAIL gives C{temperror}.
        """
        server = await startDNSServer(self, mode=SERVFAIL)
        await self.assertResult([], "temperror", server=server)

    async def test_silentServer(self):
        """
        A server that never answers gives C{temperror} within the check's
        time.
        """
        server = await startDNSServer(self, mode=SILENT)
        started = time.monotonic()
        result = await self.assertResult([], "temperror", server=server, timeoutSeconds=1.5)
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertIn("timeout", result.explanation)

    async def test_timeLimitIsOverall(self):
        """
        The time limit is for the whole check, not each lookup: validating
        three PTR names that all time out (each skipped, RFC 7208 §5.5)
        takes about the limit, not three times it.
        """
        reverse = "1.2.0.192.in-addr.arpa"
        server = await startDNSServer(self, [("a.test", "TXT", "v=spf1 ptr ?all")] + [
            (reverse, "PTR", f"s{n}.a.test") for n in (1, 2, 3)])
        for n in (1, 2, 3):
            server.setMode(SILENT, f"s{n}.a.test")
        started = time.monotonic()
        await self.assertResult([], "neutral", server=server, timeoutSeconds=1.5)
        self.assertLess(time.monotonic() - started, 3.0)

    async def test_nullSender(self):
        """
        RFC 7208 §2.4: for a null sender the HELO name's policy is
        checked, as C{postmaster@<helo>}.
        """
        zone = [("mail.a.test", "TXT", "v=spf1 -exists:%{l}.%{d}.block.test +all"),
                ("a.test", "TXT", "v=spf1 -all")]
        result = await self.assertResult(zone, "pass", sender="")
        self.assertEqual((result.domain, result.scope), ("mail.a.test", "helo"))
        self.assertIn(("postmaster.mail.a.test.block.test", "A"), self.server.queries)
        self.assertNotIn(("a.test", "TXT"), self.server.queries)

    async def test_senderWithoutAt(self):
        """
        A sender without C{@} is checked as C{postmaster@<sender>}.
        """
        zone = [("a.test", "TXT", "v=spf1 exists:%{l}.ok.test -all"), ("postmaster.ok.test", "A", "127.0.0.2")]
        result = await self.assertResult(zone, "pass", sender="a.test")
        self.assertEqual((result.domain, result.scope), ("a.test", "mailfrom"))

    async def test_quotedLocalPart(self):
        """
        The domain is what follows the last C{@}: a quoted local part may
        hold one.
        """
        result = await self.assertResult([("a.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")], "pass",
                                         sender='"x@evil.test"@A.test')
        self.assertEqual(result.domain, "a.test")

    async def test_ptrErrors(self):
        """
        RFC 7208 §5.5: a DNS error while validating one PTR name skips that
        name, and one on the PTR lookup means no match; neither is a
        C{temperror}.
        """
        zone = [("a.test", "TXT", "v=spf1 ptr:a.test -all"),
                ("1.2.0.192.in-addr.arpa", "PTR", "broken.a.test"), ("1.2.0.192.in-addr.arpa", "PTR", "mx.a.test"),
                ("mx.a.test", "A", CLIENT), ("broken.a.test", "A", CLIENT)]
        server = await startDNSServer(self, zone)
        server.setMode(SERVFAIL, "broken.a.test")
        await self.assertResult([], "pass", server=server)
        self.assertIn(("broken.a.test", "A"), server.queries)
        server.setMode(SERVFAIL, "1.2.0.192.in-addr.arpa")
        await self.assertResult([], "fail", server=server)

    async def test_ipv6(self):
        """
        An IPv6 client is matched against AAAA records.
        """
        await self.assertResult([("a.test", "TXT", "v=spf1 a -all"), ("a.test", "AAAA", "2001:db8::25")], "pass",
                                clientIp="2001:db8::25")

    async def test_concurrentChecks(self):
        """
        Checks running at once in several threads, against different
        servers, each use only their own server.
        """
        allow = await startDNSServer(self, [("a.test", "TXT", "v=spf1 +all")])
        deny = await startDNSServer(self, [("a.test", "TXT", "v=spf1 -all")])
        servers = [allow, deny] * 6
        results = await gatherResults(
            [self.runner.run(checkBlocking, server.nameservers, 5.0, CLIENT, "bob@a.test", "h.a.test")
             for server in servers], consumeErrors=True)
        self.assertEqual([r.result for r in results], ["pass", "fail"] * 6)
        self.assertEqual(len(allow.queries), 6)
        self.assertEqual(len(deny.queries), 6)

    async def test_checkerOffReactor(self):
        """
        L{SPFChecker.check} runs in a worker thread: while it waits for a
        silent server the reactor keeps running, and the result arrives on
        the reactor thread.
        """
        server = await startDNSServer(self, mode=SILENT)
        threads = []
        realCheck = spf.query.check

        def recordingCheck(query, record=None):
            """
            Note the thread pyspf's evaluation runs in.
            """
            threads.append(threading.get_ident())
            return realCheck(query, record)

        self.patch(spf.query, "check", recordingCheck)
        checker = SPFChecker(server.nameservers, 1.0, self.runner)
        checking = checker.check(CLIENT, "bob@a.test", "h.a.test")
        await deferLater(reactor, 0.2)
        self.assertNoResult(checking)
        arrivedOn = []
        checking.addCallback(lambda result: arrivedOn.append(threading.get_ident()) or result)
        result = await checking
        self.assertEqual(result.result, "temperror")
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.get_ident())
        self.assertEqual(arrivedOn, [threading.get_ident()])
