# -*- test-case-name: tests.policy.test_sessions -*-
"""
How many sessions one process holds open: per client IP for each protocol
(C{[limits] connections_per_ip}) and in total over every listener
(C{[limits] max_sessions}), and the open-file limit those sessions live
within.

Per-IP counts are kept per protocol, as Postfix and Dovecot keep theirs:
the SMTP ports (25, 587, 465) share one count, the IMAP ports another and
the POP3 ports a third, so a user whose mail client holds many IMAP
connections can still submit mail from the same address.  The total is
shared by all of them: it is what keeps the process below its file
descriptor limit.

Each process counts its own sessions (an extra SMTP worker has a cap of
its own).
"""

from typing import Any

import attrs
from twisted.logger import Logger

_log = Logger()

# The protocols whose sessions are counted per IP separately.
SMTP = "smtp"
IMAP = "imap"
POP3 = "pop3"

# Why a session was refused (L{SessionTicket.refused}).
PER_ADDRESS = "per-address"
TOTAL = "total"

# A session holds its socket and at times one more file (a spilled message,
# a message being read); the rest of the process (journal, Maildir
# renames, DNS, the KME and Redis, the thread pool, logs) needs a reserve.
DESCRIPTORS_PER_SESSION = 2
RESERVED_DESCRIPTORS = 256


@attrs.define(eq=False)
class SessionTicket:
    """
    One session's place in the counts, or its refusal.

    @ivar kind: the protocol (L{SMTP}, L{IMAP}, L{POP3}).
    @ivar ip: the client's address.
    @ivar refused: C{None} for an admitted session; L{PER_ADDRESS} or
        L{TOTAL} for a refused one, which counts nothing.
    @ivar listener: the listener's name in the metrics.
    """

    _limits: "SessionLimits"
    kind: str
    ip: str
    refused: str | None = None
    listener: str = ""
    _held: bool = attrs.field(default=False, init=False)

    def release(self) -> None:
        """
        The session ended.  Only the first call of an admitted session
        counts; a refused session has nothing to release.
        """
        if self._held:
            self._held = False
            self._limits._release(self.kind, self.ip, self.listener)


@attrs.define
class SessionLimits:
    """
    Counts a process's open sessions; one is shared by every listener.

    @ivar maxSessions: the most sessions open at once over all listeners;
        0 for no limit.
    @ivar connectionsPerIp: the most sessions one client IP may hold open
        per protocol; 0 for no limit.
    @ivar metrics: counts the open sessions per protocol
        (L{qutemail.metrics.registry.Metrics}), or C{None}.
    @ivar total: the sessions open now.
    """

    maxSessions: int = 0
    connectionsPerIp: int = 0
    metrics: Any = None
    total: int = attrs.field(default=0, init=False)
    _perIp: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)

    def admit(self, kind: str, ip: str, listener: str = "") -> SessionTicket:
        """
        Count a new session of C{kind} from C{ip}, unless a limit is reached.

        @param listener: the listener's name in the metrics (C{kind} when
            not given).

        @return: a ticket; the session must call its C{release} when it
            ends (whether refused or not: a refused ticket does nothing).
        """
        count = self._perIp.get((kind, ip), 0)
        if self.connectionsPerIp and count >= self.connectionsPerIp:
            return SessionTicket(self, kind, ip, PER_ADDRESS)
        if self.maxSessions and self.total >= self.maxSessions:
            return SessionTicket(self, kind, ip, TOTAL)
        self._perIp[(kind, ip)] = count + 1
        self.total += 1
        ticket = SessionTicket(self, kind, ip, listener=listener or kind)
        ticket._held = True
        if self.metrics is not None:
            self.metrics.sessionOpened(kind, ticket.listener)
        return ticket

    def openFrom(self, kind: str, ip: str) -> int:
        """
        @return: the sessions of C{kind} open from C{ip}.
        """
        return self._perIp.get((kind, ip), 0)

    def _release(self, kind: str, ip: str, listener: str) -> None:
        """
        Uncount one admitted session (through L{SessionTicket.release}).
        """
        count = self._perIp.get((kind, ip), 0) - 1
        if count > 0:
            self._perIp[(kind, ip)] = count
        else:
            self._perIp.pop((kind, ip), None)
        self.total = max(0, self.total - 1)
        if self.metrics is not None:
            self.metrics.sessionClosed(kind, listener)


def raiseOpenFileLimit(resource=None) -> tuple[int, int]:
    """
    Raise the soft limit on open files (C{RLIMIT_NOFILE}) to the hard
    limit, never lowering it: the default soft limit (often 1024) is far
    below what C{max_sessions} needs.  Call once, in a process's entry
    point.  A failure is logged, not raised.

    @param resource: the C{resource} module (tests pass a fake); the real
        one by default.
    @return: the soft limit before and after.
    """
    if resource is None:
        import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        _log.info("open file limit {before} is already the hard limit", before=soft)
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        _log.warn("could not raise the open file limit from {before} to {hard}: {error}",
                  before=soft, hard=hard, error=str(e))
        return soft, soft
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    _log.info("raised the open file limit from {before} to {after}", before=soft, after=after)
    return soft, after


def checkHeadroom(maxSessions: int, openFileLimit: int) -> bool:
    """
    Warn when C{max_sessions} does not fit well inside the open-file limit
    (C{DESCRIPTORS_PER_SESSION} each, plus C{RESERVED_DESCRIPTORS}).

    @param openFileLimit: the soft C{RLIMIT_NOFILE} after raising it.
    @return: whether it fits (no limit on sessions never fits).
    """
    needed = maxSessions * DESCRIPTORS_PER_SESSION + RESERVED_DESCRIPTORS
    if openFileLimit < 0 or (maxSessions and needed <= openFileLimit):
        return True
    _log.warn("[limits] max_sessions = {maxSessions} may exhaust the open file limit {limit}"
              " (each session may hold {perSession} files, plus {reserve} for the rest); lower it",
              maxSessions=maxSessions or "0 (no limit)", limit=openFileLimit,
              perSession=DESCRIPTORS_PER_SESSION, reserve=RESERVED_DESCRIPTORS)
    return False
