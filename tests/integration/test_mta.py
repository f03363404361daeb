"""
End-to-end tests of the MTA listener: the whole service tree from
L{qutemail.service.buildService}, listening on loopback, driven by Python's
smtplib in a thread.
"""

import email
import os
import smtplib
import socket

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.config import loadConfig
from qutemail.service import buildService
from tests.dnsserver import startDNSServer
from tests.integration.support import (
    CLIENT_TIMEOUT,
    REMOTE_ZONE,
    addTestUsers,
    insecureContext,
    maildirFiles,
    relaySection,
    waitFor,
    writeConfig,
)
from tests.relay.remote import selfSignedContext, startRemote


class RunningServerMixin:
    """
    Starts the real service tree on an ephemeral loopback port.
    """

    maxMessageSize = "1M"
    relayExtra = ""
    configExtra = ""

    async def setUp(self):
        """
        Start a loopback DNS server and remote exchanger for remote.test,
        create alice and bob, start the server, and find its ports.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.dataDir = os.path.join(base, "var")
        self.dns = await startDNSServer(self, REMOTE_ZONE)
        self.remote = await startRemote(self, tlsContext=selfSignedContext())
        extra = relaySection(self.dns, self.remote, self.relayExtra) + self.configExtra
        self.configPath = writeConfig(os.path.join(base, "qutemail.ini"), self.dataDir,
                                      maxMessageSize=self.maxMessageSize, extra=extra)
        os.makedirs(self.dataDir, exist_ok=True)
        addTestUsers(self.configPath)
        await self.startServer()

    async def startServer(self) -> None:
        """
        Build and start the service tree from C{self.configPath}, every
        listener on a free loopback port, and find the ports.
        """
        config = loadConfig(self.configPath, environ={})
        names = ("mta", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
        root = buildService(config, reactor, listen={name: "tcp:0:interface=127.0.0.1" for name in names})
        self.root = root
        root.startService()
        self.addCleanup(lambda: root.stopService() if root.running else None)
        self.ports = {}

        def listening(port, name):
            self.ports[name] = port.getHost().port

        await gatherResults([root.listeners[name].whenListening().addCallback(listening, name) for name in names])
        self.port = self.ports["mta"]

    async def restartServer(self) -> None:
        """
        Stop the service tree and start a new one on the same data.
        """
        await self.root.stopService()
        await self.startServer()

    def smtp(self, f, port: int | None = None, prepare=None):
        """
        Run C{f(client)} with a connected smtplib client in a thread.

        @param port: the port (the MTA port by default).
        @param prepare: called with the client first (EHLO, STARTTLS, AUTH).
        """

        def run():
            client = smtplib.SMTP("127.0.0.1", port or self.port, local_hostname="client.test",
                                  timeout=CLIENT_TIMEOUT)
            try:
                if prepare is not None:
                    prepare(client)
                return f(client)
            finally:
                try:
                    client.quit()
                except smtplib.SMTPServerDisconnected:
                    pass

        return deferToThread(run)

    def submit(self, f, user: str = "bob"):
        """
        Run C{f(client)} on the submission port after STARTTLS and AUTH as
        C{user@example.test} (password C{pw-<user>}).
        """

        def prepare(client):
            client.ehlo()
            client.starttls(context=insecureContext())
            client.ehlo()
            client.login(f"{user}@example.test", f"pw-{user}")

        return self.smtp(f, self.ports["submission"], prepare)


class MTATests(RunningServerMixin, TestCase):
    """
    Acceptance item 3 of issue 2, over real sockets.
    """

    async def test_ehloExtensions(self):
        """
        EHLO advertises SIZE with the limit, PIPELINING, 8BITMIME and
        ENHANCEDSTATUSCODES.
        """

        def ehlo(client):
            client.ehlo()
            return client.esmtp_features

        features = await self.smtp(ehlo)
        self.assertEqual(features["size"], str(1024 * 1024))
        for name in ("pipelining", "8bitmime", "enhancedstatuscodes"):
            self.assertIn(name, features)
        self.assertNotIn("auth", features)

    async def test_recipientVerdicts(self):
        """
        An unknown local user gets 550 5.1.1, another domain 554 5.7.1, and
        a declared SIZE over the limit 552 5.3.4.
        """

        def session(client):
            client.ehlo()
            out = [client.mail("x@remote.test")]
            out.append(client.rcpt("nobody@example.test"))
            out.append(client.rcpt("dave@remote.test"))
            client.rset()
            out.append(client.mail("x@remote.test", ["SIZE=%d" % (1024 * 1024 + 1)]))
            return out

        mail, unknown, relay, size = await self.smtp(session)
        self.assertEqual(mail[0], 250)
        self.assertEqual(unknown, (550, b"5.1.1 No such user here"))
        self.assertEqual(relay, (554, b"5.7.1 Relay access denied"))
        self.assertEqual(size, (552, b"5.3.4 Message size exceeds fixed maximum message size"))

    async def test_garbageThenMail(self):
        """
        A garbage command gets 500 and the session goes on to deliver.
        """

        def session(client):
            client.ehlo()
            garbage = client.docmd("FROBNICATE", "now")
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: after garbage\r\n\r\nok\r\n")
            return garbage

        garbage = await self.smtp(session)
        self.assertEqual(garbage, (500, b"5.5.2 Command unrecognized"))
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            self.assertIn(b"Subject: after garbage", f.read())

    async def test_twoLocalRecipients(self):
        """
        A message to two local users appears once in each Maildir C{new/},
        with a Received header naming this server, and the body intact.
        """
        body = b"From: x@remote.test\r\nSubject: to both\r\n\r\nfirst line\r\n.leading dot\r\n"

        def session(client):
            return client.sendmail("x@remote.test", ["alice@example.test", "bob@example.test"], body)

        refused = await self.smtp(session)
        self.assertEqual(refused, {})
        for user in ("alice@example.test", "bob@example.test"):
            [path] = await waitFor(lambda: maildirFiles(self.dataDir, user))
            self.assertIn(os.sep + "new" + os.sep, path)
            with open(path, "rb") as f:
                message = email.message_from_bytes(f.read())
            self.assertEqual(message["Subject"], "to both")
            self.assertIn("by mail.example.test (QutEmail) with ESMTP", message["Received"])
            self.assertEqual(message.get_payload(), "first line\n.leading dot\n")

    async def test_otherConnectionsServedDuringSlowClient(self):
        """
        A client that sends half a command and stalls does not hold up
        another session.
        """
        stalled = socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT)
        self.addCleanup(stalled.close)
        stalled.sendall(b"EHLO half")

        def session(client):
            return client.sendmail("x@remote.test", ["bob@example.test"], b"Subject: meanwhile\r\n\r\nx\r\n")

        self.assertEqual(await self.smtp(session), {})
