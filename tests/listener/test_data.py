"""
Tests for L{qutemail.listener.data}: the checks and unstuffing of body
chunks, against a line-by-line reading of RFC 5321.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail import replies
from qutemail.listener.data import MAX_TEXT_LINE_OCTETS, MessageData


class _Writer:
    """
    Collects what L{MessageData} spools.
    """

    pendingBytes = 0

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True


def reference(chunk: bytes) -> tuple[object, bytes]:
    """
    What a chunk of whole CRLF-ended lines should give, read line by line.

    @return: the failure reply (or C{None}) and the lines spooled.
    """
    for i, byte in enumerate(chunk):
        if byte == 13 and chunk[i + 1 : i + 2] != b"\n":
            return replies.BARE_LINEFEED, b""
        if byte == 10 and chunk[i - 1 : i] != b"\r":
            return replies.BARE_LINEFEED, b""
    lines = chunk.split(b"\r\n")[:-1]
    if any(len(line) > MAX_TEXT_LINE_OCTETS - 2 for line in lines):
        return replies.BAD_DATA_LINE, b""
    return None, b"".join((line[1:] if line.startswith(b".") else line) + b"\n" for line in lines)


# Pieces that make the interesting cases likely: dots at line starts, bare
# CR and LF, lines at and over the length limit.
_pieces = st.sampled_from([
    b"a", b"x y", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r",
    b"z" * (MAX_TEXT_LINE_OCTETS - 2), b"z" * (MAX_TEXT_LINE_OCTETS - 3), b"z" * 400,
])


class ChunkTests(SynchronousTestCase):
    """
    L{MessageData._chunk} agrees with the line-by-line reading.
    """

    def consume(self, chunk: bytes) -> tuple[object, bytes]:
        writer = _Writer()
        data = MessageData(writer, 10 * 1024 * 1024, keepHeader=False, headerFilter=None,
                           backlogged=lambda d: None)
        data._chunk(chunk)
        return data.failure, bytes(writer.written) if data.failure is None else b""

    @given(st.lists(_pieces, max_size=40))
    def test_likeReference(self, pieces):
        """
        Any chunk of CRLF-ended lines gives the reference's verdict and,
        when accepted, its unstuffed LF-ended lines.
        """
        chunk = b"".join(pieces) + b"\r\n"
        self.assertEqual(self.consume(chunk), reference(chunk))

    def test_longLineAfterDot(self):
        """
        A line over the limit is refused even after a dot-stuffed line
        (one pass finds the first of either).
        """
        chunk = b"a\r\n..b\r\n" + b"z" * (MAX_TEXT_LINE_OCTETS - 1) + b"\r\n"
        self.assertEqual(self.consume(chunk), (replies.BAD_DATA_LINE, b""))

    def test_lineAtLimit(self):
        """
        A line of exactly 998 octets before its CRLF is accepted, also
        when dot-stuffed (the dot is counted as sent).
        """
        line = b"z" * (MAX_TEXT_LINE_OCTETS - 2)
        self.assertEqual(self.consume(b"a\r\n" + line + b"\r\n"), (None, b"a\n" + line + b"\n"))
        self.assertEqual(self.consume(b"a\r\n." + line + b"\r\n")[0], replies.BAD_DATA_LINE)

    def test_lonelyCarriageReturns(self):
        """
        As many bare CRs as bare LFs, and a CR before CRLF, are refused.
        """
        for chunk in (b"a\rb\nc\r\n", b"a\r\r\n", b"\n\r\r\n\r\n"):
            self.assertEqual(self.consume(chunk)[0], replies.BARE_LINEFEED, chunk)
