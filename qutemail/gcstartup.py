# -*- test-case-name: tests.test_gcstartup -*-
"""
Keep what a server process builds at start-up out of the cyclic garbage
collector's full collections.

A process's modules, classes, functions and configuration (about 50,000
objects for the whole server) live until it exits, yet every full
collection walks them again: with a large folder's fetch index and state
in memory (issue 14's IMAP benchmark), full collections took 45-140 ms,
each a pause for every session of the process.  Once the reactor runs,
L{freezeStartup} collects once and moves every object then alive into the
permanent generation (C{gc.freeze}), which later collections skip.  Only
start-up's objects are frozen, once: anything of a session made later is
collected as before.  Used by the real processes only (C{twistd} and the
extra SMTP workers), never in tests, which build many servers in one
process.
"""

import gc

from twisted.logger import Logger

_log = Logger()


def freezeStartup() -> int:
    """
    Collect, then freeze every object alive.

    @return: how many objects are now frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    _log.info("froze {count} start-up objects out of the garbage collector's full collections", count=frozen)
    return frozen


def freezeWhenRunning(reactor) -> None:
    """
    Call L{freezeStartup} once C{reactor} runs (after every service has
    started).
    """
    reactor.callWhenRunning(freezeStartup)
