"""
Tests for L{qutemail.portservice}: a port that cannot be opened stops the
start with one line.
"""

import io
import socket
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.portservice import PortService
from tests.integration.support import freePort, holdPort


class PortServiceTests(TestCase):
    """
    L{PortService} over real loopback ports.
    """

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def service(self, port: int) -> PortService:
        """
        A named service on a loopback port.
        """
        service = PortService(serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1"),
                              Factory.forProtocol(Protocol))
        service.setName("listener-test")
        return service

    def test_portInUse(self):
        """
        A port another socket holds: C{SystemExit(1)}, one line naming the
        service, the address and the reason on the real standard error, and
        the same logged as critical.
        """
        port = holdPort(self)
        with self.assertRaises(SystemExit) as raised:
            self.service(port).privilegedStartService()
        self.assertEqual(raised.exception.code, 1)
        line = f"listener-test: cannot listen on 127.0.0.1:{port}: Address already in use"
        self.assertEqual(self.stderr.getvalue(), f"qutemail: {line}\n")
        critical = [e for e in self.events if e.get("log_level") == LogLevel.critical]
        self.assertEqual([e["line"] for e in critical], [line])

    async def test_freePort(self):
        """
        A free port opens as before and closes when the service stops;
        nothing is written.
        """
        port = freePort()
        service = self.service(port)
        service.privilegedStartService()
        service.startService()
        listening = await service._waitingForPort
        self.assertEqual(listening.getHost().port, port)
        await service.stopService()
        self.assertEqual(self.stderr.getvalue(), "")
        # Closed: the port can be taken again.
        probe = socket.socket()
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", port))
