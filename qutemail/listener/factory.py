# -*- test-case-name: tests.listener.test_smtp -*-
"""
The SMTP listener's factory: builds sessions and counts them per client IP.
"""

from typing import Any

from twisted.internet.protocol import ServerFactory

from qutemail.listener.settings import SessionSettings
from qutemail.listener.smtp import SMTPServer


class SMTPServerFactory(ServerFactory):
    """
    Builds L{SMTPServer} sessions for one listener, and counts them.
    """

    def __init__(self, *, intake: Any, policy: Any, settings: SessionSettings, clock: Any) -> None:
        """
        @param intake: the L{qutemail.pipeline.intake.Intake}.
        @param policy: the listener's L{qutemail.policy.session.SessionPolicy}.
        @param settings: the listener's L{SessionSettings}.
        @param clock: an C{IReactorTime}; the sessions' timeouts use it.
        """
        self.intake = intake
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self._connections: dict[str, int] = {}
        self.sessions: set[SMTPServer] = set()

    def admit(self, ip: str) -> bool:
        """
        Count a new session from C{ip}, unless it has too many already.

        @return: whether it is admitted.
        """
        count = self._connections.get(ip, 0)
        if self.settings.connectionsPerIp and count >= self.settings.connectionsPerIp:
            return False
        self._connections[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """
        A session from C{ip} ended.
        """
        count = self._connections.get(ip, 0) - 1
        if count > 0:
            self._connections[ip] = count
        else:
            self._connections.pop(ip, None)

    def buildProtocol(self, addr) -> SMTPServer:
        """
        Make a session whose timeouts run on our clock.
        """
        proto = SMTPServer(self.intake, self.policy, self.settings, self.clock)
        proto.factory = self
        proto.callLater = self.clock.callLater
        return proto

    def shutdown(self) -> None:
        """
        Tell every session the server is stopping.
        """
        for session in list(self.sessions):
            session.shutdown()
