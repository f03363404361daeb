"""
Tests for the inbound checks' result caches: whole SPF results
(L{qutemail.policy.spf.SPFChecker} with C{results}) and DMARC policies
(L{qutemail.policy.dmarc.DMARCEvaluator} with C{policies}), kept on a
C{task.Clock} for as long as the DNS answers they were made from hold, and
how long those hold, read from the loopback DNS server.
"""

import attrs
import dns.resolver
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner
from qutemail.dns import queryBlocking
from qutemail.policy.dmarc import DMARCEvaluator, DMARCPolicy, DMARCRecord, DMARCResult, discoverPolicyBlocking
from qutemail.policy.spf import SPFChecker, SPFResult, checkTimedBlocking
from qutemail.ttlcache import ExpiringCache
from tests.dnsserver import SERVFAIL, DNSServer

CLIENT = "192.0.2.1"
PASS = SPFResult("pass", "", "a.test", "mailfrom")
TEMPERROR = SPFResult("temperror", "SPF Temporary Error: timeout", "a.test", "mailfrom")


@attrs.define
class ScriptedRunner:
    """
    A runner whose calls give prepared outcomes, in order (a Deferred is
    given as it is), noting each call.
    """

    outcomes: list
    calls: list = attrs.Factory(list)

    def run(self, f, *args):
        """
        Note the call; give the next outcome.
        """
        self.calls.append((f.__name__, args))
        outcome = self.outcomes.pop(0)
        return outcome if isinstance(outcome, Deferred) else succeed(outcome)


class SPFResultCacheTests(SynchronousTestCase):
    """
    L{SPFChecker} keeps whole results on the reactor thread.
    """

    def checker(self, *outcomes, maxEntries: int = 10) -> SPFChecker:
        """
        A checker whose worker-thread checks give C{outcomes}, with a
        result cache on C{self.clock}.
        """
        self.clock = Clock()
        self.runner = ScriptedRunner(list(outcomes))
        return SPFChecker((), 5.0, self.runner, None, ExpiringCache(self.clock, maxEntries, 3600.0))

    def check(self, checker: SPFChecker, sender: str = "bob@a.test", clientIp: str = CLIENT,
              helo: str = "mail.a.test") -> SPFResult:
        """
        @return: the result of a check that finishes at once.
        """
        return self.successResultOf(checker.check(clientIp, sender, helo))

    def test_keptForTheDomain(self):
        """
        A result holds for the same client, HELO and sender domain, other
        local parts included, without a worker thread; another client
        address or HELO name is checked anew.
        """
        c = self.checker((PASS, 120.0, False), (PASS, 120.0, False), (PASS, 120.0, False))
        self.assertIs(self.check(c), PASS)
        self.assertIs(self.check(c, sender="carol@A.TEST"), PASS)
        self.assertEqual(len(self.runner.calls), 1)
        self.assertEqual(self.runner.calls[0][0], "checkTimedBlocking")
        self.check(c, clientIp="198.51.100.7")
        self.check(c, helo="other.a.test")
        self.assertEqual(len(self.runner.calls), 3)

    def test_expiresWithTheAnswers(self):
        """
        A result is given from the cache until the answers it was made
        from expire, then checked again.
        """
        c = self.checker((PASS, 120.0, False), (PASS, 120.0, False))
        self.check(c)
        self.clock.advance(119.9)
        self.check(c)
        self.assertEqual(len(self.runner.calls), 1)
        self.clock.advance(0.1)
        self.check(c)
        self.assertEqual(len(self.runner.calls), 2)

    def test_temperrorNeverKept(self):
        """
        A C{temperror} is checked again every time.
        """
        c = self.checker((TEMPERROR, 0.0, False), (PASS, 60.0, False))
        self.assertIs(self.check(c), TEMPERROR)
        self.assertIs(self.check(c), PASS)
        self.assertEqual(len(self.runner.calls), 2)

    def test_keptForTheSenderWhenRecordsExpandLocalPart(self):
        """
        When the domain's records expand the local part, a result holds
        for that sender only.
        """
        c = self.checker((PASS, 120.0, True), (PASS, 120.0, True))
        self.check(c, sender="bob@a.test")
        self.check(c, sender="bob@a.test")
        self.assertEqual(len(self.runner.calls), 1)
        self.check(c, sender="carol@a.test")
        self.assertEqual(len(self.runner.calls), 2)

    def test_bounded(self):
        """
        Past its bound the cache forgets the result used least recently.
        """
        other = SPFResult("pass", "", "b.test", "mailfrom")
        c = self.checker((PASS, 120.0, False), (other, 120.0, False), (PASS, 120.0, False), maxEntries=1)
        self.check(c, sender="bob@a.test")
        self.check(c, sender="bob@b.test")
        self.check(c, sender="bob@a.test")
        self.assertEqual(len(self.runner.calls), 3)


def startServer(testCase, records, ttl: int, mode: str = "answer") -> DNSServer:
    """
    Start a loopback DNS server whose records (and negative answers) have
    TTL C{ttl}.
    """
    server = DNSServer(reactor, ttl=ttl, mode=mode)
    server.load(records)
    server.listen()
    testCase.addCleanup(server.stop)
    return server


class HoldsTests(TestCase):
    """
    How long a result holds, from the TTLs of the answers it used.
    """

    def setUp(self):
        """
        Start a thread pool for the blocking checks.
        """
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    def spf(self, server: DNSServer, sender: str = "bob@a.test"):
        """
        @return: a Deferred firing with L{checkTimedBlocking}'s outcome.
        """
        return self.runner.run(checkTimedBlocking, server.nameservers, 5.0, CLIENT, sender, "mail.a.test")

    async def test_spfHoldsForTheSmallestTTL(self):
        """
        An SPF result holds for the TTL of its answers; an NXDOMAIN it met
        (the void C{a:} lookup) for its negative TTL; neither expands the
        local part.
        """
        server = startServer(self, [("a.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")], ttl=42)
        result, holds, byLocalPart = await self.spf(server)
        self.assertEqual(result.result, "pass")
        self.assertTrue(40.0 < holds <= 42.0, holds)
        self.assertFalse(byLocalPart)
        server = startServer(self, [("a.test", "TXT", "v=spf1 a:gone.a.test -all")], ttl=17)
        result, holds, _ = await self.spf(server)
        self.assertEqual(result.result, "fail")
        self.assertTrue(15.0 < holds <= 17.0, holds)

    async def test_spfLocalPartMacro(self):
        """
        A record expanding C{%{l}} makes the result the sender's own.
        """
        server = startServer(self, [("a.test", "TXT", "v=spf1 exists:%{l}.users.a.test -all"),
                                    ("bob.users.a.test", "A", "127.0.0.2")], ttl=300)
        result, holds, byLocalPart = await self.spf(server)
        self.assertEqual(result.result, "pass")
        self.assertTrue(byLocalPart)

    async def test_spfTimeMacroAndTemperrorNotKept(self):
        """
        An explanation expanding C{%{t}} holds for no time, nor does a
        C{temperror}.
        """
        server = startServer(self, [("a.test", "TXT", "v=spf1 -all exp=why.a.test"),
                                    ("why.a.test", "TXT", "refused at %{t}")], ttl=300)
        result, holds, _ = await self.spf(server)
        self.assertEqual((result.result, holds), ("fail", 0.0))
        server = startServer(self, [("a.test", "TXT", "v=spf1 -all")], ttl=300, mode=SERVFAIL)
        result, holds, _ = await self.spf(server)
        self.assertEqual((result.result, holds), ("temperror", 0.0))

    async def test_dmarcPolicyHolds(self):
        """
        A DMARC policy holds for its record's TTL; a missing one for the
        negative TTL (the lesser of the From domain's and the
        Organizational Domain's); a DNS failure for no time.
        """
        server = startServer(self, [("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")], ttl=42)
        found, holds = await self.runner.run(discoverPolicyBlocking, "a.test", server.nameservers, 5.0)
        self.assertEqual(found.record.policy, "reject")
        self.assertTrue(40.0 < holds <= 42.0, holds)
        found, holds = await self.runner.run(discoverPolicyBlocking, "x.b.test", server.nameservers, 5.0)
        self.assertEqual(found.outcome.result, "none")
        self.assertTrue(40.0 < holds <= 42.0, holds)
        server = startServer(self, [], ttl=42, mode=SERVFAIL)
        found, holds = await self.runner.run(discoverPolicyBlocking, "a.test", server.nameservers, 5.0)
        self.assertEqual((found.outcome.result, holds), ("temperror", 0.0))

    async def test_dmarcOrganisationalPolicyHolds(self):
        """
        A policy found at the Organizational Domain holds no longer than
        either answer: the From domain's NXDOMAIN that sent the lookup
        there, and the record found there.
        """
        server = startServer(self, [("_dmarc.b.test", "TXT", "v=DMARC1; p=quarantine")], ttl=300)
        cache = dns.resolver.LRUCache(10)
        # the From domain's NXDOMAIN is read (and kept) with a TTL of
        # 300 s, the record afterwards with 42 s
        await self.runner.run(queryBlocking, server.nameservers, 5.0, "_dmarc.x.b.test", "TXT", cache)
        server.ttl = 42
        found, holds = await self.runner.run(discoverPolicyBlocking, "x.b.test", server.nameservers, 5.0, cache)
        self.assertEqual((found.foundAt, found.record.policy), ("b.test", "quarantine"))
        self.assertTrue(40.0 < holds <= 42.0, holds)


REJECT = DMARCPolicy("a.test", "a.test", DMARCRecord("reject", "reject"), None)
FAILED = DMARCPolicy("a.test", "a.test", None, DMARCResult("temperror", "none", "a.test", "DNS"))


class DMARCPolicyCacheTests(SynchronousTestCase):
    """
    L{DMARCEvaluator} keeps discovered policies on the reactor thread.
    """

    def evaluator(self, *outcomes) -> DMARCEvaluator:
        """
        An evaluator whose lookups give C{outcomes}, with a policy cache
        on C{self.clock}.
        """
        self.clock = Clock()
        self.runner = ScriptedRunner(list(outcomes))
        return DMARCEvaluator((), 5.0, self.runner, random=lambda: 0.0,
                              policies=ExpiringCache(self.clock, 10, 3600.0))

    def evaluate(self, evaluator: DMARCEvaluator, spf=("none", "")) -> DMARCResult:
        """
        @return: the result of an evaluation that finishes at once.
        """
        return self.successResultOf(evaluator.evaluate("A.test", spf, ()))

    def test_keptUntilTTL(self):
        """
        A policy is applied from the cache, to each message's own results,
        until its answers expire.
        """
        e = self.evaluator((REJECT, 300.0), (REJECT, 300.0))
        self.assertEqual(self.evaluate(e).result, "fail")
        self.clock.advance(299.0)
        self.assertEqual(self.evaluate(e, spf=("pass", "a.test")).result, "pass")
        self.assertEqual([name for name, _ in self.runner.calls], ["discoverPolicyBlocking"])
        self.clock.advance(1.0)
        self.evaluate(e)
        self.assertEqual(len(self.runner.calls), 2)

    def test_temperrorNotKept(self):
        """
        A policy that could not be read is looked up again.
        """
        e = self.evaluator((FAILED, 0.0), (REJECT, 300.0))
        self.assertEqual(self.evaluate(e).result, "temperror")
        self.assertEqual(self.evaluate(e).result, "fail")
        self.assertEqual(len(self.runner.calls), 2)

    def test_overlappingLookupsShared(self):
        """
        Messages from one domain checked at the same time wait for one
        lookup; a policy already found is applied without any.
        """
        pending = Deferred()
        e = self.evaluator(pending)
        first = e.policyFor("a.test")
        second = e.evaluate("a.test", ("none", ""), ())
        self.assertNoResult(second)
        pending.callback((REJECT, 300.0))
        self.assertIs(self.successResultOf(first), REJECT)
        self.assertEqual(self.successResultOf(second).result, "fail")
        self.assertEqual(self.successResultOf(e.evaluate("b.test", ("none", ""), (), REJECT)).result, "fail")
        self.assertEqual(len(self.runner.calls), 1)
