# -*- test-case-name: tests.test_blocking -*-
"""
L{BlockingRunner}: the one way into threads.

Blocking work (fsync, password hashing, directory scans, DNS through
dnspython) must never run on the reactor thread.  Everything that blocks goes
through C{runner.run(f, *args)}, which returns a L{Deferred}.
"""

from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool


@attrs.define(eq=False)
class BlockingRunner(Service):
    """
    Runs blocking callables in a thread pool it owns.

    It is a service: the pool starts with C{startService} and is drained and
    joined by C{stopService}.

    @ivar reactor: the reactor whose thread receives the results.
    @ivar minThreads: the pool's minimum size.
    @ivar maxThreads: the pool's maximum size.
    """

    reactor: Any
    minThreads: int = 2
    maxThreads: int = 8
    name: str = "blocking"
    _pool: ThreadPool | None = None

    # Service's attributes, which attrs would otherwise not know about.
    parent: Any = None
    running: int = 0

    def startService(self) -> None:
        """
        Start the thread pool.
        """
        Service.startService(self)
        self._pool = ThreadPool(self.minThreads, self.maxThreads, "qutemail-blocking")
        self._pool.start()

    def stopService(self) -> None:
        """
        Stop the pool, letting queued work finish first.
        """
        Service.stopService(self)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """
        Call C{f(*args, **kwargs)} in the pool.

        @return: a L{Deferred} that fires, on the reactor thread, with what
            C{f} returned or failed with what it raised.
        @raise RuntimeError: (in the Deferred) when the runner is not running.
        """
        if self._pool is None:
            return fail(RuntimeError("BlockingRunner is not running"))
        return deferToThreadPool(self.reactor, self._pool, f, *args, **kwargs)


@attrs.define
class InlineRunner:
    """
    A runner that calls C{f} at once, on the calling thread.

    Used by unit tests (no threads) and by the command-line tool, which has
    no reactor running.
    """

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """
        Call C{f(*args, **kwargs)} now.

        @return: a fired L{Deferred} with the result or the failure.
        """
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail(Failure())
