# -*- test-case-name: tests.access.test_imapserver -*-
"""
Messages as one IMAP session reads them: opened (decrypted when they were
stored encrypted, see L{qutemail.store.reader.readMessage}), scanned for
their MIME structure (L{qutemail.access.imapmime}), and read in chunks
with CRLF line ends.

A L{MessageCache} per session keeps what that costs: the structures (only
header blocks are kept, at most C{maxHeaderBytes} of them) and the last
C{maxOpenFiles} open files, a decrypted message being an anonymous
temporary file on disk, never in memory.  A message is decrypted once
while it stays in the cache; one read again later (after many others) is
decrypted again.

A message whose key is gone or that fails authentication is shown as the
short plain-text notice POP3 serves (L{qutemail.access.maildrop.notice}), and
logged; one that cannot be read for now (the vault failed) is
L{MessageUnavailable}; one expunged by another session is L{MessageGone}.
"""

import io
from collections import OrderedDict
from typing import Any, BinaryIO, Callable

import attrs
from twisted.logger import Logger

from qutemail.access.fetchindex import FetchIndex, Indexed, SharedIndexes, indexEntry
from qutemail.access.imapmime import Entity, scanMessage
from qutemail.access.plainindex import readWhole, scanSmallPlain
from qutemail.access.quickscan import scanBytes
from qutemail.access.imapstore import locate
from qutemail.access.imapwire import CRLFConverter
from qutemail.access.maildrop import notice
from qutemail.store.reader import MessageUnreadable, openStored, readMessage

# Bytes read from a message file per worker-thread call.
CHUNK_BYTES = 128 * 1024
# At most how many bytes of small messages one FETCH of bodies reads ahead
# into memory (MessageCache.prefetchFiles).
PREFETCH_BYTES = 4 * 1024 * 1024


class MessageGone(Exception):
    """
    The message was expunged (by another session).
    """


class MessageUnavailable(Exception):
    """
    The message cannot be read now (its key could not be had from the
    vault); trying again later may work.
    """


def readConverted(f: BinaryIO, raw: int, rawEnd: int, maxRaw: int) -> tuple[bytes, int]:
    """
    Read a piece of a message with CRLF line ends.  Blocking.

    @param raw: where to start.
    @param rawEnd: where the region read ends.
    @param maxRaw: at most how many bytes of the file to read.
    @return: the converted bytes, and where the next piece starts.
    """
    take = min(maxRaw, rawEnd - raw)
    if take <= 0:
        return b"", raw
    if raw > 0:
        f.seek(raw - 1)
        data = f.read(take + 1)
        lastCR, data = data[:1] == b"\r", data[1:]
    else:
        f.seek(0)
        data = f.read(take)
        lastCR = False
    return CRLFConverter(lastCR).feed(data), raw + len(data)


def fileContains(f: BinaryIO, raw: int, rawEnd: int, needle: bytes) -> bool:
    """
    Whether a region of a message holds C{needle}, ignoring ASCII case.
    Blocking; reads in chunks.

    @param needle: lower case.
    """
    if not needle:
        return True
    overlap = len(needle) - 1
    carry = b""
    while raw < rawEnd:
        f.seek(raw)
        chunk = f.read(min(CHUNK_BYTES, rawEnd - raw))
        if not chunk:
            break
        raw += len(chunk)
        haystack = carry + chunk.lower()
        if needle in haystack:
            return True
        carry = haystack[-overlap:] if overlap else b""
    return False


def _scanPlain(paths: list[str]) -> list[Entity | None]:
    """
    The structure of each plain stored message, or C{None} for one that is
    encrypted, gone or unreadable.  Blocking.
    """
    roots: list[Entity | None] = []
    for path in paths:
        try:
            root = scanSmallPlain(path)
            if root is not None:
                roots.append(root)
                continue
            f, envelope, _, _ = openStored(path)
        except (OSError, MessageUnreadable):
            roots.append(None)
            continue
        try:
            roots.append(scanMessage(f) if envelope is None else None)
        finally:
            f.close()
    return roots


def indexPlainFiles(paths: list[str]) -> list[Indexed | None]:
    """
    The fetch index entry of each plain stored message, or C{None} (see
    L{_scanPlain}).  Blocking; run in a worker thread or in the delivery
    process (L{qutemail.store.deliveryworker}).
    """
    return [None if root is None else indexEntry(root) for root in _scanPlain(paths)]


def readPlainFiles(paths: list[str], maxBytes: int, parse: Callable[[bytes], Any] | None = None) -> list:
    """
    The whole content of each plain stored message, and what C{parse}
    makes of it (by default its structure, L{scanBytes}), while their
    sizes add up to at most C{maxBytes}; C{None} for one that is
    encrypted (or whose header names "encrypted": see
    L{qutemail.store.reader.mayBeOurs}), gone, unreadable or past the
    budget (the caller reads those one by one, through
    L{qutemail.store.reader.readMessage}).  One worker-thread call for
    many messages.  Blocking.

    @return: C{(data, parsed)} or C{None} for each of C{paths}.
    """
    found: list[tuple[bytes, Any] | None] = []
    for path in paths:
        try:
            data = readWhole(path, maxBytes)
        except OSError:
            data = None
        if data is None:
            found.append(None)
            continue
        maxBytes -= len(data)
        found.append((data, scanBytes(data) if parse is None else parse(data)))
    return found


def _convertedWhole(data: bytes) -> bytes:
    """
    @return: a whole message with CRLF line ends.
    """
    return CRLFConverter().feed(data)


def _close(f: BinaryIO) -> None:
    """
    Close a file.  Blocking.
    """
    f.close()


def _closeAll(files: list[BinaryIO]) -> None:
    """
    Close files.  Blocking.
    """
    for f in files:
        f.close()


@attrs.define(eq=False)
class MessageCache:
    """
    The opened and scanned messages of one session.

    @ivar address: the owner (for the log).
    @ivar runner: runs file, crypto and parsing work.
    @ivar vault: the key vault.
    @ivar tempDirectory: where decrypted copies live.
    @ivar maxOpenFiles: how many message files stay open.
    @ivar maxHeaderBytes: how many header bytes of scanned messages stay.
    @ivar indexes: the folders' fetch indexes, shared by the server's
        sessions; by default, this session's own.
    """

    _log = Logger()

    address: str
    runner: Any
    vault: Any
    tempDirectory: str | None = None
    maxOpenFiles: int = 8
    maxHeaderBytes: int = 8 * 1024 * 1024
    _scans: OrderedDict = attrs.field(factory=OrderedDict)
    _files: OrderedDict = attrs.field(factory=OrderedDict)
    _headerBytes: int = 0
    # Messages read whole by prefetchFiles, not yet opened.
    _prefetched: dict = attrs.field(factory=dict)
    # Keys of cached structures read from plain (not encrypted) files.
    _plain: set = attrs.field(factory=set)
    indexes: SharedIndexes | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        """
        Fetch indexes of this session's own, unless shared ones are given.
        """
        if self.indexes is None:
            self.indexes = SharedIndexes(self.runner)

    async def open(self, folderPath: str, baseName: str, path: str, needFile: bool = True
                   ) -> tuple[Entity, BinaryIO | None]:
        """
        A message's structure, and its file if asked for.

        @param folderPath: its folder.
        @param baseName: its base name (which identifies it).
        @param path: where the session last saw it.
        @return: C{(structure, file)}; the file (C{None} unless
            C{needFile}) stays open until the cache drops it: use it before
            the next call.
        @raise MessageGone: it was expunged.
        @raise MessageUnavailable: it cannot be read now.
        """
        key = (folderPath, baseName)
        root = self._scans.get(key)
        f = self._files.get(key)
        if root is not None and (f is not None or not needFile):
            self._scans.move_to_end(key)
            if f is not None:
                self._files.move_to_end(key)
            return root, f
        if f is None:
            prefetched = self._prefetched.pop(key, None)
            if prefetched is not None:
                f, root = prefetched
                self._keepScan(key, root)
            else:
                f = await self._read(folderPath, baseName, path)
            await self._keepFile(key, f)
        else:
            self._files.move_to_end(key)
        if root is None:
            root = await self.runner.run(scanMessage, f)
            self._keepScan(key, root)
        return root, f if needFile else None

    async def prefetchScans(self, folderPath: str, entries: list[tuple[str, str]]) -> None:
        """
        Scan, in one worker-thread call, the plain messages among
        C{entries} whose structure is not cached yet: a FETCH of envelopes
        over a whole folder otherwise pays several thread round trips per
        message.  Encrypted, vanished or unreadable ones are left to
        L{open}, which handles each case.

        @param entries: C{(baseName, path)} of the messages about to be
            fetched.
        """
        missing = [(baseName, path) for baseName, path in entries if (folderPath, baseName) not in self._scans]
        if not missing:
            return
        roots = await self.runner.run(_scanPlain, [path for _, path in missing])
        for (baseName, _), root in zip(missing, roots):
            if root is not None:
                self._keepScan((folderPath, baseName), root)
                self._plain.add((folderPath, baseName))

    async def indexPlain(self, entries: list[tuple[str, str]], elsewhere: bool = False) -> dict[str, Indexed]:
        """
        Scan and index, in one worker-thread call, the plain messages among
        C{entries}, keeping nothing: for a listing that is answered from
        the fetch index.  The entries are made in the thread too, so that
        the next batch's file reads overlap the reactor's answers to this
        one.

        @param entries: C{(baseName, path)} of the messages.
        @param elsewhere: have the shared indexes' C{indexer} (another
            process, another core) do it, if there is one; if it fails, it
            is done here.
        @return: their fetch index entries by base name; encrypted,
            vanished or unreadable messages are left out (for L{open}).
        """
        paths = [path for _, path in entries]
        made: list[Indexed | None] = [None] * len(paths)
        indexer = self.indexes.indexer
        if elsewhere and indexer is not None:
            try:
                made = await indexer.indexPlain(paths)
            except OSError as e:
                self._log.warn("indexing in the delivery process failed ({error}); indexing here",
                               error=str(e))
        # What the indexer left (large messages, those that may be sealed,
        # or all of them) is indexed here.
        left = [i for i, entry in enumerate(made) if entry is None]
        if left:
            for i, entry in zip(left, await self.runner.run(indexPlainFiles, [paths[i] for i in left])):
                made[i] = entry
        return {baseName: entry for (baseName, _), entry in zip(entries, made) if entry is not None}

    async def prefetchFiles(self, folderPath: str, entries: list[tuple[str, str]]) -> None:
        """
        Read whole, with their structure, in one worker-thread call, the
        small plain messages among C{entries} (up to L{PREFETCH_BYTES} in
        all), so that a FETCH of bodies sends them from memory rather than
        paying several thread round trips per message.  The others (large,
        encrypted, vanished, unreadable) are left to L{open}.

        @param entries: C{(baseName, path)} of the messages about to be
            fetched; what an earlier call read and was not used is dropped.
        """
        self._prefetched.clear()
        missing = [(baseName, path) for baseName, path in entries if (folderPath, baseName) not in self._files]
        if not missing:
            return
        found = await self.runner.run(readPlainFiles, [path for _, path in missing], PREFETCH_BYTES)
        for (baseName, _), read in zip(missing, found):
            if read is not None:
                self._prefetched[(folderPath, baseName)] = (io.BytesIO(read[0]), read[1])
                self._plain.add((folderPath, baseName))

    async def readWhole(self, entries: list[tuple[str, str]]) -> dict[str, bytes]:
        """
        Read whole, with CRLF line ends, in one worker-thread call, the
        small plain messages among C{entries} (up to L{PREFETCH_BYTES} in
        all), for a FETCH of whole messages, which needs no structure.

        @param entries: C{(baseName, path)} of the messages about to be
            fetched.
        @return: their bytes by base name; the others (large, encrypted,
            vanished, unreadable) are left to L{open}.
        """
        found = await self.runner.run(readPlainFiles, [path for _, path in entries], PREFETCH_BYTES,
                                      _convertedWhole)
        return {baseName: read[1] for (baseName, _), read in zip(entries, found) if read is not None}

    def isPlain(self, folderPath: str, baseName: str) -> bool:
        """
        @return: whether a message's cached structure was read from a
            plain file (one stored as it came, not encrypted).
        """
        return (folderPath, baseName) in self._plain

    def indexFor(self, folderPath: str) -> FetchIndex:
        """
        @return: this session's view of a folder's fetch index.
        """
        return self.indexes.indexFor(folderPath)

    async def _read(self, folderPath: str, baseName: str, path: str) -> BinaryIO:
        """
        Open a message as its owner sees it.
        """
        for attempt in (0, 1):
            try:
                f, _ = await readMessage(path, self.vault, self.runner, self.tempDirectory)
                return f
            except MessageUnreadable as e:
                if e.temporary:
                    self._log.warn("IMAP: message {messageId} of {address} not readable now: {reason}",
                                   messageId=baseName, address=self.address, reason=str(e))
                    raise MessageUnavailable(str(e)) from None
                self._log.warn("IMAP: message {messageId} of {address} unreadable, shown as a notice: {reason}",
                               messageId=baseName, address=self.address, reason=str(e))
                return io.BytesIO(notice(baseName, str(e)))
            except FileNotFoundError:
                moved = await self.runner.run(locate, folderPath, baseName)
                if moved is None:
                    break
                path = moved
        raise MessageGone(baseName)

    async def _keepFile(self, key: tuple, f: BinaryIO) -> None:
        """
        Keep a file open, closing the least recently used past the limit.
        """
        self._files[key] = f
        while len(self._files) > max(self.maxOpenFiles, 1):
            _, old = self._files.popitem(last=False)
            if isinstance(old, io.BytesIO):
                old.close()
            else:
                await self.runner.run(_close, old)

    def _keepScan(self, key: tuple, root: Entity) -> None:
        """
        Keep a structure, dropping the least recently used past the limit.
        """
        self._scans[key] = root
        self._headerBytes += _headerBytes(root)
        while self._headerBytes > self.maxHeaderBytes and len(self._scans) > 1:
            oldKey, old = self._scans.popitem(last=False)
            self._plain.discard(oldKey)
            self._headerBytes -= _headerBytes(old)

    def forget(self, folderPath: str, baseName: str) -> None:
        """
        Drop a message's structure (its file is closed when it falls out).
        """
        root = self._scans.pop((folderPath, baseName), None)
        if root is not None:
            self._headerBytes -= _headerBytes(root)

    async def close(self) -> None:
        """
        Close every open file (in one worker-thread call).
        """
        files = list(self._files.values())
        self._files.clear()
        self._scans.clear()
        self._prefetched.clear()
        self._plain.clear()
        self._headerBytes = 0
        if files:
            try:
                await self.runner.run(_closeAll, files)
            except RuntimeError:
                # The runner has stopped: the server is shutting down and
                # its sessions end after it.  Closing files needs no wait.
                _closeAll(files)


def _headerBytes(entity: Entity) -> int:
    """
    @return: the header bytes an entity and those inside it keep.
    """
    total = len(entity.header)
    for part in entity.parts or ():
        total += _headerBytes(part)
    if entity.message is not None:
        total += _headerBytes(entity.message)
    return total
