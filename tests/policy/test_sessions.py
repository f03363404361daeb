"""
Tests of the session counts (L{qutemail.policy.sessions}): per client IP
for each protocol, in total over every listener, released once, and the
open-file limit raised at start.  Sessions of the real SMTP, IMAP and
POP3 factories run over C{StringTransport}.
"""

import os
import subprocess
import sys

from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.imapserver import IMAPFactory
from qutemail.access.pop3 import POP3Factory
from qutemail.blocking import InlineRunner
from qutemail.policy.sessions import (
    IMAP, PER_ADDRESS, POP3, SMTP, TOTAL, SessionLimits, checkHeadroom, raiseOpenFileLimit)
from qutemail.policy.throttle import AuthThrottle
from tests.support import buildStack

IP = "192.0.2.7"
OTHER_IP = "198.51.100.9"

SMTP_PER_ADDRESS = b"421 4.7.0 Too many connections from your address\r\n"
SMTP_TOTAL = b"421 4.7.0 Too many connections, try again later\r\n"
IMAP_PER_ADDRESS = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
IMAP_TOTAL = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
POP3_PER_ADDRESS = b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
POP3_TOTAL = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"


class SessionLimitsTests(SynchronousTestCase):
    """
    The counter alone.
    """

    def test_perAddressPerProtocol(self):
        """
        C{connectionsPerIp} counts each protocol apart: an IP at its limit
        for IMAP may still open SMTP and POP3 sessions, and another IP
        may still open IMAP ones.
        """
        limits = SessionLimits(connectionsPerIp=2)
        tickets = [limits.admit(IMAP, IP) for _ in range(2)]
        self.assertEqual([t.refused for t in tickets], [None, None])
        self.assertEqual(limits.admit(IMAP, IP).refused, PER_ADDRESS)
        self.assertIsNone(limits.admit(SMTP, IP).refused)
        self.assertIsNone(limits.admit(POP3, IP).refused)
        self.assertIsNone(limits.admit(IMAP, OTHER_IP).refused)
        self.assertEqual((limits.total, limits.openFrom(IMAP, IP)), (5, 2))

    def test_total(self):
        """
        C{maxSessions} counts every protocol and IP together; a refused
        session counts nothing.
        """
        limits = SessionLimits(maxSessions=3)
        for kind, ip in ((SMTP, IP), (IMAP, IP), (POP3, OTHER_IP)):
            self.assertIsNone(limits.admit(kind, ip).refused)
        for kind, ip in ((SMTP, IP), (IMAP, OTHER_IP), (POP3, "203.0.113.1")):
            self.assertEqual(limits.admit(kind, ip).refused, TOTAL)
        self.assertEqual(limits.total, 3)

    def test_releaseOnce(self):
        """
        A ticket released twice frees one place; releasing a refused
        ticket frees none.
        """
        limits = SessionLimits(maxSessions=2, connectionsPerIp=2)
        first = limits.admit(SMTP, IP)
        limits.admit(SMTP, IP)
        refused = limits.admit(SMTP, IP)
        refused.release()
        self.assertEqual((limits.total, limits.openFrom(SMTP, IP)), (2, 2))
        first.release()
        first.release()
        self.assertEqual((limits.total, limits.openFrom(SMTP, IP)), (1, 1))
        self.assertIsNone(limits.admit(IMAP, IP).refused)
        self.assertEqual(limits.admit(IMAP, IP).refused, TOTAL)

    def test_zeroIsUnlimited(self):
        """
        0 for either limit means none.
        """
        limits = SessionLimits()
        for _ in range(2000):
            self.assertIsNone(limits.admit(IMAP, IP).refused)
        self.assertEqual(limits.total, 2000)


class FakeResource:
    """
    The parts of the C{resource} module L{raiseOpenFileLimit} uses.
    """

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, error: Exception | None = None) -> None:
        """
        @param error: what C{setrlimit} raises, if anything.
        """
        self.limits = (soft, hard)
        self.error = error
        self.calls: list = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        """
        @return: the limits.
        """
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        """
        Record the call; raise C{error} if set.
        """
        self.calls.append((which, limits))
        if self.error is not None:
            raise self.error
        self.limits = limits


class OpenFileLimitTests(SynchronousTestCase):
    """
    L{raiseOpenFileLimit} and L{checkHeadroom}.
    """

    def setUp(self):
        """
        Record log events.
        """
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def messages(self) -> list[str]:
        """
        @return: the logged messages of L{qutemail.policy.sessions}.
        """
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "qutemail.policy.sessions"]

    def test_raisedToHard(self):
        """
        The soft limit is raised to the hard one, and both values are
        logged.
        """
        fake = FakeResource(1024, 524288)
        self.assertEqual(raiseOpenFileLimit(fake), (1024, 524288))
        self.assertEqual(fake.calls, [(7, (524288, 524288))])
        self.assertEqual(self.messages(), ["raised the open file limit from 1024 to 524288"])

    def test_neverLowered(self):
        """
        A soft limit already at the hard limit (or unlimited) is left alone.
        """
        for soft, hard in ((4096, 4096), (-1, -1)):
            fake = FakeResource(soft, hard)
            self.assertEqual(raiseOpenFileLimit(fake), (soft, soft))
            self.assertEqual(fake.calls, [])

    def test_failureLogged(self):
        """
        A refused C{setrlimit} is logged as a warning, not raised.
        """
        fake = FakeResource(1024, -1, ValueError("not allowed to raise maximum limit"))
        self.assertEqual(raiseOpenFileLimit(fake), (1024, 1024))
        [event] = [e for e in self.events if e.get("log_namespace") == "qutemail.policy.sessions"]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("could not raise the open file limit from 1024", formatEvent(event))

    def test_realProcess(self):
        """
        In a process whose soft limit was lowered, the real
        C{raiseOpenFileLimit} raises it to the hard limit (run in a child
        process, so this one keeps its limits).
        """
        code = (
            "import resource\n"
            "from qutemail.policy.sessions import raiseOpenFileLimit\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
            "before, after = raiseOpenFileLimit()\n"
            "print(before, after, *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                                timeout=60, check=True)
        before, after, soft, hard = (int(n) for n in result.stdout.split())
        self.assertEqual((before, after, soft), (min(256, hard), hard, hard))

    def test_headroom(self):
        """
        A cap that leaves room for the rest of the process fits; one that
        does not, or no cap at all, is warned about.
        """
        self.assertTrue(checkHeadroom(1000, 524288))
        self.assertTrue(checkHeadroom(1000, -1))
        self.assertEqual(self.messages(), [])
        self.assertFalse(checkHeadroom(1000, 1024))
        self.assertFalse(checkHeadroom(0, 1024))
        self.assertEqual(len(self.messages()), 2)
        self.assertIn("max_sessions = 1000 may exhaust the open file limit 1024", self.messages()[0])


class FactorySessionTests(SynchronousTestCase):
    """
    The SMTP, IMAP and POP3 factories sharing one L{SessionLimits}, over
    C{StringTransport}.
    """

    def setUp(self):
        """
        One limit of 2 per IP and protocol and 4 in total, shared by an SMTP,
        an IMAP and a POP3 factory.
        """
        self.limits = SessionLimits(maxSessions=4, connectionsPerIp=2)
        clock = Clock()
        stack = buildStack(self.mktemp(), clock=clock, sessionLimits=self.limits)
        self.factories = {
            SMTP: stack.factory,
            IMAP: IMAPFactory(Portal(None), InlineRunner(), clock, AuthThrottle(), object(), True,
                              limits=self.limits),
            POP3: POP3Factory(Portal(None), InlineRunner(), clock, AuthThrottle(), object(), True,
                              limits=self.limits),
        }

    def open(self, kind: str, host: str = IP):
        """
        @return: a session of C{kind} from C{host} and its transport.
        """
        proto = self.factories[kind].buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 25))
        proto.makeConnection(transport)
        return proto, transport

    def assertAdmitted(self, kind: str, transport) -> None:
        """
        The session got its protocol's greeting and stays open.
        """
        greeting = {SMTP: b"220 ", IMAP: b"* OK ", POP3: b"+OK "}[kind]
        self.assertTrue(transport.value().startswith(greeting), transport.value())
        self.assertFalse(transport.disconnecting)

    def assertRefused(self, transport, reply: bytes) -> None:
        """
        The session got only C{reply} and is being closed.
        """
        self.assertEqual(transport.value(), reply)
        self.assertTrue(transport.disconnecting)

    def setUpFactories(self):
        """
        Share C{self.limits} (replaced by a test) among the factories.
        """
        self.factories[SMTP].limits = self.limits
        self.factories[IMAP].limits = self.limits
        self.factories[POP3].limits = self.limits

    def test_perAddressEachProtocol(self):
        """
        A third session of one protocol from one IP gets that protocol's
        refusal, while the other protocols still admit that IP.
        """
        refusals = {SMTP: SMTP_PER_ADDRESS, IMAP: IMAP_PER_ADDRESS, POP3: POP3_PER_ADDRESS}
        for kind in (SMTP, IMAP, POP3):
            self.limits = SessionLimits(connectionsPerIp=2)
            self.setUpFactories()
            for _ in range(2):
                self.assertAdmitted(kind, self.open(kind)[1])
            proto, transport = self.open(kind)
            self.assertRefused(transport, refusals[kind])
            proto.dataReceived(b"a LOGIN x y\r\n" if kind == IMAP else b"USER x\r\n")
            self.assertEqual(transport.value(), refusals[kind])
            proto.connectionLost(None)
            self.assertEqual(self.limits.openFrom(kind, IP), 2)
            for other in {SMTP, IMAP, POP3} - {kind}:
                self.assertAdmitted(other, self.open(other)[1])
            self.assertAdmitted(kind, self.open(kind, OTHER_IP)[1])

    def test_totalOverProtocols(self):
        """
        With four sessions open over the three protocols, the next of each
        protocol, from any IP, gets its protocol's refusal; when one ends,
        another is admitted.
        """
        sessions = [self.open(SMTP), self.open(IMAP), self.open(POP3), self.open(IMAP, OTHER_IP)]
        for (proto, transport), kind in zip(sessions, (SMTP, IMAP, POP3, IMAP)):
            self.assertAdmitted(kind, transport)
        self.assertEqual(self.limits.total, 4)
        for kind, reply in ((SMTP, SMTP_TOTAL), (IMAP, IMAP_TOTAL), (POP3, POP3_TOTAL)):
            proto, transport = self.open(kind, "203.0.113.1")
            self.assertRefused(transport, reply)
            proto.connectionLost(None)
        self.assertEqual(self.limits.total, 4)
        sessions[2][0].connectionLost(None)
        self.assertEqual(self.limits.total, 3)
        self.assertAdmitted(SMTP, self.open(SMTP, "203.0.113.1")[1])
        self.assertEqual(self.limits.total, 4)

    def test_releasedOnceEach(self):
        """
        Every session, once closed, leaves the counts as they were.
        """
        opened = [self.open(kind) for kind in (SMTP, IMAP, POP3)]
        opened += [self.open(SMTP)]
        refused = self.open(POP3, OTHER_IP)
        for proto, _ in opened + [refused]:
            proto.connectionLost(None)
        self.assertEqual((self.limits.total, self.limits._perIp), (0, {}))
