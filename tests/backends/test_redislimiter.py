"""
Tests of the Redis rate limiter against a real redis-server on loopback,
and of two server instances sharing one count through it.
"""

import os
import smtplib
import socket
import subprocess
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.backends.redislimiter import RedisRateLimiter, connect
from qutemail.config import loadConfig
from qutemail.service import buildService
from tests.integration.support import CLIENT_TIMEOUT, freePort, writeConfig
from tests.support import requireCommand


def startRedis(testCase) -> int:
    """
    Start a throwaway redis-server on a free loopback port for this test.

    Outside CI a missing binary skips the test; under CI (C{CI=true}) it is
    a failure, since C{.ci/run} installs it.

    @return: its port.
    """
    binary = requireCommand(testCase, "redis-server")
    port = freePort()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def stop():
        process.terminate()
        process.wait(10)

    testCase.addCleanup(stop)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(100).startswith(b"+PONG"):
                    return port
        except OSError:
            time.sleep(0.05)
    testCase.fail("redis-server did not start")


class RedisLimiterTests(TestCase):
    """
    The limiter's contract, shared counting, and its fallback.
    """

    def limiter(self, port: int) -> RedisRateLimiter:
        """
        A limiter on C{port}, disconnected after the test.
        """
        limiter = RedisRateLimiter(connect(f"redis://127.0.0.1:{port}/0"), reactor)
        self.addCleanup(limiter.disconnect)
        return limiter

    async def test_sharedCount(self):
        """
        Two limiters (two nodes) on one Redis share the count: together they
        allow exactly the limit in the window, and a later window is fresh.
        """
        port = startRedis(self)
        a, b = self.limiter(port), self.limiter(port)
        results = []
        for i in range(6):
            limiter = a if i % 2 else b
            results.append(await limiter.consume("ip:192.0.2.1", 1, 5, 3600, 1000.0 + i))
        self.assertEqual(results, [True] * 5 + [False])
        self.assertTrue(await a.consume("ip:192.0.2.2", 1, 5, 3600, 1006.0))
        self.assertTrue(await b.consume("ip:192.0.2.1", 1, 5, 3600, 1000.0 + 3601))
        self.assertFalse(a.degraded)

    async def test_outageFallsBack(self):
        """
        With Redis unreachable, calls are answered by in-process counters
        (mail keeps flowing, limits still apply) and the outage is logged
        once.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        limiter = self.limiter(freePort())
        results = [await limiter.consume("ip:192.0.2.1", 1, 2, 3600, 1000.0) for _ in range(3)]
        self.assertEqual(results, [True, True, False])
        self.assertTrue(limiter.degraded)
        self.assertEqual(len([e for e in events if "Redis unavailable" in e.get("log_format", "")]), 1)


class TwoServersTests(TestCase):
    """
    Acceptance item 4 of issue 3: two server instances share the per-IP
    count through Redis.
    """

    timeout = 60

    async def test_hundredAndFirstRefused(self):
        """
        100 messages split over two servers are allowed; the 101st, sent to
        either, gets 451 4.7.0 naming the limit.
        """
        port = startRedis(self)
        roots, ports = [], []
        for name in ("one", "two"):
            base = os.path.abspath(self.mktemp())
            os.makedirs(base)
            path = writeConfig(os.path.join(base, "q.ini"), os.path.join(base, "var"))
            with open(path, "a") as f:
                f.write(f"\n[redis]\nurl = redis://127.0.0.1:{port}/0\n")
            root = buildService(loadConfig(path, environ={}), reactor, listen={"mta": "tcp:0:interface=127.0.0.1"})
            root.startService()
            self.addCleanup(root.stopService)
            roots.append(root)
        listening = await gatherResults([r.listeners["mta"].whenListening() for r in roots])
        ports = [p.getHost().port for p in listening]

        def session():
            replies = []
            clients = [smtplib.SMTP("127.0.0.1", p, local_hostname="c.test", timeout=CLIENT_TIMEOUT) for p in ports]
            for client in clients:
                client.ehlo()
            for i in range(101):
                client = clients[i % 2]
                replies.append(client.docmd("MAIL", "FROM:<a@remote.test>"))
                client.rset()
            for client in clients:
                client.quit()
            return replies

        replies = await deferToThread(session)
        self.assertEqual([r[0] for r in replies[:100]], [250] * 100)
        self.assertEqual(replies[100], (451, b"4.7.0 Rate limit of 100 messages per hour exceeded, try again later"))
