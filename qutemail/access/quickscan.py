# -*- test-case-name: tests.access.test_quickscan -*-
"""
The structure of a simple message held in memory, found without the
line-by-line reading of L{qutemail.access.imapmime.scanMessage} and
without the standard library's header parser (issue 14: the first
listing of a 10,000-message folder spent two thirds of its time in those
two).

Most mail is one part with a plain ASCII header.  For such a message the
structure is its header block, where the body starts, and counts of line
ends, which C{bytes.count} gives at once; the header fields are split by
one regular expression the way the standard library's C{compat32} parser
splits them (name up to the colon, value with leading blanks dropped and
folding kept).  L{quickScan} takes only messages for which that is sure
to give what L{scanMessage} gives, and C{None} for any other (a header
that is not printable ASCII, CR line ends in it, a line that is not a
field, a multipart or C{message/*} type, C{Content-Type} parameters
beyond plain tokens and quoted words, a header past the scanner's cap);
L{scanBytes} then scans those the long way.  A property test holds the
two to the same result.
"""

import io
import re

from qutemail.access.imapmime import HEADER_CAP_BYTES, Entity, Mark, scanMessage

_START = Mark(0, 0, 0, False)
# A header block of fields whose names are printable ASCII without a
# colon, and whose lines, continuation lines included, are printable
# ASCII and tabs (so no line end but LF, which is where compat32 splits).
_SIMPLE_HEADER = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[\x20-\x7e\t]*\n(?:[ \t][\x20-\x7e\t]*\n)*)+")
# One field: its name, and its value without the blanks after the colon,
# continuation lines kept (compat32's header_source_parse).
_FIELD = re.compile(r"([^:\n]+):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)")
# Blanks that str.strip() would remove around a parameter.
_WS = r"[ \t\n]*"
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_PARAM_NAME = r"[A-Za-z0-9_-]+"
# A plain parameter value: a token, or a quoted string of token characters
# and spaces (no backslash, quote, angle bracket or semicolon, which the
# standard library unquotes or splits on in ways of its own).
_QUOTED = r"[A-Za-z0-9!#$&^_.+ -]*"
_PARAM_VALUE = rf'(?:{_TOKEN}|"{_QUOTED}")'
_CONTENT_TYPE = re.compile(rf"{_WS}({_TOKEN})/({_TOKEN}){_WS}((?:;{_WS}{_PARAM_NAME}{_WS}={_WS}{_PARAM_VALUE}{_WS})*)")
_PARAMETER = re.compile(rf';{_WS}({_PARAM_NAME}){_WS}={_WS}(?:({_TOKEN})|"({_QUOTED})")')


def quickScan(data: bytes) -> Entity | None:
    """
    The structure of a whole message, when it is simple enough to be
    found without reading it line by line.

    @param data: the message as stored.
    @return: what L{scanMessage} finds in it, with its header fields and
        C{Content-Type} parameters already split; C{None} when the message
        is not one this function can be sure of.
    """
    end = data.find(b"\n\n")
    if end < 0 or end + 1 > HEADER_CAP_BYTES:
        return None
    header = data[:end + 1]
    if _SIMPLE_HEADER.fullmatch(header) is None:
        return None
    byName: dict[str, list[str]] = {}
    for name, value in _FIELD.findall(header.decode("ascii")):
        byName.setdefault(name.lower(), []).append(value)
    contentType = byName.get("content-type")
    if contentType is None:
        mainType, subType, params = "text", "plain", None
    else:
        found = _CONTENT_TYPE.fullmatch(contentType[0])
        if found is None:
            return None
        mainType, subType = found.group(1).lower(), found.group(2).lower()
        if mainType in ("multipart", "message"):
            return None
        flat: list[str] = []
        for name, token, quoted in _PARAMETER.findall(found.group(3)):
            flat += [name.lower(), token or quoted]
        params = flat or None
    lines = header.count(b"\n") + 1
    lfs = data.count(b"\n")
    bodyStart = Mark(end + 2, lines, lines, True)
    # The header holds no CR, so every CRLF is in the body; most stored
    # mail has none (counting them costs twice as much as looking for one).
    crlfs = data.count(b"\r\n") if b"\r" in data else 0
    last = Mark(len(data), lfs - crlfs, lfs, data.endswith(b"\n"))
    return Entity(_START, bodyStart, last, header, False, mainType, subType, byName=byName, typeParams=params)


def scanBytes(data: bytes) -> Entity:
    """
    The structure of a whole message in memory: L{quickScan}'s when it
    can tell, else L{scanMessage}'s.
    """
    root = quickScan(data)
    return root if root is not None else scanMessage(io.BytesIO(data))
