# -*- test-case-name: tests.integration.test_workers -*-
"""
The entry point of an extra SMTP worker process (C{python -m
qutemail.workermain}), started by L{qutemail.workers.WorkerPool}, never by
hand: it builds the same service tree as the main process, with its own
journal and the MTA socket it inherited.
"""

import argparse
import signal
import sys

from twisted.logger import globalLogBeginner, textFileLogObserver

from qutemail.config import loadConfig
from qutemail.gcstartup import freezeWhenRunning
from qutemail.parentdeath import dieWithParent
from qutemail.policy.sessions import checkHeadroom, raiseOpenFileLimit
from qutemail.service import buildService
from qutemail.stopsignals import installWhenRunning
from qutemail.workers import LISTEN_FD

def main(argv: list[str] | None = None) -> int:
    """
    Run one extra worker (started by L{WorkerPool}, not by hand).

    @return: the exit status.
    """
    parser = argparse.ArgumentParser(prog="qutemail-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    options = parser.parse_args(argv)
    # Die with the main process, so no worker outlives it holding the port.
    if not dieWithParent(signal.SIGTERM):
        return 1

    # The global reactor only here, in the process's own entry point.
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    openFileLimit = raiseOpenFileLimit()[1]
    config = loadConfig(options.config)
    checkHeadroom(config.limits.maxSessions, openFileLimit)
    root = buildService(config, reactor, workerIndex=options.index, adoptFd=LISTEN_FD)
    root.startService()
    freezeWhenRunning(reactor)
    installWhenRunning(reactor)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
