"""
Sentinel failover (issue 17, acceptance item 4): two real server nodes
share a Redis master and its replica through three real redis-sentinels
(C{[redis] url = redis-sentinel://...}), one Maildir directory and one
master key.  Both take internal mail (each delivery stores its key in the
shared vault) while the master is killed; the sentinels promote the
replica; logins work again on both nodes, and every message that got a
250 is delivered and read decrypted.
"""

import glob
import imaplib
import os
import re
import smtplib
import threading
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.backends.test_redissentinel import SentinelGroup, ask
from tests.integration.support import CLIENT_TIMEOUT, insecureContext, runCLI, sharedNode, waitFor

# Each message's body names it: node, then number.
_TOKEN = re.compile(rb"failover (n[01]-[0-9]+)")


class FailoverTests(TestCase):
    """
    Two nodes, one Redis master with a replica, three sentinels.
    """

    timeout = 120

    async def setUp(self):
        """
        Start the Redis group (the sentinels ready to fail over), add alice
        and bob through the command line (which finds the master through
        the sentinels too), and start two nodes, each with an IMAP port.
        """
        self.group = SentinelGroup(self)
        await deferToThread(self.group.start, True)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.shared = os.path.join(base, "shared-mail")
        masterKey = os.urandom(32)
        self.servers, self.nodes = [], []
        for name in ("node1", "node2"):
            node, server = sharedNode(self, base, name, masterKey, self.group.url(), self.shared,
                                      "[limits]\nmessages_per_user_hour = 0\n")
            self.servers.append(server)
            self.nodes.append(node)
        for user in ("alice", "bob"):
            added = await deferToThread(runCLI, self.nodes[0].config, "user", "add", f"{user}@example.test",
                                        "--password-stdin", stdin=f"pw-{user}\n", env=self.nodes[0].env)
            self.assertEqual(added.returncode, 0, added.stderr)
        await gatherResults([deferToThread(server.start) for server in self.servers], consumeErrors=True)

    def sendUntil(self, node: int, stop: threading.Event, accepted: list[str]) -> None:
        """
        Submit internal mail from bob to alice on a node, one authenticated
        session after another, until C{stop} is set (blocking).  A
        temporary failure (Redis away: AUTH, RCPT) costs the session; the
        next one begins a moment later.

        @param accepted: gets the name of each message answered 250.
        """
        client = None
        number = 0
        while not stop.is_set():
            number += 1
            token = f"n{node}-{number}"
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.nodes[node].submission, local_hostname="c.test",
                                          timeout=CLIENT_TIMEOUT)
                    client.starttls(context=insecureContext())
                    client.login("bob@example.test", "pw-bob")
                client.sendmail("bob@example.test", ["alice@example.test"],
                                f"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: {token}\r\n\r\n"
                                f"failover {token}\r\n".encode())
                accepted.append(token)
            except (smtplib.SMTPException, OSError):
                if client is not None:
                    client.close()
                client = None
            time.sleep(0.1)
        if client is not None:
            client.close()

    def login(self, node: int) -> bool:
        """
        Log alice in over IMAP on a node (blocking).

        @return: whether the login was accepted.
        """
        client = imaplib.IMAP4("127.0.0.1", self.nodes[node].imap, timeout=CLIENT_TIMEOUT)
        try:
            client.starttls(ssl_context=insecureContext())
            client.login("alice@example.test", "pw-alice")
            return True
        except imaplib.IMAP4.error:
            return False
        finally:
            client.shutdown()

    def readAll(self, node: int) -> set[str]:
        """
        Read alice's inbox over IMAP on a node, decrypted (blocking).

        @return: the names of the messages read.
        """
        client = imaplib.IMAP4("127.0.0.1", self.nodes[node].imap, timeout=CLIENT_TIMEOUT)
        try:
            client.starttls(ssl_context=insecureContext())
            client.login("alice@example.test", "pw-alice")
            client.select("INBOX")
            status, data = client.fetch("1:*", "(BODY[TEXT])")
            self.assertEqual(status, "OK", data)
            return {m.decode() for part in data if isinstance(part, tuple) for m in _TOKEN.findall(part[1])}
        finally:
            client.shutdown()

    async def test_masterKilled(self) -> None:
        """
        Both nodes take mail; the replica falls behind (frozen and cut off
        for 0.5 s, so that keys the master acknowledges then are on the
        master alone) and the master is killed (SIGKILL).  Once the
        sentinels have promoted the replica, a new IMAP login works on both
        nodes, and both take mail again; once the old master is back as a
        replica, every message that got a 250 is delivered, stored
        encrypted, and read decrypted over IMAP on each node: no accepted
        message was lost, nor the key to read it.
        """
        stop = threading.Event()
        self.addCleanup(stop.set)
        accepted: list[list[str]] = [[], []]
        senders = [deferToThread(self.sendUntil, node, stop, accepted[node]) for node in (0, 1)]
        await waitFor(lambda: all(len(a) >= 5 for a in accepted), timeout=20)

        # The replica falls behind: frozen, its link cut (what the master
        # held for it is dropped), so the master alone has what it takes
        # now; then the master dies.
        self.group.pause(self.group.replica)
        await deferToThread(ask, self.group.master.port, "CLIENT", "KILL", "TYPE", "replica")
        await deferLater(reactor, 0.5, lambda: None)
        await deferToThread(self.group.master.kill)
        self.group.resume(self.group.replica)
        await deferToThread(self.group.waitForMaster, self.group.replica.port)
        failedOver = time.monotonic()
        # The new master has no replica yet: vault writes fail (their
        # deliveries wait), and logins must not wait behind them.
        for node in (0, 1):
            while not await deferToThread(self.login, node):
                self.assertLess(time.monotonic() - failedOver, 20, f"no login on node {node + 1} after the failover")
                await deferLater(reactor, 0.2, lambda: None)

        await deferToThread(self.group.restartAsReplica, self.group.master, self.group.replica.port)
        counts = [len(a) for a in accepted]
        await waitFor(lambda: all(len(a) >= n + 3 for a, n in zip(accepted, counts)), timeout=20)
        stop.set()
        await gatherResults(senders, consumeErrors=True)

        names = set(accepted[0]) | set(accepted[1])
        mailbox = os.path.join(self.shared, "example.test", "alice")
        await waitFor(lambda: len(glob.glob(os.path.join(mailbox, "*", "*.*"))) >= len(names), timeout=30)
        deadline = time.monotonic() + 20
        for node in (0, 1):
            while names - (read := await deferToThread(self.readAll, node)):
                self.assertLess(time.monotonic(), deadline, f"accepted, not read on node {node + 1}: "
                                                            f"{sorted(names - read)}")
                await deferLater(reactor, 0.5, lambda: None)
        for path in glob.glob(os.path.join(mailbox, "*", "*.*")):
            with open(path, "rb") as f:
                self.assertIsNone(_TOKEN.search(f.read()), path)
