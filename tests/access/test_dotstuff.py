# -*- test-case-name: tests.access.test_dotstuff -*-
"""
Tests for L{qutemail.access.dotstuff}.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.dotstuff import DotStuffer


class DotStufferTests(SynchronousTestCase):
    """
    L{DotStuffer} produces RFC 1939 multi-line data.
    """

    def transform(self, data: bytes, size: int, lines=None) -> bytes:
        """
        Feed C{data} in chunks of C{size} bytes.
        """
        stuffer = DotStuffer(lines)
        out = b""
        for i in range(0, len(data), size):
            if stuffer.done:
                break
            out += stuffer.feed(data[i:i + size])
        return out + stuffer.end()

    def test_stuffingAnyChunking(self) -> None:
        """
        LF and CRLF become CRLF, leading dots are doubled, and the result is
        the same however the input is split.
        """
        data = b"a\r\n.b\n..c\r\nd"
        for size in range(1, len(data) + 1):
            self.assertEqual(self.transform(data, size), b"a\r\n..b\r\n...c\r\nd\r\n.\r\n")

    def test_top(self) -> None:
        """
        With a line limit, the header and that many body lines are sent.
        """
        data = b"H: 1\nH2: 2\n\none\ntwo\nthree\n"
        for size in (1, 3, 100):
            self.assertEqual(self.transform(data, size, 1), b"H: 1\r\nH2: 2\r\n\r\none\r\n.\r\n")
            self.assertEqual(self.transform(data, size, 0), b"H: 1\r\nH2: 2\r\n\r\n.\r\n")
