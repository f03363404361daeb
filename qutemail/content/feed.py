# -*- test-case-name: tests.content.test_feed -*-
"""
A spooled message streamed to a scanner a chunk at a time: read in a worker
thread, written as fast as the scanner's socket takes it, never held whole.
"""

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from qutemail.message import SpooledMessage

# How much of the message is read and written at a time.
CHUNK_BYTES = 256 * 1024


class FeedStopped(Exception):
    """
    The consumer went away before the whole message was written.
    """


@implementer(IPushProducer, IBodyProducer)
class MessageFeed:
    """
    Writes a spooled message to a consumer, paced by it: a push producer
    the consumer pauses while its buffer is full.

    @ivar length: how many bytes the consumer gets (L{IBodyProducer}).
    """

    def __init__(self, runner: Any, message: SpooledMessage, frame: Callable[[bytes], bytes] | None = None) -> None:
        """
        @param runner: the L{qutemail.blocking.BlockingRunner} reads go
            through (the message may be a large file on disk).
        @param message: the message; its body is read through
            L{SpooledMessage.openBody}.
        @param frame: what each chunk is wrapped in on the wire (clamd's
            length prefix); C{None} writes them as they are.
        """
        self._runner = runner
        self._message = message
        self._frame = frame
        self.length = message.size if frame is None else UNKNOWN_LENGTH
        self._resumed: Deferred | None = None
        self._stopped = False

    def startProducing(self, consumer: Any) -> Deferred:
        """
        Write the whole message to C{consumer}.

        @return: a Deferred firing with C{None} once every byte was
            written, or failing with L{FeedStopped} if L{stopProducing}
            was called first, or with the read error.
        """
        return Deferred.fromCoroutine(self._pump(consumer))

    async def _pump(self, consumer: Any) -> None:
        """
        See L{startProducing}.
        """
        message = self._message
        if message.inline is not None:
            source = None
        else:
            source = await self._runner.run(message.openBody)
        try:
            offset = 0
            while True:
                if self._resumed is not None:
                    await self._resumed
                if self._stopped:
                    raise FeedStopped()
                if source is None:
                    chunk = message.inline[offset:offset + CHUNK_BYTES]
                    offset += len(chunk)
                else:
                    chunk = await self._runner.run(source.read, CHUNK_BYTES)
                if self._stopped:
                    raise FeedStopped()
                if not chunk:
                    return
                consumer.write(chunk if self._frame is None else self._frame(chunk))
        finally:
            if source is not None:
                await self._runner.run(source.close)

    def pauseProducing(self) -> None:
        """
        The consumer's buffer is full: wait before the next write.
        """
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        """
        The consumer can take more.
        """
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        """
        The consumer is gone: stop at the next chunk.
        """
        self._stopped = True
        self.resumeProducing()

