"""
The L{IRateLimiter} contract, run against the in-process limiter and the
Redis one (a real redis-server on a free loopback port).
"""

from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from qutemail.backends.redislimiter import RedisRateLimiter, connect
from qutemail.interfaces import IRateLimiter
from qutemail.policy.ratelimit import MemoryRateLimiter
from tests.backends.test_redislimiter import startRedis

HOUR = 3600.0
T0 = 1_700_000_000.0


class RateLimiterContractMixin:
    """
    The behaviour every L{IRateLimiter} has.  Subclasses provide
    C{makeLimiter()}, returning a limiter with no counts.
    """

    def setUp(self):
        """
        A fresh limiter.
        """
        self.limiter = self.makeLimiter()

    def consume(self, key: str, units: int, limit: int, now: float, windowSeconds: float = HOUR):
        """
        Call C{consume} with the arguments in a readable order.

        @return: its Deferred.
        """
        return self.limiter.consume(key, units, limit, windowSeconds, now)

    def test_provides(self):
        """
        The backend provides the interface and has a name for logs.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))
        self.assertIsInstance(self.limiter.name, str)
        self.assertTrue(self.limiter.name)

    async def test_upToTheLimit(self):
        """
        Units are allowed one by one up to the limit in the window; the next
        one is refused with C{False}.
        """
        results = [await self.consume("ip:192.0.2.1", 1, 3, T0 + i) for i in range(4)]
        self.assertEqual(results, [True, True, True, False])

    async def test_unitsCount(self):
        """
        A call counts all its units: two units of a limit of three leave room
        for one more, and a call for more units than the limit is refused even
        with nothing counted.
        """
        self.assertFalse(await self.consume("user:bob@example.test", 4, 3, T0))
        self.assertTrue(await self.consume("user:bob@example.test", 2, 3, T0))
        self.assertFalse(await self.consume("user:bob@example.test", 2, 3, T0 + 1))
        self.assertTrue(await self.consume("user:bob@example.test", 1, 3, T0 + 2))
        self.assertFalse(await self.consume("user:bob@example.test", 1, 3, T0 + 3))

    async def test_refusalCountsNothing(self):
        """
        A refused call counts none of its units: a smaller call that fits
        the room left is still allowed after it.
        """
        self.assertTrue(await self.consume("ip:192.0.2.1", 3, 5, T0))
        self.assertFalse(await self.consume("ip:192.0.2.1", 3, 5, T0 + 1))
        self.assertFalse(await self.consume("ip:192.0.2.1", 3, 5, T0 + 2))
        self.assertTrue(await self.consume("ip:192.0.2.1", 2, 5, T0 + 3))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 5, T0 + 4))

    async def test_keysApart(self):
        """
        Each key has its own count: one key at its limit does not hold back
        another.
        """
        self.assertTrue(await self.consume("ip:192.0.2.1", 2, 2, T0))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 2, T0))
        self.assertTrue(await self.consume("ip:192.0.2.2", 2, 2, T0))
        self.assertTrue(await self.consume("user:alice@example.test", 1, 2, T0))

    async def test_windowSlides(self):
        """
        The window slides: a unit stops counting once it is older than the
        window, each unit on its own, and units still inside keep counting.
        """
        window = 100.0
        self.assertTrue(await self.consume("ip:192.0.2.1", 1, 2, T0, window))
        self.assertTrue(await self.consume("ip:192.0.2.1", 1, 2, T0 + 50, window))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 2, T0 + window - 1, window))
        # The first unit has left the window; the second has not.
        self.assertTrue(await self.consume("ip:192.0.2.1", 1, 2, T0 + window + 1, window))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 2, T0 + window + 2, window))
        # Both older units have left; the one counted at T0 + window + 1 stays.
        self.assertTrue(await self.consume("ip:192.0.2.1", 1, 2, T0 + 50 + window + 1, window))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 2, T0 + 50 + window + 2, window))

    async def test_freshWindow(self):
        """
        After a whole window without calls a key starts again at zero, up to
        the full limit.
        """
        for i in range(3):
            self.assertTrue(await self.consume("ip:192.0.2.1", 1, 3, T0 + i))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 3, T0 + 3))
        self.assertTrue(await self.consume("ip:192.0.2.1", 3, 3, T0 + 3 + HOUR))
        self.assertFalse(await self.consume("ip:192.0.2.1", 1, 3, T0 + 4 + HOUR))


class MemoryRateLimiterTests(RateLimiterContractMixin, TestCase):
    """
    The contract for the in-process limiter.
    """

    def makeLimiter(self):
        """
        @return: an empty L{MemoryRateLimiter}.
        """
        return MemoryRateLimiter()


class _NoFallback:
    """
    Stands in for the Redis limiter's in-process fallback in the contract
    tests: being asked at all fails the test.
    """

    def consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float):
        """
        @return: a failed Deferred: Redis did not answer this call.
        """
        return fail(AssertionError(f"Redis did not answer; the fallback was asked about {key}"))


class RedisRateLimiterTests(RateLimiterContractMixin, TestCase):
    """
    The contract for the Redis limiter, against a real redis-server on a
    free loopback port.  When Redis fails the limiter answers from
    in-process counters, which would pass the contract too: here the
    fallback fails the test instead, so every answer comes from Redis.
    """

    def makeLimiter(self):
        """
        @return: a L{RedisRateLimiter} on a fresh redis-server, without a
            fallback, disconnected after the test.
        """
        port = startRedis(self)
        limiter = RedisRateLimiter(connect(f"redis://127.0.0.1:{port}/0"), reactor)
        limiter.fallback = _NoFallback()
        self.addCleanup(limiter.disconnect)
        return limiter
