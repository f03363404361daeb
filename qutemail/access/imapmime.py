# -*- test-case-name: tests.access.test_imapmime -*-
"""
The MIME structure of a stored message, found by reading it once from its
file without holding its body in memory: where each entity's header and
body start and end, and their sizes and line counts as IMAP sees them
(bare LF line ends count as CRLF, see L{qutemail.access.imapwire}).

Only header blocks are kept, each up to L{HEADER_CAP_BYTES} and
L{MESSAGE_HEADER_BUDGET_BYTES} for all of a message's; what is past that
is still sent exactly by BODY[...HEADER] (streamed from the file) but is
not seen by ENVELOPE, BODYSTRUCTURE, HEADER.FIELDS or SEARCH.  Multiparts
nested deeper than L{MAX_DEPTH}, or past L{MAX_PARTS} parts, are treated as
opaque bodies.

Bodies are skipped in blocks of L{BLOCK_BYTES}, looking only for the
boundary delimiter lines (RFC 2046 §5.1.1) of the enclosing multiparts.

L{scanMessage} blocks: run it through the runner.
"""

import email.message
import email.parser
import email.policy
from typing import BinaryIO, NamedTuple

import attrs

HEADER_CAP_BYTES = 64 * 1024
MESSAGE_HEADER_BUDGET_BYTES = 1024 * 1024
MAX_DEPTH = 20
MAX_PARTS = 1000
BLOCK_BYTES = 1024 * 1024
# Header lines are read in pieces of at most this many bytes.
PIECE_BYTES = 64 * 1024
# An entity's Content-Type parameters not split yet.
NOT_SPLIT = object()
# What Entity.firstValues takes for a field that is missing.
_NO_VALUE = (None,)


class Mark(NamedTuple):
    """
    A position in a message file.

    @ivar raw: the byte offset.
    @ivar bare: how many bare LFs (not after CR) are before it.
    @ivar lfs: how many LFs are before it.
    @ivar lastLF: whether the byte before it is an LF.
    """

    raw: int
    bare: int
    lfs: int
    lastLF: bool


class _Line(NamedTuple):
    """
    A line (or a piece of a long one) as L{_Reader} read it.

    @ivar start: where it starts.
    @ivar end: where it ends (after its line end).
    @ivar content: its bytes without the line end.
    @ivar ending: C{b"\\r\\n"}, C{b"\\n"}, or C{b""} (a piece of a long
        line, or the last line).
    @ivar atStart: whether it starts at the start of a line.
    @ivar cut: where a body ends when this line is a boundary delimiter
        (before the line end that precedes it, RFC 2046 §5.1.1).
    """

    start: Mark
    end: Mark
    content: bytes
    ending: bytes
    atStart: bool
    cut: Mark


def convertedSpan(start: Mark, end: Mark) -> int:
    """
    @return: the size, with CRLF line ends, of the bytes from C{start} to
        C{end}.
    """
    return (end.raw - start.raw) + (end.bare - start.bare)


def lineSpan(start: Mark, end: Mark) -> int:
    """
    @return: the number of lines from C{start} to C{end} (a last line
        without a line end counts).
    """
    if end.raw <= start.raw:
        return 0
    return end.lfs - start.lfs + (0 if end.lastLF else 1)


def matchDelimiter(content: bytes, delimiters: list[bytes]) -> tuple[int, bool] | None:
    """
    @param content: a line, without its line end.
    @param delimiters: C{b"--" + boundary} of each open multipart, the
        innermost last.
    @return: C{(index, closing)} of the innermost delimiter the line is,
        or C{None}.
    """
    if not content.startswith(b"--"):
        return None
    for index in range(len(delimiters) - 1, -1, -1):
        delimiter = delimiters[index]
        if content.startswith(delimiter):
            rest = content[len(delimiter):].rstrip(b" \t")
            if rest in (b"", b"--"):
                return index, rest == b"--"
    return None


def _candidates(block: bytes, atStart: bool):
    """
    @return: an iterator over the offsets in C{block} of lines starting
        with C{--} (the first one only if C{atStart}).
    """
    if atStart and block.startswith(b"--"):
        yield 0
    at = block.find(b"\n--")
    while at >= 0:
        yield at + 1
        at = block.find(b"\n--", at + 1)


class _Reader:
    """
    Reads a message file by lines and by blocks, keeping count of LFs.
    """

    def __init__(self, f: BinaryIO) -> None:
        """
        @param f: the file, read from its start.
        """
        self._f = f
        f.seek(0)
        self._pos = Mark(0, 0, 0, False)
        self._atStart = True
        self._cut = self._pos
        self._pushed: _Line | None = None

    def position(self) -> Mark:
        """
        @return: where the next line starts.
        """
        return self._pushed.start if self._pushed is not None else self._pos

    def pushBack(self, line: _Line) -> None:
        """
        Have L{read} return C{line} (the last one read) again.
        """
        self._pushed = line

    def read(self) -> _Line | None:
        """
        @return: the next line or piece, or C{None} at the end.
        """
        if self._pushed is not None:
            line, self._pushed = self._pushed, None
            return line
        piece = self._f.readline(PIECE_BYTES)
        if not piece:
            return None
        if piece.endswith(b"\r"):
            # Keep a CRLF together across the piece limit.
            following = self._f.read(1)
            if following == b"\n":
                piece += following
            elif following:
                self._f.seek(-1, 1)
        if piece.endswith(b"\r\n"):
            content, ending = piece[:-2], b"\r\n"
        elif piece.endswith(b"\n"):
            content, ending = piece[:-1], b"\n"
        else:
            content, ending = piece, b""
        start = self._pos
        end = Mark(start.raw + len(piece), start.bare + (ending == b"\n"), start.lfs + bool(ending), bool(ending))
        line = _Line(start, end, content, ending, self._atStart, self._cut)
        if ending:
            self._cut = Mark(end.raw - len(ending), start.bare, start.lfs, not content and start.lastLF)
        else:
            self._cut = end
        self._pos, self._atStart = end, bool(ending)
        return line

    def skipTo(self, delimiters: list[bytes]) -> _Line | None:
        """
        Read on, in blocks, to the next line that is one of C{delimiters}.

        @return: that line (read), or C{None} at the end of the file.
        """
        while True:
            line = self._skipOnce(delimiters)
            if line is None or matchDelimiter(line.content, delimiters) is not None:
                return line

    def _skipOnce(self, delimiters: list[bytes]) -> _Line | None:
        """
        See L{skipTo}; the line returned may be the first piece of a long
        line that only looked like a delimiter.
        """
        while self._pushed is not None or not self._atStart:
            line = self.read()
            if line is None:
                return None
            if line.atStart and matchDelimiter(line.content, delimiters) is not None:
                return line
        f = self._f
        f.seek(self._pos.raw)
        # The last bytes skipped: line ends can straddle blocks.
        tail = b"\n" if self._pos.lastLF else b""
        while True:
            block = f.read(BLOCK_BYTES)
            if not block:
                return None
            if not block.endswith(b"\n"):
                # End blocks at a line end where lines are of sane length.
                block += f.readline(PIECE_BYTES)
            # Whether the last line of the block is cut (goes on after it).
            cutShort = not block.endswith(b"\n") and f.read(1) != b""
            if cutShort:
                f.seek(-1, 1)
            base = self._pos.raw
            found = resume = None
            if delimiters:
                for s in _candidates(block, self._atStart):
                    newline = block.find(b"\n", s)
                    if newline < 0 and cutShort:
                        if s > 0:
                            resume = s  # the line goes on in the next block
                            break
                        continue  # a line longer than a block is no delimiter
                    content = block[s:newline if newline >= 0 else len(block)]
                    if content.endswith(b"\r"):
                        content = content[:-1]
                    if matchDelimiter(content, delimiters) is not None:
                        found = s
                        break
            used = found if found is not None else resume if resume is not None else len(block)
            self._advance(block[:used], tail)
            tail = (tail + block[:used])[-2:]
            if found is not None or resume is not None:
                f.seek(base + used)
            if found is not None:
                return self.read()

    def _advance(self, data: bytes, tail: bytes) -> None:
        """
        Count a block of bytes just skipped.

        @param tail: the (up to two) bytes before C{data}.
        """
        if not data:
            return
        pos = self._pos
        prevCR = tail.endswith(b"\r")
        lfs = data.count(b"\n")
        crlf = data.count(b"\r\n") + (1 if prevCR and data.startswith(b"\n") else 0)
        end = Mark(pos.raw + len(data), pos.bare + lfs - crlf, pos.lfs + lfs, data.endswith(b"\n"))
        if end.lastLF:
            endingCR = data.endswith(b"\r\n") or (data == b"\n" and prevCR)
            width = 2 if endingCR else 1
            joined = tail + data
            beforeLF = len(joined) > width and joined[-width - 1:-width] == b"\n"
            self._cut = Mark(end.raw - width, end.bare - (0 if endingCR else 1), end.lfs - 1, beforeLF)
        else:
            self._cut = end
        self._pos, self._atStart = end, end.lastLF


@attrs.define(eq=False)
class Entity:
    """
    One MIME entity: a message, a body part, or the message inside a
    C{message/rfc822} part.

    @ivar start: where its header starts.
    @ivar bodyStart: where its body starts (after the blank line).
    @ivar end: where its body ends.
    @ivar header: its header block, LF line ends, as far as kept.
    @ivar headerTruncated: whether some of the header was not kept.
    @ivar mainType: its media type, lower case (C{text} ...).
    @ivar subType: its subtype, lower case.
    @ivar parts: a multipart's parts, else C{None}.
    @ivar message: a C{message/rfc822} part's message, else C{None}.
    """

    start: Mark
    bodyStart: Mark
    end: Mark
    header: bytes
    headerTruncated: bool
    mainType: str
    subType: str
    parts: list["Entity"] | None = None
    message: "Entity | None" = None
    _parsed: email.message.Message | None = None
    # The raw values of each field, by lower-case name (see rawFields).
    _byName: dict[str, list[str]] | None = None
    # The Content-Type parameters as BODYSTRUCTURE lists them, when the
    # scan split them (see contentTypeParams).
    _typeParams: list[str] | None | object = NOT_SPLIT

    @property
    def headerSize(self) -> int:
        """
        The size of the header block with its blank line, CRLF line ends.
        """
        return convertedSpan(self.start, self.bodyStart)

    @property
    def bodySize(self) -> int:
        """
        The size of the body, CRLF line ends.
        """
        return convertedSpan(self.bodyStart, self.end)

    @property
    def size(self) -> int:
        """
        The size of header and body, CRLF line ends.
        """
        return convertedSpan(self.start, self.end)

    @property
    def bodyLines(self) -> int:
        """
        The number of lines of the body.
        """
        return lineSpan(self.bodyStart, self.end)

    def headers(self) -> email.message.Message:
        """
        @return: the header fields, parsed (values are C{str}, raw 8-bit
            bytes kept as surrogate escapes).
        """
        if self._parsed is None:
            self._parsed = parseHeader(self.header)
        return self._parsed

    def contentTypeParams(self) -> list[str] | None | object:
        """
        @return: the C{Content-Type} parameters as a flat C{[name, value,
            ...]} list (C{None}: none), when the scan split them, else
            L{NOT_SPLIT}.
        """
        return self._typeParams

    def fieldValues(self) -> dict[str, list[str]]:
        """
        @return: every field's values as they are (8-bit bytes as surrogate
            escapes, folding kept), by lower-case name: for callers that
            look up many fields of each of many messages (ENVELOPE,
            BODYSTRUCTURE, the fetch index).  Read it, never change it.
        """
        if self._byName is None:
            # ENVELOPE, BODYSTRUCTURE and the index ask for thirty-odd
            # fields of each message: group them once.
            byName: dict[str, list[str]] = {}
            for key, value in self.headers().raw_items():
                byName.setdefault(key.lower(), []).append(value)
            self._byName = byName
        return self._byName

    def rawFields(self, name: str) -> list[str]:
        """
        @return: every value of a field as it is, in order.
        """
        return list(self.fieldValues().get(name.lower(), ()))

    def rawField(self, name: str) -> str | None:
        """
        @return: the first value of a field as it is, or C{None}.
        """
        return self.firstValues((name.lower(),))[0]

    def firstValues(self, names: tuple[str, ...]) -> list[str | None]:
        """
        L{rawField} of several fields at once, for callers that want many
        of each of many messages (ENVELOPE, BODYSTRUCTURE).

        @param names: lower-case field names.
        @return: the first value of each, as it is, or C{None}.
        """
        get = self.fieldValues().get
        return [(get(name) or _NO_VALUE)[0] for name in names]


def parseHeader(header: bytes, defaultType: str = "text/plain") -> email.message.Message:
    """
    @param header: a header block.
    @return: its fields, parsed without the body.
    """
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header + b"\n")
    parsed.set_default_type(defaultType)
    return parsed


@attrs.define
class _Budget:
    """
    What a message may still use: header bytes kept, parts.
    """

    headerBytes: int = MESSAGE_HEADER_BUDGET_BYTES
    parts: int = MAX_PARTS


def _readHeader(reader: _Reader, delimiters: list[bytes], budget: _Budget) -> tuple[bytes, bool, Mark]:
    """
    Read a header block, up to its blank line, a delimiter or the end.

    @return: the kept header, whether some was not kept, and where the
        body starts.
    """
    kept = bytearray()
    truncated = False
    room = min(HEADER_CAP_BYTES, budget.headerBytes)
    while True:
        line = reader.read()
        if line is None:
            bodyStart = reader.position()
            break
        if line.atStart and delimiters and matchDelimiter(line.content, delimiters) is not None:
            reader.pushBack(line)
            bodyStart = line.start
            break
        if line.atStart and not line.content and line.ending:
            bodyStart = line.end
            break
        data = line.content + (b"\n" if line.ending else b"")
        if len(kept) + len(data) <= room:
            kept += data
        else:
            kept += data[:max(room - len(kept), 0)]
            truncated = True
    budget.headerBytes -= len(kept)
    return bytes(kept), truncated, bodyStart


def _entity(reader: _Reader, delimiters: list[bytes], depth: int, defaultType: str, budget: _Budget) -> Entity:
    """
    Read one entity, header and body, and the entities inside it.
    """
    start = reader.position()
    header, truncated, bodyStart = _readHeader(reader, delimiters, budget)
    parsed = parseHeader(header, defaultType)
    mainType, _, subType = parsed.get_content_type().partition("/")
    boundary = parsed.get_boundary()
    entity = Entity(start, bodyStart, bodyStart, header, truncated, mainType, subType, parsed=parsed)
    if mainType == "multipart" and boundary and depth < MAX_DEPTH and budget.parts > 0:
        inner = delimiters + [b"--" + boundary.encode("utf-8", "surrogateescape")]
        childType = "message/rfc822" if subType == "digest" else "text/plain"
        entity.parts = []
        closed = False
        while True:
            line = reader.skipTo(inner)
            if line is None:
                end = reader.position()
                break
            index, closing = matchDelimiter(line.content, inner)
            if index < len(inner) - 1:
                reader.pushBack(line)
                end = line.cut
                break
            if closing or closed:
                closed = True
                continue
            budget.parts -= 1
            entity.parts.append(_entity(reader, inner, depth + 1, childType, budget))
    elif (mainType, subType) == ("message", "rfc822") and depth < MAX_DEPTH:
        entity.message = _entity(reader, delimiters, depth + 1, "text/plain", budget)
        end = entity.message.end
    else:
        line = reader.skipTo(delimiters)
        if line is None:
            end = reader.position()
        else:
            reader.pushBack(line)
            end = line.cut
    entity.end = end if end.raw >= bodyStart.raw else bodyStart
    return entity


def scanMessage(f: BinaryIO) -> Entity:
    """
    Find the structure of a message.  Blocking.

    @param f: the message file (seekable); read from its start.
    @return: the message's entity.
    """
    return _entity(_Reader(f), [], 0, "text/plain", _Budget())
