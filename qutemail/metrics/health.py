# -*- test-case-name: tests.metrics.test_health -*-
"""
Whether the server can do its job now: every listener listens, the journal
directory takes a new file, and the KME answered recently.  C{/healthz}
and C{qutemail status} say the same.
"""

import os
import tempfile
from typing import Any

from twisted.internet.defer import Deferred

# The KME is polled every 5 s (qutemail.policy.keypool.POLL_SECONDS); this
# many seconds without an answer is a KME that is not answering.
KME_STALE_SECONDS = 12.0


def probeWritable(directory: str) -> str | None:
    """
    Create and remove a file in C{directory} (blocking: a worker thread).

    @return: C{None}, or why it cannot be written.
    """
    try:
        fd, path = tempfile.mkstemp(prefix=".health-", dir=directory)
        os.close(fd)
        os.unlink(path)
    except OSError as e:
        return f"journal directory {directory} is not writable: {e.strerror}"
    return None


class Health:
    """
    The server's health, asked for on demand.
    """

    def __init__(self, *, clock: Any, runner: Any, listeners: dict[str, Any], journalDirectory: str,
                 keyWatches: list[Any] = (), staleSeconds: float = KME_STALE_SECONDS) -> None:
        """
        @param clock: an C{IReactorTime}.
        @param runner: the L{qutemail.blocking.BlockingRunner} the journal
            probe runs in.
        @param listeners: the listener services by name; each has
            C{isListening()}.
        @param journalDirectory: the main process's journal directory.
        @param keyWatches: the L{qutemail.policy.keypool.KeyPoolWatch}es of
            the KME's links (none without encryption).
        @param staleSeconds: how old the KME's last answer may be.
        """
        self.clock = clock
        self.runner = runner
        self.listeners = listeners
        self.journalDirectory = journalDirectory
        self.keyWatches = list(keyWatches)
        self.staleSeconds = staleSeconds

    def problems(self) -> Deferred:
        """
        @return: a Deferred firing with the list of problems, one line
            each; empty when all is well.
        """
        return Deferred.fromCoroutine(self._problems())

    async def _problems(self) -> list[str]:
        """
        See L{problems}.
        """
        problems = [f"listener {name} is not listening" for name, service in sorted(self.listeners.items())
                    if not service.isListening()]
        journal = await self.runner.run(probeWritable, self.journalDirectory)
        if journal is not None:
            problems.append(journal)
        now = self.clock.seconds()
        for watch in self.keyWatches:
            if watch.answeredAt is None:
                problems.append(f"KME has not answered for SAE {watch.peerSAE} yet")
            elif now - watch.answeredAt > self.staleSeconds:
                problems.append(f"KME has not answered for SAE {watch.peerSAE} for {now - watch.answeredAt:.0f}s")
        return problems
