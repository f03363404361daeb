"""
The outbound queue end to end: the scheduler on a L{Clock} drives real relay
sessions, over loopback sockets, to a scripted remote exchanger found
through a real DNS server on loopback.  Issue 5, acceptance items 2, 3, 4
and 6.
"""

import email
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from qutemail.blocking import BlockingRunner
from qutemail.message import Envelope, SpooledMessage
from qutemail.message import DEFERRED, PENDING, RecipientState
from qutemail.relay.mx import MXResolver
from qutemail.relay.sender import Relay
from tests.dnsserver import startDNSServer
from tests.integration.support import runCLI, waitFor, writeConfig
from tests.relay.remote import Script, selfSignedContext, startRemote
from tests.support import buildStack

BOB = "bob@example.test"
BODY = b"From: bob@example.test\nTo: dave@remote.test\nSubject: outbound\n\nhello there\n"
ZONE = [
    ("remote.test", "MX", (10, "mx.remote.test")),
    ("mx.remote.test", "A", "127.0.0.1"),
    # Loopback too, but the remote listens on 127.0.0.1 only: refused.
    ("dead.test", "MX", (10, "mx.dead.test")),
    ("mx.dead.test", "A", "127.0.0.2"),
]


class RelayQueueTests(TestCase):
    """
    Deferrals, retries, bounces and expiry of outbound mail.
    """

    lifetime = 5 * 86400.0

    async def startStack(self, script: Script | None = None, tls=None, **relayArguments) -> None:
        """
        The stack (inline runner, a Clock), a DNS server, the remote, and a
        relay wired into the scheduler as the service does.
        """
        self.dns = await startDNSServer(self, ZONE)
        self.remote = await startRemote(self, script, tlsContext=tls)
        self.stack = buildStack(self.mktemp(), lifetime=self.lifetime)
        self.addCleanup(self.stack.journal._closeFile)
        runner = BlockingRunner(reactor)
        runner.startService()
        self.addCleanup(runner.stopService)
        self.relay = Relay(reactor=reactor, resolver=MXResolver(runner, self.dns.nameservers, timeoutSeconds=2.0),
                           hostname="mail.example.test", mxPort=self.remote.port, **relayArguments)
        self.stack.scheduler.relay = self.relay
        self.stack.scheduler.startService()
        self.addCleanup(self.stack.scheduler.stopService)

    def submit(self, recipients: tuple[str, ...], body: bytes = BODY) -> str:
        """
        Commit a message from bob and route it, as the listener does.

        @return: its queue id.
        """
        envelope = Envelope(BOB, recipients, "client.test", "127.0.0.1", self.stack.clock.seconds(),
                            authenticated=BOB)
        message = SpooledMessage(self.stack.intake.queueIds.next(), envelope, len(body), inline=body)
        self.assertEqual(self.successResultOf(self.stack.intake.accept(message)).code, 250)
        self.stack.clock.advance(0)  # the scheduler's kick
        return message.queueId

    def recipient(self, queueId: str, address: str):
        """
        @return: a recipient's state in the queue.
        """
        [r] = [r for r in self.stack.queue.entries[queueId].recipients if r.address == address]
        return r

    async def advanceTo(self, when: float, queueId: str) -> bool:
        """
        Move the clock to C{when} in tick-sized steps.

        @return: whether an attempt for the entry started on the last step.
        """
        while self.stack.clock.seconds() < when:
            self.stack.clock.advance(min(5.0, when - self.stack.clock.seconds()))
        return self.stack.scheduler.busy(queueId)

    def bounces(self) -> list[email.message.Message]:
        """
        @return: the reports in bob's mailbox, parsed.
        """
        return [email.message_from_bytes(data) for data in self.stack.newFiles(BOB)]

    async def test_retriedOnSchedule(self) -> None:
        """
        The remote answers 451 twice, then accepts: the attempts happen at
        +5m and +15m, the mail arrives once, and C{queue list} shows the
        deferral reason in between.
        """
        await self.startStack(Script(data=[b"451 4.3.0 Greylisted, try later", b"451 4.3.0 Still greylisted",
                                           b"250 2.0.0 Accepted"]))
        queueId = self.submit(("dave@remote.test",))
        r = self.recipient(queueId, "dave@remote.test")
        await waitFor(lambda: r.attempts == 1 and not self.stack.scheduler.busy(queueId))
        self.assertEqual((r.state, r.nextAttempt), (DEFERRED, 300.0))
        self.assertIn("451 4.3.0 Greylisted", r.lastReply)

        path = writeConfig(os.path.abspath(self.mktemp() + "-config.ini"), os.path.abspath(self.stack.dataDir))
        listing = await _inThread(runCLI, path, "queue", "list")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("dave@remote.test  deferred  attempts=1", listing.stdout)
        self.assertIn("451 4.3.0 Greylisted, try later", listing.stdout)

        self.assertFalse(await self.advanceTo(299.0, queueId))
        self.assertEqual(r.attempts, 1)
        self.assertTrue(await self.advanceTo(300.0, queueId))
        await waitFor(lambda: r.attempts == 2 and not self.stack.scheduler.busy(queueId))
        self.assertEqual((r.state, r.nextAttempt), (DEFERRED, 900.0))
        self.assertFalse(await self.advanceTo(895.0, queueId))
        self.assertTrue(await self.advanceTo(900.0, queueId))
        await waitFor(lambda: queueId not in self.stack.queue.entries)
        self.assertEqual([m.recipients for m in self.remote.received], [["dave@remote.test"]])
        self.assertEqual(r.lastReply, "250 2.0.0 Accepted")
        self.assertEqual(self.bounces(), [])

    async def test_oneRecipientRefused(self) -> None:
        """
        The remote refuses one of two recipients with 550 5.1.1: the other
        gets the mail, and bob gets an RFC 3464 report naming the refused
        one, parseable by C{email} as multipart/report.
        """
        await self.startStack(Script(rcpt={"nobody@remote.test": [b"550 5.1.1 No such user here"]}))
        queueId = self.submit(("nobody@remote.test", "dave@remote.test"))
        await waitFor(lambda: queueId not in self.stack.queue.entries)
        self.assertEqual([m.recipients for m in self.remote.received], [["dave@remote.test"]])
        [report] = await waitFor(self.bounces)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        status = [part for part in report.walk() if part.get_content_type() == "message/delivery-status"]
        [statusPart] = status
        fields = statusPart.get_payload()[1]
        self.assertEqual(fields["Final-Recipient"], "rfc822; nobody@remote.test")
        self.assertEqual((fields["Action"], fields["Status"]), ("failed", "5.1.1"))
        self.assertIn("550 5.1.1 No such user here", fields["Diagnostic-Code"])
        self.assertEqual(report.as_string().count("Final-Recipient:"), 1)

    async def test_everyRecipientRefused(self) -> None:
        """
        The remote refuses every RCPT with 550 5.1.1: the message is bounced
        at the first attempt, and bob's report names 5.1.1 and the remote's
        text, not an expiry or a lost connection.
        """
        await self.startStack(Script(everyRcpt=b"550 5.1.1 No such user here"))
        queueId = self.submit(("nobody@remote.test",))
        r = self.recipient(queueId, "nobody@remote.test")
        await waitFor(lambda: queueId not in self.stack.queue.entries)
        self.assertEqual((r.attempts, r.lastReply), (1, "550 5.1.1 No such user here"))
        [report] = await waitFor(self.bounces)
        [statusPart] = [part for part in report.walk() if part.get_content_type() == "message/delivery-status"]
        fields = statusPart.get_payload()[1]
        self.assertEqual(fields["Final-Recipient"], "rfc822; nobody@remote.test")
        self.assertEqual((fields["Action"], fields["Status"]), ("failed", "5.1.1"))
        self.assertIn("550 5.1.1 No such user here", fields["Diagnostic-Code"])
        self.assertNotIn("5.4.7", report.as_string())
        self.assertNotIn("Connection lost", report.as_string())
        self.assertNotIn("4.4.2", report.as_string())
        await self.remote.whenIdle()
        self.assertEqual(self.remote.commands[-1], b"QUIT")
        self.assertEqual(self.remote.received, [])

    async def test_everyRecipientDeferred(self) -> None:
        """
        The remote answers 450 4.2.1 to every RCPT: the recipient stays
        deferred with the remote's reply as its last reply, and no report
        goes to bob.
        """
        await self.startStack(Script(everyRcpt=b"450 4.2.1 Mailbox busy, try later"))
        queueId = self.submit(("dave@remote.test",))
        r = self.recipient(queueId, "dave@remote.test")
        await waitFor(lambda: r.attempts == 1 and not self.stack.scheduler.busy(queueId))
        self.assertEqual((r.state, r.nextAttempt), (DEFERRED, 300.0))
        self.assertEqual(r.lastReply, "450 4.2.1 Mailbox busy, try later")
        await self.remote.whenIdle()
        self.assertEqual(self.remote.commands[-1], b"QUIT")
        self.assertEqual(self.bounces(), [])

    async def test_expiryBouncesOnce(self) -> None:
        """
        No exchanger reachable until the queue lifetime passes: every
        attempt is deferred, then exactly one bounce goes to bob and the
        entry is gone.
        """
        self.lifetime = 3600.0
        await self.startStack()
        queueId = self.submit(("dave@dead.test",))
        r = self.recipient(queueId, "dave@dead.test")
        expected = [0.0, 300.0, 900.0, 2100.0, 3300.0]
        for attempt, when in enumerate(expected, 1):
            await self.advanceTo(when, queueId)
            await waitFor(lambda: r.attempts == attempt and not self.stack.scheduler.busy(queueId))
            self.assertEqual(r.state, DEFERRED)
            self.assertIn("4.4.1", r.lastReply)
        await self.advanceTo(4500.0, queueId)
        await waitFor(lambda: queueId not in self.stack.queue.entries)
        [report] = await waitFor(self.bounces)
        self.assertIn("dave@dead.test", report.as_string())
        self.assertIn("Status: 5.4.7", report.as_string())
        await self.advanceTo(9000.0, queueId)
        self.assertEqual(len(self.bounces()), 1)
        self.assertEqual(self.remote.received, [])

    async def test_verifiedTLSRequired(self) -> None:
        """
        With verified TLS required and a self-signed remote certificate,
        the mail is deferred with a clear reason and nothing is sent.
        """
        await self.startStack(tls=selfSignedContext(), requireVerifiedTls=("remote.test",))
        queueId = self.submit(("dave@remote.test",))
        r = self.recipient(queueId, "dave@remote.test")
        await waitFor(lambda: r.attempts == 1 and not self.stack.scheduler.busy(queueId))
        self.assertEqual(r.state, DEFERRED)
        self.assertIn("451 4.7.5 Verified TLS required but the remote certificate did not verify", r.lastReply)
        self.assertEqual(self.remote.received, [])
        self.assertFalse([c for c in self.remote.commands if c.startswith(b"MAIL")])

    async def test_freshBeforeBacklog(self) -> None:
        """
        A never-tried entry is due before a backlog of deferred ones, even
        when the batch has room for only one.
        """
        await self.startStack()
        self.stack.scheduler.batch = 1
        old = self.submit(("dave@dead.test",))
        await waitFor(lambda: self.recipient(old, "dave@dead.test").attempts == 1
                      and not self.stack.scheduler.busy(old))
        self.stack.clock.advance(600)
        due = self.successResultOf(self.stack.queue.due(self.stack.clock.seconds(), 1))
        self.assertEqual([e.queueId for e in due], [old])
        fresh = SpooledMessage("F" * 8, Envelope(BOB, ("dave@remote.test",), receivedAt=600.0), len(BODY),
                               inline=BODY)
        self.successResultOf(self.stack.queue.add(fresh, [RecipientState("dave@remote.test", 0, PENDING,
                                                                         nextAttempt=600.0)]))
        self.assertEqual([e.queueId for e in self.successResultOf(self.stack.queue.due(600.0, 1))], ["F" * 8])


def _inThread(f, *args):
    """
    Run a blocking call in a thread.
    """
    from twisted.internet.threads import deferToThread

    return deferToThread(f, *args)
