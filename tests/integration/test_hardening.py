"""
Raw-socket tests of the SMTP listeners' hardening (issue 3): smuggling,
early talkers, over-long lines, NUL bytes and command storms, each checked
for a precise reply and for the listener still serving others.
"""

import socket

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, maildirFiles
from tests.integration.test_mta import RunningServerMixin


def exchange(port: int, data: bytes, until: bytes, greet: bool = True) -> bytes:
    """
    Connect, optionally wait for the greeting, send C{data} in one write,
    and read until the output ends with C{until} (or the server closes).

    @return: everything after the greeting.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        out = b""
        if greet:
            while not out.endswith(b"\r\n"):
                out += sock.recv(1000)
            out = b""
        sock.sendall(data)
        while not out.endswith(until):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        sock.close()


def steps(port: int, writes: list[tuple[bytes, bytes]]) -> bytes:
    """
    Connect, wait for the greeting, then for each C{(data, until)}: send
    C{data} in one write and read until the output ends with C{until} (a
    client that waits where RFC 2920 says it must).

    @return: everything after the greeting.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        out = b""
        while not out.endswith(b"\r\n"):
            out += sock.recv(1000)
        out = b""
        for data, until in writes:
            sock.sendall(data)
            while not out.endswith(until):
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                out += chunk
        return out
    finally:
        sock.close()


ENVELOPE = b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
# The same, as a client that waits for the EHLO reply and the 354 sends it.
EHLO = (b"EHLO c.test\r\n", b"250 STARTTLS\r\n")
TRANSACTION = (b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n", b"<CR><LF>\r\n")


class HardeningTests(RunningServerMixin, TestCase):
    """
    Hostile input over real sockets to the MTA port.
    """

    async def stillServing(self):
        """
        Another client can still deliver a message.
        """

        def session(client):
            return client.sendmail("x@remote.test", ["bob@example.test"], b"Subject: still here\r\n\r\nok\r\n")

        self.assertEqual(await self.smtp(session), {})

    async def test_smuggling(self):
        """
        SMTP smuggling (CVE-2023-51764 family): LF.LF, CR.CR and LF.CRLF do
        not end DATA; the message with the bare line ends is refused and
        the smuggled MAIL never runs; nothing is stored.
        """
        for fake in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"):
            body = b"Subject: outer\r\n\r\nhello" + fake + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\ninner\r\n.\r\nQUIT\r\n"
            out = await deferToThread(steps, self.port, [EHLO, TRANSACTION, (body, b"221 2.0.0 Bye\r\n")])
            self.assertIn(b"554 5.6.0 Bare CR or LF in message data is not allowed\r\n", out, fake)
            self.assertNotIn(b"Ok: queued", out)
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])
        self.assertEqual(maildirFiles(self.dataDir, "bob@example.test"), [])
        await self.stillServing()

    async def test_earlyTalker(self):
        """
        A client that sends its whole session before reading the greeting
        (RFC 2920 §3.1: nothing may follow EHLO before its reply) gets a
        synchronisation error and is dropped; nothing is stored, and the
        listener keeps serving.
        """
        data = ENVELOPE + b"Subject: early\r\n\r\nbody\r\n.\r\nQUIT\r\n"
        out = await deferToThread(exchange, self.port, data, b"synchronization\r\n", False)
        self.assertTrue(out.startswith(b"220 "))
        self.assertTrue(out.endswith(b"250 STARTTLS\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"),
                        out)
        self.assertNotIn(b"Ok: queued", out)
        await self.stillServing()
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])

    async def test_bodyBefore354(self):
        """
        A message body sent in the same write as DATA (before the 354)
        gets the synchronisation error; nothing of it is stored.
        """
        out = await deferToThread(steps, self.port, [
            EHLO, (TRANSACTION[0] + b"Subject: eager\r\n\r\nbody\r\n.\r\n", b"synchronization\r\n")])
        self.assertTrue(out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n"
                                     b"554 5.5.0 Error: SMTP protocol synchronization\r\n"), out)
        await self.stillServing()
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])

    async def test_pipeliningWithoutEHLO(self):
        """
        After HELO (no PIPELINING offered), commands sent together get the
        synchronisation error after the first one's reply.
        """
        out = await deferToThread(steps, self.port, [
            (b"HELO c.test\r\n", b"\r\n"),
            (b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n", b"synchronization\r\n")])
        self.assertTrue(out.endswith(b"250 2.1.0 Sender OK\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"),
                        out)

    async def test_notSMTP(self):
        """
        An HTTP request or a TLS handshake on the plain port is answered
        once and the connection dropped, whatever follows.
        """
        for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /login HTTP/1.0\r\n\r\n",
                     b"CONNECT mx.example.test:25 HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40):
            out = await deferToThread(exchange, self.port, data, b"goodbye\r\n")
            self.assertEqual(out, b"554 5.5.0 Not an SMTP client, goodbye\r\n", data)
        await self.stillServing()

    async def test_bareLineFeedCommand(self):
        """
        A command ended by a bare LF is refused with 500 5.5.2 and not run:
        the session is still open after C{QUIT<LF>}.
        """
        out = await deferToThread(steps, self.port, [(b"QUIT\n", b"\r\n"), (b"NOOP\r\n", b"250 2.0.0 OK\r\n"),
                                                     (b"QUIT\r\n", b"221 2.0.0 Bye\r\n")])
        self.assertEqual(out, b"500 5.5.2 Command lines must end with CRLF\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")

    async def test_repeatedRecipientCounts(self):
        """
        Every accepted RCPT counts towards max_recipients (100 here), the
        same address repeated too.
        """
        rcpts = b"RCPT TO:<alice@example.test>\r\n" * 110
        out = await deferToThread(steps, self.port, [
            EHLO, (b"MAIL FROM:<x@remote.test>\r\n" + rcpts + b"RSET\r\n", b"250 2.0.0 Reset state\r\n")])
        self.assertEqual(out.count(b"250 2.1.5"), 100)
        self.assertEqual(out.count(b"452 4.5.3 Too many recipients"), 10)

    async def test_overlongLines(self):
        """
        A 100 kB command line gets 500 5.5.2 and the session goes on; a
        5000-octet body line fails only that message with 554 5.6.0.
        """
        out = await deferToThread(steps, self.port, [(b"NOOP " + b"x" * 100_000 + b"\r\nNOOP\r\n", b"250 2.0.0 OK\r\n"),
                                                     (b"QUIT\r\n", b"221 2.0.0 Bye\r\n")])
        self.assertEqual(out, b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")
        body = b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\nRSET\r\nQUIT\r\n"
        out = await deferToThread(steps, self.port, [EHLO, TRANSACTION, (body, b"221 2.0.0 Bye\r\n")])
        self.assertTrue(out.endswith(b"554 5.6.0 Message has a line longer than 1000 octets\r\n"
                                     b"250 2.0.0 Reset state\r\n221 2.0.0 Bye\r\n"), out)
        await self.stillServing()

    async def test_nulBytes(self):
        """
        NUL bytes in commands get 500 5.5.2 and the session goes on.
        """
        out = await deferToThread(steps, self.port, [
            (b"EH\0LO c.test\r\nMAIL FROM:<a\0b@x.test>\r\nNOOP\r\n", b"250 2.0.0 OK\r\n"),
            (b"QUIT\r\n", b"221 2.0.0 Bye\r\n")])
        self.assertEqual(out, b"500 5.5.2 Syntax error, command unrecognized\r\n"
                              b"500 5.5.2 Syntax error, command unrecognized\r\n"
                              b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")

    async def test_commandStorm(self):
        """
        Two thousand pipelined RSETs in one write (after EHLO offered
        PIPELINING) get two thousand replies in order, while another client
        is served.
        """
        storm = deferToThread(steps, self.port, [EHLO, (b"RSET\r\n" * 2000 + b"QUIT\r\n", b"221 2.0.0 Bye\r\n")])
        await self.stillServing()
        out = await storm
        self.assertTrue(out.endswith(b"250 2.0.0 Reset state\r\n" * 2000 + b"221 2.0.0 Bye\r\n"))

    async def test_garbageFlood(self):
        """
        A client that sends only garbage is dropped after twenty errors with
        421 4.7.0, and the listener keeps serving.
        """
        out = await deferToThread(exchange, self.port, b"\xff\xfe garbage\r\n" * 50, b"closing connection\r\n")
        self.assertEqual(out.count(b"500 5.5.2"), 19)
        self.assertTrue(out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n"))
        await self.stillServing()
