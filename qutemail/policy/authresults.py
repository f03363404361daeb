# -*- test-case-name: tests.policy.test_authresults -*-
"""
The C{Authentication-Results} header field (RFC 8601): writing ours, and
recognising incoming ones that claim to be ours.

We write one field per message, naming ourselves by our C{authserv-id}
(our host name), with one C{resinfo} per check (SPF, each DKIM signature,
DMARC), each on its own folded line::

    Authentication-Results: mx.example.test;
    \tspf=pass smtp.mailfrom=a.test;
    \tdkim=pass header.d=a.test header.s=sel;
    \tdmarc=pass (p=reject) header.from=a.test

The line ends are the caller's choice: the spool and the Maildir store keep
messages with LF line ends (the C{Received} field of
the SMTP listener is written with LF), so LF is the default, as in
L{qutemail.pipeline.dkim.signHeader}.

RFC 8601 §5: a field arriving from outside that carries our
C{authserv-id} is a forgery (or a stale copy) and must go before we add
ours; L{isSpoofedAuthResults} says which fields those are and
L{stripSpoofed} removes them from a header block.  Fields of other
servers are kept as they are.

The helpers L{quotedValue} and L{comment} build the pieces of a
C{resinfo} safely from untrusted text (DNS, signatures).
"""

import re

FIELD_NAME = "Authentication-Results"
_NAME_BYTES = FIELD_NAME.lower().encode("ascii")
# Fold a resinfo line that would be longer than this (RFC 5322 §2.1.1's
# recommended 78 characters), at a space it already has.
_FOLD_COLUMN = 78
# RFC 2045 §5.1 token: any printable ASCII but SPACE and the tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_WSP = b" \t"


def quotedValue(text: str) -> str:
    """
    A C{value} (RFC 8601 §2.2, RFC 2045 §5.1): the text as it is when it is
    a token, else as a quoted-string; line breaks and other control
    characters become spaces.

    @param text: any text.
    @return: the value.
    """
    text = _oneLine(text)
    if _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    """
    An RFC 5322 comment holding the text: parentheses and backslashes are
    escaped as quoted-pairs, control characters become spaces.

    @param text: any text.
    @return: C{"(text)"}.
    """
    escaped = _oneLine(text).replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped})"


def _oneLine(text: str) -> str:
    """
    @return: the text with every control character (CR and LF included)
        replaced by a space.
    """
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _fold(line: str, lineEnd: str) -> str:
    """
    Fold one logical line at the spaces it has, so that each physical line
    stays within L{_FOLD_COLUMN} where possible (RFC 5322 §2.2.3: a line
    end goes before existing white space, which stays).
    """
    out = []
    while len(line) > _FOLD_COLUMN:
        cut = line.rfind(" ", 1, _FOLD_COLUMN)
        if cut <= 0 or not line[:cut].strip():
            cut = line.find(" ", _FOLD_COLUMN)
            if cut < 0:
                break
        out.append(line[:cut])
        line = line[cut:]
    out.append(line)
    return lineEnd.join(out)


def authenticationResults(authservId: str, parts: list[str], lineEnd: bytes = b"\n") -> bytes:
    """
    Write an C{Authentication-Results} field (RFC 8601 §2.2).

    @param authservId: our C{authserv-id}, normally our host name.
    @param parts: the C{resinfo}s without their leading C{;}, such as
        C{"spf=pass smtp.mailfrom=a.test"}, in order; none gives the
        C{none} form (RFC 8601 §2.2, C{no-result}).
    @param lineEnd: the line end within the folding and at the end.
    @return: the whole field, folded (one C{resinfo} per line, long ones
        folded at their spaces), ending in C{lineEnd}, UTF-8.
    @raise ValueError: when the id is empty or holds white space or
        control characters, or a part is empty or holds a control
        character (a line break would let a part add a field of its own).
    """
    if not authservId or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in authservId):
        raise ValueError(f"not a valid authserv-id: {authservId!r}")
    for part in parts:
        if not part.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise ValueError(f"not a valid resinfo: {part!r}")
    end = lineEnd.decode("ascii")
    head = f"{FIELD_NAME}: {quotedValue(authservId)};"
    if not parts:
        return (head + " none" + end).encode("utf-8")
    lines = [head]
    for index, part in enumerate(parts):
        separator = ";" if index < len(parts) - 1 else ""
        lines.append(_fold("\t" + part.strip() + separator, end))
    return (end.join(lines) + end).encode("utf-8")


def _skipCFWS(text: bytes, position: int) -> int:
    """
    Skip white space and (nested) comments with their quoted-pairs (RFC
    5322 §3.2.2).

    @return: the position of the first byte after them (C{len(text)} when
        an unclosed comment runs to the end).
    """
    depth = 0
    while position < len(text):
        byte = text[position:position + 1]
        if depth:
            if byte == b"\\":
                position += 1
            elif byte == b"(":
                depth += 1
            elif byte == b")":
                depth -= 1
        elif byte == b"(":
            depth = 1
        elif byte not in _WSP:
            return position
        position += 1
    return position


def _authservId(value: bytes) -> bytes | None:
    """
    The C{authserv-id} a field's value starts with, a token or a
    quoted-string (unquoted), after any CFWS.

    @param value: the unfolded value, after the colon.
    @return: the id, or C{None} when there is none.
    """
    position = _skipCFWS(value, 0)
    if value[position:position + 1] == b'"':
        out = bytearray()
        position += 1
        while position < len(value):
            byte = value[position:position + 1]
            if byte == b'"':
                return bytes(out)
            if byte == b"\\":
                position += 1
                byte = value[position:position + 1]
            out += byte
            position += 1
        return None
    match = re.match(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~\x80-\xff]+", value[position:])
    return match.group(0) if match else None


def isSpoofedAuthResults(headerLine: bytes, authservId: str) -> bool:
    """
    Whether a header field is an C{Authentication-Results} field naming
    our C{authserv-id} (RFC 8601 §5), which we must not pass on.

    The field name is matched in any case (and with white space before the
    colon, RFC 5322 §4.5); the value may be folded and may hold comments
    anywhere (RFC 8601 §2.2 CFWS) and a version after the id (C{1}, RFC
    8601 §2.4), all of which are ignored; the id is compared in any case
    (it is a domain name, RFC 8601 §2.5) and may be a quoted-string.

    @param headerLine: one whole field, continuation lines included, with
        LF or CRLF line ends (or unfolded).
    @param authservId: our id.
    @return: C{True} for such a field; C{False} for any other field,
        including the fields of other servers.
    """
    name, colon, value = headerLine.partition(b":")
    if not colon or name.rstrip(_WSP).lower() != _NAME_BYTES:
        return False
    unfolded = value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"")
    found = _authservId(unfolded)
    if found is None:
        return False
    ours = authservId.strip().rstrip(".").lower().encode("utf-8")
    return found.rstrip(b".").lower() == ours


def stripSpoofed(headerBlock: bytes, authservId: str) -> bytes:
    """
    Remove the fields L{isSpoofedAuthResults} calls ours from a header
    block, continuation lines included.  Everything else is kept byte for
    byte; the header ends at the first empty line, after which nothing is
    looked at (so a whole message may be given).

    @param headerBlock: header fields, LF or CRLF line ends.
    @param authservId: our id.
    @return: the block without those fields.
    """
    # split after each LF only: a bare CR is part of its line
    lines = [line for line in re.split(rb"(?<=\n)", headerBlock) if line]
    kept: list[bytes] = []
    field: list[bytes] = []

    def release() -> None:
        """
        Keep the field collected so far unless it is ours.
        """
        if field and not isSpoofedAuthResults(b"".join(field), authservId):
            kept.extend(field)
        field.clear()

    for index, line in enumerate(lines):
        if line in (b"\n", b"\r\n"):
            release()
            kept.extend(lines[index:])
            return b"".join(kept)
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
        else:
            release()
            field.append(line)
    release()
    return b"".join(kept)
