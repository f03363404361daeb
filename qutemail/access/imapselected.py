# -*- test-case-name: tests.access.test_imapserver -*-
"""
The IMAP commands of the selected state (RFC 3501 §6.4, RFC 4315 UID
EXPUNGE, RFC 6851 MOVE, RFC 3691 UNSELECT), as a mixin of
L{qutemail.access.imapserver.IMAPServer}.

FETCH items are parsed by Twisted's C{_FetchParser} (a private part of
C{twisted.mail.imap4}; setup.cfg pins the Twisted series) and answered by
L{qutemail.access.imapfetch}, one message at a time: a message is opened
only when an item needs its content, and bodies are streamed.  BODY[...]
without .PEEK, RFC822 and RFC822.TEXT set C{\\Seen} in a read-write
session.  No EXPUNGE response is sent during FETCH, STORE or SEARCH
(RFC 3501 §7.4.1): the view changes only on the commands that announce
it.

STORE gives keywords new to the folder their letters first (all or none:
C{NO [LIMIT]} when the folder has no room, and nothing is changed), then
announces the new FLAGS and PERMANENTFLAGS before its FETCH responses.
COPY and MOVE do the same in the target folder.
"""

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.mail.imap4 import _FetchParser

from qutemail.store.folders import NoSuchFolder
from qutemail.access.fetchindex import FetchIndex, indexEntry
from qutemail.access.imapaccount import IMAPAccount
from qutemail.access.keywords import KeywordMap, ensureKeywords, readKeywords
from qutemail.access.imapfetch import (
    ResumePoints, WholeRenderer, WriteFlow, indexable, needsFile, needsStructure, render, sendPieces,
    setsSeen, wholeOnly,
)
from qutemail.access.imapmailbox import Slot, slotFlagList
from qutemail.access.imapmessage import MessageGone, MessageUnavailable, fileContains
from qutemail.access.imapsearch import (
    CHARSETS, Candidate, Key, matcher, matchesNow, parseKeys, readsBodies, searchIndexable, searchNeedsStructure,
    searchNeedsTimes,
)
from qutemail.access.imapstore import expunge, storeFlags, transfer
from qutemail.access.imapstructure import region
from qutemail.access.imapwire import Atom, ParseError, astring, bad, no, parseSequenceSet
from qutemail.access.imapcommands import parseFlags
from qutemail.access.uids import keywordsIn, withTimes

# A FETCH that needs structures but not files (ENVELOPE, BODYSTRUCTURE)
# scans this many uncached plain messages in one worker-thread call; one
# that needs files (BODY[]) reads as many small ones whole.
PREFETCH_MESSAGES = 64
# A first listing indexes this many batches ahead of the one it answers.
INDEX_AHEAD = 3
# How many bytes of FETCH responses made in memory are written at once.
OUTPUT_BATCH_BYTES = 128 * 1024


def spelledAs(flags: frozenset[str], keywords: KeywordMap) -> frozenset[str]:
    """
    @return: flags with each keyword spelt as the folder has it; keywords
        the folder lacks are left out.
    """
    names = set(keywordsIn(flags))
    spelt = (keywords.canonical(n) for n in names)
    return frozenset(flags - names) | frozenset(n for n in spelt if n is not None)


def uidSet(uids: list[int]) -> bytes:
    """
    @return: UIDs as a sequence set in the given order (runs of
        consecutive UIDs as ranges), for COPYUID.
    """
    out: list[bytes] = []
    start = prev = None
    for uid in uids + [None]:
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if start is not None:
            out.append(b"%d" % (start,) if start == prev else b"%d:%d" % (start, prev))
        start = prev = uid
    return b",".join(out)


class SelectedCommands:
    """
    The selected-state commands (a mixin of the server).
    """

    _resume: ResumePoints | None = None

    def _sequenceSet(self, token: object) -> list:
        """
        @return: a sequence-set argument's ranges.
        @raise ParseError: it is not one.
        """
        if not isinstance(token, Atom):
            raise ParseError("expected a sequence set")
        return parseSequenceSet(bytes(token))

    async def imap_CHECK(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        CHECK: every change is on disk already; report changes.
        """
        await self._refresh()
        self._tagged(tag, b"OK", b"CHECK completed")

    async def imap_UNSELECT(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        UNSELECT (RFC 3691): leave the folder without expunging.
        """
        self._deselect()
        self._tagged(tag, b"OK", b"UNSELECT completed")

    async def imap_CLOSE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        CLOSE: expunge silently (read-write only), then leave the folder.
        """
        if self.view.writable:
            await self._expunge(None)
        self._deselect()
        self._tagged(tag, b"OK", b"CLOSE completed")

    async def imap_EXPUNGE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        EXPUNGE, or UID EXPUNGE set (RFC 4315 §2.1).
        """
        ranges = None
        if uid:
            tokens, _ = await self._arguments(rest)
            if len(tokens) != 1:
                raise bad(b"UID EXPUNGE needs a UID set")
            ranges = self._sequenceSet(tokens[0])
        if not self.view.writable:
            raise no(b"[READ-ONLY] Mailbox is read-only")
        for line in await self._expunge(ranges):
            self._untagged(line)
        self._tagged(tag, b"OK", b"EXPUNGE completed")

    async def _expunge(self, ranges: list | None) -> list[bytes]:
        """
        Remove the messages marked C{\\Deleted} (those in a UID set only).

        @return: the untagged EXPUNGE responses.
        """
        view, account = self.view, self.account
        doomed = [s for _, s in (view.select(ranges, True) if ranges is not None else enumerate(view.slots))
                  if "\\Deleted" in s.flags]
        if not doomed:
            return []
        removed = await account.runner.run(expunge, view.path, doomed,
                                           account.root, account.quotaBytes)
        self._announce()
        for baseName in removed:
            account.cache.forget(view.path, baseName)
        return view.remove(removed)

    async def imap_SEARCH(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        SEARCH [CHARSET c] criteria, or UID SEARCH.
        """
        tokens, _ = await self._arguments(rest)
        charset = "US-ASCII"
        if tokens and isinstance(tokens[0], Atom) and tokens[0].upper() == b"CHARSET":
            if len(tokens) < 2:
                raise bad(b"CHARSET needs a name")
            charset = astring(tokens[1], "charset").decode("ascii", "replace").upper()
            tokens = tokens[2:]
            if charset not in CHARSETS:
                raise no(b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        keys = tuple(parseKeys(tokens, charset))
        query = keys[0] if len(keys) == 1 else Key("and", keys)
        view, account = self.view, self.account
        slots = list(view.slots)
        timed = searchNeedsTimes(query)
        if timed:
            slots = [slot for _, slot in await self._timed(list(enumerate(slots, 1)))]
        lastUid = slots[-1].uid if slots else 0
        found = []
        match = matcher(query)
        prefetch = searchNeedsStructure(query)
        # Header fields the folder's fetch index keeps are matched there.
        index = account.cache.indexFor(view.path) if prefetch and searchIndexable(query) else None
        if index is not None:
            await index.refresh(len(slots), lambda: {s.baseName for s in slots})
        # A search that reads no bodies is matched at once for a message
        # whose structure it does not need or the index holds.
        quick = not readsBodies(query)
        reused = Candidate(0, slots[0] if slots else None, len(slots), lastUid, None, None)
        headers: list = []
        for seq, slot in enumerate(slots, 1):
            if prefetch and (seq - 1) % PREFETCH_MESSAGES == 0:
                batch = slots[seq - 1:seq - 1 + PREFETCH_MESSAGES]
                # The batch's indexed headers, looked up once; the others
                # scanned in one thread round trip (many a message
                # otherwise, as in FETCH).
                headers = [index.header(s.baseName) for s in batch] if index is not None else [None] * len(batch)
                await account.cache.prefetchScans(
                    view.path, [(s.baseName, s.path) for s, header in zip(batch, headers) if header is None])
            if timed and slot.mtime is None:
                # Expunged elsewhere since the view was made.
                continue
            if quick:
                header = headers[(seq - 1) % PREFETCH_MESSAGES] if prefetch else None
                if header is not None or not prefetch:
                    reused.seq, reused.slot = seq, slot
                    if matchesNow(query, reused, header):
                        found.append(slot.uid if uid else seq)
                    continue
            candidate = Candidate(seq, slot, len(slots), lastUid, _structureOf(account, view.path, slot, index),
                                  _containsIn(account, view.path, slot))
            try:
                if await match(candidate):
                    found.append(slot.uid if uid else seq)
            except (MessageGone, MessageUnavailable):
                continue
        if index is not None:
            await index.flush()
        self._untagged(b"SEARCH" + b"".join(b" %d" % (n,) for n in found))
        self._tagged(tag, b"OK", b"SEARCH completed")

    async def imap_FETCH(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        FETCH set items, or UID FETCH.
        """
        sequence, _, rest = rest.partition(b" ")
        ranges = parseSequenceSet(sequence)
        parser = _FetchParser()
        try:
            parser.parseString(rest)
        except Exception:
            raise bad(b"Bad FETCH items") from None
        items = parser.result
        if not items or parser.state:
            raise bad(b"Bad FETCH items")
        view, account = self.view, self.account
        selected = view.select(ranges, uid)
        seen = setsSeen(items) and view.writable
        wantStructure, wantFile = needsStructure(items), needsFile(items)
        if self._resume is None:
            self._resume = ResumePoints()
        flow = WriteFlow()
        gone = unavailable = 0
        if any(i.type == "internaldate" for i in items):
            timed = await self._timed(selected)
            selected = [(seq, slot) for seq, slot in timed if slot.mtime is not None]
            gone += len(timed) - len(selected)
        # A listing of structures (ENVELOPE, BODYSTRUCTURE, RFC822.SIZE)
        # is answered from the folder's fetch index where it can be.
        index = account.cache.indexFor(view.path) if wantStructure and indexable(items) else None
        if index is not None:
            await index.refresh(len(view.slots), lambda: {s.baseName for s in view.slots})
        # Whole messages (BODY[], RFC822) need no structure: small plain
        # ones are read and sent as they are, with CRLF line ends.
        whole = wholeOnly(items)
        wholeRenderer = WholeRenderer(items, uid) if whole else None
        loaded: dict[str, bytes] = {}
        scanned: dict[str, Any] = {}
        # A first listing's batches being indexed, by their first position.
        indexing: dict[int, Deferred] = {}
        pending: list[bytes] = []
        pendingBytes = 0
        self.transport.registerProducer(flow, True)
        try:
            for position, (seq, slot) in enumerate(selected):
                these = items
                root = f = None
                indexed = index.get(slot.baseName) if index is not None else None
                if position % PREFETCH_MESSAGES == 0:
                    upcoming = [(s.baseName, s.path) for _, s in selected[position:position + PREFETCH_MESSAGES]]
                    if whole:
                        loaded = await account.cache.readWhole(upcoming)
                    batch = [(name, path) for name, path in upcoming
                             if name not in loaded and (index is None or index.get(name) is None)]
                    if wantStructure and wantFile:
                        await account.cache.prefetchFiles(view.path, batch)
                    elif index is not None and batch:
                        # Indexed at once and answered from the entry:
                        # the scans are not kept (a first listing of a
                        # large folder would fill the cache with them, and
                        # the garbage collector would walk them all).
                        scanned = await self._indexBatches(indexing, selected, position, index, batch)
                    elif wantStructure and batch:
                        await account.cache.prefetchScans(view.path, batch)
                data = loaded.get(slot.baseName)
                fresh = scanned.pop(slot.baseName, None) if indexed is None else None
                if fresh is not None:
                    indexed = fresh
                    index.add(slot.baseName, indexed)
                elif wantStructure and indexed is None and data is None:
                    try:
                        root, f = await account.cache.open(view.path, slot.baseName, slot.path, wantFile)
                    except MessageGone:
                        gone += 1
                        continue
                    except MessageUnavailable:
                        unavailable += 1
                        continue
                    if index is not None and account.cache.isPlain(view.path, slot.baseName):
                        index.add(slot.baseName, indexEntry(root))
                if seen and "\\Seen" not in slot.flags:
                    try:
                        slot = await self._setFlags(seq, slot, slot.flags | {"\\Seen"})
                    except FileNotFoundError:
                        gone += 1
                        continue
                    if not any(i.type == "flags" for i in items):
                        these = items + [_FetchParser.Flags()]
                if data is not None:
                    pieces = (wholeRenderer if these is items else WholeRenderer(these, uid)).render(seq, slot, data)
                else:
                    pieces = render(these, seq, slot, root, f, uid, indexed)
                if data is not None or not wantFile:
                    # Responses made in memory go out together, up to
                    # OUTPUT_BATCH_BYTES at a time: one write (and TLS
                    # record run) and one wait for the client per batch.
                    pending += pieces
                    pending.append(b"\r\n")
                    pendingBytes += sum(map(len, pieces))
                    if pendingBytes < OUTPUT_BATCH_BYTES:
                        continue
                    self.transport.writeSequence(pending)
                    pending, pendingBytes = [], 0
                    self.resetTimeout()
                else:
                    if pending:
                        self.transport.writeSequence(pending)
                        pending, pendingBytes = [], 0
                    await sendPieces(pieces, self.transport, flow, account.runner, self._resume, self.resetTimeout)
                # Long listings wait for the client too.
                await flow.whenWritable()
                if flow.stopped:
                    return
            if pending:
                self.transport.writeSequence(pending)
        finally:
            self.transport.unregisterProducer()
            for unused in indexing.values():
                # The listing stopped early: nobody needs these batches.
                unused.addErrback(lambda _: None)
            if index is not None:
                await index.flush()
        if unavailable:
            raise no(b"[UNAVAILABLE] Some messages cannot be read now; try again later")
        if gone:
            raise no(b"Some messages were expunged by another session")
        self._tagged(tag, b"OK", b"FETCH completed")

    async def _timed(self, pairs: list[tuple[int, Slot]]) -> list[tuple[int, Slot]]:
        """
        Look at the INTERNALDATEs of messages the session has not seen a
        time of (L{withTimes}), in one worker-thread call, and keep them in
        the view.

        @param pairs: C{(seq, slot)} of the messages.
        @return: the same with the slots' times; a message expunged
            meanwhile keeps its slot, without a time.
        """
        missing = [(seq, slot) for seq, slot in pairs if slot.mtime is None]
        if not missing:
            return pairs
        timed = await self.account.runner.run(withTimes, self.view.path, [slot for _, slot in missing])
        found = {}
        for (seq, slot), new in zip(missing, timed):
            if new is not None:
                self.view.replace(seq, slot, new)
                found[seq] = new
        return [(seq, found.get(seq, slot)) for seq, slot in pairs]

    async def _indexBatches(self, indexing: dict[int, Deferred], selected: list, position: int,
                            index: FetchIndex, batch: list[tuple[str, str]]) -> dict:
        """
        The index entries of a first listing's batch starting at
        C{position}, with the next L{INDEX_AHEAD} batches set going while
        this one is answered: two of every three in the delivery process,
        when the server has one (another core; the reactor has the
        answers to make besides), the others in a worker thread (whose file
        reads overlap the reactor's work).

        @param indexing: the batches under way, by first position (updated).
        @param batch: C{(baseName, path)} of this batch's messages not
            indexed yet.
        @return: the entries by base name (see L{MessageCache.indexPlain}).
        """
        for ahead in range(INDEX_AHEAD + 1):
            start = position + ahead * PREFETCH_MESSAGES
            if start >= len(selected) or start in indexing:
                continue
            entries = batch if not ahead else [(s.baseName, s.path) for _, s in
                                               selected[start:start + PREFETCH_MESSAGES]
                                               if index.get(s.baseName) is None]
            if entries:
                elsewhere = (start // PREFETCH_MESSAGES) % 3 != 0
                indexing[start] = Deferred.fromCoroutine(self.account.cache.indexPlain(entries, elsewhere))
        under = indexing.pop(position, None)
        return await under if under is not None else {}

    async def _setFlags(self, seq: int, slot: Slot, flags: frozenset[str]) -> Slot:
        """
        Store a message's flags in its file name.

        @param seq: its sequence number.
        @return: the message as the view now holds it.
        @raise FileNotFoundError: it is gone.
        """
        account = self.account
        path = await account.runner.run(storeFlags, self.view.path, slot.baseName, slot.path, frozenset(flags))
        changed = attrs.evolve(slot, path=path, flags=frozenset(flags))
        self.view.replace(seq, slot, changed)
        return changed

    async def imap_STORE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        STORE set [+-]FLAGS[.SILENT] flags, or UID STORE.
        """
        tokens, _ = await self._arguments(rest)
        if len(tokens) < 3 or not isinstance(tokens[1], Atom):
            raise bad(b"STORE needs a set, an action and flags")
        ranges = self._sequenceSet(tokens[0])
        action = tokens[1].upper()
        silent = action.endswith(b".SILENT")
        action = action[:-len(b".SILENT")] if silent else action
        if action not in (b"FLAGS", b"+FLAGS", b"-FLAGS"):
            raise bad(b"Unknown STORE action")
        flags = parseFlags(tokens[2] if len(tokens) == 3 and isinstance(tokens[2], list) else tokens[2:])
        if not self.view.writable:
            raise no(b"[READ-ONLY] Mailbox is read-only")
        run, path = self.account.runner.run, self.view.path
        if action == b"-FLAGS":
            keywords = await run(readKeywords, path)
        else:
            keywords = await run(ensureKeywords, path, keywordsIn(flags))
        flags = spelledAs(flags, keywords)
        for line in self.view.learnKeywords(keywords):
            self._untagged(line)
        gone = 0
        for seq, slot in self.view.select(ranges, uid):
            if action == b"+FLAGS":
                wanted = slot.flags | flags
            elif action == b"-FLAGS":
                wanted = slot.flags - flags
            else:
                wanted = flags
            if wanted != slot.flags:
                try:
                    slot = await self._setFlags(seq, slot, wanted)
                except FileNotFoundError:
                    gone += 1
                    continue
            if not silent:
                uidPart = b" UID %d" % (slot.uid,) if uid else b""
                self._untagged(b"%d FETCH (FLAGS %b%b)" % (seq, slotFlagList(slot), uidPart))
        self._announce()
        if gone:
            raise no(b"Some messages were expunged by another session")
        self._tagged(tag, b"OK", b"STORE completed")

    async def imap_COPY(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        COPY set mailbox, or UID COPY; answered with COPYUID (RFC 4315).
        """
        await self._transfer(tag, rest, uid, False)

    async def imap_MOVE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        MOVE set mailbox, or UID MOVE (RFC 6851).
        """
        await self._transfer(tag, rest, uid, True)

    async def _transfer(self, tag: bytes, rest: bytes, uid: bool, move: bool) -> None:
        """
        See L{imap_COPY} and L{imap_MOVE}.
        """
        tokens, _ = await self._arguments(rest)
        if len(tokens) != 2:
            raise bad(b"Expected a sequence set and a mailbox name")
        ranges = self._sequenceSet(tokens[0])
        account, view = self.account, self.view
        target = account.folderName(astring(tokens[1], "mailbox name"))
        try:
            targetPath = await account.folderPath(target)
        except NoSuchFolder:
            raise no(b"[TRYCREATE] No such mailbox") from None
        if move and not view.writable:
            raise no(b"[READ-ONLY] Mailbox is read-only")
        selected = [slot for _, slot in view.select(ranges, uid)]
        command = b"MOVE" if move else b"COPY"
        if not selected:
            self._tagged(tag, b"OK", command + b" completed (no messages)")
            return
        uidValidity, uids, moved = await account.runner.run(
            transfer, selected, view.path, targetPath, move, account.root,
            account.quotaBytes, account.now(), account.hostname)
        pairs = [(s.uid, n) for s, n in zip(selected, uids) if n]
        code = b""
        if pairs:
            code = b"[COPYUID %d %b %b] " % (uidValidity, uidSet([p[0] for p in pairs]), uidSet([p[1] for p in pairs]))
        if move:
            if code:
                self._untagged(b"OK " + code + b"Moved")
            for baseName in moved:
                account.cache.forget(view.path, baseName)
            for line in view.remove(moved):
                self._untagged(line)
            code = b""
        if target == view.name:
            await self._refresh()
        self._tagged(tag, b"OK", code + command + b" completed")


def _structureOf(account: IMAPAccount, folderPath: str, slot: object, index: FetchIndex | None = None):
    """
    @param index: the folder's fetch index, when its entries can stand for
        the structure (L{searchIndexable}).
    @return: a coroutine function giving a message's structure, or its
        L{IndexedHeader}.
    """

    async def structure():
        """
        @return: the message's structure, or its index entry; a plain
            message scanned for want of one is indexed.
        """
        if index is not None:
            indexed = index.header(slot.baseName)
            if indexed is not None:
                return indexed
        root, _ = await account.cache.open(folderPath, slot.baseName, slot.path, False)
        if index is not None and account.cache.isPlain(folderPath, slot.baseName):
            index.add(slot.baseName, indexEntry(root))
        return root

    return structure


def _containsIn(account: IMAPAccount, folderPath: str, slot: object):
    """
    @return: a coroutine function telling whether a region of a message
        (C{"body"} or C{"all"}) holds some lower-case bytes.
    """

    async def contains(what: str, needle: bytes) -> bool:
        """
        @return: whether the region holds C{needle}.
        """
        root, f = await account.cache.open(folderPath, slot.baseName, slot.path, True)
        start, end = region(root, what)
        return await account.runner.run(fileContains, f, start.raw, end.raw, needle)

    return contains
