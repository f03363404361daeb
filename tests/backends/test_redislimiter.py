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
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.backends.redislimiter import RedisRateLimiter, connect
from qutemail.config import loadConfig
from qutemail.service import buildService
from tests.integration.support import CLIENT_TIMEOUT, freePort, writeConfig
from tests.support import requireCommand


class RedisServer:
    """
    A throwaway redis-server, a child process of the test, on a free
    loopback port; it can be killed and started again on the same port and
    data directory.

    Outside CI a missing binary skips the test; under CI (C{CI=true}) it is
    a failure, since C{.ci/run} installs it.
    """

    def __init__(self, testCase, persistent: bool = True, args: tuple[str, ...] = ()) -> None:
        """
        @param persistent: C{appendonly yes} (C{appendfsync always}, in the
            test's own directory), or nothing written to disk at all.
        @param args: more C{redis-server} arguments.
        """
        self.binary = requireCommand(testCase, "redis-server")
        self.testCase = testCase
        self.port = freePort()
        self.directory = os.path.abspath(testCase.mktemp())
        os.makedirs(self.directory)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
                     "--save", "", *persistence, *args]
        self.process: subprocess.Popen | None = None
        testCase.addCleanup(self.stop)

    def start(self) -> int:
        """
        Start it and wait (blocking, up to 10 s) until it answers PING.

        @return: its port.
        """
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(100).startswith(b"+PONG"):
                        return self.port
            except OSError:
                time.sleep(0.05)
        self.testCase.fail("redis-server did not start")

    def kill(self) -> None:
        """
        SIGKILL it (a crash) and reap it.
        """
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """
        Stop it, if it runs.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def startRedis(testCase, persistent: bool = True, args: tuple[str, ...] = ()) -> int:
    """
    Start a throwaway redis-server on a free loopback port for this test;
    see L{RedisServer}.

    @return: its port.
    """
    return RedisServer(testCase, persistent, args).start()


class RedisLimiterTests(TestCase):
    """
    The limiter's contract, shared counting, and its fallback.
    """

    timeout = 60

    def limiter(self, port: int, **kwargs) -> RedisRateLimiter:
        """
        A limiter on C{port}, disconnected after the test.

        @param kwargs: more L{RedisRateLimiter} arguments.
        """
        limiter = RedisRateLimiter(connect(f"redis://127.0.0.1:{port}/0"), reactor, **kwargs)
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


    async def shared(self, limiter: RedisRateLimiter) -> None:
        """
        Wait (up to 30 s) until Redis answers C{limiter} again.
        """
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await limiter.consume("probe", 1, 10**6, 3600, 1000.0)
            if not limiter.degraded:
                return
            await deferLater(reactor, 0.1, lambda: None)
        self.fail("Redis did not come back")

    async def test_killedMidRun(self):
        """
        Issue 20: redis-server is killed (a crash) while 5 of a limit of 10
        are used, 3 by another node: the next 30 calls take less than a
        second together, the in-process counters go on from 5 (5 more
        allowed, not 10), and the outage is logged once.  Once Redis runs
        again on the same port, the units counted meanwhile are added to
        it: both nodes see 10 used.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = RedisServer(self)
        port = server.start()
        node = self.limiter(port, coolDownSeconds=0.3)
        other = self.limiter(port, coolDownSeconds=0.3)
        key, T0 = "ip:192.0.2.7", 1000.0
        for i in range(3):
            self.assertTrue(await other.consume(key, 1, 10, 3600, T0 + i))
        for i in range(2):
            self.assertTrue(await node.consume(key, 1, 10, 3600, T0 + 3 + i))

        server.kill()
        started = time.monotonic()
        results = [await node.consume(key, 1, 10, 3600, T0 + 10 + i) for i in range(30)]
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(results, [True] * 5 + [False] * 25)
        self.assertTrue(node.degraded)

        await deferToThread(server.start)
        await self.shared(node)
        await self.shared(other)
        self.assertFalse(await node.consume(key, 1, 10, 3600, T0 + 60))
        self.assertTrue(await node.consume(key, 1, 11, 3600, T0 + 61))
        self.assertFalse(await other.consume(key, 1, 11, 3600, T0 + 62))
        self.assertFalse(node.degraded or other.degraded)
        self.assertEqual(len([e for e in events if "Redis unavailable" in e.get("log_format", "")
                              and e.get("log_source") is node]), 1)
        self.assertEqual(len([e for e in events if "Redis is back" in e.get("log_format", "")
                              and e.get("log_source") is node]), 1)


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
