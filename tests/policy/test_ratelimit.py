"""
Tests of the in-process rate limiter.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.interfaces import IRateLimiter
from qutemail.policy.ratelimit import MemoryRateLimiter


class MemoryRateLimiterTests(SynchronousTestCase):
    """
    Sliding-window counting.
    """

    def test_provides(self):
        """
        It provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, MemoryRateLimiter()))

    def test_slidingWindow(self):
        """
        Up to the limit is allowed in any window; a refused call counts
        nothing; units leave the window one by one as it slides.
        """
        limiter = MemoryRateLimiter()
        allowed = [self.successResultOf(limiter.consume("k", 1, 3, 100.0, float(t))) for t in (0, 10, 20, 30, 40)]
        self.assertEqual(allowed, [True, True, True, False, False])
        self.assertTrue(self.successResultOf(limiter.consume("k", 1, 3, 100.0, 100.0)))
        self.assertFalse(self.successResultOf(limiter.consume("k", 1, 3, 100.0, 105.0)))
        self.assertTrue(self.successResultOf(limiter.consume("other", 3, 3, 100.0, 105.0)))
        self.assertFalse(self.successResultOf(limiter.consume("other", 1, 3, 100.0, 105.0)))
