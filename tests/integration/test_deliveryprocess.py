"""
The delivery process in the real server: C{twistd qutemail} with
C{[server] delivery_process} on (the default) and off.
"""

import os
import signal
import smtplib

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    CLIENT_TIMEOUT,
    ServerProcess,
    freePort,
    maildirFiles,
    runCLI,
    waitFor,
    writeConfig,
)

CHILD = "qutemail.store.deliveryworker"


class DeliveryProcessServerTests(TestCase):
    """
    Mail accepted over SMTP is written by the delivery process.
    """

    timeout = 120

    def startServer(self, serverExtra: str = "") -> ServerProcess:
        """
        Start a server with alice, and C{serverExtra} in C{[server]}.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.dataDir = os.path.join(base, "var")
        self.port = freePort()
        configPath = writeConfig(os.path.join(base, "q.ini"), self.dataDir, mtaPort=self.port, serverExtra=serverExtra)
        result = runCLI(configPath, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        server = ServerProcess(configPath, os.path.join(base, "out.log"), self.port, logToStdout=True)
        self.addCleanup(server.kill)
        server.start()
        return server

    def send(self, number: int):
        """
        Send one message to alice.
        """

        def send():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="c.test", timeout=CLIENT_TIMEOUT)
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % number)
            client.quit()

        return deferToThread(send)

    def log(self) -> str:
        """
        @return: what the server logged so far.
        """
        with open(os.path.join(self.base, "out.log")) as f:
            return f.read()

    async def test_childWritesAndIsReplaced(self):
        """
        The server runs one delivery process; mail is delivered through
        it; when it is killed, the server starts another and goes on
        delivering; SIGTERM stops both.
        """
        server = self.startServer()
        [child] = await waitFor(lambda: server.children(CHILD))
        await self.send(1)
        # Delivered as far as the server knows (the file alone appears
        # before the child's answer reaches the server).
        await waitFor(lambda: "alice@example.test: delivered" in self.log())
        os.kill(child, signal.SIGKILL)
        await waitFor(lambda: "the delivery process ended" in self.log())
        await self.send(2)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 2)
        [second] = server.children(CHILD)
        self.assertNotEqual(second, child)
        await deferToThread(server.stop)
        self.assertFalse(os.path.exists(f"/proc/{second}"))
        self.assertIn("Server Shut Down.", self.log())
        self.assertNotIn("Traceback", self.log())

    async def test_diesWithServer(self):
        """
        A C{kill -9} of the server takes its delivery process down too.
        """
        server = self.startServer()
        [child] = await waitFor(lambda: server.children(CHILD))
        await deferToThread(server.kill)
        await waitFor(lambda: not os.path.exists(f"/proc/{child}"), timeout=10)

    async def test_off(self):
        """
        With C{delivery_process = no} there is no child, and mail is
        delivered by the server's own threads.
        """
        server = self.startServer("delivery_process = no\n")
        await self.send(1)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 1)
        self.assertEqual(server.children(CHILD), [])
