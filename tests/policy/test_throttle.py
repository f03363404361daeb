"""
Tests of the AUTH throttle (L{qutemail.policy.throttle}), with a clock.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.policy.throttle import AuthThrottle

IP = "192.0.2.1"
ALICE = "alice@example.test"
BOB = "bob@example.test"


class AuthThrottleTests(SynchronousTestCase):
    """
    Lockout of client IPs and the growing delay per account.
    """

    def test_lockoutAndExpiry(self):
        """
        Ten failures lock the IP out for fifteen minutes; other IPs are not
        affected; after the lockout the IP may try again.
        """
        clock = Clock()
        throttle = AuthThrottle()
        for _ in range(9):
            throttle.failed(IP, clock.seconds())
            clock.advance(1)
        self.assertTrue(throttle.allowed(IP, clock.seconds()))
        throttle.failed(IP, clock.seconds())
        self.assertFalse(throttle.allowed(IP, clock.seconds()))
        self.assertTrue(throttle.allowed("198.51.100.2", clock.seconds()))
        clock.advance(899)
        self.assertFalse(throttle.allowed(IP, clock.seconds()))
        clock.advance(1)
        self.assertTrue(throttle.allowed(IP, clock.seconds()))

    def test_oldFailuresForgotten(self):
        """
        Failures older than the window do not count toward a lockout, and
        a success clears the count.
        """
        clock = Clock()
        throttle = AuthThrottle()
        for _ in range(9):
            throttle.failed(IP, clock.seconds())
        clock.advance(601)
        throttle.failed(IP, clock.seconds())
        self.assertTrue(throttle.allowed(IP, clock.seconds()))
        for _ in range(8):
            throttle.failed(IP, clock.seconds())
        throttle.succeeded(IP)
        throttle.failed(IP, clock.seconds())
        self.assertTrue(throttle.allowed(IP, clock.seconds()))

    def test_accountDelayGrows(self):
        """
        Failures against one account from many IPs lengthen the delay
        before each answer (capped), without locking any of those IPs; a
        success resets it.
        """
        throttle = AuthThrottle()
        delays = [throttle.failed(f"192.0.2.{i}", 0.0, BOB) for i in range(45)]
        self.assertEqual(delays[:9], [1.0] * 9)
        self.assertEqual(delays[9:11], [2.0, 2.0])
        self.assertEqual(delays[-1], 5.0)
        self.assertTrue(all(throttle.allowed(f"192.0.2.{i}", 0.0) for i in range(45)))
        self.assertEqual(throttle.failed("192.0.2.99", 0.0, "carol@example.test"), 1.0)
        throttle.succeeded("192.0.2.1", BOB)
        self.assertEqual(throttle.failed("192.0.2.1", 0.0, BOB), 1.0)
        for _ in range(400):
            delay = throttle.failed("198.51.100.1", 1.0, "dave@example.test")
        self.assertEqual(delay, 30.0)

    def test_otherAccountSuccessKeepsFailures(self):
        """
        Correct logins to alice interleaved with wrong passwords for bob,
        all from one IP, do not reset the IP's count: the tenth failure
        against bob locks the IP out.
        """
        clock = Clock()
        throttle = AuthThrottle()
        for i in range(10):
            self.assertTrue(throttle.allowed(IP, clock.seconds()), f"locked out after {i} failures")
            throttle.succeeded(IP, ALICE)
            throttle.failed(IP, clock.seconds(), BOB)
            clock.advance(1)
        self.assertFalse(throttle.allowed(IP, clock.seconds()))
        self.assertIsNone(throttle.begin(IP, clock.seconds()))

    def test_successClearsOnlyThatAccount(self):
        """
        A success for bob from an IP clears bob's failures from that IP
        only: alice's failures from it still count toward its lockout, and
        bob's failures from another IP are kept.
        """
        throttle = AuthThrottle()
        for _ in range(5):
            throttle.failed(IP, 0.0, ALICE)
        for _ in range(4):
            throttle.failed(IP, 0.0, BOB)
        for _ in range(9):
            throttle.failed("198.51.100.7", 0.0, BOB)
        throttle.succeeded(IP, BOB)
        for _ in range(4):
            throttle.failed(IP, 1.0, "carol@example.test")
        self.assertTrue(throttle.allowed(IP, 1.0))
        throttle.failed(IP, 1.0, "carol@example.test")
        self.assertFalse(throttle.allowed(IP, 1.0))
        throttle.failed("198.51.100.7", 1.0, "carol@example.test")
        self.assertFalse(throttle.allowed("198.51.100.7", 1.0))

    def test_successClearsTheNameTried(self):
        """
        A success clears the failures recorded under the name as the client
        typed it (lower-cased) as well as under the account's address.
        """
        throttle = AuthThrottle()
        for _ in range(9):
            throttle.failed(IP, 0.0, "bob@example.test.")
        throttle.succeeded(IP, BOB, "bob@example.test.")
        throttle.failed(IP, 0.0, BOB)
        self.assertTrue(throttle.allowed(IP, 0.0))

    def test_parallelAttemptsCountAtOnce(self):
        """
        Forty attempts begun at once, before any outcome, let at most ten
        through; the others are refused as for a lockout.  When the ten
        fail, the IP is locked out.
        """
        throttle = AuthThrottle()
        attempts = [throttle.begin(IP, 0.0) for _ in range(40)]
        started = [a for a in attempts if a is not None]
        self.assertEqual(len(started), 10)
        self.assertFalse(throttle.allowed(IP, 0.0))
        self.assertTrue(throttle.allowed("198.51.100.2", 0.0))
        for attempt in started:
            attempt.failed(1.0, BOB)
        self.assertFalse(throttle.allowed(IP, 1.0))
        self.assertIsNone(throttle.begin(IP, 1.0))
        self.assertFalse(throttle.allowed(IP, 900.0))
        self.assertIsNotNone(throttle.begin(IP, 901.0))

    def test_outcomesFreeTheSlot(self):
        """
        A success, or a release without an outcome, frees the attempt's
        slot without counting a failure; a failure keeps it counted once,
        and a release after an outcome changes nothing.
        """
        throttle = AuthThrottle()
        started = [throttle.begin(IP, 0.0) for _ in range(10)]
        self.assertIsNone(throttle.begin(IP, 0.0))
        started[0].succeeded(ALICE)
        started[1].release()
        self.assertIsNotNone(throttle.begin(IP, 0.0))
        self.assertIsNotNone(throttle.begin(IP, 0.0))
        self.assertIsNone(throttle.begin(IP, 0.0))
        for attempt in started[2:]:
            attempt.failed(0.0, BOB)
            attempt.release()
        self.assertTrue(throttle.allowed("198.51.100.2", 0.0))
        # 8 failures and 2 attempts in progress: no room for an eleventh.
        self.assertFalse(throttle.allowed(IP, 0.0))

    def test_sequentialAttempts(self):
        """
        Attempts begun and failed one after another lock the IP out at the
        tenth failure, as plain failures do.
        """
        throttle = AuthThrottle()
        for i in range(10):
            attempt = throttle.begin(IP, float(i))
            self.assertIsNotNone(attempt, f"refused after {i} failures")
            self.assertEqual(attempt.failed(float(i), BOB), 2.0 if i == 9 else 1.0)
        self.assertIsNone(throttle.begin(IP, 10.0))

    def test_succeededWithoutRecord(self):
        """
        A success from an IP with no failures, or a release, leaves no
        record behind.
        """
        throttle = AuthThrottle()
        throttle.succeeded(IP, ALICE)
        throttle.begin(IP, 0.0).succeeded(ALICE)
        throttle.begin(IP, 0.0).release()
        self.assertEqual(throttle._clients, {})
