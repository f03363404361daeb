# -*- test-case-name: tests.backends.test_redislimiter,tests.backends.test_redisbreaker,tests.backends.test_redissentinel -*-
"""
L{RedisRateLimiter}: rate-limit counters shared by several nodes through
Redis (C{[redis] url}), with txredisapi.

Each key is a sorted set of the times of its counted units; one Lua script
drops the expired ones, checks the limit and adds the new ones, so nodes
never race.

Redis being down must not stop or slow mail.  A circuit breaker: the first
call that fails or takes longer than L{LIMITER_TIMEOUT_SECONDS} opens it
(logged once), and for L{COOL_DOWN_SECONDS} every call is answered at once
by in-process counters without asking Redis.  After the cool-down the next
call, still answered in-process, sends one C{PING} in the background; its
answer closes the breaker (logged once), its failure starts another
cool-down.

The counts are carried across both ways (L{CarriedCounts}):
 - every answer from Redis brings back the times of the key's units in its
   window, and the in-process counters start from those, so a limit 5 of
   10 used stays 5 used (the units other nodes counted included);
 - units counted in-process while Redis was down are added to Redis, at
   their own times, by the first call for that key that Redis answers.
   A key this node is not asked about again keeps them to itself; they
   expire with the window anyway.  A call that timed out after Redis did
   count it is counted twice: we err towards refusing.

txredisapi uses the global reactor for its connection; that is why this
backend sits behind L{IRateLimiter} and is tested against a real
redis-server, and its breaker with a fake connection and a C{task.Clock}.
"""

import secrets
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import attrs
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.backends.redissentinel import connectMaster
from qutemail.configvalues import parseSentinelURL
from qutemail.interfaces import IRateLimiter

# How long a connection attempt or a vault call may take.
REDIS_TIMEOUT_SECONDS = 2.0
# How long a rate-limit call may take before Redis counts as down: its
# answer is tiny, and a MAIL FROM should not wait longer than this once per
# outage.
LIMITER_TIMEOUT_SECONDS = 0.5
# How long the breaker stays open before Redis is asked again.
COOL_DOWN_SECONDS = 30.0
KEY_PREFIX = "qutemail:rate:"
# Past this many keys, the in-process counts drop the expired ones.
_MAX_KEYS = 100_000

# What a call to a Redis that is down or broken fails with.
REDIS_FAILURES = (txredisapi.RedisError, ConnectionError, ConnectError, ConnectionClosed, TimeoutError,
                  CancelledError)

# KEYS[1] the counter; ARGV: now, window, units, limit, member prefix, then
# the times of units counted elsewhere (in-process) to add first.
# Returns {allowed (1 or 0), the times of the units now in the window...}.
_CONSUME = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 6, #ARGV do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[5] .. ':c' .. i) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local allowed = 0
if redis.call('ZCARD', KEYS[1]) + tonumber(ARGV[3]) <= tonumber(ARGV[4]) then
  for i = 1, tonumber(ARGV[3]) do redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5] .. ':' .. i) end
  allowed = 1
end
redis.call('EXPIRE', KEYS[1], math.ceil(window))
local reply = {allowed}
local scored = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 2, #scored, 2 do reply[#reply + 1] = scored[i] end
return reply
"""


class RedisURLError(ValueError):
    """
    A C{[redis] url} this backend cannot use.
    """


def checkURL(url: str) -> SplitResult:
    """
    Check a C{[redis] url} this backend can use:
     - C{redis://[:password@]host[:port][/db]};
     - C{unix:///path};
     - C{redis-sentinel://[:password@]host[:port],host[:port]/mastername[?db=N]}:
       a master and its replicas that Redis Sentinel fails over, found
       through the sentinels listed (one is enough; port 26379 by
       default), which know it as C{mastername}.  The password (percent
       encoded) is the Redis servers'; the sentinels are asked without
       one.  Every connection follows the master through a failover (see
       L{qutemail.backends.redissentinel}), and the key vault's writes wait
       for a replica (L{qutemail.backends.redisvault}).

    @return: the parts of the URL.
    @raise RedisURLError: another scheme (txredisapi has no TLS here), or a
        bad C{redis-sentinel://} URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "redis-sentinel":
        try:
            parseSentinelURL(url)
        except ValueError as e:
            raise RedisURLError(f"[redis] url: {e}") from None
    elif parts.scheme not in ("redis", "unix"):
        raise RedisURLError(f"[redis] url: {parts.scheme}:// is not supported "
                            "(use redis://, unix:// or redis-sentinel://)")
    return parts


def connect(url: str) -> Any:
    """
    Open a lazy txredisapi connection for a C{[redis] url} (see
    L{checkURL}); with C{redis-sentinel://}, to whichever server is the
    master.

    @raise RedisURLError: a URL this backend cannot use.
    """
    parts = checkURL(url)
    if parts.scheme == "redis-sentinel":
        return connectMaster(parseSentinelURL(url), REDIS_TIMEOUT_SECONDS)
    if parts.scheme == "redis":
        db = int(parts.path.strip("/") or 0)
        return txredisapi.lazyConnection(parts.hostname or "localhost", parts.port or 6379, dbid=db,
                                         password=unquote(parts.password) if parts.password else None,
                                         connectTimeout=REDIS_TIMEOUT_SECONDS)
    return txredisapi.lazyUnixConnection(parts.path, connectTimeout=REDIS_TIMEOUT_SECONDS)


@implementer(IRateLimiter)
@attrs.define
class CarriedCounts:
    """
    The in-process side of L{RedisRateLimiter}: sliding-window counters that
    start from what Redis last said and remember what Redis has not seen.

    @ivar _mirror: per key, the times of its units as Redis last reported.
    @ivar _unsynced: per key, the times of units counted here, not in Redis.
    """

    name: str = "carried"
    _mirror: dict[str, list[float]] = attrs.field(factory=dict)
    _unsynced: dict[str, list[float]] = attrs.field(factory=dict)

    def remember(self, key: str, times: list[float]) -> None:
        """
        Redis answered for C{key}: these are the times of its units.
        """
        self._mirror[key] = times

    def takeUnsynced(self, key: str, now: float, windowSeconds: float) -> list[float]:
        """
        @return: the times of the units counted here for C{key} and still in
            the window, forgotten until L{giveBack}.
        """
        return [t for t in self._unsynced.pop(key, ()) if now - t < windowSeconds]

    def giveBack(self, key: str, times: list[float]) -> None:
        """
        Redis did not take the units L{takeUnsynced} returned: keep them.
        """
        if times:
            self._unsynced[key] = times + self._unsynced.get(key, [])

    def consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float) -> Deferred:
        """
        See L{IRateLimiter.consume}: counted over Redis's last units for
        C{key} and those counted here since.
        """
        mirrored = [t for t in self._mirror.get(key, ()) if now - t < windowSeconds]
        unsynced = [t for t in self._unsynced.get(key, ()) if now - t < windowSeconds]
        self._mirror[key] = mirrored
        allowed = len(mirrored) + len(unsynced) + units <= limit
        if allowed:
            unsynced.extend([now] * units)
        self._unsynced[key] = unsynced
        if len(self._mirror) + len(self._unsynced) > _MAX_KEYS:
            self._mirror = {k: v for k, v in self._mirror.items() if v and now - v[-1] < windowSeconds}
            self._unsynced = {k: v for k, v in self._unsynced.items() if v and now - v[-1] < windowSeconds}
        return succeed(allowed)


@implementer(IRateLimiter)
class RedisRateLimiter:
    """
    Shared sliding-window counters behind a circuit breaker, with the counts
    carried to and from in-process ones; see the module docstring.

    @ivar counts: the L{CarriedCounts}.
    @ivar fallback: what answers while Redis does not (C{counts}; the
        contract tests put a stand-in there that fails when asked).
    """

    _log = Logger()
    name = "redis"

    def __init__(self, connection: Any, clock: Any, timeoutSeconds: float = LIMITER_TIMEOUT_SECONDS,
                 coolDownSeconds: float = COOL_DOWN_SECONDS) -> None:
        """
        @param connection: a txredisapi connection (see L{connect}).
        @param clock: an C{IReactorTime}, for the call timeout and the
            breaker's cool-down.
        @param timeoutSeconds: how long one Redis call may take.
        @param coolDownSeconds: how long the breaker stays open.
        """
        self.connection = connection
        self.clock = clock
        self.timeoutSeconds = timeoutSeconds
        self.coolDownSeconds = coolDownSeconds
        self.counts = CarriedCounts()
        self.fallback: Any = self.counts
        self._retryAt: float | None = None
        self._probe: Deferred | None = None
        self._member = secrets.token_hex(4)
        self._counter = 0

    @property
    def degraded(self) -> bool:
        """
        Whether the breaker is open: calls are answered in-process.
        """
        return self._retryAt is not None

    def _open(self, reason: str) -> None:
        """
        A call failed: open the breaker, unless it is open already.
        """
        if self._retryAt is None:
            self._retryAt = self.clock.seconds() + self.coolDownSeconds
            self._log.error("Redis unavailable ({reason}); rate limits use in-process counters",
                            reason=reason)

    def _close(self) -> None:
        """
        Redis answered: close the breaker, if it was open.
        """
        if self._retryAt is not None:
            self._retryAt = None
            self._log.info("Redis is back; rate limits are shared again")

    async def _ping(self) -> None:
        """
        The probe of a half-open breaker: close it, or start another
        cool-down.
        """
        try:
            d = self.connection.ping()
            d.addTimeout(self.timeoutSeconds, self.clock)
            await d
        except REDIS_FAILURES as e:
            if self._retryAt is not None:
                self._retryAt = self.clock.seconds() + self.coolDownSeconds
            self._log.debug("Redis still unavailable ({reason})", reason=str(e) or type(e).__name__)
        else:
            self._close()
        finally:
            self._probe = None

    def _startProbe(self) -> None:
        """
        Send the one probe in the background; no call waits for it.
        """
        probe = Deferred.fromCoroutine(self._ping())
        probe.addErrback(lambda f: self._log.failure("while probing Redis", f))
        if not probe.called:
            self._probe = probe

    async def _consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float) -> bool:
        """
        Ask Redis, handing it the units counted here meanwhile; see
        L{consume}.
        """
        self._counter += 1
        carried = self.counts.takeUnsynced(key, now, windowSeconds)
        try:
            d = self.connection.eval(
                _CONSUME, [KEY_PREFIX + key],
                [repr(now), repr(windowSeconds), str(units), str(limit), f"{self._member}:{self._counter}",
                 *map(repr, carried)],
            )
            d.addTimeout(self.timeoutSeconds, self.clock)
            reply = await d
        except REDIS_FAILURES as e:
            self.counts.giveBack(key, carried)
            self._open(str(e) or type(e).__name__)
            return await self.fallback.consume(key, units, limit, windowSeconds, now)
        self.counts.remember(key, [float(t) for t in reply[1:]])
        self._close()
        return bool(reply[0])

    def consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float) -> Deferred:
        """
        See L{IRateLimiter.consume}.  While the breaker is open the answer
        is there at once.
        """
        if self._retryAt is not None:
            if self._probe is None and self.clock.seconds() >= self._retryAt:
                self._startProbe()
            return self.fallback.consume(key, units, limit, windowSeconds, now)
        return Deferred.fromCoroutine(self._consume(key, units, limit, windowSeconds, now))

    def disconnect(self) -> Deferred:
        """
        Stop a probe in flight and close the connection.

        @return: a Deferred that fires when it is closed.
        """
        if self._probe is not None:
            self._probe.cancel()
        return self.connection.disconnect()
