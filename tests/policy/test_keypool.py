"""
Tests of admission by key pool: L{KeyPoolWatch} with a clock and a key
source whose status the test sets, and the session policy that asks it.
"""

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.interfaces import KeySourceError, KMEStatus
from qutemail.policy.envelope import RecipientPolicy
from qutemail.policy.keypool import POLL_SECONDS, KeyPoolWatch
from qutemail.policy.session import SessionPolicy
from qutemail.replies import KEY_POOL_LOW, ReplyError
from qutemail.store.maildir import MaildirStore


def status(stored: int) -> KMEStatus:
    """
    @return: a link status with C{stored} keys.
    """
    return KMEStatus(sourceKMEId="kme-1", targetKMEId="kme-1", masterSAEId="sae-a", slaveSAEId="sae-a",
                     keySize=256, storedKeyCount=stored, maxKeyCount=100, maxKeyPerRequest=10,
                     maxKeySize=1024, minKeySize=64, maxSAEIdCount=0)


class SettableSource:
    """
    A key source whose status answer the test sets.

    @ivar answer: the L{KMEStatus} to give, or C{None} to fail.
    @ivar asked: the SAEs asked about.
    """

    def __init__(self) -> None:
        self.answer: KMEStatus | None = status(50)
        self.asked: list[str] = []

    def status(self, peerSAE: str):
        self.asked.append(peerSAE)
        if self.answer is None:
            return fail(KeySourceError("KME unreachable"))
        return succeed(self.answer)


class KeyPoolWatchTests(SynchronousTestCase):
    """
    The watch reads the status on its clock and opens or closes.
    """

    def setUp(self):
        self.clock = Clock()
        self.source = SettableSource()
        self.watch = KeyPoolWatch(self.source, "sae-escrow", 20, self.clock)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def test_closesAndOpens(self):
        """
        Under C{min_pool_keys} admission closes at the next poll, and opens
        again once the count is back; the link asked about is the one
        given.
        """
        self.assertEqual((self.watch.storedKeys, self.watch.closed), (50, False))
        self.watch.check()
        self.source.answer = status(19)
        self.clock.advance(POLL_SECONDS)
        self.assertTrue(self.watch.closed)
        with self.assertRaises(ReplyError) as caught:
            self.watch.check()
        self.assertEqual(caught.exception.reply, KEY_POOL_LOW)
        self.source.answer = status(20)
        self.clock.advance(POLL_SECONDS)
        self.assertFalse(self.watch.closed)
        self.assertEqual(set(self.source.asked), {"sae-escrow"})
        self.assertEqual(len(self.source.asked), 3)

    def test_failureKeepsVerdict(self):
        """
        A status request that fails changes nothing, open or closed.
        """
        self.source.answer = None
        self.clock.advance(POLL_SECONDS)
        self.assertFalse(self.watch.closed)
        self.source.answer = status(1)
        self.clock.advance(POLL_SECONDS)
        self.source.answer = None
        self.clock.advance(POLL_SECONDS)
        self.assertTrue(self.watch.closed)
        self.assertEqual(self.watch.storedKeys, 1)


class SessionPolicyTests(SynchronousTestCase):
    """
    RCPT refuses internal mail, and only internal mail, while closed.
    """

    def setUp(self):
        users = MemoryUserDirectory()
        users.addUser("alice@example.test", b"pw")
        store = MaildirStore(self.mktemp(), InlineRunner(), "mail.example.test", 0)
        self.watch = KeyPoolWatch(SettableSource(), "sae-a", 20, Clock())
        self.watch.closed = True
        self.policy = SessionPolicy(RecipientPolicy(users, store, ("example.test",), 1000), Clock(),
                                    keyPool=self.watch)

    def rcpt(self, recipient: str, authenticated: str | None, sender: str):
        """
        @return: the Deferred of one RCPT decision.
        """
        return self.policy.checkRecipient(recipient, None, authenticated, sender)

    def test_internalRefused(self):
        """
        An authenticated sender of ours to a local user gets 452 4.3.1.
        """
        failure = self.failureResultOf(self.rcpt("alice@example.test", "bob@example.test", "bob@example.test"),
                                       ReplyError)
        self.assertEqual((failure.value.reply.code, failure.value.reply.enhanced), (452, "4.3.1"))
        self.assertIn("QKD key pool low", failure.value.reply.text)

    def test_othersAdmitted(self):
        """
        Mail from outside to a local user, and an authenticated user's
        mail to a remote recipient, need no key: admitted.  So is internal
        mail once the pool is open.
        """
        self.assertEqual(self.successResultOf(self.rcpt("alice@example.test", None, "x@remote.test")).address,
                         "alice@example.test")
        self.assertIsNone(self.successResultOf(self.rcpt("dave@remote.test", "bob@example.test",
                                                         "bob@example.test")))
        self.watch.closed = False
        self.assertEqual(self.successResultOf(
            self.rcpt("alice@example.test", "bob@example.test", "bob@example.test")).address, "alice@example.test")


class PeerPoolTests(SynchronousTestCase):
    """
    A peer site's link, closed, refuses our users' mail to that site and
    nothing else (issue 13).
    """

    def setUp(self):
        users = MemoryUserDirectory()
        users.addUser("alice@example.test", b"pw")
        store = MaildirStore(self.mktemp(), InlineRunner(), "mail.example.test", 0)
        self.peer = KeyPoolWatch(SettableSource(), "sae-b", 20, Clock(),
                                 reply=KEY_POOL_LOW.withText("QKD key pool for peer site sae-b low"))
        self.peer.closed = True
        self.policy = SessionPolicy(RecipientPolicy(users, store, ("example.test",), 1000), Clock(),
                                    peerPools={"b.example": self.peer})

    def rcpt(self, recipient: str, authenticated: str | None, sender: str):
        return self.policy.checkRecipient(recipient, None, authenticated, sender)

    def test_peerRefused(self):
        """
        An authenticated user's RCPT to the peer domain (any case) gets the
        link's 452 4.3.1.
        """
        failure = self.failureResultOf(self.rcpt("carol@B.Example", "bob@example.test", "bob@example.test"),
                                       ReplyError)
        self.assertEqual((failure.value.reply.code, failure.value.reply.enhanced), (452, "4.3.1"))
        self.assertIn("peer site sae-b", failure.value.reply.text)

    def test_othersAdmitted(self):
        """
        Other remote domains, local users, and mail from outside pass; the
        peer too once the link is open.
        """
        self.assertIsNone(self.successResultOf(self.rcpt("dave@remote.test", "bob@example.test", "bob@example.test")))
        self.assertEqual(self.successResultOf(self.rcpt("alice@example.test", "bob@example.test",
                                                        "bob@example.test")).address, "alice@example.test")
        self.peer.closed = False
        self.assertIsNone(self.successResultOf(self.rcpt("carol@b.example", "bob@example.test", "bob@example.test")))
