# -*- test-case-name: tests.access.test_imapserver -*-
"""
FETCH responses (RFC 3501 §6.4.5, §7.4.2) for the items Twisted's
C{_FetchParser} reads.

A message's response is a list of pieces: bytes, and L{Literal}s that
stand for a region of the message file.  L{sendPieces} writes them,
streaming each literal from the file in chunks read by the runner (with
CRLF line ends, skipping to a partial fetch's origin), and waits whenever
the transport asks the producer to pause, so a large message never sits
in memory whole.  A session remembers where its last partial fetches
ended (L{ResumePoints}), so a client reading a large message in pieces
(C{BODY[]<0.65536>}, C{<65536.65536>}, ...) does not make the server
read it from the start each time.

Differences from Twisted's own FETCH: section responses are labelled with
the origin only (C{BODY[]<0>}, RFC 3501 §7.4.2) and partial fetches send
only the part asked for; header fields are sent as they are (folded,
repeated fields kept); strings are 8-bit clean.
"""

import io
from typing import Any, BinaryIO

import attrs
from twisted.logger import Logger

from qutemail.access.fetchindex import Indexed
from qutemail.access.flow import WriteFlow
from qutemail.access.imapmailbox import Slot, slotFlagList
from qutemail.access.imapmessage import CHUNK_BYTES, readConverted
from qutemail.access.imapmime import Entity, Mark, convertedSpan
from qutemail.access.imapstructure import (
    NoSuchSection, envelope, headerFields, messageOf, resolvePart, structures,
)
from qutemail.access.imapwire import formatInternalDate, formatList

_log = Logger()
_STRUCTURE_TYPES = {"envelope", "rfc822header", "rfc822text", "rfc822size", "rfc822", "bodystructure", "body"}
# FETCH items a fetch index entry can answer (besides BODY without a section).
_INDEXED_TYPES = {"flags", "uid", "internaldate", "rfc822size", "envelope", "bodystructure"}
# FETCH items L{WholeRenderer} answers (besides BODY[]).
_WHOLE_TYPES = {"flags", "uid", "internaldate", "rfc822size", "rfc822"}
# How many partial-fetch resume points a session keeps.
MAX_RESUME_POINTS = 16


@attrs.frozen
class Literal:
    """
    A literal whose data is a region of a message file.

    @ivar file: the (decrypted) message file.
    @ivar start: where the region starts.
    @ivar end: where it ends.
    @ivar skip: how many (CRLF) bytes of it to skip.
    @ivar length: how many bytes to send after those.
    """

    file: BinaryIO
    start: Mark
    end: Mark
    skip: int
    length: int


def hasSection(item: Any) -> bool:
    """
    @return: whether a BODY item has a section (C{BODY[...]}) rather than
        asking for the body structure.
    """
    return bool(item.empty or item.header is not None or item.text is not None or item.mime is not None)


def needsStructure(items: list) -> bool:
    """
    @return: whether rendering C{items} needs the message's structure.
    """
    return any(i.type in _STRUCTURE_TYPES for i in items)


def needsFile(items: list) -> bool:
    """
    @return: whether rendering C{items} reads the message file.
    """
    return any(i.type in ("rfc822", "rfc822header", "rfc822text") or (i.type == "body" and hasSection(i))
               for i in items)


def wholeOnly(items: list) -> bool:
    """
    @return: whether C{items} ask for the whole message (C{RFC822},
        C{BODY[]}, maybe partial) and otherwise only for what its bytes
        or the view tell (L{WholeRenderer}), so no structure is needed.
    """
    return any(i.type in ("rfc822", "body") for i in items) and all(
        i.type in _WHOLE_TYPES or (i.type == "body" and i.empty and not i.part and i.header is None
                                   and i.text is None and i.mime is None)
        for i in items)


def setsSeen(items: list) -> bool:
    """
    @return: whether fetching C{items} sets C{\\Seen} (RFC 3501 §6.4.5:
        BODY[...] without .PEEK, RFC822, RFC822.TEXT).
    """
    return any(i.type in ("rfc822", "rfc822text") or (i.type == "body" and hasSection(i) and not i.peek)
               for i in items)


def sectionLabel(item: Any) -> bytes:
    """
    @return: how a BODY[...] item is named in the response.
    """
    spec = b""
    if item.header is not None:
        if item.header.fields:
            spec = b"HEADER.FIELDS" + (b".NOT" if item.header.negate else b"")
            spec += b" (" + b" ".join(bytes(f) for f in item.header.fields) + b")"
        else:
            spec = b"HEADER"
    elif item.text is not None:
        spec = b"TEXT"
    elif item.mime is not None:
        spec = b"MIME"
    part = b".".join(b"%d" % (p + 1,) for p in item.part)
    label = b"BODY[" + b".".join(x for x in (part, spec) if x) + b"]"
    if item.partialBegin is not None:
        label += b"<%d>" % (item.partialBegin,)
    return label


def _partial(item: Any, total: int) -> tuple[int, int]:
    """
    @return: C{(skip, length)} of a (maybe partial) fetch of C{total} bytes.
    """
    if item.partialBegin is None:
        return 0, total
    skip = min(item.partialBegin, total)
    return skip, max(0, min(item.partialLength, total - skip))


def _regionLiteral(item: Any, f: BinaryIO, start: Mark, end: Mark) -> Literal:
    """
    @return: the literal for a region, partial as C{item} asks.
    """
    skip, length = _partial(item, convertedSpan(start, end))
    return Literal(f, start, end, skip, length)


def _section(item: Any, root: Entity, f: BinaryIO) -> list:
    """
    @return: the pieces of a BODY[...] item's data (C{NIL} when the
        section names no part of the message).
    """
    try:
        node = resolvePart(root, item.part)
        if item.mime is not None:
            if not item.part:
                raise NoSuchSection(())
            return [_regionLiteral(item, f, node.start, node.bodyStart)]
        if item.text is not None:
            target = messageOf(root, node, item.part)
            return [_regionLiteral(item, f, target.bodyStart, target.end)]
        if item.header is not None:
            target = messageOf(root, node, item.part)
            if not item.header.fields:
                return [_regionLiteral(item, f, target.start, target.bodyStart)]
            data = headerFields(target, item.header.fields, item.header.negate)
            skip, length = _partial(item, len(data))
            data = data[skip:skip + length]
            return [b"{%d}\r\n" % (len(data),), data]
        if not item.part:
            return [_regionLiteral(item, f, root.start, root.end)]
        return [_regionLiteral(item, f, node.bodyStart, node.end)]
    except NoSuchSection:
        return [b"NIL"]


def indexable(items: list) -> bool:
    """
    @return: whether a message's L{Indexed} entry (with its slot) is all
        rendering C{items} needs.
    """
    return all(i.type in _INDEXED_TYPES or (i.type == "body" and not hasSection(i)) for i in items)


def render(items: list, seq: int, slot: Slot, root: Entity | None, f: BinaryIO | None, uid: bool,
           indexed: Indexed | None = None) -> list:
    """
    The untagged FETCH response for one message.

    @param items: the parsed FETCH items.
    @param root: the message's structure, if L{needsStructure} and it
        is not C{indexed}.
    @param f: its file, if L{needsFile}.
    @param uid: a UID FETCH (the UID is always sent).
    @param indexed: the message's fetch index entry, which then stands for
        C{root} (only for L{indexable} items).
    @return: its pieces (without the final CRLF).
    """
    if indexed is not None and root is None:
        return _renderIndexed(items, seq, slot, indexed, uid)
    out: list = [b"* %d FETCH (" % (seq,)]
    sentUid = False
    for index, item in enumerate(items):
        if index:
            out.append(b" ")
        kind = item.type
        viewed = _viewItem(kind, slot)
        if viewed is not None:
            out.append(viewed)
            sentUid = sentUid or kind == "uid"
        elif kind == "rfc822size":
            out.append(b"RFC822.SIZE %d" % (root.size,))
        elif kind == "envelope":
            out.append(b"ENVELOPE " + formatList(envelope(root)))
        elif kind == "bodystructure":
            out.append(b"BODYSTRUCTURE " + structures(root)[1])
        elif kind == "rfc822":
            out += [b"RFC822 ", Literal(f, root.start, root.end, 0, root.size)]
        elif kind == "rfc822header":
            out += [b"RFC822.HEADER ", Literal(f, root.start, root.bodyStart, 0, root.headerSize)]
        elif kind == "rfc822text":
            out += [b"RFC822.TEXT ", Literal(f, root.bodyStart, root.end, 0, root.bodySize)]
        elif kind == "body" and not hasSection(item):
            out.append(b"BODY " + structures(root)[0])
        else:
            out += [sectionLabel(item) + b" "] + _section(item, root, f)
    if uid and not sentUid:
        out.append(b" UID %d" % (slot.uid,))
    out.append(b")")
    return out


def _viewItem(kind: str, slot: Slot) -> bytes | None:
    """
    @return: a FETCH item the session's view answers (C{FLAGS}, C{UID},
        C{INTERNALDATE}), or C{None} for another kind.
    """
    if kind == "flags":
        return b"FLAGS " + slotFlagList(slot)
    if kind == "uid":
        return b"UID %d" % (slot.uid,)
    if kind == "internaldate":
        return b"INTERNALDATE " + formatInternalDate(slot.mtime)
    return None


class WholeRenderer:
    """
    L{render} for L{wholeOnly} items, from the whole message with CRLF
    line ends in memory; what does not depend on the message is worked
    out once per FETCH.
    """

    def __init__(self, items: list, uid: bool) -> None:
        """
        @param items: the parsed FETCH items (L{wholeOnly}).
        @param uid: a UID FETCH (the UID is always sent).
        """
        self._plan = [(item.type, sectionLabel(item) if item.type == "body" else b"", item) for item in items]
        self._addUid = uid and not any(item.type == "uid" for item in items)

    def render(self, seq: int, slot: Slot, data: bytes) -> list:
        """
        @return: the untagged FETCH response for one message (without the
            final CRLF).
        """
        parts = []
        for kind, label, item in self._plan:
            viewed = _viewItem(kind, slot)
            if viewed is not None:
                parts.append(viewed)
            elif kind == "rfc822size":
                parts.append(b"RFC822.SIZE %d" % (len(data),))
            elif kind == "rfc822":
                parts.append(b"RFC822 {%d}\r\n%b" % (len(data), data))
            elif item.partialBegin is None:
                parts.append(label + b" {%d}\r\n%b" % (len(data), data))
            else:
                skip, length = _partial(item, len(data))
                parts.append(label + b" {%d}\r\n%b" % (length, data[skip:skip + length]))
        if self._addUid:
            parts.append(b"UID %d" % (slot.uid,))
        return [b"* %d FETCH (%b)" % (seq, b" ".join(parts))]


def _renderIndexed(items: list, seq: int, slot: Slot, indexed: Indexed, uid: bool) -> list:
    """
    L{render} from a fetch index entry.
    """
    out: list = [b"* %d FETCH (" % (seq,)]
    parts = []
    size, envelope, bodyStructure, body, _ = indexed
    for item in items:
        kind = item.type
        viewed = _viewItem(kind, slot)
        if viewed is not None:
            parts.append(viewed)
        elif kind == "rfc822size":
            parts.append(b"RFC822.SIZE %d" % (size,))
        elif kind == "envelope":
            parts.append(b"ENVELOPE " + envelope)
        elif kind == "bodystructure":
            parts.append(b"BODYSTRUCTURE " + bodyStructure)
        else:
            parts.append(b"BODY " + body)
    if uid and not any(item.type == "uid" for item in items):
        parts.append(b"UID %d" % (slot.uid,))
    out.append(b" ".join(parts))
    out.append(b")")
    return out


@attrs.define
class ResumePoints:
    """
    Where a session's last reads of message regions ended: C{(file,
    region start, region end)} to C{(converted offset, raw offset)}, for
    at most L{MAX_RESUME_POINTS} regions.
    """

    _points: dict = attrs.field(factory=dict)

    def get(self, literal: Literal) -> tuple[int, int]:
        """
        @return: the best known C{(converted offset, raw offset)} at or
            before the literal's start.
        """
        point = self._points.get((id(literal.file), literal.start.raw, literal.end.raw))
        if point is not None and point[0] is literal.file and point[1] <= literal.skip:
            return point[1], point[2]
        return 0, literal.start.raw

    def put(self, literal: Literal, converted: int, raw: int) -> None:
        """
        Remember a point reached in a region.
        """
        if len(self._points) >= MAX_RESUME_POINTS:
            self._points.clear()
        self._points[(id(literal.file), literal.start.raw, literal.end.raw)] = (literal.file, converted, raw)


async def streamLiteral(literal: Literal, transport: Any, flow: WriteFlow, runner: Any,
                        resume: ResumePoints, progress: Any) -> None:
    """
    Write a literal's data, read from its file in chunks.

    @param progress: called after each chunk written (resets the idle
        timer).
    """
    converted, raw = resume.get(literal)
    skip = literal.skip - converted
    remaining = literal.length
    rawEnd = literal.end.raw
    while remaining > 0 and not flow.stopped:
        chunkStart = (converted, raw)
        if isinstance(literal.file, io.BytesIO):
            # Read ahead into memory (MessageCache.prefetchFiles): no file
            # call, so no thread round trip.
            data, raw = readConverted(literal.file, raw, rawEnd, CHUNK_BYTES)
        else:
            data, raw = await runner.run(readConverted, literal.file, raw, rawEnd, CHUNK_BYTES)
        if not data:
            # The file is shorter than when it was scanned: keep the
            # protocol in step.
            _log.error("IMAP: message file shorter than its structure; {missing} bytes padded",
                       missing=remaining)
            transport.write(b" " * remaining)
            return
        converted += len(data)
        if skip >= len(data):
            skip -= len(data)
            continue
        data = data[skip:skip + remaining]
        skip = 0
        remaining -= len(data)
        transport.write(data)
        resume.put(literal, *chunkStart)
        progress()
        await flow.whenWritable()


async def sendPieces(pieces: list, transport: Any, flow: WriteFlow, runner: Any, resume: ResumePoints,
                     progress: Any) -> None:
    """
    Write a response made of bytes and L{Literal}s, and its final CRLF.
    """
    pending: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, Literal):
            pending.append(b"{%d}\r\n" % (piece.length,))
            transport.writeSequence(pending)
            pending = []
            await streamLiteral(piece, transport, flow, runner, resume, progress)
        else:
            pending.append(piece)
    pending.append(b"\r\n")
    transport.writeSequence(pending)
