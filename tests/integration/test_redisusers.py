"""
Two nodes (issue 17): two real server nodes with data directories of their
own share one redis-server (users, key vault), one Maildir directory
(C{[mailbox] mail_dir}) and one master key; an account the command line
adds or changes through one node's configuration is the same on both at
once, C{qutemail user import} copies a users file into Redis once, and
internal mail submitted on one node is read decrypted on the other.
"""

import glob
import imaplib
import os
import smtplib
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.backends.passwordhash import hashPassword
from qutemail.backends.userrecords import UserRecord, serialiseUserFile
from tests.backends.test_redislimiter import RedisServer
from tests.integration.support import CLIENT_TIMEOUT, insecureContext, runCLI, sharedNode, waitFor


class TwoNodesTests(TestCase):
    """
    Two nodes, one Redis.
    """

    timeout = 120

    async def setUp(self):
        """
        Start redis-server and two nodes using it, each with an IMAP port.
        """
        self.redis = RedisServer(self)
        redis = self.redis.start()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.shared = os.path.join(base, "shared-mail")
        masterKey = os.urandom(32)
        self.nodes = []
        self.servers = []
        for name in ("node1", "node2"):
            node, server = sharedNode(self, base, name, masterKey, f"redis://127.0.0.1:{redis}/0", self.shared,
                                      "[limits]\nmessages_per_user_hour = 4\n")
            self.servers.append(server)
            self.nodes.append(node)
            await deferToThread(server.start)
        self.base = base

    def login(self, node: int, address: str, password: str) -> bool:
        """
        Log in over IMAP on a node (blocking).

        @return: whether the login was accepted.
        """
        client = imaplib.IMAP4("127.0.0.1", self.nodes[node].imap, timeout=CLIENT_TIMEOUT)
        try:
            client.starttls(ssl_context=insecureContext())
            client.login(address, password)
            return True
        except imaplib.IMAP4.error:
            return False
        finally:
            client.shutdown()

    def cli(self, node: int, *args: str, stdin: str = ""):
        """
        Run the command line with a node's configuration.
        """
        return deferToThread(runCLI, self.nodes[node].config, *args, stdin=stdin, env=self.nodes[node].env)

    def mtaClient(self, node: int) -> smtplib.SMTP:
        """
        @return: an SMTP client of a node's MTA port, from outside (blocking).
        """
        return smtplib.SMTP("127.0.0.1", self.nodes[node].mta, local_hostname="c.remote.test",
                            timeout=CLIENT_TIMEOUT)

    def submitter(self, node: int, user: str) -> smtplib.SMTP:
        """
        @return: an SMTP client of a node's submission port, after STARTTLS
            and AUTH as C{user@example.test} (password C{pw-<user>}).
        """
        client = smtplib.SMTP("127.0.0.1", self.nodes[node].submission, local_hostname="c.test",
                              timeout=CLIENT_TIMEOUT)
        client.starttls(context=insecureContext())
        client.login(f"{user}@example.test", f"pw-{user}")
        return client

    async def test_sharedAccounts(self) -> None:
        """
        An account added through node 1 logs in on node 2; a password
        changed through node 2 is the one node 1 takes; a removed account
        is gone on both.
        """
        added = await self.cli(0, "user", "add", "bob@example.test", "--password-stdin", stdin="first\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertTrue(await deferToThread(self.login, 1, "bob@example.test", "first"))
        changed = await self.cli(1, "user", "passwd", "bob@example.test", "--password-stdin", stdin="second\n")
        self.assertEqual(changed.returncode, 0, changed.stderr)
        self.assertFalse(await deferToThread(self.login, 0, "bob@example.test", "first"))
        self.assertTrue(await deferToThread(self.login, 0, "bob@example.test", "second"))
        listed = await self.cli(1, "user", "list")
        self.assertIn("bob@example.test", listed.stdout)
        removed = await self.cli(0, "user", "del", "bob@example.test")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertFalse(await deferToThread(self.login, 1, "bob@example.test", "second"))

    async def test_import(self) -> None:
        """
        C{user import} copies a users file's accounts with their hashes
        (the old password logs in on both nodes); a second run adds
        nothing and keeps what Redis has.
        """
        path = os.path.join(self.base, "old-users")
        with open(path, "wb") as f:
            f.write(serialiseUserFile({"carol@example.test": UserRecord(hashPassword(b"old", 4), 1000),
                                       "dave@example.test": UserRecord(hashPassword(b"dd", 4), None)}))
        first = await self.cli(0, "user", "import", "--file", path)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertIn("imported 2 of 2 accounts", first.stdout)
        await self.cli(0, "user", "passwd", "carol@example.test", "--password-stdin", stdin="newer\n")
        again = await self.cli(1, "user", "import", "--file", path)
        self.assertIn("imported 0 of 2 accounts", again.stdout)
        self.assertTrue(await deferToThread(self.login, 1, "carol@example.test", "newer"))
        self.assertTrue(await deferToThread(self.login, 0, "dave@example.test", "dd"))
        listed = await self.cli(1, "user", "list")
        self.assertIn("carol@example.test", listed.stdout)

    async def test_internalMailAcrossNodes(self) -> None:
        """
        Bob submits to alice on node 1; the copy lands encrypted in the
        shared Maildir, and alice reads it decrypted over IMAP on node 2
        (the key from the shared vault, unwrapped with the shared master
        key).
        """
        for user in ("alice", "bob"):
            added = await self.cli(0, "user", "add", f"{user}@example.test", "--password-stdin", stdin=f"pw-{user}\n")
            self.assertEqual(added.returncode, 0, added.stderr)
        body = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: shared\r\n\r\nAcross the nodes.\r\n"

        def submit():
            client = self.submitter(0, "bob")
            client.sendmail("bob@example.test", ["alice@example.test"], body)
            client.quit()

        await deferToThread(submit)
        [stored] = await waitFor(lambda: glob.glob(os.path.join(self.shared, "example.test", "alice", "new", "*")))
        with open(stored, "rb") as f:
            self.assertNotIn(b"Across the nodes", f.read())

        def read():
            client = imaplib.IMAP4("127.0.0.1", self.nodes[1].imap, timeout=CLIENT_TIMEOUT)
            try:
                client.starttls(ssl_context=insecureContext())
                client.login("alice@example.test", "pw-alice")
                client.select("INBOX")
                _, data = client.fetch("1", "(BODY[TEXT])")
                return data[0][1]
            finally:
                client.shutdown()

        self.assertEqual(await deferToThread(read), b"Across the nodes.\r\n")

    async def test_idleWokenAcrossNodes(self) -> None:
        """
        An IDLE session on node 2 hears of a delivery made by node 1 within
        500 ms of the copy landing in the shared Maildir, and of a flag
        changed by a session on node 1 within 500 ms of the STORE (IDLE
        would poll only every 2 s): the notices came through Redis.
        """
        added = await self.cli(0, "user", "add", "alice@example.test", "--password-stdin", stdin="pw-alice\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        client = imaplib.IMAP4("127.0.0.1", self.nodes[1].imap, timeout=CLIENT_TIMEOUT)
        self.addCleanup(client.shutdown)

        def idle():
            client.starttls(ssl_context=insecureContext())
            client.login("alice@example.test", "pw-alice")
            client.select("INBOX")
            client.send(b"i1 IDLE\r\n")
            self.assertTrue(client.readline().startswith(b"+"))

        await deferToThread(idle)

        def waitForExists() -> float:
            while True:
                line = client.readline()
                if line.endswith(b"EXISTS\r\n"):
                    return time.monotonic()

        def send(n: int):
            smtp = self.mtaClient(0)
            smtp.sendmail("x@remote.test", ["alice@example.test"], b"Subject: wake %d\r\n\r\nup\r\n" % n)
            smtp.quit()

        # Three deliveries, so that polling alone (every 2 s) could not be
        # this quick each time by chance.
        for n in range(1, 4):
            heard = deferToThread(waitForExists)
            await deferToThread(send, n)
            # new/ or cur/: the IDLE session moves what it has seen.
            await waitFor(lambda: len(glob.glob(os.path.join(self.shared, "example.test", "alice", "*", "*.*"))) == n,
                          interval=0.005)
            landed = time.monotonic()
            self.assertLess(await heard - landed, 0.5, f"delivery {n}")

        # Flag changes on node 1 are heard the same way.
        other = imaplib.IMAP4("127.0.0.1", self.nodes[0].imap, timeout=CLIENT_TIMEOUT)
        self.addCleanup(other.shutdown)

        def openOther():
            other.starttls(ssl_context=insecureContext())
            other.login("alice@example.test", "pw-alice")
            other.select("INBOX")

        await deferToThread(openOther)

        def waitForFlags() -> float:
            while True:
                if b"FETCH (FLAGS" in client.readline():
                    return time.monotonic()

        for n in range(1, 4):
            heard = deferToThread(waitForFlags)
            stored = time.monotonic()
            await deferToThread(other.store, str(n), "+FLAGS", "(\\Flagged)")
            self.assertLess(await heard - stored, 0.5, f"flag change {n}")
        client.send(b"DONE\r\n")

    async def test_redisDown(self) -> None:
        """
        With Redis stopped, new logins fail closed for now (IMAP C{NO
        [UNAVAILABLE]}, SMTP AUTH C{454 4.7.0}) while an open session goes
        on; once Redis is back, logins work again.
        """
        added = await self.cli(0, "user", "add", "bob@example.test", "--password-stdin", stdin="pw-bob\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        open_ = imaplib.IMAP4("127.0.0.1", self.nodes[0].imap, timeout=CLIENT_TIMEOUT)
        self.addCleanup(open_.shutdown)

        def logIn():
            open_.starttls(ssl_context=insecureContext())
            open_.login("bob@example.test", "pw-bob")

        await deferToThread(logIn)
        await deferToThread(self.redis.kill)

        def imapAnswer(node: int) -> str:
            client = imaplib.IMAP4("127.0.0.1", self.nodes[node].imap, timeout=CLIENT_TIMEOUT)
            try:
                client.starttls(ssl_context=insecureContext())
                client.login("bob@example.test", "pw-bob")
                return "OK"
            except imaplib.IMAP4.error as e:
                return str(e)
            finally:
                client.shutdown()

        def smtpAuth() -> tuple[int, bytes]:
            client = smtplib.SMTP("127.0.0.1", self.nodes[0].submission, local_hostname="c.test",
                                  timeout=CLIENT_TIMEOUT)
            try:
                client.starttls(context=insecureContext())
                try:
                    client.login("bob@example.test", "pw-bob")
                    return 235, b""
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code, e.smtp_error
            finally:
                client.close()

        self.assertIn("[UNAVAILABLE]", await deferToThread(imapAnswer, 1))
        self.assertEqual(await deferToThread(smtpAuth), (454, b"4.7.0 Temporary authentication failure"))
        self.assertEqual((await deferToThread(open_.noop))[0], "OK")
        await deferToThread(self.redis.start)
        deadline = time.monotonic() + 30
        while await deferToThread(imapAnswer, 1) != "OK":
            self.assertLess(time.monotonic(), deadline, "logins did not come back with Redis")
            await deferToThread(time.sleep, 0.5)

    async def test_rateLimitAcrossNodes(self) -> None:
        """
        C{messages_per_user_hour = 4} counts bob's mail on both nodes
        together: two through each are accepted, the fifth (on either) is
        refused with 451 4.7.0.
        """
        for user in ("alice", "bob"):
            await self.cli(0, "user", "add", f"{user}@example.test", "--password-stdin", stdin=f"pw-{user}\n")

        def submit(node: int) -> int:
            client = self.submitter(node, "bob")
            try:
                try:
                    client.sendmail("bob@example.test", ["alice@example.test"],
                                    b"From: bob@example.test\r\nSubject: n\r\n\r\nx\r\n")
                    return 250
                except smtplib.SMTPSenderRefused as e:
                    return e.smtp_code
                except smtplib.SMTPRecipientsRefused as e:
                    return list(e.recipients.values())[0][0]
            finally:
                client.close()

        codes = [await deferToThread(submit, node) for node in (0, 1, 0, 1, 0, 1)]
        self.assertEqual(codes, [250, 250, 250, 250, 451, 451])

    async def test_quotaAcrossNodes(self) -> None:
        """
        Node 2 sees node 1's deliveries in alice's usage within a couple of
        seconds: after node 1 filled most of her quota, RCPT on node 2
        with a SIZE that no longer fits gets 452 4.2.2, though node 2 had
        read her usage (empty) just before.
        """
        await self.cli(0, "user", "add", "alice@example.test", "--password-stdin", stdin="pw-alice\n")
        await self.cli(0, "user", "quota", "alice@example.test", "3000")

        def rcpt(node: int, size: int) -> int:
            client = self.mtaClient(node)
            try:
                client.ehlo()
                self.assertEqual(client.mail("x@remote.test", [f"SIZE={size}"])[0], 250)
                return client.rcpt("alice@example.test")[0]
            finally:
                client.close()

        self.assertEqual(await deferToThread(rcpt, 1, 2000), 250)

        def send():
            client = self.mtaClient(0)
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 20)
            client.quit()

        await deferToThread(send)
        await waitFor(lambda: glob.glob(os.path.join(self.shared, "example.test", "alice", "new", "*")))
        await deferToThread(time.sleep, 1.5)
        self.assertEqual(await deferToThread(rcpt, 1, 2000), 452)

    async def test_acceptedMailSurvivesRedisOutage(self) -> None:
        """
        A message accepted (250) but not yet deliverable (alice's mailbox
        is full, 452 4.2.2 at delivery) waits in node 1's queue through a
        Redis outage, retried every second, and is delivered once, once
        Redis is back and her quota is raised.
        """
        await self.cli(0, "user", "add", "alice@example.test", "--password-stdin", stdin="pw-alice\n")
        await self.cli(0, "user", "quota", "alice@example.test", "1000")
        def send():
            client = self.mtaClient(0)
            try:
                client.ehlo()
                # No SIZE: RCPT sees an empty mailbox; the delivery finds it full.
                self.assertEqual(client.mail("x@remote.test")[0], 250)
                self.assertEqual(client.rcpt("alice@example.test")[0], 250)
                return client.data(b"Subject: kept\r\n\r\n" + (b"y" * 98 + b"\r\n") * 20)[0]
            finally:
                client.close()

        self.assertEqual(await deferToThread(send), 250)
        log = os.path.join(self.base, "node1.log")
        await waitFor(lambda: "deferred (452 4.2.2" in open(log).read())
        await deferToThread(self.redis.kill)
        await deferToThread(time.sleep, 3)
        await deferToThread(self.redis.start)
        deadline = time.monotonic() + 30
        while (await self.cli(0, "user", "quota", "alice@example.test", "100000")).returncode != 0:
            self.assertLess(time.monotonic(), deadline, "Redis did not come back")
            await deferToThread(time.sleep, 0.5)
        stored = await waitFor(lambda: glob.glob(os.path.join(self.shared, "example.test", "alice", "*", "*.*")),
                               timeout=60)
        await deferToThread(time.sleep, 2)
        self.assertEqual(len(glob.glob(os.path.join(self.shared, "example.test", "alice", "*", "*.*"))), 1, stored)

    async def test_queueListAll(self) -> None:
        """
        C{queue list --all} on one node shows each live node's queue (a
        message to an unreachable domain on each); a node that stops is
        gone from it.
        """
        await self.cli(0, "user", "add", "bob@example.test", "--password-stdin", stdin="pw-bob\n")

        def submit(node: int, to: str):
            client = self.submitter(node, "bob")
            client.sendmail("bob@example.test", [to], b"From: bob@example.test\r\nSubject: q\r\n\r\nx\r\n")
            client.quit()

        await deferToThread(submit, 0, "dave@one.test")
        await deferToThread(submit, 1, "erin@two.test")
        deadline = time.monotonic() + 20
        while True:
            listed = await self.cli(0, "queue", "list", "--all")
            self.assertEqual(listed.returncode, 0, listed.stderr)
            if "dave@one.test" in listed.stdout and "erin@two.test" in listed.stdout:
                break
            self.assertLess(time.monotonic(), deadline, listed.stdout)
            await deferToThread(time.sleep, 0.5)
        self.assertEqual(listed.stdout.count("== node mail.example.test ("), 2, listed.stdout)
        node2 = os.path.join(self.base, "node2")
        [block] = [b for b in listed.stdout.split("== node ")[1:] if b.startswith(f"mail.example.test ({node2})")]
        self.assertIn("erin@two.test", block)
        self.assertNotIn("dave@one.test", block)
        await deferToThread(self.servers[1].stop)
        listed = await self.cli(0, "queue", "list", "--all")
        self.assertNotIn(node2, listed.stdout)
        self.assertIn("dave@one.test", listed.stdout)
