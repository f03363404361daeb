"""
Tests for L{qutemail.ttlcache}: values kept for their lifetime on a
C{task.Clock}, a bound on their number, and shared computations.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.ttlcache import ExpiringCache


class ExpiringCacheTests(SynchronousTestCase):
    """
    L{ExpiringCache.get} and L{ExpiringCache.put}.
    """

    def setUp(self):
        """
        A cache of three values, kept at most 100 s.
        """
        self.clock = Clock()
        self.cache = ExpiringCache(self.clock, 3, 100.0)

    def test_keptUntilLifetime(self):
        """
        A value is given back until its lifetime is over, and not from
        that moment on.
        """
        self.cache.put("k", "v", 30.0)
        self.assertEqual(self.cache.get("k"), "v")
        self.clock.advance(29.999)
        self.assertEqual(self.cache.get("k"), "v")
        self.clock.advance(0.001)
        self.assertIsNone(self.cache.get("k"))
        self.assertEqual(len(self.cache), 0)

    def test_lifetimeCapped(self):
        """
        No value is kept longer than the cache's longest time, whatever
        lifetime it is given (an infinite one included).
        """
        self.cache.put("k", "v", 10_000.0)
        self.cache.put("i", "w", float("inf"))
        self.clock.advance(99.0)
        self.assertEqual((self.cache.get("k"), self.cache.get("i")), ("v", "w"))
        self.clock.advance(1.0)
        self.assertEqual((self.cache.get("k"), self.cache.get("i")), (None, None))

    def test_nothingKeptWithoutLifetime(self):
        """
        A lifetime of C{None} or nothing above zero keeps nothing, and
        drops what was kept under the key.
        """
        for lifetime in (None, 0.0, -5.0):
            self.cache.put("k", "old", 50.0)
            self.cache.put("k", "new", lifetime)
            self.assertIsNone(self.cache.get("k"), lifetime)

    def test_bounded(self):
        """
        Beyond its bound the cache drops the value used least recently.
        """
        for key in "abc":
            self.cache.put(key, key.upper(), 50.0)
        self.assertEqual(self.cache.get("a"), "A")
        self.cache.put("d", "D", 50.0)
        self.assertEqual(len(self.cache), 3)
        self.assertIsNone(self.cache.get("b"))
        self.assertEqual([self.cache.get(k) for k in "acd"], ["A", "C", "D"])

    def test_default(self):
        """
        A missing value gives the default asked for.
        """
        marker = object()
        self.assertIs(self.cache.get("missing", marker), marker)


class FetchTests(SynchronousTestCase):
    """
    L{ExpiringCache.fetch}.
    """

    def setUp(self):
        """
        A cache, and a record of the computations started.
        """
        self.clock = Clock()
        self.cache = ExpiringCache(self.clock, 10, 1000.0)
        self.started = []

    def compute(self, outcome):
        """
        @return: a computation that notes its start and gives C{outcome}
            (a Deferred, or a C{(value, lifetime)} pair).
        """

        def start():
            """
            Note the start.
            """
            self.started.append(outcome)
            return outcome if isinstance(outcome, Deferred) else succeed(outcome)

        return start

    def test_keptValueWithoutComputing(self):
        """
        A value computed once is given from the cache, at once, until its
        lifetime ends; then it is computed again.
        """
        first = self.successResultOf(self.cache.fetch("k", self.compute(("v", 60.0))))
        second = self.successResultOf(self.cache.fetch("k", self.compute(("w", 60.0))))
        self.assertEqual((first, second, len(self.started)), ("v", "v", 1))
        self.clock.advance(60.0)
        self.assertEqual(self.successResultOf(self.cache.fetch("k", self.compute(("w", 60.0)))), "w")
        self.assertEqual(len(self.started), 2)

    def test_notKeptWithoutLifetime(self):
        """
        A value given with no lifetime (a temporary error) is handed over
        but computed again on the next fetch.
        """
        for _ in range(2):
            self.assertEqual(self.successResultOf(self.cache.fetch("k", self.compute(("temp", 0.0)))), "temp")
        self.assertEqual(len(self.started), 2)

    def test_overlappingFetchesShareOne(self):
        """
        Fetches of one key while its computation runs wait for that
        computation; another key gets its own.
        """
        pending = Deferred()
        first = self.cache.fetch("k", self.compute(pending))
        second = self.cache.fetch("k", self.compute(("other", 60.0)))
        other = self.cache.fetch("j", self.compute(("j", 60.0)))
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(self.successResultOf(other), "j")
        pending.callback(("v", 60.0))
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("v", "v"))
        self.assertEqual(len(self.started), 2)
        self.assertEqual(self.cache.get("k"), "v")

    def test_failureGivenToAllAndNotKept(self):
        """
        A failed computation fails every fetch waiting for it, and the next
        fetch computes again.
        """
        pending = Deferred()
        first = self.cache.fetch("k", self.compute(pending))
        second = self.cache.fetch("k", self.compute(("unused", 60.0)))
        pending.errback(RuntimeError("runner stopped"))
        self.failureResultOf(first, RuntimeError)
        self.failureResultOf(second, RuntimeError)
        self.assertEqual(self.successResultOf(self.cache.fetch("k", self.compute(("v", 60.0)))), "v")

    def test_computeRaises(self):
        """
        A computation that raises at once fails the fetch.
        """

        def broken():
            """
            Raise.
            """
            raise ValueError("bad")

        self.failureResultOf(self.cache.fetch("k", broken), ValueError)
        self.failureResultOf(self.cache.fetch("j", lambda: fail(KeyError("x"))), KeyError)
