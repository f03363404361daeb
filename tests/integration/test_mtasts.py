"""
MTA-STS end to end (issue 15): bob submits to dave@remote.test on 587; the
server reads remote.test's C{_mta-sts} record from a real DNS server on
loopback, fetches the policy from a real HTTPS server (a certificate from a
test CA that C{[relay] tls_ca} trusts) and relays, or defers, as the policy
says.
"""

import os

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from tests.integration.support import waitFor
from tests.integration.test_mta import RunningServerMixin
from tests.relay.test_mtasts import POLICY, PolicyHost
from tests.relay.test_tlsrpt import openReport
from tests.test_tlsclient import TestCA


class MTASTSTests(RunningServerMixin, TestCase):
    """
    The whole server under remote.test's policy.
    """

    async def setUp(self):
        """
        A test CA, the policy host (on a free port, C{[relay]
        mta_sts_port}), then the server; remote.test publishes its record
        and its exchanger presents a certificate from the CA.
        """
        self.ca = TestCA()
        caPath = os.path.abspath(self.mktemp())
        with open(caPath, "wb") as f:
            f.write(self.ca.certificate.public_bytes(serialization.Encoding.PEM))
        self.host = PolicyHost(POLICY)
        context = self.ca.serverContext("mta-sts", dnsNames=["mta-sts.remote.test"])
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(context, False, Site(self.host)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.relayExtra = f"tls_ca = {caPath}\nmta_sts_port = {port.getHost().port}\n"
        await super().setUp()
        self.dns.add("mta-sts.remote.test", "A", "127.0.0.1")
        self.dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=e2e1;")
        self.remote.tlsContext = self.ca.serverContext("mx", dnsNames=["mx.remote.test"])

    def submitToDave(self):
        """
        Bob sends dave@remote.test a message over 587.
        """
        message = b"From: bob@example.test\r\nTo: dave@remote.test\r\nSubject: sts\r\n\r\nhello\r\n"
        return self.submit(lambda client: client.sendmail("bob@example.test", ["dave@remote.test"], message))

    async def test_enforcedAndDelivered(self) -> None:
        """
        The listed exchanger, verified for its name, gets the message over
        TLS; the policy was fetched once.
        """
        self.assertEqual(await self.submitToDave(), {})
        [received] = await waitFor(lambda: self.remote.received)
        self.assertEqual((received.recipients, received.tls), (["dave@remote.test"], True))
        self.assertEqual(self.host.fetches, 1)

    async def test_unlistedDeferred(self) -> None:
        """
        A policy that lists another exchanger keeps the message queued,
        deferred with 451 4.7.5 naming the policy, and nothing is sent.
        """
        self.host.body = POLICY.replace(b"mx: mx.remote.test", b"mx: mx2.remote.test")
        self.assertEqual(await self.submitToDave(), {})

        def deferred():
            return [r for e in self.root.queue.entries.values() for r in e.recipients if "4.7.5" in r.lastReply]

        [state] = await waitFor(deferred)
        self.assertIn("MTA-STS policy of remote.test (id e2e1) lists none of its exchangers", state.lastReply)
        self.assertEqual(self.remote.received, [])

    async def test_tlsReport(self) -> None:
        """
        After a delivery and a deferral under remote.test's policy, the
        day's report goes by mail to the C{rua} of its C{_smtp._tls}
        record (through the same relay, to the remote exchanger) and reads
        as RFC 8460 JSON: one successful session, one failure.
        """
        self.assertEqual(await self.submitToDave(), {})
        await waitFor(lambda: self.remote.received)
        self.host.body = POLICY.replace(b"mx: mx.remote.test", b"mx: mx2.remote.test")
        self.dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=e2e2;")
        self.assertEqual(await self.submitToDave(), {})
        await waitFor(lambda: any("4.7.5" in r.lastReply for e in self.root.queue.entries.values()
                                  for r in e.recipients))
        self.dns.add("_smtp._tls.remote.test", "TXT", "v=TLSRPTv1; rua=mailto:tlsrpt@remote.test")
        # The report itself goes out under the policy: list mx again.
        self.host.body = POLICY
        self.dns.set("_mta-sts.remote.test", "TXT", "v=STSv1; id=e2e3;")
        self.assertEqual(await self.root.tlsReporter.sendReports(), 1)
        received = await waitFor(lambda: [r for r in self.remote.received if r.recipients == ["tlsrpt@remote.test"]])
        parsed, report = openReport(received[0].data.replace(b"\r\n", b"\n"))
        self.assertEqual(parsed["TLS-Report-Domain"], "remote.test")
        self.assertEqual(parsed["From"], "postmaster@example.test")
        # One entry per policy: the first (listing mx) and the second.
        [first] = [p for p in report["policies"] if "mx: mx.remote.test" in p["policy"]["policy-string"]]
        [second] = [p for p in report["policies"] if "mx: mx2.remote.test" in p["policy"]["policy-string"]]
        self.assertEqual(first["summary"], {"total-successful-session-count": 1, "total-failure-session-count": 0})
        self.assertEqual(second["summary"], {"total-successful-session-count": 0, "total-failure-session-count": 1})
        self.assertEqual(second["failure-details"], [{"result-type": "validation-failure",
                                                      "receiving-mx-hostname": "mx.remote.test",
                                                      "receiving-ip": "127.0.0.1", "failed-session-count": 1}])
        self.assertEqual(report["organization-name"], "mail.example.test")
