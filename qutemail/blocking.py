# -*- test-case-name: tests.test_blocking -*-
"""
L{BlockingRunner}: the one way into threads.

Blocking work (fsync, password hashing, directory scans, DNS through
dnspython) must never run on the reactor thread.  Everything that blocks goes
through C{runner.run(f, *args)}, which returns a L{Deferred}.
"""

import queue
import threading
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure


class _WorkerThreads:
    """
    A small pool of threads that run callables and report back through the
    reactor's C{callFromThread}.

    Twisted's C{ThreadPool} dispatches each call through a coordinator and
    a per-thread queue, tens of microseconds of Python on both threads
    (holding the GIL each time); the journal's sync, which every 250 waits
    for, pays that twice.  Here a call is one put on a C{SimpleQueue},
    which an idle thread takes directly.
    """

    def __init__(self, reactor: Any, minThreads: int, maxThreads: int, name: str) -> None:
        """
        @param reactor: gets the results, with C{callFromThread}.
        @param minThreads: threads started at once.
        @param maxThreads: the most threads; more are started while every
            one is busy.
        @param name: the threads' name prefix.
        """
        self._reactor = reactor
        self._minThreads = minThreads
        self._maxThreads = max(maxThreads, 1)
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Threads waiting for work that no queued call has claimed yet.
        self._idle = 0
        # Queued calls no thread has claimed yet (all busy, at the limit).
        self._backlog = 0

    def start(self) -> None:
        """
        Start the minimum number of threads.
        """
        with self._lock:
            for _ in range(self._minThreads):
                self._spawn()
                self._idle += 1

    def _spawn(self) -> None:
        """
        Start one more thread (with the lock held).
        """
        thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}")
        self._threads.append(thread)
        thread.start()

    def submit(self, d: Deferred, f: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        """
        Queue a call; C{d} fires on the reactor thread with its outcome.
        """
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._maxThreads:
                self._spawn()
            else:
                self._backlog += 1
        self._queue.put((d, f, args, kwargs))

    def _work(self) -> None:
        """
        A thread's loop: run calls until told to stop.
        """
        take = self._queue.get
        report = self._reactor.callFromThread
        while True:
            task = take()
            if task is None:
                return
            d, f, args, kwargs = task
            del task
            try:
                outcome = f(*args, **kwargs)
            except BaseException:
                # The caller's Deferred carries it, as with InlineRunner.
                report(d.errback, Failure())
            else:
                report(d.callback, outcome)
            # Drop the references before waiting for the next call.
            d = f = args = kwargs = outcome = None
            with self._lock:
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1

    def stop(self) -> None:
        """
        Let the queued calls finish, then end and join every thread.
        """
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()


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
    _pool: _WorkerThreads | None = None

    # Service's attributes, which attrs would otherwise not know about.
    parent: Any = None
    running: int = 0

    def startService(self) -> None:
        """
        Start the thread pool.
        """
        Service.startService(self)
        self._pool = _WorkerThreads(self.reactor, self.minThreads, self.maxThreads, f"qutemail-{self.name}")
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
        d: Deferred = Deferred()
        self._pool.submit(d, f, args, kwargs)
        return d


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


def wait(d: Deferred) -> Any:
    """
    Take the result of a Deferred that has already fired.

    @return: the result.
    @raise Exception: what the Deferred failed with.
    @raise RuntimeError: it has not fired; with no reactor running it never
        will.
    """
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("a Deferred did not fire synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]
