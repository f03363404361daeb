# -*- test-case-name: tests.pipeline.test_spool -*-
"""
The message spool: what a transaction's body becomes while it arrives.

A L{SpoolWriter} takes the body in pieces.  Small messages (up to
C{thresholdBytes}) stay in one bounded buffer and are committed inline in the
journal; anything larger is streamed to its own file under C{queue/large/}
through the L{qutemail.blocking.BlockingRunner}, so memory stays flat however
big the message is.  L{SpoolWriter.finish} makes the body durable (fsync for
a spilled file) and returns a L{SpooledMessage}, which is what every later
stage passes around: never the bytes of a large body.
"""

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from qutemail.durable import PRIVATE_FILE_MODE, removeFile
from qutemail.message import Envelope, SpooledMessage

DEFAULT_THRESHOLD_BYTES = 256 * 1024
_CHUNK_BYTES = 256 * 1024


class SpoolWriter:
    """
    Accumulates one transaction's body, spilling to disk past a threshold.

    Writes to the spill file are queued, in order, to the runner; callers
    that care about memory look at L{pendingBytes} and pause their producer
    until L{drained} fires.

    @ivar size: bytes written so far.
    @ivar traceBytes: how many of the first bytes are our own trace fields
        (C{Received}, C{Received-SPF}) rather than what the client sent.
    """

    _log = Logger()

    def __init__(self, runner: Any, spillPath: str, thresholdBytes: int = DEFAULT_THRESHOLD_BYTES) -> None:
        """
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param spillPath: where the body goes if it grows past the threshold.
        @param thresholdBytes: the largest body kept in memory.
        """
        self._runner = runner
        self._spillPath = spillPath
        self._threshold = thresholdBytes
        self._buffer = bytearray()
        self._file = None
        self._tail: Deferred | None = None
        self._failure = None
        self.pendingBytes = 0
        self.size = 0
        self.traceBytes = 0
        self._closed = False

    @property
    def spilled(self) -> bool:
        """
        Whether the body went to a file.
        """
        return self._tail is not None

    def write(self, data: bytes) -> None:
        """
        Append body bytes.

        @param data: the next bytes of the body.
        """
        self.size += len(data)
        self._buffer += data
        if self._tail is None:
            if len(self._buffer) > self._threshold:
                # Past the threshold: start the spill file now.
                self._flushBuffer()
        elif len(self._buffer) >= _CHUNK_BYTES:
            self._flushBuffer()

    def _flushBuffer(self) -> None:
        """
        Hand the buffered bytes to the runner, after the writes before them.
        """
        chunk = bytes(self._buffer)
        self._buffer = bytearray()
        self.pendingBytes += len(chunk)
        if self._tail is None:
            self._tail = self._runner.run(self._open)

        def writeChunk(_):
            return self._runner.run(self._writeChunk, chunk)

        def written(result):
            self.pendingBytes -= len(chunk)
            return result

        self._tail.addCallback(writeChunk)
        self._tail.addBoth(written)

    def _open(self) -> None:
        """
        Create the spill file (worker thread), mode 0600: it holds a
        message in plaintext.
        """
        fd = os.open(self._spillPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        self._file = open(fd, "wb")

    def _writeChunk(self, chunk: bytes) -> None:
        """
        Write one chunk (worker thread).
        """
        self._file.write(chunk)

    def _syncAndClose(self) -> None:
        """
        Flush, fsync and close the spill file (worker thread).
        """
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def drained(self) -> Deferred:
        """
        @return: a Deferred that fires when every queued write is done.
        """
        if self._tail is None:
            return succeed(None)
        d = Deferred()

        def fire(result):
            d.callback(None)
            return result

        self._tail.addBoth(fire)
        return d

    def finish(self, queueId: str, envelope: Envelope) -> Deferred:
        """
        End the body and make it durable (a spilled file is fsynced).

        @param queueId: the message's queue id.
        @param envelope: its envelope.
        @return: a Deferred firing with the L{SpooledMessage}; it fails with
            the I/O error when the spill file could not be written.
        """
        self._closed = True
        if self._tail is None:
            return succeed(
                SpooledMessage(queueId, envelope, self.size, inline=bytes(self._buffer))
            )
        if self._buffer:
            self._flushBuffer()
        self._tail.addCallback(lambda _: self._runner.run(self._syncAndClose))
        self._tail.addCallback(
            lambda _: SpooledMessage(queueId, envelope, self.size, path=self._spillPath)
        )
        d, self._tail = self._tail, None

        def failed(failure):
            # Nothing will be acknowledged: take the partial file away,
            # then report the error.
            return self._runner.run(self._removeSpill).addBoth(lambda _: failure)

        return d.addErrback(failed)

    def abort(self) -> Deferred:
        """
        Throw the body away (size exceeded, connection lost, RSET).

        @return: a Deferred that fires when any spill file is gone.
        """
        self._buffer = bytearray()
        if self._tail is None:
            return succeed(None)
        d, self._tail = self._tail, None

        def remove(_):
            return self._runner.run(self._removeSpill)

        d.addBoth(remove)
        d.addErrback(lambda f: self._log.failure("removing spill file {path}", f, path=self._spillPath))
        return d

    def discard(self) -> Deferred:
        """
        Throw away a body already made durable by L{finish} (a message
        refused after the checks of its content).

        @return: a Deferred that fires when any spill file is gone.
        """
        return self._runner.run(self._removeSpill)

    def _removeSpill(self) -> None:
        """
        Close and delete the spill file (worker thread).
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        removeFile(self._spillPath)
