# -*- test-case-name: tests.queue.test_journal -*-
"""
The spool journal: one durable write per transaction, with group commit.

Accepted messages are appended as records to a segment file under
C{queue/journal/}; every record written by one batch is made durable by one
C{fdatasync}, so concurrent transactions share the cost of a flush (group
commit) and no file is created or deleted per small message.  The server
answers 250 only after the batch holding its record is synced.

Record layout (all integers decimal ASCII)::

    M <queueId> <envelopeLen> <bodyLen> <crc32>\\n <envelope JSON> <body>
    D <queueId>\\n

An C{M} record holds the message (its body inline, or C{bodyLen} 0 and the
envelope naming a spill file under C{queue/large/}); a C{D} record says every
recipient of that message has been dealt with (delivered, or moved to the
deferred queue).  A C{D} record is only written after the work it records is
itself durable, so it needs no sync of its own.  A segment is deleted once it
is no longer the one being written and every message in it is done.  After a
crash, L{Journal.recover} returns the messages without a C{D} record; a torn
record at the end of the last segment (a batch that never got its sync, so
no 250) is ignored.

Small batches are written over zeros laid down ahead of them
(L{ZERO_AHEAD_BYTES} at a time, with the batch that needs them): an
C{fdatasync} that only overwrites blocks a file already has changes none of
its metadata, so the file system commits no journal transaction for it.
On the development machine's ext4 that made the sync of a 2.6 KB record
94 µs instead of 165-180 µs.  A segment may therefore end in zeros, which
reading takes as its end.  Batches of L{ZERO_AHEAD_MAX_BATCH_BYTES} or more
are only appended (zeroing ahead of them would write as much again).
"""

import json
import os
import zlib
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories, removeFile, syncDirectory, writeAllAt
from qutemail.message import Envelope, SpooledMessage

DEFAULT_SEGMENT_BYTES = 32 * 1024 * 1024
# Zeros laid down ahead of small batches (see the module docstring).
ZERO_AHEAD_BYTES = 1024 * 1024
ZERO_AHEAD_MAX_BATCH_BYTES = 64 * 1024
_ZEROS = bytes(ZERO_AHEAD_BYTES)
# Rounds of flushing close() tries before it gives up on pending records.
CLOSE_ATTEMPTS = 3
_SEGMENT_SUFFIX = ".log"


def _segmentName(number: int) -> str:
    """
    @return: the file name of segment C{number}.
    """
    return f"{number:010d}{_SEGMENT_SUFFIX}"


def encodeMessage(message: SpooledMessage) -> bytes:
    """
    Build the C{M} record of a message.

    @param message: an inline or spilled message.
    @return: the record bytes.
    """
    meta = {"envelope": message.envelope.toJSON(), "size": message.size, "path": message.path}
    envelope = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    body = message.inline or b""
    crc = zlib.crc32(body, zlib.crc32(envelope))
    header = b"M %s %d %d %d\n" % (message.queueId.encode("ascii"), len(envelope), len(body), crc)
    return header + envelope + body


def encodeDone(queueId: str) -> bytes:
    """
    @return: the C{D} record for C{queueId}.
    """
    return b"D %s\n" % (queueId.encode("ascii"),)


def _parseRecord(data: bytes, pos: int):
    """
    Parse the record at C{pos}.

    @return: C{("M", message, next)}, C{("D", queueId, next)}, or C{None}
        when no whole, intact record starts there.
    """
    nl = data.find(b"\n", pos, pos + 200)
    if nl < 0:
        return None
    fields = data[pos:nl].split(b" ")
    try:
        if fields[0] == b"D" and len(fields) == 2:
            return "D", fields[1].decode("ascii"), nl + 1
        if fields[0] != b"M" or len(fields) != 5:
            return None
        queueId = fields[1].decode("ascii")
        envLen, bodyLen, crc = int(fields[2]), int(fields[3]), int(fields[4])
    except (ValueError, UnicodeDecodeError):
        return None
    start = nl + 1
    if envLen < 0 or bodyLen < 0 or start + envLen + bodyLen > len(data):
        return None
    envelope = data[start : start + envLen]
    body = data[start + envLen : start + envLen + bodyLen]
    if zlib.crc32(body, zlib.crc32(envelope)) != crc:
        return None
    meta = json.loads(envelope)
    message = SpooledMessage(
        queueId,
        Envelope.fromJSON(meta["envelope"]),
        meta["size"],
        inline=None if meta["path"] else body,
        path=meta["path"],
    )
    return "M", message, start + envLen + bodyLen


def parseSegment(data: bytes) -> tuple[list[SpooledMessage], set[str], list[tuple[int, int]]]:
    """
    Parse one segment's bytes.

    A record that does not parse is skipped up to the next intact C{M}
    record (its checksum makes a false match in damaged bytes all but
    impossible), so that damage in the middle of a segment costs only the
    damaged records, not every acknowledged one after them.

    @param data: the whole segment.
    @return: the messages in order, the queue ids marked done, and the
        C{(offset, length)} of every unreadable stretch (at the very end:
        a torn last record, from a batch that never synced).  Zeros at the
        end are no stretch: they were laid down ahead of the records.
    """
    messages: list[SpooledMessage] = []
    done: set[str] = set()
    damaged: list[tuple[int, int]] = []
    pos = 0
    end = len(data)
    while pos < end:
        parsed = _parseRecord(data, pos)
        if parsed is None and data.count(0, pos) == end - pos:
            # Only the zeros laid down ahead of the records are left.
            break
        if parsed is None:
            resume = pos
            while True:
                resume = data.find(b"\nM ", resume + 1)
                if resume < 0:
                    damaged.append((pos, end - pos))
                    return messages, done, damaged
                parsed = _parseRecord(data, resume + 1)
                if parsed is not None and parsed[0] == "M":
                    damaged.append((pos, resume + 1 - pos))
                    break
        kind, value, pos = parsed
        if kind == "D":
            done.add(value)
        else:
            messages.append(value)
    return messages, done, damaged


def unfinished(directory: str) -> list[SpooledMessage]:
    """
    The messages of a journal directory not yet marked done, read without
    changing anything (for the command line, while a server may be
    writing).  Blocking.

    @param directory: a journal directory.
    @return: the messages, oldest first.
    """
    pending: dict[str, SpooledMessage] = {}
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_SEGMENT_SUFFIX))
    except FileNotFoundError:
        return []
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                messages, done, _ = parseSegment(f.read())
        except FileNotFoundError:
            continue
        for message in messages:
            pending[message.queueId] = message
        for queueId in done:
            pending.pop(queueId, None)
    return list(pending.values())


class Journal:
    """
    The append-only, group-committed journal of accepted messages.

    All bookkeeping happens on the reactor thread; the worker thread only
    writes, syncs and deletes files.
    """

    _log = Logger()

    def __init__(self, directory: str, runner: Any, clock: Any, segmentBytes: int = DEFAULT_SEGMENT_BYTES,
                 metrics: Any = None) -> None:
        """
        @param directory: C{queue/journal/}; created if missing.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param clock: an C{IReactorTime}, for the lazy flush of done records
            and the sync times.
        @param segmentBytes: the size past which a new segment is started.
        @param metrics: gets each sync's duration and commit count, or
            C{None}.
        """
        self.metrics = metrics
        self._directory = directory
        self._runner = runner
        self._clock = clock
        self._segmentBytes = segmentBytes
        self._segment = 0
        self._written = 0
        self._fd: int | None = None
        self._fdSegment = -1
        # Where the open segment's next record goes, and where the zeros
        # laid down ahead of it end (worker thread only).
        self._fdOffset = 0
        self._fdZeroed = 0
        self._pending: list[tuple[bytes, Deferred | None]] = []
        self._flushing: Deferred | None = None
        self._lazyFlush = None
        # segment number -> live (not done) queue ids
        self._live: dict[int, set[str]] = {}
        self._segmentOf: dict[str, int] = {}
        self._live[0] = set()
        self._spillsToRemove: list[str] = []

    def recover(self) -> list[SpooledMessage]:
        """
        Read every segment and return the messages not yet done.  Blocking:
        call it in a worker thread (or before the reactor runs) and before
        any L{commit}.

        @return: the undone messages, oldest first.
        """
        makeDirectories(self._directory)
        names = sorted(n for n in os.listdir(self._directory) if n.endswith(_SEGMENT_SUFFIX))
        pending: dict[str, tuple[int, SpooledMessage]] = {}
        self._live = {}
        for name in names:
            number = int(name[: -len(_SEGMENT_SUFFIX)])
            with open(os.path.join(self._directory, name), "rb") as f:
                data = f.read()
            messages, done, damaged = parseSegment(data)
            for offset, length in damaged:
                if offset + length == len(data):
                    self._log.warn(
                        "journal segment {segment} ends with {length} bytes of a torn record "
                        "(a batch that never synced, so never acknowledged); ignored",
                        segment=name, length=length,
                    )
                else:
                    self._log.error(
                        "journal segment {segment} is damaged: {length} bytes at offset {offset} "
                        "skipped; the messages after them are recovered",
                        segment=name, offset=offset, length=length,
                    )
            for message in messages:
                pending[message.queueId] = (number, message)
            for queueId in done:
                pending.pop(queueId, None)
            self._segment = number + 1
        for name in names:
            self._live[int(name[: -len(_SEGMENT_SUFFIX)])] = set()
        for number, message in pending.values():
            self._live[number].add(message.queueId)
            self._segmentOf[message.queueId] = number
        self._live[self._segment] = set()
        # Leading segments with nothing live can go now.
        for number in self._takeDeletable(self._segment):
            os.unlink(os.path.join(self._directory, _segmentName(number)))
        return [message for _, message in pending.values()]

    def _takeDeletable(self, current: int) -> list[int]:
        """
        Forget and return the leading run of finished segments before
        C{current}.  Segments go strictly in order, because a segment's
        C{D} records may mark messages of earlier segments done.

        @param current: the segment being written.
        @return: the segment numbers whose files may be deleted.
        """
        deletable = []
        for number in sorted(self._live):
            if number >= current or self._live[number]:
                break
            deletable.append(number)
            del self._live[number]
        return deletable

    def commit(self, message: SpooledMessage) -> Deferred:
        """
        Append a message record and make it durable.

        @param message: the message.
        @return: a Deferred firing with C{message} once the record is synced;
            it fails with the C{OSError} when the write or sync failed.
        """
        if self._written >= self._segmentBytes:
            self._rotate()
        record = encodeMessage(message)
        self._written += len(record)
        self._live.setdefault(self._segment, set()).add(message.queueId)
        self._segmentOf[message.queueId] = self._segment
        d: Deferred = Deferred()
        self._pending.append((record, d))
        self._startFlush()
        return d.addCallback(lambda _: message)

    def _rotate(self) -> None:
        """
        Start a new segment with the next batch.
        """
        self._segment += 1
        self._written = 0
        self._live[self._segment] = set()

    def markDone(self, queueId: str, spillPath: str | None = None) -> None:
        """
        Record that every recipient of a message has been dealt with.  The
        caller has already made that work durable.

        @param queueId: the message's queue id.
        @param spillPath: the message's spill file, deleted once the C{D}
            record is synced.
        """
        number = self._segmentOf.pop(queueId, None)
        if number is None:
            return
        record = encodeDone(queueId)
        self._written += len(record)
        self._pending.append((record, None))
        if spillPath is not None:
            self._spillsToRemove.append(spillPath)
        live = self._live.get(number)
        if live is not None:
            live.discard(queueId)
        # The D record rides on the next batch; if nothing else comes, write
        # it within a second so recovery after a quiet crash is short.
        self._scheduleLazyFlush()

    def _scheduleLazyFlush(self) -> None:
        """
        Make sure a flush happens within a second.
        """
        if self._lazyFlush is None or not self._lazyFlush.active():
            self._lazyFlush = self._clock.callLater(1.0, self._startFlush)

    def _startFlush(self) -> None:
        """
        Write and sync everything pending, unless a batch is already in
        flight (then its completion starts the next one).
        """
        if self._flushing is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        segment = self._segment
        deletable = self._takeDeletable(segment)
        spills, self._spillsToRemove = self._spillsToRemove, []
        started = self._clock.seconds() if self.metrics is not None else 0.0
        self._flushing = self._runner.run(self._writeBatch, segment, [r for r, _ in batch], deletable, spills)

        def finished(result):
            self._flushing = None
            if self.metrics is not None and not isinstance(result, Failure):
                self.metrics.journalSynced(self._clock.seconds() - started, sum(d is not None for _, d in batch))
            if isinstance(result, Failure):
                self._log.failure("journal write to segment {segment} failed", result, segment=segment)
                # The segment may now end in a torn record: never append
                # after it, and forget the messages that were refused.
                self._rotate()
                for record, d in batch:
                    if d is not None:
                        queueId = record.split(b" ", 2)[1].decode("ascii")
                        self._live.get(self._segmentOf.pop(queueId, -1), set()).discard(queueId)
                # What the batch carried besides: D records go again with
                # the next batch, and the deletions wait for a later one.
                self._pending[:0] = [(r, None) for r, d in batch if d is None]
                self._spillsToRemove[:0] = spills
                for number in deletable:
                    self._live.setdefault(number, set())
            for _, d in batch:
                if d is not None:
                    d.errback(result) if isinstance(result, Failure) else d.callback(None)
            if isinstance(result, Failure) and not any(d is not None for _, d in self._pending):
                # Only the carried-over records are left: try them again
                # later rather than at once against a failing disk.
                self._scheduleLazyFlush()
            else:
                self._startFlush()

        self._flushing.addBoth(finished)

    def _writeBatch(self, segment: int, records: list[bytes], deletable: list[int], spills: list[str]) -> None:
        """
        Append records to the segment and sync it (worker thread), with
        zeros ahead of a small batch when it passes the zeros laid down
        before (see the module docstring).  Switch to a new segment first
        when asked; then delete finished segments and the spill files of
        messages whose C{D} record is now durable.
        """
        if self._fdSegment != segment:
            if self._fd is not None:
                fd, self._fd, self._fdSegment = self._fd, None, -1
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            path = os.path.join(self._directory, _segmentName(segment))
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
            self._fdSegment = segment
            # A segment that is there already (it should not be) is
            # written after what it holds.
            self._fdOffset = self._fdZeroed = os.fstat(self._fd).st_size
            syncDirectory(self._directory)
        data = b"".join(records)
        end = self._fdOffset + len(data)
        writeAllAt(self._fd, data, self._fdOffset)
        if end > self._fdZeroed and len(data) < ZERO_AHEAD_MAX_BATCH_BYTES:
            writeAllAt(self._fd, _ZEROS, end)
            self._fdZeroed = end + ZERO_AHEAD_BYTES
        os.fdatasync(self._fd)
        self._fdOffset = end
        paths = [os.path.join(self._directory, _segmentName(n)) for n in deletable] + spills
        for path in paths:
            removeFile(path)

    def close(self) -> Deferred:
        """
        Flush what is pending and close the segment.

        @return: a Deferred that fires when done.
        """
        if self._lazyFlush is not None and self._lazyFlush.active():
            self._lazyFlush.cancel()
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        """
        Wait for the batch in flight, write what is pending (a few tries if
        writes fail), then close the segment file.
        """
        for _ in range(CLOSE_ATTEMPTS):
            if self._flushing is None:
                self._startFlush()
            if self._flushing is None:
                break
            idle: Deferred = Deferred()

            def fire(result, idle=idle):
                idle.callback(None)
                return result

            self._flushing.addBoth(fire)
            await idle
        if self._pending:
            self._log.error("closing the journal with {count} records unwritten", count=len(self._pending))
        await self._runner.run(self._closeFile)

    def _closeFile(self) -> None:
        """
        Close the open segment (worker thread).
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._fdSegment = -1
