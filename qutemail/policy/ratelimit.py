# -*- test-case-name: tests.policy.test_ratelimit -*-
"""
Message rate limits (C{[limits]}): per client IP on the MTA port, per
authenticated user on submission, over a sliding hour.

L{MemoryRateLimiter} keeps the counters in-process; the Redis one
(L{qutemail.backends.redislimiter}) shares them between nodes.
"""

import attrs
from twisted.internet.defer import succeed
from zope.interface import implementer

from qutemail.interfaces import IRateLimiter

HOUR_SECONDS = 3600.0


@implementer(IRateLimiter)
@attrs.define
class MemoryRateLimiter:
    """
    Sliding-window counters in a dict: each key keeps the times of its
    counted units inside the window (at most C{limit} of them).
    """

    name: str = "memory"
    _events: dict[str, list[float]] = attrs.field(factory=dict)

    def consume(self, key: str, units: int, limit: int, windowSeconds: float, now: float):
        """
        See L{IRateLimiter.consume}.
        """
        times = [t for t in self._events.get(key, ()) if now - t < windowSeconds]
        if len(times) + units > limit:
            self._events[key] = times
            return succeed(False)
        times.extend([now] * units)
        self._events[key] = times
        if len(self._events) > 100_000:
            self._events = {k: v for k, v in self._events.items() if v and now - v[-1] < windowSeconds}
        return succeed(True)
