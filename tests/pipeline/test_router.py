"""
Tests for L{qutemail.pipeline.router}: each recipient delivered, queued or
reported failed, over the memory backends.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryMessageStore, MemoryRelayQueue, MemoryUserDirectory
from qutemail.message import DEFERRED, PENDING, Envelope, SpooledMessage
from qutemail.pipeline.router import Router
from qutemail.replies import MAILBOX_FULL
from qutemail.store.delivery import LocalDelivery

BODY = b"From: bob@example.test\nSubject: routed\n\nbody\n"
RETRY = (300.0, 600.0)


class FixedSigner:
    """
    Signs every message with the same field.
    """

    def headerFor(self, message):
        """
        @return: a fixed DKIM-Signature field.
        """
        return succeed("DKIM-Signature: v=1; d=example.test\n")


class RouterTests(SynchronousTestCase):
    """
    L{Router.route} over memory backends.
    """

    def setUp(self) -> None:
        """
        Alice and carol are local; carol's mailbox is nearly full.
        """
        self.clock = Clock()
        self.clock.advance(1000)
        self.users = MemoryUserDirectory()
        for name in ("alice", "carol"):
            self.users.addUser(f"{name}@example.test", b"pw")
        self.users.setQuota("carol@example.test", 10)
        self.store = MemoryMessageStore()
        self.queue = MemoryRelayQueue()
        local = LocalDelivery(store=self.store, users=self.users, domains=("example.test",))
        self.router = Router(local=local, queue=self.queue, clock=self.clock, retrySchedule=RETRY,
                             signer=FixedSigner())

    def route(self, *recipients: str) -> list:
        """
        Route a message from bob to the recipients.

        @return: the failed recipients.
        """
        envelope = Envelope("bob@example.test", recipients, "client.test", "192.0.2.7", 0.0)
        return self.successResultOf(Deferred.fromCoroutine(
            self.router.route(SpooledMessage("Q1", envelope, len(BODY), inline=BODY), False)))

    def test_localDelivered(self) -> None:
        """
        A local recipient's copy is stored; nothing is queued or failed.
        """
        self.assertEqual(self.route("alice@example.test"), [])
        self.assertEqual(list(self.store.mailboxes["alice@example.test"].values()), [BODY])
        self.assertEqual(self.queue.entries, {})

    def test_remoteQueuedSigned(self) -> None:
        """
        A remote recipient waits in the relay queue for its first attempt,
        with the message's DKIM field made once.
        """
        self.assertEqual(self.route("dave@remote.test", "erin@remote.test", "alice@example.test"), [])
        entry = self.queue.entries["Q1"]
        self.assertEqual([(r.address, r.index, r.state, r.nextAttempt) for r in entry.recipients],
                         [("dave@remote.test", 0, PENDING, 1000.0), ("erin@remote.test", 1, PENDING, 1000.0)])
        self.assertEqual(entry.dkimHeader, "DKIM-Signature: v=1; d=example.test\n")

    def test_temporaryDeferred(self) -> None:
        """
        A local delivery that fails for now (over quota) waits in the queue
        for the first retry interval, with its reason.
        """
        self.assertEqual(self.route("carol@example.test"), [])
        [r] = self.queue.entries["Q1"].recipients
        self.assertEqual((r.state, r.attempts, r.nextAttempt, r.lastReply),
                         (DEFERRED, 1, 1300.0, str(MAILBOX_FULL)))
        self.assertEqual(self.queue.entries["Q1"].dkimHeader, "")

    def test_permanentReturned(self) -> None:
        """
        An unknown local recipient is returned as failed for good (5.1.1),
        for the intake to bounce; the others are still delivered.
        """
        [failed] = self.route("nobody@example.test", "alice@example.test")
        self.assertEqual((failed.address, failed.status), ("nobody@example.test", "5.1.1"))
        self.assertIn("alice@example.test", self.store.mailboxes)

