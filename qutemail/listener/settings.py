# -*- test-case-name: tests.listener.test_smtp -*-
"""
What an SMTP listener tells its sessions about themselves.
"""

from typing import Any

import attrs


@attrs.frozen
class SessionSettings:
    """
    What a listener's sessions are told about themselves.

    @ivar hostname: this server's name, for the greeting and Received.
    @ivar domains: the local domains (C{postmaster} goes to the first).
    @ivar maxMessageBytes: the SIZE limit.
    @ivar maxRecipients: recipients per transaction.
    @ivar idleTimeoutSeconds: idle time before a 421.
    @ivar tlsContext: the TLS context factory for STARTTLS, or C{None} to
        offer no TLS.
    @ivar implicitTLS: the listener wraps every connection in TLS (465).
    @ivar portal: for a submission listener, the cred portal AUTH logs in
        through (MAIL then needs AUTH); C{None} on the MTA port.
    @ivar throttle: the L{qutemail.policy.throttle.AuthThrottle}.
    @ivar connectionsPerIp: concurrent sessions per client IP; 0 for no
        limit.
    @ivar listenerName: the listener's name in the metrics (C{mta},
        C{submission}, C{smtps}).
    @ivar metrics: the L{qutemail.metrics.registry.Metrics}, or C{None}.
    """

    hostname: str
    domains: tuple[str, ...]
    maxMessageBytes: int
    maxRecipients: int
    idleTimeoutSeconds: float
    tlsContext: Any = None
    implicitTLS: bool = False
    portal: Any = None
    throttle: Any = None
    connectionsPerIp: int = 0
    listenerName: str = "mta"
    metrics: Any = None
