# -*- test-case-name: tests.test_ttlcache -*-
"""
L{ExpiringCache}: a bounded, least-recently-used cache of results that
expire, read and filled on the reactor thread.

The inbound checks keep whole results in one (an SPF verdict, a domain's
DMARC policy) for as long as the DNS records they were made from live, so
that a message from a sender seen a moment ago is checked without any DNS
question and without a trip to a worker thread.  Lookups of one key that
overlap share one piece of work.
"""

from collections import OrderedDict
from typing import Any, Callable, Hashable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure


class ExpiringCache:
    """
    Values kept until a time given with each, at most C{maxEntries} of
    them (the least recently used go first).  The time is the injected
    clock's, so tests drive expiry with C{task.Clock}.
    """

    def __init__(self, clock: IReactorTime, maxEntries: int, maxSeconds: float) -> None:
        """
        @param clock: gives the time (C{seconds()}).
        @param maxEntries: the most values kept.
        @param maxSeconds: the longest any value is kept, whatever the
            lifetime it is given.
        """
        self._clock = IReactorTime(clock)
        self._maxEntries = maxEntries
        self._maxSeconds = maxSeconds
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._pending: dict[Hashable, list[Deferred]] = {}

    def __len__(self) -> int:
        """
        @return: how many values are held (expired ones included until
            they are next asked for or pushed out).
        """
        return len(self._entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """
        @return: the value kept for C{key}, or C{default} when there is
            none or it has expired (it is then dropped).
        """
        entry = self._entries.get(key)
        if entry is None:
            return default
        expires, value = entry
        if self._clock.seconds() >= expires:
            del self._entries[key]
            return default
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any, lifetimeSeconds: float | None) -> None:
        """
        Keep a value for C{lifetimeSeconds} (at most C{maxSeconds}).

        @param lifetimeSeconds: how long the value holds; C{None} or
            nothing above zero keeps nothing (and drops an older value).
        """
        if lifetimeSeconds is None or lifetimeSeconds <= 0 or self._maxEntries <= 0:
            self._entries.pop(key, None)
            return
        lifetime = min(lifetimeSeconds, self._maxSeconds)
        self._entries[key] = (self._clock.seconds() + lifetime, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._maxEntries:
            self._entries.popitem(last=False)

    def fetch(self, key: Hashable, compute: Callable[[], Deferred]) -> Deferred:
        """
        The value for C{key}: the kept one at once, or the outcome of
        C{compute}, which is called only when no computation of the same
        key is already under way (every caller waiting for one gets its
        outcome).

        @param compute: starts the work; returns a Deferred firing with
            C{(value, lifetimeSeconds)}, see L{put}.
        @return: a Deferred firing with the value, or failing as
            C{compute}'s did (nothing is kept then).
        """
        missing = object()
        value = self.get(key, missing)
        if value is not missing:
            return succeed(value)
        mine = Deferred()
        waiting = self._pending.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        waiting = self._pending[key] = [mine]

        def done(outcome: Any) -> None:
            """
            Keep a value, then give the outcome to everyone waiting.
            """
            del self._pending[key]
            if not isinstance(outcome, Failure):
                value, lifetime = outcome
                self.put(key, value, lifetime)
                outcome = value
            for d in waiting:
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(outcome)

        maybeDeferred(compute).addBoth(done)
        return mine
