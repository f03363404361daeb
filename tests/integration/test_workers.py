"""
Tests of C{[server] workers}: extra SMTP processes sharing the MTA port.
"""

import os
import re
import signal
import smtplib
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.blocking import InlineRunner
from qutemail.config import loadConfig
from qutemail.message import Envelope, SpooledMessage
from qutemail.queue.journal import Journal
from qutemail.service import buildService
from tests.integration.support import (
    CLIENT_TIMEOUT,
    ServerProcess,
    freePort,
    maildirFiles,
    runCLI,
    waitFor,
    writeConfig,
)


def sequences(dataDir: str, address: str) -> list[int]:
    """
    The X-Seq header values of every message in a mailbox, sorted.
    """
    out = []
    for path in maildirFiles(dataDir, address):
        with open(path, "rb") as f:
            out.append(int(f.read().split(b"X-Seq: ")[1].split(b"\n")[0]))
    return sorted(out)


class WorkerProcessTests(TestCase):
    """
    The real C{twistd qutemail} with two workers.
    """

    timeout = 120

    def setUp(self):
        """
        A configuration with C{workers = 2} and alice.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.dataDir = os.path.join(base, "var")
        self.port = freePort()
        self.configPath = writeConfig(os.path.join(base, "q.ini"), self.dataDir, mtaPort=self.port, workers=2)
        result = runCLI(self.configPath, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.server = self.newServer()

    def newServer(self) -> ServerProcess:
        """
        A server for this configuration, logging (with its worker) to one file.
        """
        server = ServerProcess(self.configPath, os.path.join(self.base, "out.log"), self.port, logToStdout=True)
        self.addCleanup(server.kill)
        return server

    def sendMany(self, first: int, count: int, sessions: int):
        """
        Send C{count} messages over C{sessions} concurrent sessions.
        """

        def send(numbers):
            for i in numbers:
                client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="c.test", timeout=CLIENT_TIMEOUT)
                client.sendmail("x@remote.test", ["alice@example.test"],
                                b"Subject: %d\r\nX-Seq: %d\r\n\r\nbody\r\n" % (i, i))
                client.quit()

        numbers = list(range(first, first + count))
        return gatherResults([deferToThread(send, numbers[k::sessions]) for k in range(sessions)])

    async def test_sharedPort(self):
        """
        The main process starts one worker, which takes and delivers mail on
        the shared port by itself (shown with the main process frozen); mail
        sent over concurrent sessions is delivered once whichever process
        took it, and SIGTERM stops both.
        """
        await deferToThread(self.server.start)
        children = await waitFor(self.server.children)
        self.assertEqual(len(children), 1)
        # The worker is ready once it has recovered its own journal.
        await waitFor(lambda: os.path.isdir(os.path.join(self.dataDir, "queue", "journal-1")))
        # With the main process frozen, only the worker can take mail.
        os.kill(self.server.process.pid, signal.SIGSTOP)
        try:
            await self.sendMany(100, 1, 1)
            await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        finally:
            os.kill(self.server.process.pid, signal.SIGCONT)
        await self.sendMany(0, 40, 8)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) >= 41)
        self.assertEqual(sequences(self.dataDir, "alice@example.test"), list(range(40)) + [100])
        await deferToThread(self.server.stop)
        await waitFor(lambda: not os.path.exists(f"/proc/{children[0]}"), timeout=10)
        with open(os.path.join(self.base, "out.log")) as f:
            log = f.read()
        self.assertIn("started SMTP worker 1", log)
        self.assertNotIn("Traceback", log)
        # Both processes kept their start-up objects out of full
        # collections (qutemail.gcstartup).
        self.assertEqual(len(re.findall(r"froze \d+ start-up objects", log)), 2)

    async def test_workerDiesWithMain(self):
        """
        A C{kill -9} of the main process takes its worker down too, so the
        port is free for the restart, which delivers everything once.
        """
        await deferToThread(self.server.start)
        [child] = await waitFor(self.server.children)
        await self.sendMany(0, 20, 4)
        await deferToThread(self.server.kill)
        await waitFor(lambda: not os.path.exists(f"/proc/{child}"), timeout=10)
        restarted = self.newServer()
        await deferToThread(restarted.start)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) >= 20)
        await deferToThread(time.sleep, 1)
        self.assertEqual(sequences(self.dataDir, "alice@example.test"), list(range(20)))


class OrphanJournalTests(TestCase):
    """
    A journal left by a worker that the next run does not have.
    """

    async def test_orphanRecovered(self):
        """
        Messages in C{queue/journal-3} (a worker of an earlier run with four)
        are delivered by a main process configured with one worker.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        dataDir = os.path.join(base, "var")
        config = loadConfig(writeConfig(os.path.join(base, "q.ini"), dataDir), environ={})
        runner = InlineRunner()
        from qutemail.backends.userfile import FileUserDirectory

        os.makedirs(dataDir)
        FileUserDirectory(os.path.join(dataDir, "users"), runner, reactor, workFactor=4).addUser(
            "alice@example.test", b"pw")
        orphan = Journal(os.path.join(dataDir, "queue", "journal-3"), runner, reactor)
        orphan.recover()
        body = b"Received: x\nSubject: orphan\nX-Seq: 7\n\nbody\n"
        envelope = Envelope("x@remote.test", ("alice@example.test",), "c.test", "127.0.0.1", time.time())
        orphan.commit(SpooledMessage("ORPHAN1", envelope, len(body), inline=body))
        orphan._closeFile()
        root = buildService(config, reactor, listen={"mta": "tcp:0:interface=127.0.0.1"})
        root.startService()
        self.addCleanup(root.stopService)
        await waitFor(lambda: maildirFiles(dataDir, "alice@example.test"))
        self.assertEqual(sequences(dataDir, "alice@example.test"), [7])
