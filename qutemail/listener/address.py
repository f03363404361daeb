# -*- test-case-name: tests.listener.test_address -*-
"""
Parsing of SMTP command arguments: paths (RFC 5321 §4.1.2) and ESMTP
parameters (§4.1.2 C{Mail-parameters}).
"""

import re

from qutemail import replies
from qutemail.replies import ReplyError

# RFC 5321 §4.1.2 Dot-string / Quoted-string and Domain / address-literal.
_ATOM = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = rb"%s(?:\.%s)*" % (_ATOM, _ATOM)
_QUOTED = rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rb"%s(?:\.%s)*\.?" % (_LABEL, _LABEL)
_LITERAL = rb"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = rb"(?:%s|%s)@(?:%s|%s)" % (_DOT_STRING, _QUOTED, _DOMAIN, _LITERAL)
# A source route (obsolete, §4.1.2 A-d-l) is accepted and ignored (§C).
_ADL = rb"(?:@%s(?:,@%s)*:)?" % (_DOMAIN, _DOMAIN)
_PATH_RE = re.compile(rb"<%s(?P<mailbox>%s)>" % (_ADL, _MAILBOX))
_BARE_RE = re.compile(rb"(?P<mailbox>%s)" % (_MAILBOX,))
_KEYWORD_RE = re.compile(rb"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_RE = re.compile(rb"[\x21-\x3c\x3e-\x7e]+")

# RFC 5321 §4.5.3.1.3: 256 octets for a path, brackets included
MAX_PATH_OCTETS = 256


class PathError(ValueError):
    """
    A path or parameter does not follow RFC 5321.
    """


def splitArgument(text: bytes, prefix: bytes) -> tuple[bytes, list[bytes]]:
    """
    Split C{FROM:<path> PARAM...} into the path and the parameters.

    @param text: the command's argument.
    @param prefix: C{b"FROM:"} or C{b"TO:"}, matched without regard to case.
    @return: the path text and the parameter words.
    @raise PathError: the prefix is missing.
    """
    if text[: len(prefix)].upper() != prefix:
        raise PathError("expected " + prefix.decode("ascii"))
    # Tolerate a space after the colon, as most clients' bugs need.
    words = text[len(prefix) :].strip().split(b" ")
    words = [w for w in words if w]
    if not words:
        raise PathError("missing path")
    return words[0], words[1:]


def parsePath(path: bytes, allowNull: bool) -> str:
    """
    Parse a reverse or forward path.

    @param path: C{<local@domain>}, C{<>}, or a bare mailbox.
    @param allowNull: whether C{<>} is allowed (MAIL only).
    @return: the mailbox C{local@domain} (domain lower-cased), or C{""}.
    @raise PathError: the path is malformed or too long.
    """
    if path == b"<>":
        if allowNull:
            return ""
        raise PathError("null path not allowed here")
    if len(path) > MAX_PATH_OCTETS:
        raise PathError("path too long")
    match = _PATH_RE.fullmatch(path) or _BARE_RE.fullmatch(path)
    if match is None:
        raise PathError("malformed path")
    mailbox = match.group("mailbox").decode("ascii")
    local, _, domain = mailbox.rpartition("@")
    if len(local) > 64:
        raise PathError("local part too long")
    return f"{local}@{domain.rstrip('.').lower()}"


def parseParameters(words: list[bytes]) -> dict[str, str | None]:
    """
    Parse ESMTP parameters (C{KEYWORD} or C{KEYWORD=value}).

    @param words: the parameter words.
    @return: upper-cased keywords mapped to values (C{None} without one).
    @raise PathError: a malformed or repeated parameter.
    """
    params: dict[str, str | None] = {}
    for word in words:
        keyword, eq, value = word.partition(b"=")
        if not _KEYWORD_RE.fullmatch(keyword) or (eq and not _VALUE_RE.fullmatch(value)):
            raise PathError("malformed parameter")
        key = keyword.decode("ascii").upper()
        if key in params:
            raise PathError("repeated parameter")
        params[key] = value.decode("ascii") if eq else None
    return params


def declaredSize(params: dict[str, str | None]) -> int | None:
    """
    Check the parameters of C{MAIL FROM} (RFC 1870 C{SIZE}, RFC 6152
    C{BODY}, RFC 4954 C{AUTH}).

    @return: the declared size, if any.
    @raise ReplyError: a parameter is malformed or not supported.
    """
    declared = None
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit():
                raise ReplyError(replies.BAD_ARGUMENTS)
            declared = int(value)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise ReplyError(replies.BAD_BODY_PARAM)
        elif key != "AUTH":  # RFC 4954 §5: accepted; we trust only our own AUTH
            raise ReplyError(replies.PARAM_NOT_IMPLEMENTED)
    return declared
