# -*- test-case-name: tests.access.test_imapwire -*-
"""
IMAP4rev1 wire syntax (RFC 3501 §9) where Twisted's own parsing falls short:
command arguments with quoted strings (backslash escapes) and literals,
sequence sets, dates, the s-expression output of ENVELOPE and
BODYSTRUCTURE (8-bit header bytes included), and the bare-LF to CRLF
conversion of stored messages (Maildir files use LF; IMAP messages use
CRLF, RFC 3501 §2.3.1 and §4.3).

Everything here is pure computation; nothing blocks.
"""

import bisect
import calendar
import datetime
import re
import time
from collections.abc import Iterable
from typing import Any

# RFC 3501 §9: CTL, and the characters that end an atom when we tokenize.
_CTL = set(range(0x00, 0x20)) | {0x7F}
_ATOM_END = set(b' ()"') | _CTL
_LITERAL_AT_END = re.compile(rb"\{(\d{1,10})(\+?)\}$")
# Longest string we send quoted rather than as a literal.
MAX_QUOTED_BYTES = 1000
# Bytes a quoted string cannot hold (RFC 3501 §9, QUOTED-CHAR).
_NOT_QUOTABLE = re.compile(rb"[\r\n\x00]")
# Deepest nesting of parenthesised lists in a command's arguments (no
# command needs more than a few; SEARCH has its own, lower, limit).
MAX_LIST_DEPTH = 100
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_TIME = re.compile(rb"^([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")
_DATE = re.compile(rb"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class ParseError(ValueError):
    """
    A command's arguments are not valid IMAP syntax; answered C{BAD}.
    C{str()} is one line for the client.
    """


class TooDeep(ParseError):
    """
    A command nests lists or search keys deeper than we parse; answered
    C{BAD} and logged once (nesting that deep is an attack or a broken
    client, and parsing it would exhaust the stack).
    """


class Refusal(Exception):
    """
    A command is answered C{NO} or C{BAD} with this text (which may
    start with a response code, RFC 5530).

    @ivar status: C{b"NO"} or C{b"BAD"}.
    @ivar text: the rest of the tagged response.
    """

    def __init__(self, status: bytes, text: bytes) -> None:
        """
        @param status: C{b"NO"} or C{b"BAD"}.
        @param text: the rest of the tagged response.
        """
        super().__init__(text.decode("ascii", "replace"))
        self.status = status
        self.text = text


def no(text: bytes) -> Refusal:
    """
    @return: a L{Refusal} answered C{NO}.
    """
    return Refusal(b"NO", text)


def bad(text: bytes) -> Refusal:
    """
    @return: a L{Refusal} answered C{BAD}.
    """
    return Refusal(b"BAD", text)


class Atom(bytes):
    """
    An atom (also a number, sequence set, flag or wildcard pattern): read
    and sent bare, unlike a string.
    """


class TokenReader:
    """
    Turns a command's arguments into tokens: L{Atom}s, C{bytes} strings
    (quoted or literal) and nested lists.  A literal announced at the end
    of a line is read by the caller, handed over with L{literal}, and the
    line after it fed in turn.
    """

    def __init__(self) -> None:
        """
        Nothing read yet.
        """
        self._stack: list[list] = [[]]

    @property
    def tokens(self) -> list:
        """
        The top-level tokens read so far.
        """
        return self._stack[0]

    @property
    def depth(self) -> int:
        """
        How many parenthesised lists are open.
        """
        return len(self._stack) - 1

    def feed(self, line: bytes) -> int | None:
        """
        Read a line (without its CRLF).

        @return: the size of a literal announced at its end, which the
            caller reads next, or C{None} when the line ends the arguments.
        @raise ParseError: bad syntax (a non-synchronising literal is
            refused: LITERAL+ is not offered).
        @raise TooDeep: lists are nested deeper than L{MAX_LIST_DEPTH}.
        """
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c == 0x20:
                i += 1
            elif c == 0x28:  # (
                if len(self._stack) > MAX_LIST_DEPTH:
                    raise TooDeep(f"lists nested deeper than {MAX_LIST_DEPTH}")
                self._stack.append([])
                i += 1
            elif c == 0x29:  # )
                if len(self._stack) == 1:
                    raise ParseError("unbalanced ')'")
                done = self._stack.pop()
                self._stack[-1].append(done)
                i += 1
            elif c == 0x22:  # "
                i = self._quoted(line, i + 1)
            elif c == 0x7B:  # {
                match = _LITERAL_AT_END.match(line, i)
                if match is None:
                    raise ParseError("a literal must end its line")
                if match.group(2):
                    raise ParseError("non-synchronising literals are not supported")
                return int(match.group(1))
            elif c in _CTL:
                raise ParseError("control character in arguments")
            else:
                j = i
                while j < n and line[j] not in _ATOM_END:
                    j += 1
                self._stack[-1].append(Atom(line[i:j]))
                i = j
        return None

    def _quoted(self, line: bytes, i: int) -> int:
        """
        Read a quoted string whose opening quote is before C{i}.

        @return: the index after its closing quote.
        """
        out = bytearray()
        n = len(line)
        while i < n:
            c = line[i]
            if c == 0x5C:  # backslash: quotes only a quote or a backslash
                if i + 1 >= n or line[i + 1] not in (0x22, 0x5C):
                    raise ParseError("bad escape in a quoted string")
                out.append(line[i + 1])
                i += 2
            elif c == 0x22:
                self._stack[-1].append(bytes(out))
                return i + 1
            elif c in (0x00, 0x0D, 0x0A):
                raise ParseError("bad character in a quoted string")
            else:
                out.append(c)
                i += 1
        raise ParseError("unterminated quoted string")

    def literal(self, data: bytes) -> None:
        """
        Add a literal's data as a string token.
        """
        self._stack[-1].append(data)

    def finish(self) -> list:
        """
        @return: the tokens.
        @raise ParseError: a list is still open.
        """
        if len(self._stack) != 1:
            raise ParseError("unbalanced '('")
        return self._stack[0]


def astring(token: Any, what: str = "argument") -> bytes:
    """
    @return: the value of an astring token.
    @raise ParseError: it is a list (or missing).
    """
    if not isinstance(token, bytes):
        raise ParseError(f"{what} must be a string")
    return bytes(token)


def quoted(value: bytes) -> bytes:
    """
    @return: C{value} as a quoted string.
    """
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: bytes) -> bytes:
    """
    @return: C{value} as a quoted string when it can be one, else a literal.
    """
    if len(value) > MAX_QUOTED_BYTES or not value.isascii() or _NOT_QUOTABLE.search(value) is not None:
        return b"{%d}\r\n%b" % (len(value), value)
    if b"\\" in value or b'"' in value:
        return quoted(value)
    return b'"' + value + b'"'


def formatValue(value: Any) -> bytes:
    """
    One value of an s-expression: C{None} is NIL, an C{int} a number, an
    L{Atom} itself, C{bytes} a string, C{str} a string (UTF-8, with any
    surrogate escapes of raw header bytes restored), a list or tuple a
    parenthesised list.
    """
    # The common kinds first, by exact type (an Atom is bytes too; a
    # bool is an int).
    kind = type(value)
    if kind is bytes:
        return string(value)
    if value is None:
        return b"NIL"
    if kind is str:
        return string(value.encode("utf-8", "surrogateescape"))
    if kind is int:
        return b"%d" % (value,)
    if isinstance(value, Atom):
        return bytes(value)
    if isinstance(value, bool):
        raise TypeError("no IMAP form for a bool")
    if isinstance(value, int):
        return b"%d" % (value,)
    if isinstance(value, bytes):
        return string(value)
    if isinstance(value, str):
        return string(value.encode("utf-8", "surrogateescape"))
    return formatList(value)


def formatList(values: Iterable[Any]) -> bytes:
    """
    @return: a parenthesised list of L{formatValue}s.
    """
    return b"(" + b" ".join([formatValue(v) for v in values]) + b")"


def formatInternalDate(seconds: float) -> bytes:
    """
    @return: an RFC 3501 date-time (C{"17-Jul-1996 02:44:25 +0000"}, in
        UTC), quoted.
    """
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode("ascii"), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def _month(name: bytes) -> int:
    """
    @return: the month number (1-12) of a three-letter English name.
    @raise ParseError: no such month.
    """
    try:
        return _MONTHS.index(name.decode("ascii").title()) + 1
    except ValueError:
        raise ParseError("bad month name") from None


def parseDateTime(value: bytes) -> float:
    """
    Parse an APPEND date-time (RFC 3501 §9, C{date-time}).

    @return: POSIX seconds.
    @raise ParseError: it is not one.
    """
    match = _DATE_TIME.match(value)
    if match is None:
        raise ParseError("bad date-time")
    day, month, year, hour, minute, second, sign, zoneHours, zoneMinutes = match.groups()
    try:
        when = calendar.timegm((int(year), _month(month), int(day), int(hour), int(minute), int(second)))
        datetime.datetime(int(year), _month(month), int(day), int(hour), int(minute), int(second))
    except (ValueError, OverflowError):
        raise ParseError("bad date-time") from None
    offset = (int(zoneHours) * 60 + int(zoneMinutes)) * 60
    return float(when - offset if sign == b"+" else when + offset)


def parseDate(value: bytes) -> datetime.date:
    """
    Parse a SEARCH date (RFC 3501 §9, C{date}, e.g. C{1-Feb-1994}).

    @raise ParseError: it is not one.
    """
    match = _DATE.match(value)
    if match is None:
        raise ParseError("bad date")
    try:
        return datetime.date(int(match.group(3)), _month(match.group(2)), int(match.group(1)))
    except ValueError:
        raise ParseError("bad date") from None


def parseSequenceSet(value: bytes) -> list[tuple[int | None, int | None]]:
    """
    Parse a sequence set (RFC 3501 §9, C{sequence-set}).

    @return: its ranges, C{None} standing for C{*}.
    @raise ParseError: it is not one.
    """
    ranges: list[tuple[int | None, int | None]] = []
    if not value:
        raise ParseError("empty sequence set")
    for item in value.split(b","):
        low, colon, high = item.partition(b":")
        ends = [_seqNumber(low)] + ([_seqNumber(high)] if colon else [])
        ranges.append((ends[0], ends[-1]))
    return ranges


def _seqNumber(value: bytes) -> int | None:
    """
    @return: a non-zero number of a sequence set, or C{None} for C{*}.
    @raise ParseError: neither.
    """
    if value == b"*":
        return None
    if not value.isdigit() or not value.isascii() or value.startswith(b"0") or len(value) > 10:
        raise ParseError("bad number in a sequence set")
    number = int(value)
    if number > 2**32 - 1:
        raise ParseError("number out of range in a sequence set")
    return number


class SequenceMembership:
    """
    A sequence set resolved against C{*}, for many membership tests: its
    ranges sorted and merged once, each test a binary search (a client
    naming a thousand UIDs one by one otherwise cost a thousand
    comparisons per message of the mailbox).
    """

    def __init__(self, ranges: list[tuple[int | None, int | None]], largest: int) -> None:
        """
        @param ranges: from L{parseSequenceSet}.
        @param largest: what C{*} stands for.
        """
        spans = sorted((min(a, b), max(a, b)) for a, b in (
            (largest if low is None else low, largest if high is None else high) for low, high in ranges))
        merged: list[list[int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self._lows = [low for low, _ in merged]
        self._highs = [high for _, high in merged]

    def __contains__(self, number: int) -> bool:
        """
        @return: whether C{number} is in the set.
        """
        i = bisect.bisect_right(self._lows, number) - 1
        return i >= 0 and number <= self._highs[i]


def inSequenceSet(ranges: list[tuple[int | None, int | None]], number: int, largest: int) -> bool:
    """
    @param largest: what C{*} stands for (the largest number in use).
    @return: whether C{number} is in the set; a range may be given high
        end first (RFC 3501 §9: C{4:2} is C{2:4}).
    """
    for low, high in ranges:
        a = largest if low is None else low
        b = largest if high is None else high
        if min(a, b) <= number <= max(a, b):
            return True
    return False


class CRLFConverter:
    """
    Turns bare LF line ends into CRLF, in chunks split anywhere.
    """

    def __init__(self, lastCR: bool = False) -> None:
        """
        @param lastCR: whether the byte before the first chunk is a CR.
        """
        self._lastCR = lastCR

    def feed(self, chunk: bytes) -> bytes:
        """
        @return: C{chunk} converted.
        """
        if not chunk:
            return chunk
        if self._lastCR and chunk[:1] == b"\n":
            # The CR ended the previous chunk; what follows the LF is
            # preceded by that LF, so the conversion sees it right.
            out = b"\n" + _toCRLF(chunk[1:])
        else:
            out = _toCRLF(chunk)
        self._lastCR = chunk.endswith(b"\r")
        return out


def _toCRLF(data: bytes) -> bytes:
    """
    @return: C{data} with its bare LFs made CRLF.
    """
    if b"\r" not in data:
        # Every LF is bare (stored mail has LF line ends): one C call
        # rather than the regular expression.
        return data.replace(b"\n", b"\r\n")
    return _BARE_LF.sub(b"\r\n", data)


def convertedSize(data: bytes) -> int:
    """
    @return: the size of C{data} once its bare LFs are CRLF.
    """
    if b"\r" not in data:
        return len(data) + data.count(b"\n")
    return len(data) + len(_BARE_LF.findall(data))
