# -*- test-case-name: tests.qkd.test_cipher -*-
"""
The header work shared by the QKD message formats (at rest, see
L{qutemail.qkd.cipher}, and in transit, see L{qutemail.qkd.transit}):
splitting a header block into fields, choosing the sane ones that are
copied outside the encryption, and base64 in lines.  No I/O.
"""

import binascii
import re

from qutemail.headerblock import headerEnd

MAX_LINE_BYTES = 998  # RFC 5322 §2.1.1
MAX_FIELD_BYTES = 8192
MAX_MESSAGE_ID_BYTES = 900

_COPIED = {"return-path": "Return-Path", "received": "Received", "from": "From", "to": "To",
           "cc": "Cc", "date": "Date", "message-id": "Message-ID"}
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+(?=:)")
_SANE_LINE = re.compile(rb"[\t\x20-\x7e]*")


def base64Lines(data: bytes) -> bytes:
    """
    Base64 in lines of 76 characters, each ending in LF, as
    C{base64.encodebytes} gives it (RFC 2045 §6.8), but encoded in one call
    and cut with C-level slicing: C{encodebytes} runs a Python loop per line,
    which holds the GIL (and so the reactor) a long time for a large
    message.

    @param data: the bytes to encode.
    @return: the encoded lines (C{b""} for no data).
    """
    if not data:
        return b""
    text = binascii.b2a_base64(data, newline=False)
    size = len(text)
    return b"\n".join(map(text.__getitem__, map(slice, range(0, size, 76), range(76, size + 76, 76)))) + b"\n"


def headerFields(block: bytes, complete: bool) -> list[tuple[str, list[bytes]]]:
    """
    Split the header block at the start of C{block} into fields.

    @param complete: C{block} is the whole input, so a last line without an
        LF counts; otherwise it was cut and is ignored.
    @return: C{(lower-case name, physical lines)} in order; lines have no
        line end (nor a CR before it).
    """
    # The header ends at the first empty line at the latest: split no
    # further (the block may be a whole large message).
    end = headerEnd(block)
    if end < len(block):
        block, complete = block[:end], True
    lines = block.split(b"\n")
    if not complete or not lines[-1]:
        lines.pop()
    fields: list[tuple[str, list[bytes]]] = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
            continue
        name = _FIELD_NAME.match(line)
        if name is None:
            break
        fields.append((name.group().decode("ascii").lower(), [line]))
    return fields


def unfolded(name: str, lines: list[bytes]) -> bytes:
    """
    @return: a field's value, unfolded and trimmed.
    """
    return b"".join([lines[0][len(name) + 1:]] + lines[1:]).strip(b" \t")


def isSane(lines: list[bytes]) -> bool:
    """
    @return: whether a field may be copied to the outer header.
    """
    return (
        sum(len(line) + 1 for line in lines) <= MAX_FIELD_BYTES
        and all(len(line) <= MAX_LINE_BYTES and _SANE_LINE.fullmatch(line) for line in lines)
        and all(line.strip(b" \t") for line in lines[1:])
        and bool(lines[0].partition(b":")[2].strip(b" \t") or len(lines) > 1)
    )


def firstSane(fields: list[tuple[str, list[bytes]]], name: str) -> list[bytes] | None:
    """
    @return: the lines of the first field called C{name} if it is sane.
    """
    for fieldName, lines in fields:
        if fieldName == name:
            return lines if isSane(lines) else None
    return None


def outerHeader(fields: list[tuple[str, list[bytes]]], subject: str | None) -> tuple[list[bytes], str]:
    """
    Choose the outer header fields.

    @return: C{(lines, messageId)}.
    """
    copied = dict(_COPIED, subject="Subject") if subject is None else _COPIED
    seen: set[str] = set()
    out: list[bytes] = []
    messageId = ""
    for name, lines in fields:
        if name not in copied or (name in seen and name != "received"):
            continue
        seen.add(name)
        if not isSane(lines):
            continue
        if name == "message-id":
            value = unfolded(name, lines)
            if len(value) > MAX_MESSAGE_ID_BYTES:
                continue
            messageId = value.decode("ascii")
        out.append(copied[name].encode("ascii") + lines[0][len(name):])
        out.extend(lines[1:])
    if subject is not None:
        out.append(b"Subject: " + subject.encode("ascii"))
    return out, messageId
