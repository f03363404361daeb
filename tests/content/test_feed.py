"""
Tests for L{qutemail.content.feed}: a message goes to its consumer a chunk
at a time, waiting while the consumer is paused.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import UNKNOWN_LENGTH

from qutemail.blocking import InlineRunner
from qutemail.content.feed import CHUNK_BYTES, FeedStopped, MessageFeed
from qutemail.message import Envelope, SpooledMessage
from tests.support import QueuedRunner

ENVELOPE = Envelope("a@remote.test", ("b@example.test",))


class Consumer:
    """
    Collects what it is written.
    """

    def __init__(self) -> None:
        """
        Empty.
        """
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        """
        Keep it.
        """
        self.written.append(data)


class MessageFeedTests(SynchronousTestCase):
    """
    L{MessageFeed}.
    """

    def spilled(self, size: int) -> SpooledMessage:
        """
        @return: a message of C{size} bytes in a file.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(bytes(range(256)) * (size // 256) + b"z" * (size % 256))
        return SpooledMessage("Q1", ENVELOPE, size, path=path)

    def test_inline(self) -> None:
        """
        An inline body goes in chunks with its length known.
        """
        body = b"a" * (CHUNK_BYTES * 2 + 1)
        feed = MessageFeed(InlineRunner(), SpooledMessage("Q1", ENVELOPE, len(body), inline=body))
        self.assertEqual(feed.length, len(body))
        consumer = Consumer()
        self.successResultOf(feed.startProducing(consumer))
        self.assertEqual([len(c) for c in consumer.written], [CHUNK_BYTES, CHUNK_BYTES, 1])

    def test_framed(self) -> None:
        """
        With a frame, each chunk is framed and the length is unknown.
        """
        feed = MessageFeed(InlineRunner(), SpooledMessage("Q1", ENVELOPE, 3, inline=b"abc"),
                           frame=lambda c: b"<" + c + b">")
        self.assertIs(feed.length, UNKNOWN_LENGTH)
        consumer = Consumer()
        self.successResultOf(feed.startProducing(consumer))
        self.assertEqual(consumer.written, [b"<abc>"])

    def test_fileReadInThreadsAndPaced(self) -> None:
        """
        A spilled body is opened, read and closed through the runner, and
        nothing more is read while the consumer is paused.
        """
        runner = QueuedRunner()
        message = self.spilled(CHUNK_BYTES + 100)
        feed = MessageFeed(runner, message)
        consumer = Consumer()
        d = feed.startProducing(consumer)
        runner.runNext()  # open
        runner.runNext()  # first chunk
        self.assertEqual(len(consumer.written), 1)
        feed.pauseProducing()
        runner.runNext()  # second chunk, read before the pause was seen
        self.assertEqual(len(consumer.written), 2)
        self.assertEqual(runner.calls, [])
        feed.resumeProducing()
        runner.runNext()  # end of file
        runner.runNext()  # close
        self.successResultOf(d)
        with open(message.path, "rb") as f:
            self.assertEqual(b"".join(consumer.written), f.read())

    def test_stopped(self) -> None:
        """
        Stopped by the consumer, the feed ends with L{FeedStopped} and
        closes the file.
        """
        runner = QueuedRunner()
        feed = MessageFeed(runner, self.spilled(CHUNK_BYTES * 3))
        d = feed.startProducing(Consumer())
        runner.runNext()
        runner.runNext()
        feed.stopProducing()
        runner.runNext()  # the chunk read when stopped is not written
        runner.runNext()  # close
        self.failureResultOf(d, FeedStopped)
        self.assertEqual(runner.calls, [])
