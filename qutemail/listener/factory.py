# -*- test-case-name: tests.listener.test_smtp -*-
"""
The SMTP listener's factory: builds sessions and counts them (per client IP
over every SMTP port, and in total over every listener) in the process's
L{qutemail.policy.sessions.SessionLimits}.
"""

from typing import Any

from twisted.internet.protocol import ServerFactory

from qutemail.listener.settings import SessionSettings
from qutemail.listener.smtp import SMTPServer
from qutemail.policy.sessions import PER_ADDRESS, SMTP, SessionLimits, SessionTicket
from qutemail.replies import TOO_MANY_CONNECTIONS, TOO_MANY_SESSIONS, Reply


class SMTPServerFactory(ServerFactory):
    """
    Builds L{SMTPServer} sessions for one listener, and counts them.
    """

    def __init__(self, *, intake: Any, policy: Any, settings: SessionSettings, clock: Any,
                 limits: SessionLimits | None = None) -> None:
        """
        @param intake: the L{qutemail.pipeline.intake.Intake}.
        @param policy: the listener's L{qutemail.policy.session.SessionPolicy}.
        @param settings: the listener's L{SessionSettings}.
        @param clock: an C{IReactorTime}; the sessions' timeouts use it.
        @param limits: the process's L{SessionLimits}, shared by every
            listener; by default one of this factory's own, with
            C{settings.connectionsPerIp} and no total.
        """
        self.intake = intake
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self.limits = limits if limits is not None else SessionLimits(connectionsPerIp=settings.connectionsPerIp)
        self.sessions: set[SMTPServer] = set()

    def admit(self, ip: str) -> tuple[SessionTicket, Reply | None]:
        """
        Count a new session from C{ip}, unless it has too many already or
        the process is full.

        @return: the session's ticket (to release when it ends) and the
            reply to refuse it with, or C{None} when it is admitted.
        """
        ticket = self.limits.admit(SMTP, ip, self.settings.listenerName)
        if ticket.refused is None:
            return ticket, None
        return ticket, TOO_MANY_CONNECTIONS if ticket.refused == PER_ADDRESS else TOO_MANY_SESSIONS

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
