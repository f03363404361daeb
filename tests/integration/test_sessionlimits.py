"""
Session limits through the whole server on loopback (issue 20):
C{connections_per_ip} for each protocol apart, and C{max_sessions} over
every listener, each refused with its protocol's own reply.
"""

import socket

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, insecureContext, waitFor
from tests.integration.test_mta import RunningServerMixin

IMAP_PER_ADDRESS = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
IMAP_TOTAL = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
SMTP_TOTAL = b"421 4.7.0 Too many connections, try again later\r\n"
POP3_TOTAL = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"


class SessionLimitTests(RunningServerMixin, TestCase):
    """
    The service tree with C{connections_per_ip = 3} and C{max_sessions = 5},
    driven by raw sockets from 127.0.0.1.
    """

    configExtra = "\n[limits]\nconnections_per_ip = 3\nmax_sessions = 5\n"

    def setUp(self):
        """
        The running server, and no client sockets yet.
        """
        self.clients: list = []
        return super().setUp()

    def open(self, name: str, tls: bool = False):
        """
        Connect to listener C{name} in a thread and read the first line.

        @return: a Deferred firing with C{(client, firstLine)}; the client
            is closed at cleanup.
        """

        def run():
            sock = socket.create_connection(("127.0.0.1", self.ports[name]), timeout=CLIENT_TIMEOUT)
            if tls:
                sock = insecureContext().wrap_socket(sock)
            reader = sock.makefile("rb")
            client = (sock, reader)
            self.clients.append(client)
            return client, reader.readline()

        return deferToThread(run)

    async def openAdmitted(self, name: str, greeting: bytes):
        """
        Open a session that the server greets with C{greeting}.

        @return: the client.
        """
        client, line = await self.open(name)
        self.assertTrue(line.startswith(greeting), line)
        return client

    async def assertRefused(self, name: str, reply: bytes, tls: bool = False) -> None:
        """
        A new connection to C{name} gets only C{reply}, then the server
        closes it.
        """
        (sock, reader), line = await self.open(name, tls)
        rest = await deferToThread(reader.read)
        self.assertEqual((line, rest), (reply, b""))
        self.close((sock, reader))

    def close(self, client) -> None:
        """
        Close a client's socket.
        """
        sock, reader = client
        reader.close()
        sock.close()
        if client in self.clients:
            self.clients.remove(client)

    async def closeAll(self) -> None:
        """
        Close every client and wait until the server has counted them out.
        """
        for client in list(self.clients):
            self.close(client)
        await waitFor(lambda: self.root.sessionLimits.total == 0, timeout=10)

    async def test_perProtocolAndTotal(self):
        """
        A 4th IMAP session from 127.0.0.1 gets C{* BYE} while SMTP from it
        is still accepted; with 5 sessions open over SMTP, IMAP and POP3,
        the next of any kind (IMAP over TLS too) gets its protocol's
        refusal; once one closes, a new one is accepted.
        """
        limits = self.root.sessionLimits
        try:
            imap = [await self.openAdmitted("imap", b"* OK ") for _ in range(3)]
            await self.assertRefused("imap", IMAP_PER_ADDRESS)
            await self.openAdmitted("mta", b"220 ")
            await self.openAdmitted("pop3", b"+OK ")
            self.assertEqual(limits.total, 5)
            await self.assertRefused("mta", SMTP_TOTAL)
            await self.assertRefused("pop3", POP3_TOTAL)

            self.close(imap[0])
            await waitFor(lambda: limits.total == 4, timeout=10)
            submission = await self.openAdmitted("submission", b"220 ")
            self.assertEqual(limits.total, 5)
            await self.assertRefused("imap", IMAP_TOTAL)
            await self.assertRefused("imaps", IMAP_TOTAL, tls=True)
            await self.assertRefused("smtps", SMTP_TOTAL, tls=True)
            await self.assertRefused("pop3s", POP3_TOTAL, tls=True)
            self.assertEqual(limits.total, 5)

            self.close(submission)
            await waitFor(lambda: limits.total == 4, timeout=10)
            await self.openAdmitted("imap", b"* OK ")
            self.assertEqual(limits.total, 5)
        finally:
            await self.closeAll()
