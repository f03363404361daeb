"""
Unit tests of the Redis rate limiter's circuit breaker and of the counts it
carries across, with a fake Redis connection and a C{task.Clock}.
"""

import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.backends.redislimiter import (
    COOL_DOWN_SECONDS,
    KEY_PREFIX,
    LIMITER_TIMEOUT_SECONDS,
    RedisRateLimiter,
)

HOUR = 3600.0
T0 = 1_700_000_000.0


class FakeRedis:
    """
    A txredisapi connection that answers only when the test says so.

    @ivar evals: C{(key, args, Deferred)} for each script call.
    @ivar pings: the Deferred of each PING.
    @ivar cancelled: the Deferreds that were cancelled.
    """

    def __init__(self) -> None:
        self.evals: list[tuple[str, list[str], Deferred]] = []
        self.pings: list[Deferred] = []
        self.cancelled: list[Deferred] = []

    def eval(self, script: str, keys: list[str], args: list[str]) -> Deferred:
        """
        @return: a Deferred the test fires, or never.
        """
        d = Deferred()
        self.evals.append((keys[0], args, d))
        return d

    def ping(self) -> Deferred:
        """
        @return: a Deferred the test fires, or never.
        """
        d = Deferred(self.cancelled.append)
        self.pings.append(d)
        return d

    def disconnect(self) -> Deferred:
        """
        @return: a fired Deferred.
        """
        return succeed(None)


class BreakerTests(TestCase):
    """
    The circuit breaker in front of Redis.
    """

    def setUp(self) -> None:
        """
        A limiter on a fake Redis and a clock; log events recorded.
        """
        self.clock = Clock()
        self.clock.advance(T0)
        self.redis = FakeRedis()
        self.limiter = RedisRateLimiter(self.redis, self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def consume(self, key: str = "ip:192.0.2.1", limit: int = 10, units: int = 1) -> Deferred:
        """
        Consume at the clock's time.
        """
        return self.limiter.consume(key, units, limit, HOUR, self.clock.seconds())

    def logged(self, text: str) -> int:
        """
        @return: how many events' format contains C{text}.
        """
        return len([e for e in self.events if text in e.get("log_format", "")])

    def openByTimeout(self) -> None:
        """
        A call Redis never answers opens the breaker after the timeout.
        """
        d = self.consume()
        self.assertNoResult(d)
        self.clock.advance(LIMITER_TIMEOUT_SECONDS)
        self.assertTrue(self.successResultOf(d))
        self.assertTrue(self.limiter.degraded)

    def test_opensOnTimeout(self):
        """
        A call Redis does not answer within the timeout is answered by the
        in-process counters, and the breaker opens, logged once.
        """
        self.openByTimeout()
        self.assertEqual(self.logged("Redis unavailable"), 1)

    def test_opensOnFailure(self):
        """
        A call that fails (connection lost) is answered in-process at once
        and opens the breaker.
        """
        self.redis.eval = lambda *a: fail(txredisapi.ConnectionError("Lost connection"))
        self.assertTrue(self.successResultOf(self.consume()))
        self.assertTrue(self.limiter.degraded)
        self.assertEqual(self.logged("Redis unavailable"), 1)

    def test_openAnswersAtOnce(self):
        """
        While the breaker is open, calls do not ask Redis: each one's
        Deferred has fired when C{consume} returns, and the outage is not
        logged again.
        """
        self.openByTimeout()
        asked = len(self.redis.evals)
        results = [self.successResultOf(self.consume(key=f"ip:192.0.2.{i % 3}", limit=100)) for i in range(30)]
        self.assertEqual(results, [True] * 30)
        self.assertEqual(len(self.redis.evals), asked)
        self.assertEqual(self.redis.pings, [])
        self.assertEqual(self.logged("Redis unavailable"), 1)

    def test_halfOpenProbe(self):
        """
        After the cool-down the next call is still answered at once and
        sends one PING, only one however many calls follow; its answer
        closes the breaker (logged once) and the next call asks Redis.
        """
        self.openByTimeout()
        self.clock.advance(COOL_DOWN_SECONDS - 1)
        self.successResultOf(self.consume())
        self.assertEqual(self.redis.pings, [])
        self.clock.advance(1)
        self.successResultOf(self.consume())
        self.successResultOf(self.consume())
        self.assertEqual(len(self.redis.pings), 1)
        self.redis.pings[0].callback("PONG")
        self.assertFalse(self.limiter.degraded)
        self.assertEqual(self.logged("Redis is back"), 1)
        asked = len(self.redis.evals)
        d = self.consume()
        self.assertEqual(len(self.redis.evals), asked + 1)
        self.redis.evals[-1][2].callback([1, T0])
        self.assertTrue(self.successResultOf(d))

    def test_probeFails(self):
        """
        A probe that gets no answer starts another cool-down, without
        logging the outage again.
        """
        self.openByTimeout()
        self.clock.advance(COOL_DOWN_SECONDS)
        self.successResultOf(self.consume())
        self.clock.advance(LIMITER_TIMEOUT_SECONDS)
        self.assertTrue(self.limiter.degraded)
        self.clock.advance(COOL_DOWN_SECONDS - 1)
        self.successResultOf(self.consume())
        self.assertEqual(len(self.redis.pings), 1)
        self.clock.advance(1)
        self.successResultOf(self.consume())
        self.assertEqual(len(self.redis.pings), 2)
        self.assertEqual(self.logged("Redis unavailable"), 1)
        self.assertEqual(self.logged("Redis is back"), 0)

    def test_disconnectStopsProbe(self):
        """
        C{disconnect} cancels a probe in flight.
        """
        self.openByTimeout()
        self.clock.advance(COOL_DOWN_SECONDS)
        self.successResultOf(self.consume())
        self.successResultOf(self.limiter.disconnect())
        self.assertEqual(self.redis.cancelled, self.redis.pings)
        self.assertTrue(self.limiter.degraded)
        self.assertEqual(self.logged("Redis is back"), 0)


class CarriedCountsTests(TestCase):
    """
    The counts go from Redis to the in-process counters and back.
    """

    def setUp(self) -> None:
        """
        A limiter on a fake Redis and a clock.
        """
        self.clock = Clock()
        self.clock.advance(T0)
        self.redis = FakeRedis()
        self.limiter = RedisRateLimiter(self.redis, self.clock)

    def consume(self, key: str = "ip:192.0.2.1", limit: int = 10, at: float | None = None) -> Deferred:
        """
        Consume one unit at C{at} (the clock's time by default).
        """
        return self.limiter.consume(key, 1, limit, HOUR, self.clock.seconds() if at is None else at)

    def answer(self, reply) -> None:
        """
        Redis answers the last script call with C{reply}.
        """
        self.redis.evals[-1][2].callback(reply)

    def breakDown(self) -> None:
        """
        The next call fails: the breaker opens.
        """
        d = self.consume(key="ip:other")
        self.redis.evals[-1][2].errback(txredisapi.ConnectionError("Lost connection"))
        self.successResultOf(d)
        self.assertTrue(self.limiter.degraded)

    def recover(self) -> None:
        """
        After the cool-down a call sends the probe, Redis answers it: the
        breaker closes.
        """
        self.clock.advance(COOL_DOWN_SECONDS)
        self.successResultOf(self.consume(key="ip:probe"))
        self.redis.pings[-1].callback("PONG")
        self.assertFalse(self.limiter.degraded)

    def test_fromRedis(self):
        """
        When Redis said a key had 5 units in the window (counted by any
        node), the in-process counters go on from 5: 5 more of a limit of
        10 are allowed, not 10.
        """
        d = self.consume()
        self.answer([1, T0 - 40, T0 - 30, T0 - 20, T0 - 10, T0])
        self.assertTrue(self.successResultOf(d))
        self.breakDown()
        results = [self.successResultOf(self.consume()) for _ in range(8)]
        self.assertEqual(results, [True] * 5 + [False] * 3)

    def test_fromRedisSliding(self):
        """
        The carried units leave the window at their own times, as in Redis.
        """
        d = self.consume()
        self.answer([1, T0 - HOUR + 5, T0])
        self.successResultOf(d)
        self.breakDown()
        self.assertTrue(self.successResultOf(self.consume(limit=2, at=T0 + 5)))
        self.assertFalse(self.successResultOf(self.consume(limit=2, at=T0 + 6)))

    def test_toRedis(self):
        """
        Units counted in-process while Redis was down are handed to Redis
        with the first call for their key that Redis answers, at their own
        times; other keys' calls do not carry them, and later calls carry
        nothing.
        """
        self.breakDown()
        for i in range(3):
            self.successResultOf(self.consume(at=T0 + i))
        self.recover()
        self.consume(key="ip:192.0.2.99")
        self.assertEqual(self.redis.evals[-1][1][5:], [])
        self.answer([1, T0])
        self.consume(at=T0 + 10)
        key, args, _ = self.redis.evals[-1]
        self.assertEqual(key, KEY_PREFIX + "ip:192.0.2.1")
        self.assertEqual([float(t) for t in args[5:]], [T0, T0 + 1, T0 + 2])
        self.answer([1, T0, T0 + 1, T0 + 2, T0 + 10])
        self.consume(at=T0 + 11)
        self.assertEqual(self.redis.evals[-1][1][5:], [])

    def test_toRedisAfterFailure(self):
        """
        Carried units of a call that fails are kept for the next one.
        """
        self.breakDown()
        self.successResultOf(self.consume(at=T0))
        self.recover()
        d = self.consume(at=T0 + 1)
        self.assertEqual([float(t) for t in self.redis.evals[-1][1][5:]], [T0])
        self.redis.evals[-1][2].errback(txredisapi.ConnectionError("Lost connection"))
        self.assertTrue(self.successResultOf(d))
        self.recover()
        self.consume(at=T0 + 2)
        self.assertEqual([float(t) for t in self.redis.evals[-1][1][5:]], [T0, T0 + 1])

    def test_expiredNotCarried(self):
        """
        Units that have left the window are not handed to Redis.
        """
        self.breakDown()
        self.successResultOf(self.consume(at=T0))
        self.successResultOf(self.consume(at=T0 + 100))
        self.recover()
        self.consume(at=T0 + HOUR + 50)
        self.assertEqual([float(t) for t in self.redis.evals[-1][1][5:]], [T0 + 100])
