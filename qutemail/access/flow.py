# -*- test-case-name: tests.access.test_pop3 -*-
"""
Flow control for a sender that writes a large message to a transport in
pieces (POP3 RETR, IMAP FETCH): registered as the transport's push
producer, it learns when the transport's buffer is full, and the sender
waits on L{WriteFlow.whenWritable} before each piece, so a slow client
never makes the server hold a whole message in memory.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class WriteFlow:
    """
    Tells a sender when the transport wants no more for now.
    """

    def __init__(self) -> None:
        """
        Not paused.
        """
        self.paused = False
        self.stopped = False
        self._waiting: Deferred | None = None

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        The transport can take more.
        """
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        """
        The connection is gone.
        """
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        """
        Let a waiting sender go on.
        """
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def whenWritable(self) -> Deferred:
        """
        @return: a Deferred firing once not paused (or stopped).
        """
        if not self.paused or self.stopped:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting
