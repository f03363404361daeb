"""
Tests for L{qutemail.httpbody}: a body is read whole up to its limit, and
past it the connection is dropped.
"""

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed

from qutemail.httpbody import BodyTooLarge, readCapped


class Transport:
    """
    A response body's transport: notes whether it was stopped.
    """

    stopped = False

    def stopProducing(self) -> None:
        """
        Note it.
        """
        self.stopped = True


class Response:
    """
    A response whose body the test feeds.
    """

    def deliverBody(self, protocol) -> None:
        """
        Keep the protocol, connected to a L{Transport}.
        """
        self.protocol = protocol
        self.transport = Transport()
        protocol.makeConnection(self.transport)


class ReadCappedTests(SynchronousTestCase):
    """
    L{readCapped}.
    """

    def test_whole(self) -> None:
        """
        A body within the limit arrives whole.
        """
        response = Response()
        d = readCapped(response, 10)
        response.protocol.dataReceived(b"12345")
        response.protocol.dataReceived(b"67890")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d), b"1234567890")

    def test_tooLong(self) -> None:
        """
        One byte over the limit fails with L{BodyTooLarge} and stops the
        transport.
        """
        response = Response()
        d = readCapped(response, 10)
        response.protocol.dataReceived(b"12345678901")
        self.failureResultOf(d, BodyTooLarge)
        self.assertTrue(response.transport.stopped)

    def test_broken(self) -> None:
        """
        A body cut short fails with the transport's failure.
        """
        response = Response()
        d = readCapped(response, 10)
        response.protocol.connectionLost(Failure(ResponseFailed([])))
        self.failureResultOf(d, ResponseFailed)

    def test_cancelled(self) -> None:
        """
        Cancelling the read stops the transport.
        """
        response = Response()
        d = readCapped(response, 10)
        d.cancel()
        self.assertTrue(response.transport.stopped)
        self.failureResultOf(d)
