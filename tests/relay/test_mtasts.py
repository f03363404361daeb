"""
Tests for L{qutemail.relay.mtasts} and the relay under MTA-STS: the record
and policy formats of RFC 8461, and policies fetched from a real HTTPS
server on loopback (a certificate from a test CA) through a real DNS
server, cached, refreshed when the TXT id changes, and enforced on real
SMTP sessions.
"""

import io

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from qutemail.blocking import BlockingRunner
from qutemail.relay.mtasts import ENFORCE, TESTING, MTASTSPolicies, PolicyError, STSPolicy, parsePolicy, \
    parseRecord
from qutemail.relay.mx import MXResolver
from qutemail.relay.sender import Relay
from tests.dnsserver import startDNSServer
from tests.relay.remote import selfSignedContext, startRemote
from tests.test_tlsclient import TestCA

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmx: *.backup.remote.test\r\nmax_age: 86400\r\n"


class FormatTests(SynchronousTestCase):
    """
    L{parseRecord}, L{parsePolicy} and L{STSPolicy.matches}.
    """

    def test_record(self) -> None:
        """
        Exactly one C{v=STSv1} record with a valid id gives the id; other
        TXT records are ignored.
        """
        self.assertEqual(parseRecord([b"v=STSv1; id=20261206T01;", b"v=spf1 -all"]), "20261206T01")
        for records in ([], [b"v=STSv1; id=a", b"v=STSv1; id=b"], [b"v=STSv1; id=not-alnum"],
                        [b"v=STSv1"], [b"v=STSv2; id=1"]):
            self.assertIsNone(parseRecord(records), records)

    def test_policy(self) -> None:
        """
        A policy with CRLF lines is read, its patterns lower-cased.
        """
        policy = parsePolicy(POLICY.replace(b"mx.remote", b"MX.Remote"), "id1")
        self.assertEqual(policy, STSPolicy(ENFORCE, ("mx.remote.test", "*.backup.remote.test"), 86400, "id1"))

    def test_badPolicies(self) -> None:
        """
        A wrong version, mode, max_age or pattern, or enforce without mx,
        is not a policy.
        """
        for body in (POLICY.replace(b"STSv1", b"STSv2"), POLICY.replace(b"enforce", b"strict"),
                     POLICY.replace(b"86400", b"soon"), b"version: STSv1\nmode: enforce\nmax_age: 5\n",
                     POLICY.replace(b"mx.remote.test", b"mx..remote"), b"\xff", b"version STSv1\n"):
            self.assertRaises(PolicyError, parsePolicy, body)

    def test_maxAgeCapped(self) -> None:
        """
        A max_age over a year counts as a year.
        """
        self.assertEqual(parsePolicy(POLICY.replace(b"86400", b"99999999")).maxAgeSeconds, 31_557_600)

    def test_matches(self) -> None:
        """
        A wildcard stands for exactly one leftmost label.
        """
        policy = parsePolicy(POLICY)
        self.assertEqual([policy.matches(h) for h in ("mx.remote.test", "MX.REMOTE.TEST.", "a.backup.remote.test",
                                                      "a.b.backup.remote.test", "backup.remote.test",
                                                      "other.remote.test")],
                         [True, True, True, False, False, False])


class PolicyHost(Resource):
    """
    C{/.well-known/mta-sts.txt} with a body the test sets, counting fetches.
    """

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        """
        @param body: the policy served.
        """
        Resource.__init__(self)
        self.body = body
        self.fetches = 0

    def render_GET(self, request) -> bytes:
        """
        Serve the policy at its well-known path only.
        """
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"no"
        self.fetches += 1
        request.setHeader(b"Content-Type", b"text/plain")
        return self.body


class PolicySetup(TestCase):
    """
    A DNS server for remote.test, a policy host, a test CA.
    """

    async def setUp(self):
        """
        Start DNS (MX, addresses, the C{_mta-sts} record) and the policy
        host with a certificate for C{mta-sts.remote.test}.
        """
        self.ca = TestCA()
        self.dns = await startDNSServer(self, [
            ("remote.test", "MX", (10, "mx.remote.test")),
            ("mx.remote.test", "A", "127.0.0.1"),
            ("mta-sts.remote.test", "A", "127.0.0.1"),
            ("_mta-sts.remote.test", "TXT", "v=STSv1; id=first;"),
        ])
        self.host = PolicyHost(POLICY)
        self.https = await self.listenHTTPS(self.ca.serverContext("mta-sts", dnsNames=["mta-sts.remote.test"]))
        self.runner = BlockingRunner(reactor, 0, 4, "mta-sts-test")
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        self.resolver = MXResolver(self.runner, self.dns.nameservers, timeoutSeconds=5)

    async def listenHTTPS(self, context: CertificateOptions) -> int:
        """
        @return: the port of the policy host, served with C{context}.
        """
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(context, False, Site(self.host)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def policies(self, port: int | None = None) -> MTASTSPolicies:
        """
        @return: policies fetched from our host, trusting the test CA.
        """
        return MTASTSPolicies(reactor, self.resolver, self.ca.root(), httpsPort=port or self.https, timeoutSeconds=5)


class PoliciesTests(PolicySetup):
    """
    L{MTASTSPolicies} against the real DNS and HTTPS servers.
    """

    async def test_fetchedAndCached(self) -> None:
        """
        The first delivery fetches the policy; the next ones, under the
        same TXT id, use the cache; a new id fetches again.
        """
        policies = self.policies()
        first = await policies.policyFor("remote.test")
        self.assertEqual((first.mode, first.mx, first.id), (ENFORCE, ("mx.remote.test", "*.backup.remote.test"),
                                                             "first"))
        await policies.policyFor("remote.test")
        self.assertEqual(self.host.fetches, 1)
        self.host.body = POLICY.replace(b"enforce", b"testing")
        self.dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=second;")
        second = await policies.policyFor("Remote.Test.")
        self.assertEqual((second.mode, second.id, self.host.fetches), (TESTING, "second", 2))

    async def test_oneFetchForConcurrentDeliveries(self) -> None:
        """
        Deliveries to a domain that start together share one fetch.
        """
        policies = self.policies()
        found = await gatherResults([policies.policyFor("remote.test") for _ in range(5)])
        self.assertEqual([p.id for p in found], ["first"] * 5)
        self.assertEqual(self.host.fetches, 1)

    async def test_lateAnswerUsesFetchedPolicy(self) -> None:
        """
        A delivery whose TXT answer comes only after another delivery's
        fetch of the same policy has finished takes the policy that fetch
        cached, rather than fetching it again.
        """
        real, held, asked = self.resolver, Deferred(), []

        class SecondTXTLate:
            """
            The real resolver, holding back the second TXT answer.
            """

            async def query(self, name: str, rdtype: str):
                # Count at the call, not at the answer: answers over UDP
                # may come in either order, and holding back the first
                # delivery's would wedge the test.
                if rdtype == "TXT":
                    asked.append(name)
                late = rdtype == "TXT" and len(asked) == 2
                answer = await real.query(name, rdtype)
                if late:
                    await held
                return answer

        policies = MTASTSPolicies(reactor, SecondTXTLate(), self.ca.root(), httpsPort=self.https, timeoutSeconds=5)
        first, second = policies.policyFor("remote.test"), policies.policyFor("remote.test")
        self.assertEqual((await first).id, "first")
        self.assertEqual(self.host.fetches, 1)
        held.callback(None)
        self.assertEqual((await second).id, "first")
        self.assertEqual(self.host.fetches, 1)

    async def test_recordRemovedKeepsCache(self) -> None:
        """
        With the TXT record gone, the cached policy holds until its
        max_age is over; then there is none.
        """
        policies = self.policies()
        self.host.body = POLICY.replace(b"86400", b"1")
        await policies.policyFor("remote.test")
        self.dns.remove("_mta-sts.remote.test")
        self.assertEqual((await policies.policyFor("remote.test")).mode, ENFORCE)
        policies._cache["remote.test"].expiresAt = reactor.seconds() - 1
        self.assertIsNone(await policies.policyFor("remote.test"))

    async def test_unverifiedHostIgnored(self) -> None:
        """
        A policy host whose certificate does not verify for its name gives
        no policy (and the mail goes as before).
        """
        wrongName = await self.listenHTTPS(self.ca.serverContext("x", dnsNames=["www.remote.test"]))
        self.assertIsNone(await self.policies(wrongName).policyFor("remote.test"))
        self.assertEqual(self.host.fetches, 0)

    async def test_noPolicy(self) -> None:
        """
        A domain without the record has no policy, and nothing is fetched.
        """
        self.assertIsNone(await self.policies().policyFor("elsewhere.test"))
        self.assertEqual(self.host.fetches, 0)


class EnforcedRelayTests(PolicySetup):
    """
    The relay under a domain's policy, over real SMTP sessions.
    """

    def relay(self, remotePort: int) -> Relay:
        """
        A relay resolving through our DNS, honouring MTA-STS, trusting the
        test CA.
        """
        return Relay(reactor=reactor, resolver=self.resolver, hostname="mail.example.test", mxPort=remotePort,
                     trustRoot=self.ca.root(), mtaSts=self.policies())

    def deliver(self, relay: Relay) -> Deferred:
        """
        Deliver a short message to dave@remote.test.
        """
        body = b"Subject: hi\n\nhello\n"
        return Deferred.fromCoroutine(relay.deliver(domain="remote.test", sender="bob@example.test",
                                                    recipients=["dave@remote.test"], body=lambda: io.BytesIO(body),
                                                    sizeBytes=len(body)))

    async def test_unlistedExchangerDeferred(self) -> None:
        """
        An enforce policy that does not list the domain's exchanger defers
        the mail with 451 4.7.5 naming the policy; nothing is sent.
        """
        self.host.body = POLICY.replace(b"mx: mx.remote.test", b"mx: other.remote.test")
        remote = await startRemote(self, tlsContext=self.ca.serverContext("mx", dnsNames=["mx.remote.test"]))
        replies = await self.deliver(self.relay(remote.port))
        reply = replies["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.5"))
        self.assertIn("MTA-STS policy of remote.test (id first)", reply.text)
        self.assertEqual((remote.received, remote.connections), ([], []))

    async def test_listedOverVerifiedTLS(self) -> None:
        """
        A listed exchanger with a certificate that verifies for its name
        gets the mail over TLS.
        """
        remote = await startRemote(self, tlsContext=self.ca.serverContext("mx", dnsNames=["mx.remote.test"]))
        replies = await self.deliver(self.relay(remote.port))
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertEqual(len(remote.received), 1)
        self.assertTrue(remote.received[0].tls)

    async def test_listedButUnverified(self) -> None:
        """
        A listed exchanger whose certificate does not verify is not sent
        the mail: 451 4.7.5, naming the policy.
        """
        remote = await startRemote(self, tlsContext=selfSignedContext())
        reply = (await self.deliver(self.relay(remote.port)))["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.5"))
        self.assertIn("(MTA-STS policy of remote.test, id first)", reply.text)
        self.assertEqual(remote.received, [])

    async def test_testingDelivers(self) -> None:
        """
        Under C{testing}, an unlisted exchanger with a self-signed
        certificate still gets the mail (opportunistic TLS), and the log
        says what the policy would have refused.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.host.body = POLICY.replace(b"enforce", b"testing").replace(b"mx: mx.remote.test", b"mx: x.remote.test")
        remote = await startRemote(self, tlsContext=selfSignedContext())
        replies = await self.deliver(self.relay(remote.port))
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertTrue(any("testing policy of" in e.get("log_format", "") and e.get("hosts") == "mx.remote.test"
                            for e in events))

