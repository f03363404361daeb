"""
The L{IMailboxNotifier} contract, run against the in-process notifier and
the Redis one (on a real redis-server): a subscriber hears of its own
mailbox until it unsubscribes, and of no other.
"""

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from qutemail.backends.localnotify import LocalMailboxNotifier
from qutemail.backends.redislimiter import connect
from qutemail.backends.redisnotify import RedisMailboxNotifier
from qutemail.interfaces import IMailboxNotifier
from tests.backends.test_redislimiter import startRedis


class MailboxNotifierContractMixin:
    """
    The behaviour every notifier has.  Subclasses provide C{makeNotifier()}
    (a Deferred) and C{settled()} (a Deferred that fires once a notice
    published now has had time to arrive).
    """

    async def test_notices(self):
        """
        Bob's subscriber hears of bob's mailbox, not alice's; after it
        unsubscribes it hears nothing.
        """
        notifier = await self.makeNotifier()
        self.assertTrue(verifyObject(IMailboxNotifier, notifier))
        heard = []
        unsubscribe = notifier.subscribe("bob@example.test", lambda: heard.append("bob"))
        await notifier.publish("bob@example.test")
        await notifier.publish("alice@example.test")
        await self.settled(lambda: heard)
        self.assertEqual(heard, ["bob"])
        unsubscribe()
        await notifier.publish("bob@example.test")
        await self.settled(lambda: False)
        self.assertEqual(heard, ["bob"])


class LocalNotifierTests(MailboxNotifierContractMixin, TestCase):
    """
    L{LocalMailboxNotifier}.
    """

    async def makeNotifier(self):
        """
        @return: a local notifier.
        """
        return LocalMailboxNotifier()

    async def settled(self, done):
        """
        Local notices are delivered at once.
        """


class RedisNotifierTests(MailboxNotifierContractMixin, TestCase):
    """
    L{RedisMailboxNotifier} on a real redis-server.
    """

    async def makeNotifier(self):
        """
        @return: a running Redis notifier, subscribed.
        """
        url = f"redis://127.0.0.1:{startRedis(self)}/0"
        connection = connect(url)
        self.addCleanup(connection.disconnect)
        notifier = RedisMailboxNotifier(reactor, url, connection)
        notifier.startService()
        self.addCleanup(notifier.stopService)
        # Subscribed once a notice of its own comes back.
        probe: list = []
        unsubscribe = notifier.subscribe("probe@example.test", lambda: probe.append(1))
        while not probe:
            await notifier.publish("probe@example.test")
            await deferLater(reactor, 0.05, lambda: None)
        unsubscribe()
        return notifier

    async def settled(self, done):
        """
        Wait until C{done()} or half a second.
        """
        for _ in range(50):
            if done():
                return
            await deferLater(reactor, 0.01, lambda: None)


