# -*- test-case-name: tests.test_interfaces -*-
"""
L{LocalMailboxNotifier}: mailbox change notices within one process.  A
node without Redis uses it (a delivery wakes the IDLE sessions of the same
process at once), and L{qutemail.backends.redisnotify} hands it what Redis
brings from every node.
"""

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.interfaces import IMailboxNotifier


@implementer(IMailboxNotifier)
class LocalMailboxNotifier:
    """
    Calls each subscriber of a mailbox when it is published.
    """

    _log = Logger()

    def __init__(self) -> None:
        """
        No subscribers yet.
        """
        self._subscribers: dict[str, list[Callable[[], None]]] = {}

    def publish(self, address: str) -> Deferred:
        """
        See L{IMailboxNotifier.publish}: call the subscribers now.
        """
        self.dispatch(address)
        return succeed(None)

    def dispatch(self, address: str) -> None:
        """
        Call every subscriber of C{address}; one that raises is logged and
        the others still run.
        """
        for callback in list(self._subscribers.get(address, ())):
            try:
                callback()
            except Exception:
                self._log.failure("mailbox notice for {address} failed", address=address)

    def subscribe(self, address: str, callback: Callable[[], None]) -> Callable[[], None]:
        """
        See L{IMailboxNotifier.subscribe}.
        """
        self._subscribers.setdefault(address, []).append(callback)

        def unsubscribe() -> None:
            callbacks = self._subscribers.get(address, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._subscribers.pop(address, None)

        return unsubscribe
