# -*- test-case-name: tests.listener.test_smtp -*-
"""
The DATA phase of one SMTP transaction: the body as it arrives.

L{MessageData} frames the body in bulk: only CRLF.CRLF ends it (no
bare-LF smuggling), a bare CR or LF fails the message, lines over 1000
octets fail it (RFC 5321 §4.5.3.1.6) without losing the session, dot
stuffing is undone (§4.5.2), the size is capped (RFC 1870), forged
C{Authentication-Results} fields are filtered out, and what is left
streams into the spool writer with LF line ends.  The header section is
kept (at most 64 KiB) when the message will be checked: the From check of
authenticated mail, DMARC for mail from outside.
"""

import email.parser
import email.policy
import email.utils
import re
from typing import Any, Callable

from twisted.internet.defer import Deferred

from qutemail import replies
from qutemail.replies import Reply

# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_TEXT_LINE_OCTETS = 1000
# A line (after the first of a chunk) longer than the text-line limit.
_LONG_LINE = re.compile(rb"\n[^\n]{%d}" % (MAX_TEXT_LINE_OCTETS - 1,))
# A line (after the first) that is dot-stuffed or too long: one pass finds
# whether either needs a closer look.  The regular expression engine jumps
# from line end to line end, which is several times faster than
# bytes.replace looking for the two-byte b"\n.".
_DOT_OR_LONG = re.compile(rb"\n(?:\.|[^\n]{%d})" % (MAX_TEXT_LINE_OCTETS - 1,))
# The end of the data, after the first line (the regular expression
# engine finds it faster than bytes.find).
_END_OF_DATA = re.compile(rb"\r\n\.\r\n")
# A carriage return that does not end a line.
_BARE_CR = re.compile(rb"\r(?!\n)")
# Ask the session to pause reading while more than this much body waits to
# be written.
MAX_PENDING_BYTES = 4 * 1024 * 1024
# The most header kept for the checks.
MAX_HEADER_BYTES = 64 * 1024


class MessageData:
    """
    One message's body on its way into the spool.

    @ivar writer: the L{qutemail.pipeline.spool.SpoolWriter}, or C{None}
        once the message has failed (it is then aborted).
    @ivar failure: the L{Reply} the message failed with, or C{None}.
    @ivar header: the header section kept, or C{None} when none is kept.
    """

    def __init__(self, writer: Any, maxMessageBytes: int, keepHeader: bool, headerFilter: Any,
                 backlogged: Callable[[Deferred], None]) -> None:
        """
        @param writer: where the body goes.
        @param maxMessageBytes: the SIZE limit.
        @param keepHeader: whether to keep the header section.
        @param headerFilter: removes forged fields as the body streams, or
            C{None}.
        @param backlogged: called with a Deferred that fires once the
            writer has caught up; the session stops reading meanwhile.
        """
        self.writer = writer
        self.failure: Reply | None = None
        self.header: bytearray | None = bytearray() if keepHeader else None
        self._maxMessageBytes = maxMessageBytes
        self._filter = headerFilter
        self._backlogged = backlogged
        self._size = 0
        self._midLine = False

    def consume(self, buffer: bytes) -> tuple[bool, bytes]:
        """
        Take buffered body bytes; the buffer starts at the start of a line.

        @return: whether the end of data was reached, and the bytes not
            consumed (after the end: the next commands).
        """
        if self._midLine:
            # The rest of an over-long line: skip to its end.
            found = buffer.find(b"\r\n")
            if found < 0:
                return False, buffer[-1:] if buffer.endswith(b"\r") else b""
            buffer = buffer[found + 2 :]
            self._midLine = False
        if buffer.startswith(b".\r\n"):
            self._chunk(b"")
            return True, buffer[3:]
        end = _END_OF_DATA.search(buffer)
        if end is not None:
            self._chunk(buffer[: end.start() + 2])
            return True, buffer[end.end() :]
        last = buffer.rfind(b"\r\n")
        if last >= 0:
            self._chunk(buffer[: last + 2])
            return False, buffer[last + 2 :]
        if len(buffer) > MAX_TEXT_LINE_OCTETS:
            self.fail(replies.BAD_DATA_LINE)
            self._midLine = True
            return False, buffer[-1:] if buffer.endswith(b"\r") else b""
        return False, buffer

    def fail(self, reply: Reply) -> None:
        """
        Fail the message; the rest of it is discarded.
        """
        if self.failure is None:
            self.failure = reply
            self.abort()

    def abort(self) -> None:
        """
        Drop whatever was spooled.
        """
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def finish(self) -> None:
        """
        The final dot came: write what the header filter still holds.
        """
        if self.failure is None and self._filter is not None:
            self.writer.write(self._filter.finish())

    def _chunk(self, chunk: bytes) -> None:
        """
        Check, unstuff and spool complete lines of body.

        @param chunk: whole lines, CRLF-terminated, still dot-stuffed.
        """
        if not chunk or self.failure is not None:
            return
        # Stored with LF line ends; every check below runs in C over the
        # whole chunk rather than line by line in Python.  Deleting every
        # CR is CRLF -> LF once each CR is known to end a line: the chunk
        # has as many LFs as CRs, and every CR is followed by an LF.
        lines = chunk.translate(None, b"\r")
        crlf = len(chunk) - len(lines)
        if lines.count(b"\n") != crlf or _BARE_CR.search(chunk):
            return self.fail(replies.BARE_LINEFEED)
        if len(lines) > MAX_TEXT_LINE_OCTETS - 1 and lines.find(b"\n") > MAX_TEXT_LINE_OCTETS - 2:
            return self.fail(replies.BAD_DATA_LINE)
        # RFC 5321 §4.5.2: remove the first dot of every line starting with one
        if lines[:1] == b".":
            lines = lines[1:]
        found = _DOT_OR_LONG.search(lines)
        if found is not None:
            # The first of either: look for long lines from there on.
            if _LONG_LINE.search(lines, found.start()):
                return self.fail(replies.BAD_DATA_LINE)
            lines = lines.replace(b"\n.", b"\n")
        if self.header is not None:
            self._keepHeader(lines)
        # RFC 1870 counts the message as sent, with CRLF line ends
        self._size += len(lines) + crlf
        if self._size > self._maxMessageBytes:
            return self.fail(replies.TOO_BIG)
        if self._filter is not None:
            lines = self._filter.feed(lines)
        self.writer.write(lines)
        if self.writer.pendingBytes > MAX_PENDING_BYTES:
            self._backlogged(self.writer.drained())

    def _keepHeader(self, lines: bytes) -> None:
        """
        Keep the header section (up to its blank line, at most 64 KiB).
        """
        header = self.header
        if header.endswith(b"\n\n") or header == b"\n" or len(header) >= MAX_HEADER_BYTES:
            return
        header += lines[: MAX_HEADER_BYTES - len(header)]
        end = header.find(b"\n\n")
        if header.startswith(b"\n"):
            del header[1:]
        elif end >= 0:
            del header[end + 2 :]

    def fromIsOwnedBy(self, account: str) -> bool:
        """
        @return: whether every C{From:} address is C{account}'s.
        """
        message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(bytes(self.header))
        addresses = [a for _, a in email.utils.getaddresses(message.get_all("From", []))]
        return all(a.lower() == account for a in addresses)


def receivedHeader(helo: str | None, peer: str, hostname: str, protocol: str, queueId: str,
                   recipients: list[str], receivedAt: float) -> bytes:
    """
    The C{Received} field of our hop (RFC 5321 §4.4), LF line ends.

    @param protocol: the RFC 3848 protocol type (C{ESMTPSA}, ...).
    @param recipients: the transaction's recipients (one is named).
    """
    forClause = f"\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    date = email.utils.formatdate(receivedAt)
    text = (
        f"Received: from {helo} ([{peer}])\n"
        f"\tby {hostname} (QutEmail) with {protocol} id {queueId}"
        f"{forClause};\n\t{date}\n"
    )
    return text.encode("utf-8", "replace")
