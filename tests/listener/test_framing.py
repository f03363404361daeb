"""
Tests for L{qutemail.listener.framing} and the session's synchronisation
rules (RFC 2920 §3.1), over a L{StringTransport}.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail import replies
from qutemail.listener.framing import MAX_COMMAND_OCTETS, isNotSMTP, lineProblem
from tests.support import buildStack, connect

SYNC = b"554 5.5.0 Error: SMTP protocol synchronization\r\n"


class LineProblemTests(SynchronousTestCase):
    """
    L{lineProblem} refuses what is not a command line.
    """

    def test_problems(self) -> None:
        """
        A bare LF end, an over-long line, a NUL and a bare CR are refused;
        a CRLF line of the maximum length is not, nor a MAIL line within
        its SIZE and BODY allowance.
        """
        self.assertEqual(lineProblem(b"NOOP\n"), replies.BARE_LF_COMMAND)
        self.assertEqual(lineProblem(b"NOOP " + b"x" * MAX_COMMAND_OCTETS + b"\r\n"), replies.LINE_TOO_LONG)
        self.assertEqual(lineProblem(b"NO\0OP\r\n"), replies.SYNTAX_ERROR)
        self.assertEqual(lineProblem(b"NO\rOP\r\n"), replies.SYNTAX_ERROR)
        self.assertIsNone(lineProblem(b"N" * (MAX_COMMAND_OCTETS - 2) + b"\r\n"))
        mail = b"MAIL FROM:<" + b"a" * 520 + b"@x.test>\r\n"
        self.assertGreater(len(mail), MAX_COMMAND_OCTETS)
        self.assertIsNone(lineProblem(mail))

    def test_notSMTP(self) -> None:
        """
        HTTP request lines and TLS handshakes are not SMTP; commands are.
        """
        for data in (b"GET / HTTP/1.1\r\n", b"CONNECT a.test:25 HTTP/1.0\r\n", b"\x16\x03\x01\x00"):
            self.assertTrue(isNotSMTP(data), data)
        for data in (b"EHLO c.test\r\n", b"GET\r\n", b"HELO http.test\r\n"):
            self.assertFalse(isNotSMTP(data), data)


class SynchronisationTests(SynchronousTestCase):
    """
    What a session does with input sent before the reply the client must
    wait for.
    """

    def setUp(self) -> None:
        """
        A session over the memory stack.
        """
        self.stack = buildStack(self.mktemp())
        self.proto, self.transport = connect(self.stack.factory)
        self.transport.clear()

    def send(self, data: bytes) -> bytes:
        """
        Feed C{data} in one write.

        @return: what the session answered to it.
        """
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()

    def test_afterEHLO(self) -> None:
        """
        Anything in the same write as EHLO ends the session after the EHLO
        reply.
        """
        out = self.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.assertTrue(out.endswith(b"250 ENHANCEDSTATUSCODES\r\n" + SYNC), out)
        self.assertTrue(self.transport.disconnecting)

    def test_pipelinedTransaction(self) -> None:
        """
        With PIPELINING, MAIL, RCPT and DATA may share a write; the body
        after the 354 is accepted.
        """
        self.send(b"EHLO c.test\r\n")
        out = self.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n"), out)
        self.assertIn(b"250 2.0.0 Ok: queued as", self.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"))
        self.assertEqual(len(self.stack.newFiles("alice@example.test")), 1)

    def test_bodyWithData(self) -> None:
        """
        A body in the same write as DATA is not stored, and the session
        ends after the 354.
        """
        self.send(b"EHLO c.test\r\n")
        out = self.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
                        b"Subject: x\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n" + SYNC), out)
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])

    def test_withoutPipelining(self) -> None:
        """
        After HELO, two commands in one write end the session after the
        first one's reply.
        """
        self.send(b"HELO c.test\r\n")
        out = self.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(out, b"250 2.1.0 Sender OK\r\n" + SYNC)

    def test_noopLast(self) -> None:
        """
        NOOP must be the last of its group even with PIPELINING.
        """
        self.send(b"EHLO c.test\r\n")
        self.assertEqual(self.send(b"NOOP\r\nNOOP\r\n"), b"250 2.0.0 OK\r\n" + SYNC)

    def test_notSMTP(self) -> None:
        """
        An HTTP request as the first input is answered once and dropped.
        """
        self.assertEqual(self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                         b"554 5.5.0 Not an SMTP client, goodbye\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_bareLineFeed(self) -> None:
        """
        A command ended by a bare LF is refused and not run.
        """
        self.assertEqual(self.send(b"QUIT\n"), b"500 5.5.2 Command lines must end with CRLF\r\n")
        self.assertFalse(self.transport.disconnecting)

    def test_repeatedRecipients(self) -> None:
        """
        The same recipient twelve times: the first ten count (this stack's
        limit), the rest get 452 4.5.3.
        """
        self.send(b"EHLO c.test\r\n")
        out = self.send(b"MAIL FROM:<a@remote.test>\r\n" + b"RCPT TO:<alice@example.test>\r\n" * 12)
        self.assertEqual((out.count(b"250 2.1.5"), out.count(b"452 4.5.3")), (10, 2))
