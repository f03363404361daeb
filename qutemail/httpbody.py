# -*- test-case-name: tests.test_httpbody -*-
"""
Reading the body of an HTTP response from a server we do not control (the
KME, rspamd, an MTA-STS policy host) without trusting its length: at most
a limit is kept, and past it the connection is dropped.
"""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss


class BodyTooLarge(Exception):
    """
    The answer was longer than allowed.
    """


class _CappedBody(Protocol):
    """
    Collect a response body up to a limit; past it, drop the connection.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most bytes accepted.
        """
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.finished: Deferred | None = Deferred(self._cancel)

    def _cancel(self, d: Deferred) -> None:
        """
        Give up (the deadline passed): drop the connection.
        """
        self.finished = None
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        """
        Keep C{data}, or give up if the body is now too long.
        """
        if self.finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            d, self.finished = self.finished, None
            self.transport.stopProducing()
            d.errback(BodyTooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        """
        The body is complete (or broken).
        """
        if self.finished is None:
            return
        d, self.finished = self.finished, None
        if reason.check(ResponseDone, PotentialDataLoss):
            d.callback(b"".join(self._chunks))
        else:
            d.errback(reason)


def readCapped(response: Any, limit: int) -> Deferred:
    """
    Read a response's body, at most C{limit} bytes of it.

    @param response: an C{IResponse}.
    @return: a Deferred firing with the body, or failing with
        L{BodyTooLarge} (the connection then dropped) or the transport's
        failure; cancelling it drops the connection.
    """
    reader = _CappedBody(limit)
    # The body may be complete before deliverBody returns.
    finished = reader.finished
    response.deliverBody(reader)
    return finished
