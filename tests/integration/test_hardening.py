"""
Raw-socket tests of the SMTP listeners' hardening (issue 3): smuggling,
early talkers, over-long lines, NUL bytes and command storms, each checked
for a precise reply and for the listener still serving others.
"""

import socket

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, maildirFiles, waitFor
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


ENVELOPE = b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"


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
            out = await deferToThread(exchange, self.port, ENVELOPE + body, b"221 2.0.0 Bye\r\n")
            self.assertIn(b"554 5.6.0 Bare CR or LF in message data is not allowed\r\n", out, fake)
            self.assertNotIn(b"Ok: queued", out)
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])
        self.assertEqual(maildirFiles(self.dataDir, "bob@example.test"), [])
        await self.stillServing()

    async def test_earlyTalker(self):
        """
        A client that sends its whole session before reading the greeting
        gets every reply in order, and the message is delivered once.
        """
        data = ENVELOPE + b"Subject: early\r\n\r\nbody\r\n.\r\nQUIT\r\n"
        out = await deferToThread(exchange, self.port, data, b"221 2.0.0 Bye\r\n", False)
        self.assertTrue(out.startswith(b"220 "))
        self.assertIn(b"250 2.0.0 Ok: queued as", out)
        await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))

    async def test_overlongLines(self):
        """
        A 100 kB command line gets 500 5.5.2 and the session goes on; a
        5000-octet body line fails only that message with 554 5.6.0.
        """
        out = await deferToThread(exchange, self.port, b"NOOP " + b"x" * 100_000 + b"\r\nNOOP\r\nQUIT\r\n",
                                  b"221 2.0.0 Bye\r\n")
        self.assertEqual(out, b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")
        data = ENVELOPE + b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\nNOOP\r\nQUIT\r\n"
        out = await deferToThread(exchange, self.port, data, b"221 2.0.0 Bye\r\n")
        self.assertTrue(out.endswith(b"554 5.6.0 Message has a line longer than 1000 octets\r\n"
                                     b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"), out)
        await self.stillServing()

    async def test_nulBytes(self):
        """
        NUL bytes in commands get 500 5.5.2 and the session goes on.
        """
        out = await deferToThread(exchange, self.port, b"EH\0LO c.test\r\nMAIL FROM:<a\0b@x.test>\r\nNOOP\r\nQUIT\r\n",
                                  b"221 2.0.0 Bye\r\n")
        self.assertEqual(out, b"500 5.5.2 Syntax error, command unrecognized\r\n"
                              b"500 5.5.2 Syntax error, command unrecognized\r\n"
                              b"250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")

    async def test_commandStorm(self):
        """
        Two thousand pipelined NOOPs in one write get two thousand replies
        in order, while another client is served.
        """
        storm = deferToThread(exchange, self.port, b"NOOP\r\n" * 2000 + b"QUIT\r\n", b"221 2.0.0 Bye\r\n")
        await self.stillServing()
        out = await storm
        self.assertEqual(out, b"250 2.0.0 OK\r\n" * 2000 + b"221 2.0.0 Bye\r\n")

    async def test_garbageFlood(self):
        """
        A client that sends only garbage is dropped after twenty errors with
        421 4.7.0, and the listener keeps serving.
        """
        out = await deferToThread(exchange, self.port, b"\xff\xfe garbage\r\n" * 50, b"closing connection\r\n")
        self.assertEqual(out.count(b"500 5.5.2"), 19)
        self.assertTrue(out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n"))
        await self.stillServing()
