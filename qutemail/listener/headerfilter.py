# -*- test-case-name: tests.listener.test_headerfilter -*-
"""
Removing forged C{Authentication-Results} fields, and content scanners'
verdict fields, from a message as it streams in.

RFC 8601 §5: a receiver removes (or renames) every
C{Authentication-Results} field that claims its own C{authserv-id} before
adding its own, so that nobody can hand our users a verdict we never gave.
The body arrives in chunks of whole lines; only the header section is
looked at, one field at a time: a field with another name passes at once,
an C{Authentication-Results} field is held until its last continuation line
has arrived and is then dropped or passed on whole.

When the content scanners see a message from outside
(L{qutemail.content}), every field whose name starts with one of
L{SCAN_FIELD_PREFIXES} (C{X-Spam-Status}, C{X-Spamd-Result}, C{X-Spam-Flag},
C{X-Virus-Scanned}, ...) is dropped too: the scanners add their own, and a
sender must not be able to hand our users' mail filters a verdict of its
own making (rspamd's C{milter_headers} removes them for the same reason).
"""

from typing import Callable

_NAME = b"authentication-results"
# Names (lower case) of the verdict fields of spam and virus scanners.
SCAN_FIELD_PREFIXES = (b"x-spam", b"x-virus")
# A held field longer than this is not a real one: it is dropped.
MAX_FIELD_BYTES = 64 * 1024


class SpoofedResultsFilter:
    """
    Drops the C{Authentication-Results} fields a predicate calls forged,
    and, when asked, every scanner verdict field.

    @ivar _isForged: C{isForged(field)}, with the whole field, continuation
        lines included.
    @ivar dropped: how many fields were dropped.
    """

    def __init__(self, isForged: Callable[[bytes], bool] | None, dropScanFields: bool = False) -> None:
        """
        @param isForged: says whether a whole C{Authentication-Results}
            field (bytes, LF line ends) is to be dropped; C{None} keeps
            them all.
        @param dropScanFields: drop every field named with a prefix of
            L{SCAN_FIELD_PREFIXES}.
        """
        self._isForged = isForged
        self._dropScanFields = dropScanFields
        self._inHeader = True
        self._held: bytearray | None = None
        self._heldIsScan = False
        self._oversized = False
        self.dropped = 0

    def feed(self, lines: bytes) -> bytes:
        """
        Filter the next chunk of the message.

        @param lines: whole lines, LF-terminated, unstuffed.
        @return: what to keep of them (and of a field held before).
        """
        if not self._inHeader:
            return lines
        kept = bytearray()
        position = 0
        while position < len(lines):
            end = lines.find(b"\n", position)
            end = len(lines) if end < 0 else end + 1
            line = lines[position:end]
            position = end
            if self._held is not None:
                if line[:1] in (b" ", b"\t"):
                    if len(self._held) + len(line) <= MAX_FIELD_BYTES:
                        self._held += line
                    else:
                        self._oversized = True
                    continue
                kept += self._release()
            if line in (b"\n", b"\r\n") or b":" not in line.split(b"\n", 1)[0] and line[:1] not in (b" ", b"\t"):
                # the blank line (or a line that is no field: the body
                # started without one): the header section is over
                self._inHeader = False
                kept += line + lines[position:]
                return bytes(kept)
            name = line.split(b":", 1)[0].rstrip(b" \t").lower()
            if name == _NAME and self._isForged is not None:
                self._held = bytearray(line)
            elif self._dropScanFields and name.startswith(SCAN_FIELD_PREFIXES):
                self._held = bytearray(line)
                self._heldIsScan = True
            else:
                kept += line
        return bytes(kept)

    def finish(self) -> bytes:
        """
        The end of the message: release a field still held.

        @return: the bytes still to write.
        """
        return self._release() if self._held is not None else b""

    def _release(self) -> bytes:
        """
        Decide about the held field.

        @return: it, or nothing when it is forged (or oversized).
        """
        field, self._held = bytes(self._held), None
        oversized, self._oversized = self._oversized, False
        scan, self._heldIsScan = self._heldIsScan, False
        if scan or oversized or self._isForged(field):
            self.dropped += 1
            return b""
        return field
