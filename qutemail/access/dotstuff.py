# -*- test-case-name: tests.access.test_dotstuff -*-
"""
POP3 multi-line data (RFC 1939 §3), made from a stored message as it is
read in chunks.
"""

import attrs


@attrs.define
class DotStuffer:
    """
    Turns a stored message into POP3 multi-line data (RFC 1939 §3): CRLF
    line ends and byte-stuffed leading dots, fed in chunks split anywhere.

    @ivar bodyLines: for TOP, how many body lines to send (C{None}: all).
    @ivar done: the TOP limit was reached: feed no more.
    """

    bodyLines: int | None = None
    done: bool = False
    _atLineStart: bool = True
    _lineEmpty: bool = True
    _pendingCR: bool = False
    _inBody: bool = False
    _sentBodyLines: int = 0

    def feed(self, chunk: bytes) -> bytes:
        """
        @return: the transformed bytes of C{chunk}.
        """
        if self._pendingCR:
            chunk, self._pendingCR = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            # Maybe the first half of a CRLF: decide with the next chunk.
            chunk, self._pendingCR = chunk[:-1], True
        out = bytearray()
        pos = 0
        while pos < len(chunk) and not self.done:
            if self._atLineStart:
                if self._inBody and self.bodyLines is not None and self._sentBodyLines >= self.bodyLines:
                    self.done = True
                    break
                self._atLineStart, self._lineEmpty = False, True
                if chunk[pos:pos + 1] == b".":
                    out += b"."
            end = chunk.find(b"\n", pos)
            if end == -1:
                out += chunk[pos:]
                self._lineEmpty = False
                break
            line = chunk[pos:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            out += line + b"\r\n"
            empty = self._lineEmpty and not line
            self._atLineStart = True
            if self._inBody:
                self._sentBodyLines += 1
            elif empty:
                self._inBody = True
            pos = end + 1
        return bytes(out)

    def end(self) -> bytes:
        """
        @return: the rest, ending the last line, and the terminating dot.
        """
        out = b""
        if self._pendingCR and not self.done:
            out = self.feed(b"\n")
        if not self._atLineStart and not self.done:
            out += b"\r\n"
        return out + b".\r\n"
