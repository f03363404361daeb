# -*- test-case-name: tests.listener.test_framing -*-
"""
What a command line may look like, and which commands must be the last of
a pipelined group.

  - RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its
    CRLF; RFC 1870 §3 adds 26 to MAIL for SIZE, RFC 6152 §3 16 for BODY;
    RFC 4954 §4 allows AUTH lines of 12288 octets.
  - §2.3.8: a line ends with CRLF; a bare LF ends nothing, and a NUL or a
    bare CR has no place in a command.
  - RFC 2920 §3.1: EHLO, HELO, DATA, NOOP and VRFY must be the last
    command of a group (the client waits for their reply before sending
    more); without PIPELINING negotiated, every command is.  Input that is
    already waiting when such a reply goes out was sent too early: the
    client is not following the protocol (a spammer's "early talker", or
    an attempt to smuggle a body past DATA), and the session ends.
  - An HTTP request line or a TLS ClientHello on a plain port is not an
    SMTP client at all.
"""

import re

from qutemail import replies
from qutemail.replies import Reply

MAX_COMMAND_OCTETS = 512
MAX_MAIL_OCTETS = 512 + 26 + 16
MAX_AUTH_OCTETS = 12288
_LIMITS = {b"MAIL": MAX_MAIL_OCTETS, b"AUTH": MAX_AUTH_OCTETS}

# RFC 2920 §3.1 (TURN and EXPN are not implemented; QUIT ends the session).
LAST_IN_GROUP = frozenset({"EHLO", "HELO", "DATA", "NOOP", "VRFY"})

# "GET / HTTP/1.1", "CONNECT host:443 HTTP/1.0", ...
_HTTP_REQUEST = re.compile(rb"^[A-Z]{3,7} \S+ HTTP/\d")
# A TLS record of type handshake (22), protocol major version 3.
_TLS_HANDSHAKE = b"\x16\x03"


def lineProblem(line: bytes) -> Reply | None:
    """
    Check one command line as received (its terminator included).

    @return: the reply refusing it, or C{None} when it may run.
    """
    if not line.endswith(b"\r\n"):
        return replies.BARE_LF_COMMAND
    if len(line) > _LIMITS.get(line[:4].upper(), MAX_COMMAND_OCTETS):
        return replies.LINE_TOO_LONG
    if b"\0" in line or b"\r" in line[:-2]:
        return replies.SYNTAX_ERROR
    return None


def isNotSMTP(data: bytes) -> bool:
    """
    @param data: the first bytes a client sent.
    @return: whether they are an HTTP request or a TLS handshake.
    """
    return data.startswith(_TLS_HANDSHAKE) or _HTTP_REQUEST.match(data) is not None
