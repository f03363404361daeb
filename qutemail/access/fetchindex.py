# -*- test-case-name: tests.access.test_fetchindex -*-
"""
A per-folder index of what a FETCH of a message's structure sends
(issue 14): its C{RFC822.SIZE}, C{ENVELOPE}, C{BODYSTRUCTURE} and C{BODY},
already in their wire form, so that a client listing a folder (C{FETCH 1:*
(UID FLAGS RFC822.SIZE ENVELOPE)}) does not make the server open and parse
every message in every session, as Dovecot's C{dovecot.index.cache} spares
it.

The index is C{qutemail-fetch.idx} in the folder's directory (beside
C{cur/}, C{new/} and C{tmp/}; other Maildir tools ignore it), mode 0600,
one line per message::

    <base name> SP <size> SP <b64 ENVELOPE> SP <b64 BODYSTRUCTURE> SP <b64 BODY> SP <b64 fields> LF

where the fields are what SEARCH matches in the header fields it is most
often asked about (L{qutemail.access.searchfields}); a line without them
(written before they were indexed) still serves FETCH, and SEARCH scans
its message and appends a whole line.

A message's base name (its unique name without flags) never changes while
it exists, nor does its content, so an entry never goes stale; entries of
messages no longer in the folder are dropped when the file is rewritten
(L{FetchIndex.refresh}, once they outnumber the live ones).  Lines are
appended, and the file rewritten, under an exclusive C{flock} on it, so
sessions and processes sharing a folder keep one file; a reader notices a
rewrite by the file's inode and reads it again from its start.  A line
that cannot be read (a torn append after a crash) is skipped, and its
message is simply scanned again; an append that lands in a file just
replaced by a rewrite is lost the same way.

Only plain messages are indexed (mail from outside, stored as it came):
the envelope of internal mail, stored encrypted, must never be written
anywhere in clear.
"""

import base64
import binascii
import fcntl
import os
from binascii import b2a_base64
from collections import OrderedDict
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from qutemail.access.imapstructure import envelope, structures
from qutemail.access.imapwire import formatList
from qutemail.access.searchfields import IndexedHeader, indexedFields
from qutemail.durable import PRIVATE_FILE_MODE

INDEX_NAME = "qutemail-fetch.idx"
# A rewrite drops dead entries once there are more than this many and more
# dead than live ones.
MIN_DEAD_FOR_REWRITE = 1000
# How many folders' indexes, and entries in all, a server keeps read (an
# entry, with what SEARCH reads of it, takes about 2.5 KB: some 125 MB at
# most, five folders of 10,000 messages).
MAX_SHARED_FOLDERS = 128
MAX_SHARED_ENTRIES = 50_000
# Lines added are appended in the background once this many bytes wait (a
# first listing of 10,000 messages makes about 10 MB of lines; written in
# one go at its end, they held up its tagged reply by 20-30 ms).
APPEND_AHEAD_BYTES = 1024 * 1024


# A message's entry: what FETCH sends about its structure, in wire form, as
# a plain tuple (read with the positions below):
#   SIZE           RFC822.SIZE;
#   ENVELOPE       the ENVELOPE list;
#   BODYSTRUCTURE  the BODYSTRUCTURE list;
#   BODY           the BODY list (no extension data);
#   FIELDS         what SEARCH matches in its header fields
#                  (qutemail.access.searchfields.indexedFields), or None
#                  when not indexed.
# A tuple of numbers and bytes is one object, which the cyclic garbage
# collector stops tracking at its first look: a server holds up to
# MAX_SHARED_ENTRIES of them, and as objects each was walked by every full
# collection (with a few large folders listed, those took 14-24 ms).  The
# delivery process sends them as they are; they pickle and load in C.
Indexed = tuple[int, bytes, bytes, bytes, bytes | None]
SIZE, ENVELOPE, BODYSTRUCTURE, BODY, FIELDS = range(5)


def indexLine(baseName: str, entry: Indexed) -> bytes:
    """
    @return: an entry's line in the index file.
    """
    size, *values = entry
    if values[-1] is None:
        del values[-1]
    parts = [b2a_base64(v, newline=False) for v in values]
    return b" ".join([baseName.encode("utf-8", "surrogateescape"), b"%d" % (size,)] + parts) + b"\n"


def indexEntry(root: Any) -> Indexed:
    """
    @param root: a message's scanned structure
        (L{qutemail.access.imapmime.Entity}).
    @return: its fetch index entry.
    """
    body, structure = structures(root)
    return (root.size, formatList(envelope(root)), structure, body, indexedFields(root))


def parseLines(data: bytes) -> dict[str, Indexed]:
    """
    Read index lines; damaged ones are skipped.

    @param data: whole lines.
    @return: the entries by base name (the last line of a name wins).
    """
    entries: dict[str, Indexed] = {}
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) not in (5, 6) or not fields[1].isdigit():
            continue
        try:
            values = [base64.b64decode(v, validate=True) for v in fields[2:]]
        except (binascii.Error, ValueError):
            continue
        if len(values) == 3:
            values.append(None)
        entries[fields[0].decode("utf-8", "surrogateescape")] = (int(fields[1]), *values)
    return entries


def _open(path: str) -> int:
    """
    Open (creating) an index file and lock it exclusively.  Blocking.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _readFrom(path: str, offset: int, inode: int | None) -> tuple[bytes, int, int | None, bool]:
    """
    Read what an index holds past C{offset} (whole lines).  Blocking.

    @param inode: the file's inode when C{offset} was reached.
    @return: the bytes, the new offset, the file's inode, and whether the
        file was rewritten (another inode, or shorter than C{offset}: it is
        read from its start).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", 0, None, offset > 0
    with open(fd, "rb") as f:
        status = os.fstat(f.fileno())
        rewritten = status.st_ino != inode or status.st_size < offset
        start = 0 if rewritten else offset
        f.seek(start)
        data = f.read(status.st_size - start)
    end = data.rfind(b"\n") + 1
    return data[:end], start + end, status.st_ino, rewritten


def _append(path: str, data: bytes, offset: int, inode: int | None) -> tuple[int, int] | None:
    """
    Append lines under the lock.  Blocking.

    @param offset: where the appender's last read of the file ended.
    @param inode: the file it read (C{None}: there was none).
    @return: the end of the lines appended and the file's inode, when they
        were appended right at C{offset} of that file, or to an empty file
        where there was none (so the appender need not read them back);
        else C{None}.
    """
    fd = _open(path)
    try:
        status = os.fstat(fd)
        os.write(fd, data)
    finally:
        os.close(fd)
    if status.st_size == offset and (status.st_ino == inode or (inode is None and offset == 0)):
        return offset + len(data), status.st_ino
    return None


def _rewrite(path: str, keep: set[str]) -> None:
    """
    Rewrite an index with only the entries of C{keep}, under the lock (the
    lines other sessions appended meanwhile included).  Blocking.
    """
    fd = _open(path)
    try:
        with open(os.dup(fd), "rb") as f:
            f.seek(0)
            entries = parseLines(f.read())
        data = b"".join(indexLine(name, entry) for name, entry in entries.items() if name in keep)
        temporary = path + ".tmp"
        out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        try:
            os.write(out, data)
        finally:
            os.close(out)
        os.rename(temporary, path)
    finally:
        os.close(fd)


class FetchIndex:
    """
    One folder's index, shared by the sessions that have it open (see
    L{SharedIndexes}).  The index only saves work: a file that cannot be
    read or written is logged, and the messages are scanned as they would
    be without it.
    """

    _log = Logger()

    def __init__(self, folderPath: str, runner: Any) -> None:
        """
        @param folderPath: the folder's directory.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        """
        self.path = os.path.join(folderPath, INDEX_NAME)
        self.runner = runner
        self.entries: dict[str, Indexed] = {}
        self._offset = 0
        self._inode: int | None = None
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        # Appends run one at a time, in the order their lines were added.
        self._appending = DeferredLock()
        self._appends: set[Deferred] = set()

    def get(self, baseName: str) -> Indexed | None:
        """
        @return: a message's entry, if indexed.
        """
        return self.entries.get(baseName)

    def header(self, baseName: str) -> IndexedHeader | None:
        """
        @return: what SEARCH matches in a message's indexed header fields,
            if its entry has them.
        """
        entry = self.entries.get(baseName)
        if entry is None or entry[FIELDS] is None:
            return None
        return IndexedHeader(entry[SIZE], entry[FIELDS])

    async def refresh(self, count: int, live: Callable[[], set[str]]) -> None:
        """
        Read what was added since the last look (all of it the first
        time); rewrite the file without the dead entries when they have
        come to outnumber the live ones.

        @param count: how many messages the folder has now.
        @param live: gives their base names; called only when the index
            has more entries than that and than L{MIN_DEAD_FOR_REWRITE}
            (else the dead ones cannot be enough), so that a listing or a
            search of a large folder does not gather every name each time.
        """
        try:
            data, self._offset, self._inode, rewritten = await self.runner.run(
                _readFrom, self.path, self._offset, self._inode)
            if rewritten:
                self.entries = {}
            self.entries.update(parseLines(data))
            if len(self.entries) <= max(count, MIN_DEAD_FOR_REWRITE):
                return
            names = live()
            dead = len(self.entries) - len(names & self.entries.keys())
            if dead > MIN_DEAD_FOR_REWRITE and dead > len(names):
                await self.runner.run(_rewrite, self.path, names)
                data, self._offset, self._inode, _ = await self.runner.run(_readFrom, self.path, 0, None)
                self.entries = parseLines(data)
        except OSError as e:
            self._log.warn("IMAP fetch index {path}: {error}", path=self.path, error=str(e))

    def add(self, baseName: str, entry: Indexed) -> None:
        """
        Index a message (written by L{flush}).
        """
        line = indexLine(baseName, entry)
        self.entries[baseName] = entry
        self._pending.append(line)
        self._pendingBytes += len(line)
        if self._pendingBytes >= APPEND_AHEAD_BYTES:
            self._startAppend()

    async def flush(self) -> None:
        """
        Append the entries added since the last flush, and wait for every
        append under way.
        """
        if self._pending:
            self._startAppend()
        while self._appends:
            await next(iter(self._appends))

    def _startAppend(self) -> None:
        """
        Append the pending lines, after the appends already under way.
        """
        data, self._pending, self._pendingBytes = b"".join(self._pending), [], 0
        appended = self._appending.run(lambda: Deferred.fromCoroutine(self._appendNow(data)))
        self._appends.add(appended)

        def done(result: object) -> object:
            self._appends.discard(appended)
            return result

        appended.addBoth(done)

    async def _appendNow(self, data: bytes) -> None:
        """
        Append lines; when nothing came between this index's last read of
        the file and them, the next L{refresh} starts after them.
        """
        offset, inode = self._offset, self._inode
        try:
            end = await self.runner.run(_append, self.path, data, offset, inode)
        except OSError as e:
            self._log.warn("IMAP fetch index {path}: {error}", path=self.path, error=str(e))
            return
        if end is not None and (self._offset, self._inode) == (offset, inode):
            self._offset, self._inode = end


class SharedIndexes:
    """
    The fetch indexes one server's sessions read, by folder path: a
    folder's index is read and parsed once, and each later look reads only
    what was appended since (parsing a 10,000-entry index took 0.1 s, paid
    by every session that listed or searched the folder).  The least
    recently used folders are dropped past L{MAX_SHARED_FOLDERS} folders
    or L{MAX_SHARED_ENTRIES} entries; a session still holding one goes on
    with it.  Used from the reactor thread only.
    """

    def __init__(self, runner: Any, maxFolders: int = MAX_SHARED_FOLDERS,
                 maxEntries: int = MAX_SHARED_ENTRIES, indexer: Any = None) -> None:
        """
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param indexer: what makes index entries in another process, so
            that a first listing uses another core (its
            C{indexPlain(paths)} gives what
            L{qutemail.access.plainindex.indexSmallPlain} gives: an entry,
            or C{None} for a message left to the server; or fails with
            C{OSError}): the server's
            L{qutemail.store.deliveryprocess.DeliveryProcess}; or C{None}.
        """
        self.runner = runner
        self.indexer = indexer
        self.maxFolders = maxFolders
        self.maxEntries = maxEntries
        self._indexes: OrderedDict[str, FetchIndex] = OrderedDict()

    def indexFor(self, folderPath: str) -> FetchIndex:
        """
        @return: the index of a folder.
        """
        index = self._indexes.get(folderPath)
        if index is None:
            index = self._indexes[folderPath] = FetchIndex(folderPath, self.runner)
        self._indexes.move_to_end(folderPath)
        while len(self._indexes) > 1 and (len(self._indexes) > self.maxFolders or sum(
                len(i.entries) for i in self._indexes.values()) > self.maxEntries):
            self._indexes.popitem(last=False)
        return index
