# -*- test-case-name: tests.backends.test_redislimiter -*-
"""
L{RedisRateLimiter}: rate-limit counters shared by several nodes through
Redis (C{[redis] url}), with txredisapi.

Each key is a sorted set of the times of its counted units; one Lua script
drops the expired ones, checks the limit and adds the new ones, so nodes
never race.  Redis being down must not stop mail: a call that fails or
takes longer than L{REDIS_TIMEOUT_SECONDS} is answered by an in-process
limiter instead, and the switch (both ways) is logged once.

txredisapi uses the global reactor for its connection; that is why this
backend sits behind L{IRateLimiter} and is tested against a real
redis-server only.
"""

import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.interfaces import IRateLimiter
from qutemail.policy.ratelimit import MemoryRateLimiter

# How long a Redis call may take before the in-process counters answer.
REDIS_TIMEOUT_SECONDS = 2.0
KEY_PREFIX = "qutemail:rate:"

# KEYS[1] the counter; ARGV: now, window, units, limit, member prefix
_CONSUME = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
local n = redis.call('ZCARD', KEYS[1])
if n + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return 0 end
for i = 1, tonumber(ARGV[3]) do redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5] .. ':' .. i) end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""


class RedisURLError(ValueError):
    """
    A C{[redis] url} this backend cannot use.
    """


def connect(url: str) -> Any:
    """
    Open a lazy txredisapi connection for a C{redis://} or C{unix://} URL.

    @raise RedisURLError: another scheme (txredisapi has no TLS here).
    """
    parts = urlsplit(url)
    if parts.scheme == "redis":
        db = int(parts.path.strip("/") or 0)
        return txredisapi.lazyConnection(parts.hostname or "localhost", parts.port or 6379, dbid=db,
                                         password=unquote(parts.password) if parts.password else None,
                                         connectTimeout=REDIS_TIMEOUT_SECONDS)
    if parts.scheme == "unix":
        return txredisapi.lazyUnixConnection(parts.path, connectTimeout=REDIS_TIMEOUT_SECONDS)
    raise RedisURLError(f"[redis] url: {parts.scheme}:// is not supported (use redis:// or unix://)")


@implementer(IRateLimiter)
class RedisRateLimiter:
    """
    Shared sliding-window counters, falling back to in-process ones.
    """

    _log = Logger()
    name = "redis"

    def __init__(self, connection: Any, clock: Any) -> None:
        """
        @param connection: a txredisapi connection (see L{connect}).
        @param clock: an C{IReactorTime}, for the call timeout.
        """
        self.connection = connection
        self.clock = clock
        self.fallback = MemoryRateLimiter()
        self.degraded = False
        self._member = secrets.token_hex(4)
        self._counter = 0

    async def _consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float) -> bool:
        """
        See L{consume}.
        """
        self._counter += 1
        try:
            d = self.connection.eval(
                _CONSUME, [KEY_PREFIX + key],
                [repr(now), repr(windowSeconds), str(units), str(limit), f"{self._member}:{self._counter}"],
            )
            d.addTimeout(REDIS_TIMEOUT_SECONDS, self.clock)
            allowed = await d
        except Exception as e:
            # Any failure of the shared store (refused, timed out, a Redis
            # error): keep mail flowing on local counters.
            if not self.degraded:
                self.degraded = True
                self._log.error("Redis unavailable ({reason}); rate limits use in-process counters",
                                reason=str(e) or type(e).__name__)
            return await self.fallback.consume(key, units, limit, windowSeconds, now)
        if self.degraded:
            self.degraded = False
            self._log.info("Redis is back; rate limits are shared again")
        return bool(allowed)

    def consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float):
        """
        See L{IRateLimiter.consume}.
        """
        return ensureDeferred(self._consume(key, units, limit, windowSeconds, now))

    def disconnect(self):
        """
        Close the connection.

        @return: a Deferred that fires when it is closed.
        """
        return self.connection.disconnect()
