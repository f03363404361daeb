"""
C{qutemail queue adopt} end to end (issue 17): node 1 queues mail for a
remote exchanger that is down and is stopped; node 2, running, adopts node
1's queue and delivers every message once; node 1, started again, has
nothing left to send.  While node 1 runs, its queue cannot be adopted and
a second server cannot start on its C{data_dir}.
"""

import os
import signal
import smtplib

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    CLIENT_TIMEOUT, ServerProcess, freePort, insecureContext, runCLI, waitFor, writeConfig,
)
from tests.relay.remote import RemoteMX

MESSAGES = 4


class QueueAdoptTests(TestCase):
    """
    Two nodes with data directories of their own; node 2 adopts node 1's
    queue.
    """

    timeout = 120

    async def setUp(self) -> None:
        """
        Write both nodes' configurations: mail for branch.test goes to a
        fixed loopback port where nothing listens yet.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.remotePort = freePort()
        self.nodes = []
        for name in ("node1", "node2"):
            mta, submission = freePort(), freePort()
            dataDir = os.path.join(base, name)
            config = writeConfig(os.path.join(base, f"{name}.ini"), dataDir, mtaPort=mta, submissionPort=submission,
                                 extra=f"\n[relay]\nretry_schedule = 1s\nnameservers = 127.0.0.1:9\n"
                                       f"routes = branch.test=127.0.0.1:{self.remotePort}\n"
                                       f"[inbound]\nchecks = no\n")
            server = ServerProcess(config, os.path.join(base, f"{name}.log"), mta)
            self.addCleanup(server.kill)
            self.nodes.append((config, dataDir, server, submission))
        result = await deferToThread(runCLI, self.nodes[0][0], "user", "add", "bob@example.test",
                                     "--password-stdin", stdin="pw-bob\n")
        self.assertEqual(result.returncode, 0, result.stderr)

    def cli(self, node: int, *args: str):
        """
        Run the command line with a node's configuration.
        """
        return deferToThread(runCLI, self.nodes[node][0], *args)

    def submit(self, number: int) -> None:
        """
        Submit one message for erin@branch.test to node 1 (blocking).
        """
        client = smtplib.SMTP("127.0.0.1", self.nodes[0][3], local_hostname="c.test", timeout=CLIENT_TIMEOUT)
        try:
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw-bob")
            client.sendmail("bob@example.test", ["erin@branch.test"],
                            f"From: bob@example.test\r\nTo: erin@branch.test\r\n"
                            f"Message-ID: <m{number}@example.test>\r\nSubject: {number}\r\n\r\n"
                            f"message {number}\r\n".encode())
        finally:
            client.quit()

    async def queued(self, node: int) -> str:
        """
        @return: what C{queue list} prints on a node.
        """
        result = await self.cli(node, "queue", "list")
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    async def test_adopt(self) -> None:
        """
        Every message node 1 queued is delivered once, by node 2, after
        the adoption; adopting again finds nothing; node 1 restarted sends
        nothing.
        """
        config1, dataDir1, server1, _ = self.nodes[0]
        server2 = self.nodes[1][2]
        await deferToThread(server1.start)
        for number in range(MESSAGES):
            await deferToThread(self.submit, number)
        # Each tried and deferred: the exchanger does not answer.
        await self.waitForQueue(0, MESSAGES)

        # A running node's queue is not adopted, nor its data_dir shared.
        await deferToThread(server2.start)
        refused = await self.cli(1, "queue", "adopt", dataDir1)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("is running", refused.stderr)
        second = ServerProcess(config1, dataDir1 + "-second.log", freePort())
        self.addCleanup(second.kill)
        failure = await deferToThread(self.assertRaises, AssertionError, second.start)
        self.assertIn("is in use by a running server", str(failure))

        self.assertIn(await deferToThread(server1.stop), (0, -signal.SIGTERM))
        remote = RemoteMX()
        listening = reactor.listenTCP(self.remotePort, remote, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        adopted = await self.cli(1, "queue", "adopt", dataDir1)
        self.assertEqual(adopted.returncode, 0, adopted.stderr)
        self.assertEqual(adopted.stdout.strip(),
                         f"adopted {MESSAGES} deferred entries and 0 unfinished messages from {dataDir1}")
        await waitFor(lambda: len(remote.received) >= MESSAGES)
        await self.waitForQueue(1, 0)
        again = await self.cli(1, "queue", "adopt", dataDir1)
        self.assertEqual(again.stdout.strip(), f"adopted 0 deferred entries and 0 unfinished messages from {dataDir1}")

        await deferToThread(server1.start)
        self.assertEqual(await self.queued(0), "queue is empty\n")
        flushed = await self.cli(0, "queue", "flush")
        self.assertEqual(flushed.returncode, 0, flushed.stderr)
        await deferToThread(server1.stop)
        await deferToThread(server2.stop)
        ids = sorted(r.data.split(b"Message-ID: ")[1].split(b"\r\n")[0] for r in remote.received)
        self.assertEqual(ids, [f"<m{n}@example.test>".encode() for n in range(MESSAGES)])
        with open(os.path.join(dataDir1, "queue", "adopted")) as note:
            self.assertIn(f"{MESSAGES} deferred entries", note.read())

    async def waitForQueue(self, node: int, count: int) -> None:
        """
        Wait until a node's C{queue list} shows C{count} messages.
        """
        async def listed():
            text = await self.queued(node)
            return text == "queue is empty\n" if count == 0 else text.count("erin@branch.test") == count

        for _ in range(300):
            if await listed():
                return
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"node {node + 1}'s queue never held {count} messages: {await self.queued(node)}")
