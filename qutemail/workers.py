# -*- test-case-name: tests.integration.test_workers -*-
"""
Extra SMTP worker processes sharing the MTA port.

A reactor is one thread, so one process uses one core.  With C{[server]
workers = N}, the main process (the one C{twistd} runs) starts N-1 workers
once its MTA port is listening and hands each the listening socket; every
process accepts connections on it.  Each worker has its own journal and
spill directory (C{queue/journal-<i>/}, C{queue/large-<i>/}), so none waits
on another's group commit; they share the Maildirs, the user file and the
deferred queue, which only the main process retries.

A worker that dies is started again after a second.  A worker dies with
the main process (Linux C{PR_SET_PDEATHSIG}), so a C{kill -9} of the main
process cannot leave workers holding the port; on the next start each
worker recovers its own journal, and the main process those of workers
that no longer exist.

Workers log to the standard output they inherit from C{twistd} (run C{twistd
-n} without C{--logfile}, or with its output redirected, to keep every
process's lines in one place).
"""

import os
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

# How long to wait before starting a worker that died.
RESTART_SECONDS = 1.0
# The socket's descriptor number in a worker.
LISTEN_FD = 3


class _WorkerProtocol(ProcessProtocol):
    """
    Watches one worker process.
    """

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        """
        @param pool: the pool to tell when the worker ends.
        @param index: the worker's index.
        """
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.ended: Deferred = Deferred()

    def processEnded(self, reason) -> None:
        """
        The worker exited.
        """
        self.ended.callback(None)
        self.pool.workerEnded(self, reason)


class WorkerPool(Service):
    """
    Starts, restarts and stops the extra workers.
    """

    _log = Logger()
    name = "workers"

    def __init__(self, reactor: Any, configPath: str, count: int, listener: Any,
                 workerGone: Any = None) -> None:
        """
        @param reactor: an C{IReactorProcess} and C{IReactorTime}.
        @param configPath: the configuration file, absolute.
        @param count: how many extra workers.
        @param listener: the main process's MTA L{ListenerService}.
        @param workerGone: called with the pid of each worker that exited
            (its live metrics stop counting), or C{None}.
        """
        self.workerGone = workerGone
        self.reactor = reactor
        self.configPath = configPath
        self.count = count
        self.listener = listener
        self.workers: dict[int, tuple[Any, _WorkerProtocol]] = {}
        self._port = None

    def startService(self) -> None:
        """
        Start the workers once the port listens.
        """
        Service.startService(self)
        self.listener.whenListening().addCallback(self._listening)

    def _listening(self, port) -> None:
        """
        The port is ready: start every worker.
        """
        self._port = port
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        """
        Start worker C{index}.
        """
        if not self.running:
            return
        protocol = _WorkerProtocol(self, index)
        args = [sys.executable, "-m", "qutemail.workermain", "--config", self.configPath,
                "--index", str(index)]
        transport = self.reactor.spawnProcess(
            protocol, sys.executable, args, env=os.environ.copy(),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: self._port.fileno()},
        )
        protocol.pid = transport.pid
        self.workers[index] = (transport, protocol)
        self._log.info("started SMTP worker {index} (pid {pid})", index=index, pid=transport.pid)

    def workerEnded(self, protocol: _WorkerProtocol, reason) -> None:
        """
        A worker exited: start it again unless we are stopping.
        """
        self.workers.pop(protocol.index, None)
        if self.workerGone is not None and protocol.pid is not None:
            self.workerGone(protocol.pid)
        if self.running:
            self._log.error("SMTP worker {index} ended ({reason}); restarting",
                            index=protocol.index, reason=reason.getErrorMessage())
            self.reactor.callLater(RESTART_SECONDS, self._spawn, protocol.index)

    def stopService(self):
        """
        Ask every worker to stop (SIGTERM: each finishes its commits and
        closes its journal) and wait for them to exit.
        """
        Service.stopService(self)
        waiting = []
        for transport, protocol in list(self.workers.values()):
            try:
                transport.signalProcess("TERM")
            except Exception:
                # Already gone (ProcessExitedAlready): its end is on its way.
                pass
            waiting.append(protocol.ended)
        return DeferredList(waiting)
