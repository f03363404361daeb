"""
Tests for L{qutemail.metrics.health} and the C{/healthz} and C{/metrics}
resources of L{qutemail.metrics.http}, the latter over a real loopback
socket.
"""

import os

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from qutemail.blocking import InlineRunner
from qutemail.metrics.health import Health
from qutemail.metrics.http import metricsSite
from qutemail.metrics.registry import Metrics
from qutemail.replies import QUEUED
from qutemail.stspolicy import ownPolicy


class Listener:
    """
    A listener service that says whether it listens.
    """

    def __init__(self, listening: bool) -> None:
        """
        @param listening: what L{isListening} says.
        """
        self.listening = listening

    def isListening(self) -> bool:
        """
        @return: C{listening}.
        """
        return self.listening


class Watch:
    """
    A KME link watch.
    """

    peerSAE = "mail-sae"

    def __init__(self, answeredAt) -> None:
        """
        @param answeredAt: when the KME last answered, or C{None}.
        """
        self.answeredAt = answeredAt


class HealthTests(SynchronousTestCase):
    """
    L{Health.problems}.
    """

    def health(self, listening=True, answeredAt=0.0, directory=None) -> Health:
        """
        @return: a health check over fakes, at time 10.
        """
        clock = Clock()
        clock.advance(10)
        if directory is None:
            directory = self.mktemp()
            os.makedirs(directory)
        return Health(clock=clock, runner=InlineRunner(), listeners={"mta": Listener(listening)},
                      journalDirectory=directory, keyWatches=[Watch(answeredAt)], staleSeconds=12)

    def test_healthy(self) -> None:
        """
        All well: no problems.
        """
        self.assertEqual(self.successResultOf(self.health().problems()), [])

    def test_each(self) -> None:
        """
        A listener not listening, a journal directory that is missing and
        a KME silent too long are each a problem of one line.
        """
        problems = self.successResultOf(self.health(False, None, "/nonexistent/journal").problems())
        self.assertEqual(problems, ["listener mta is not listening",
                                    "journal directory /nonexistent/journal is not writable: "
                                    "No such file or directory",
                                    "KME has not answered for SAE mail-sae yet"])
        self.assertEqual(self.successResultOf(self.health(answeredAt=-5.0).problems()),
                         ["KME has not answered for SAE mail-sae for 15s"])


class SiteTests(TestCase):
    """
    The metrics site on a real loopback port.
    """

    async def setUp(self):
        """
        Serve a site with one accepted message counted.
        """
        self.metrics = Metrics(private=True)
        self.metrics.messageAnswered("mta", QUEUED, 10)
        self.listener = Listener(True)
        directory = self.mktemp()
        os.makedirs(directory)
        health = Health(clock=reactor, runner=InlineRunner(), listeners={"mta": self.listener},
                        journalDirectory=directory)
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            metricsSite(reactor, self.metrics.registry, health, ownPolicy("mx.example.test", "enforce")))
        self.addCleanup(self.port.stopListening)
        self.agent = Agent(reactor)

    async def get(self, path: str) -> tuple[int, bytes, bytes]:
        """
        @return: the status, content type and body of a GET.
        """
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}".encode()
        response = await self.agent.request(b"GET", url)
        body = await readBody(response)
        return response.code, response.headers.getRawHeaders(b"content-type")[0], body

    async def test_metrics(self) -> None:
        """
        C{/metrics} is the text exposition.
        """
        code, kind, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(kind.startswith(b"text/plain"), kind)
        self.assertIn(b'qutemail_smtp_messages_total{code_class="2xx",enhanced="2.0.0",listener="mta",'
                      b'result="accepted"} 1.0\n', body)

    async def test_healthz(self) -> None:
        """
        C{/healthz} is 200 C{ok}, then 503 with the problem.
        """
        self.assertEqual(await self.get("/healthz"), (200, b"text/plain; charset=utf-8", b"ok\n"))
        self.listener.listening = False
        self.assertEqual(await self.get("/healthz"),
                         (503, b"text/plain; charset=utf-8", b"listener mta is not listening\n"))

    async def test_mtaStsPolicy(self) -> None:
        """
        Our MTA-STS policy is served as text/plain at its well-known path.
        """
        self.assertEqual(await self.get("/.well-known/mta-sts.txt"),
                         (200, b"text/plain", ownPolicy("mx.example.test", "enforce")))

    async def test_elsewhere(self) -> None:
        """
        Other paths are 404.
        """
        self.assertEqual((await self.get("/"))[0], 404)
