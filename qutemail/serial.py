# -*- test-case-name: tests.test_serial -*-
"""
Running asynchronous jobs one at a time, and waking many waiters, without
recursion.

Twisted's C{DeferredLock} and C{DeferredSemaphore} hand over on release by
firing the next waiter's Deferred inside the releasing call: when the
waiter's code releases again before it returns (its work was already
done, or ran inline), the next hand-over happens one stack frame deeper.
A few hundred waiters reach Python's recursion limit, and the lock is left
held with the rest never resumed.  L{SerialQueue} and L{Waiters} run their
hand-overs from a loop instead, so the stack stays flat whatever the
number of waiters.
"""

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure


class SerialQueue:
    """
    Runs jobs one at a time in the order they were submitted.  A job is a
    callable returning a value, a Deferred or a coroutine's Deferred.
    """

    def __init__(self) -> None:
        """
        No jobs yet.
        """
        self._jobs: deque[tuple[Callable[[], Any], Deferred]] = deque()
        self._busy = False
        self._unfinished = 0

    @property
    def busy(self) -> bool:
        """
        Whether any job is running or waiting, other than one whose result
        is being reported right now.
        """
        return self._unfinished > 0

    def run(self, job: Callable[[], Any]) -> Deferred:
        """
        Run C{job} once every job submitted before it has finished.

        @return: fires with what C{job} returns (or fails with its error).
        """
        done: Deferred = Deferred()
        self._unfinished += 1
        self._jobs.append((job, done))
        if not self._busy:
            self._drain()
        return done

    def _drain(self) -> None:
        """
        Run jobs until one does not finish at once, or none are left.
        """
        self._busy = True
        while self._jobs:
            job, done = self._jobs.popleft()
            running = maybeDeferred(job)
            if not running.called:
                running.addBoth(self._finished, done)
                return
            outcome: list = []
            running.addBoth(outcome.append)
            self._report(done, outcome[0])
        self._busy = False

    def _finished(self, result: Any, done: Deferred) -> None:
        """
        A job that waited has finished: report it, then carry on.
        """
        self._report(done, result)
        self._drain()

    def _report(self, done: Deferred, result: Any) -> None:
        """
        Hand a finished job's result to its caller.
        """
        self._unfinished -= 1
        _fire(done, result)


class Waiters:
    """
    Deferreds waiting for one event, all fired from one loop when it comes.
    """

    def __init__(self) -> None:
        """
        Nobody waits yet.
        """
        self._waiting: list[Deferred] = []

    def __len__(self) -> int:
        """
        @return: how many wait.
        """
        return len(self._waiting)

    def wait(self) -> Deferred:
        """
        @return: a Deferred fired by the next L{fire}.
        """
        d: Deferred = Deferred()
        self._waiting.append(d)
        return d

    def fire(self, result: Any) -> None:
        """
        Fire every waiter (those added meanwhile wait for the next event).

        @param result: each waiter's result, or a L{Failure} for all.
        """
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            _fire(d, result)


class Batcher:
    """
    Items of one group (a peer SAE, say) that are wanted at the same time
    share one request: one request per group at a time, of at most
    C{limit} items; items added while it is out go in the next.
    """

    def __init__(self, send: Callable[[Any, list], Any], limit: int) -> None:
        """
        @param send: C{send(group, items)} makes one request; it returns
            (or fires with) one result per item, in order, each a value or
            a L{Failure}; a failure of the whole request fails every item.
        @param limit: the most items in one request.
        """
        self._send = send
        self._limit = limit
        self._waiting: dict[Any, list[tuple[Any, Deferred]]] = {}
        self._sending: set = set()

    def add(self, group: Any, item: Any) -> Deferred:
        """
        @return: a Deferred firing with C{item}'s result.
        """
        d: Deferred = Deferred()
        self._waiting.setdefault(group, []).append((item, d))
        self._next(group)
        return d

    def _next(self, group: Any) -> None:
        """
        Send the group's waiting items, unless a request is out (its end
        sends the next).
        """
        waiting = self._waiting.get(group)
        if group in self._sending or not waiting:
            return
        batch = waiting[:self._limit]
        del waiting[:self._limit]
        if not waiting:
            del self._waiting[group]
        self._sending.add(group)

        def done(results: Any) -> None:
            if isinstance(results, Failure):
                results = [results] * len(batch)
            for (_, waiter), result in zip(batch, results):
                _fire(waiter, result)
            self._sending.discard(group)
            self._next(group)

        maybeDeferred(self._send, group, [item for item, _ in batch]).addBoth(done)


def _fire(d: Deferred, result: Any) -> None:
    """
    Fire C{d} with a value or a L{Failure}.
    """
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
