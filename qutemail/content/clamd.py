# -*- test-case-name: tests.content.test_clamd -*-
"""
A clamd client for its C{INSTREAM} command (clamd(8), "COMMANDS"): the
message goes in length-prefixed chunks, a zero-length chunk ends it, and
clamd answers one NUL-terminated line, C{stream: OK} or
C{stream: <signature> FOUND}.

No well-kept Twisted client for clamd exists (the Python ones block on a
socket); the protocol is this small.
"""

import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.configvalues import splitHostPort
from qutemail.content.feed import FeedStopped, MessageFeed
from qutemail.content.results import ClamdResult, ScanError
from qutemail.message import SpooledMessage

# clamd's "z" commands end with NUL, and so do their replies.
_COMMAND = b"zINSTREAM\0"
_END = struct.pack(">I", 0)
# A reply longer than this is not clamd's.
MAX_REPLY_BYTES = 4096


def frameChunk(chunk: bytes) -> bytes:
    """
    @return: C{chunk} as one C{INSTREAM} chunk: its length, 4 bytes in
        network order, then the bytes.
    """
    return struct.pack(">I", len(chunk)) + chunk


def parseReply(line: bytes) -> ClamdResult:
    """
    Read clamd's answer to C{INSTREAM}.

    @param line: the reply, without its NUL.
    @return: the verdict.
    @raise ScanError: clamd reported an error, or the reply is not one of
        its answers.
    """
    text = line.decode("utf-8", "replace").strip()
    _, colon, verdict = text.partition(": ")
    if colon and verdict == "OK":
        return ClamdResult()
    if colon and verdict.endswith(" FOUND") and verdict[:-6].strip():
        return ClamdResult(virus=verdict[:-6].strip())
    if text.endswith("ERROR"):
        raise ScanError(f"clamd: {text}")
    raise ScanError(f"clamd: unexpected reply {text[:80]!r}")


class InstreamProtocol(Protocol):
    """
    One C{INSTREAM} scan over one connection.

    @ivar reply: fires with the L{ClamdResult}, or fails with L{ScanError};
        cancelling it drops the connection.
    """

    def __init__(self, feed: MessageFeed) -> None:
        """
        @param feed: the message, framed with L{frameChunk}.
        """
        self._feed = feed
        self._buffer = b""
        self.reply: Deferred = Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        """
        Drop the connection at once.
        """
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        """
        Send the command, then the message as fast as clamd reads it.
        """
        self.transport.write(_COMMAND)
        self.transport.registerProducer(self._feed, True)
        self._feed.startProducing(self.transport).addCallbacks(self._sent, self._notSent)

    def _sent(self, _: None) -> None:
        """
        The whole message went: end the stream.
        """
        self.transport.unregisterProducer()
        self.transport.write(_END)

    def _notSent(self, failure: Failure) -> None:
        """
        The message could not be read: give up on this scan.
        """
        if failure.check(FeedStopped):
            return  # clamd answered (or the connection went) first
        self._finish(Failure(ScanError(f"clamd: could not read the message: {failure.getErrorMessage()}")))
        self._abort()

    def dataReceived(self, data: bytes) -> None:
        """
        Collect the reply up to its NUL.
        """
        self._buffer += data
        line, nul, _ = self._buffer.partition(b"\0")
        if nul:
            try:
                result: Any = parseReply(line)
            except ScanError:
                result = Failure()
            self._finish(result)
            self.transport.loseConnection()
        elif len(self._buffer) > MAX_REPLY_BYTES:
            self._finish(Failure(ScanError("clamd: reply too long")))
            self._abort()

    def connectionLost(self, reason: Failure) -> None:
        """
        No reply came: that is an error too.
        """
        self._feed.stopProducing()
        self._finish(Failure(ScanError(f"clamd: connection closed without a reply ({reason.getErrorMessage()})")))

    def _finish(self, result: Any) -> None:
        """
        Fire L{reply} with the result (a L{Failure} fails it), once.
        """
        if self.reply.called:
            return
        if isinstance(result, Failure):
            self.reply.errback(result)
        else:
            self.reply.callback(result)


def clamdEndpoint(reactor: Any, socket: str) -> Any:
    """
    @param socket: C{[content] clamd_socket}: an absolute path for a Unix
        socket, else C{host:port}.
    @return: the client endpoint.
    """
    if socket.startswith("/"):
        return UNIXClientEndpoint(reactor, socket)
    host, port = splitHostPort(socket, 3310)
    return HostnameEndpoint(reactor, host, port)


class ClamdClient:
    """
    Scans messages with clamd, one connection per message.
    """

    _log = Logger()

    def __init__(self, endpoint: Any, runner: Any) -> None:
        """
        @param endpoint: where clamd listens (L{clamdEndpoint}).
        @param runner: the L{qutemail.blocking.BlockingRunner} the message
            is read through.
        """
        self._endpoint = endpoint
        self._runner = runner

    def scan(self, message: SpooledMessage) -> Deferred:
        """
        Scan one message.

        @return: a Deferred firing with a L{ClamdResult}, or failing with
            L{ScanError} when clamd is down or answers nonsense.  Cancelling
            it drops the connection.
        """
        return Deferred.fromCoroutine(self._scan(message))

    async def _scan(self, message: SpooledMessage) -> ClamdResult:
        """
        See L{scan}.
        """
        protocol = InstreamProtocol(MessageFeed(self._runner, message, frame=frameChunk))
        try:
            await connectProtocol(self._endpoint, protocol)
        except Exception as e:
            raise ScanError(f"clamd: cannot connect: {e}") from e
        return await protocol.reply
