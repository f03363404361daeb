"""
The MTA port's rate limit and peer sites (issue 13): mail whose sender
names a peer domain is not counted at MAIL; the intake counts it after
DATA unless it is a QKD transit message from that site
(L{qutemail.policy.session.SessionPolicy.chargeMessage}).
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.policy.envelope import RecipientPolicy
from qutemail.policy.ratelimit import MemoryRateLimiter
from qutemail.policy.session import SessionPolicy
from qutemail.replies import ReplyError
from qutemail.store.maildir import MaildirStore


class PeerRateLimitTests(SynchronousTestCase):
    """
    A limit of two messages an hour per client IP, with one peer domain.
    """

    def setUp(self):
        users = MemoryUserDirectory()
        store = MaildirStore(self.mktemp(), InlineRunner(), "mail.example.test", 0)
        self.policy = SessionPolicy(RecipientPolicy(users, store, ("example.test",), 1000), Clock(),
                                    MemoryRateLimiter(), 2, peerDomains=frozenset({"a.example.test"}))

    def mail(self, sender: str):
        return self.policy.checkSender(peer="192.0.2.1", sender=sender, declaredSize=None, authenticated=None,
                                       helo="c.test")

    def test_peerSenderNotCountedAtMail(self):
        """
        Any number of MAIL FROM a peer domain (any case) pass; other
        senders from the same IP are counted as before.
        """
        for _ in range(5):
            self.successResultOf(self.mail("alice@A.Example.Test"))
        self.successResultOf(self.mail("x@remote.test"))
        self.successResultOf(self.mail("y@remote.test"))
        failure = self.failureResultOf(self.mail("z@remote.test"), ReplyError)
        self.assertEqual((failure.value.reply.code, failure.value.reply.enhanced), (451, "4.7.0"))

    def test_chargedAfterData(self):
        """
        C{chargeMessage} counts against the same IP's limit.
        """
        self.successResultOf(self.policy.chargeMessage("192.0.2.1"))
        self.successResultOf(self.mail("x@remote.test"))
        failure = self.failureResultOf(self.policy.chargeMessage("192.0.2.1"), ReplyError)
        self.assertEqual(failure.value.reply.code, 451)
        self.successResultOf(self.policy.chargeMessage("192.0.2.2"))
