"""
IMAP through the whole server (issue 6, acceptance items 3 to 5): UIDs
that survive a restart, IDLE seeing a delivery, APPEND to Sent, flags
shared between sessions and kept in the Maildir file names, and no way
into another user's mailbox.
"""

import imaplib
import os
import re
import socket

from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, insecureContext, maildirFiles, waitFor
from tests.integration.test_mta import RunningServerMixin


def note(subject: str) -> bytes:
    """
    A small message from outside, CRLF line ends.
    """
    return (f"From: carol@remote.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{subject}\r\n").encode("ascii")


class IMAPServiceTests(RunningServerMixin, TestCase):
    """
    The IMAP listeners of the service tree, driven by imaplib and a raw TLS
    socket (for IDLE).
    """

    def deliver(self, subject: str, to: str = "alice@example.test"):
        """
        Deliver a message from outside over the MTA port.
        """
        return self.smtp(lambda c: c.sendmail("carol@remote.test", [to], note(subject)))

    def imap(self, f, user: str = "alice"):
        """
        Run C{f(client)} in a thread with an imaplib client logged in as
        C{user} over implicit TLS.
        """

        def run():
            client = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=insecureContext(),
                                       timeout=CLIENT_TIMEOUT)
            try:
                client.login(f"{user}@example.test", f"pw-{user}")
                return f(client)
            finally:
                try:
                    client.logout()
                except (imaplib.IMAP4.error, OSError):
                    pass

        return deferToThread(run)

    @staticmethod
    def uids(client, folder: str = "INBOX") -> tuple[bytes, list[bytes]]:
        """
        SELECT a folder: its UIDVALIDITY and its messages' UIDs.
        """
        client.select(folder)
        validity = client.response("UIDVALIDITY")[1][0]
        _, data = client.uid("SEARCH", "ALL")
        return validity, data[0].split()

    async def test_uidsSurviveRestart(self):
        """
        UIDVALIDITY and every UID are the same after a restart of the
        server, and a message delivered after it gets a greater UID.
        """
        for n in range(3):
            await self.deliver(f"before {n}")
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 3)
        before = await self.imap(self.uids)
        self.assertEqual(len(before[1]), 3)
        await self.restartServer()
        after = await self.imap(self.uids)
        self.assertEqual(after, before)
        await self.deliver("after restart")
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 4)
        validity, uids = await self.imap(self.uids)
        self.assertEqual((validity, uids[:3]), before)
        self.assertGreater(int(uids[3]), max(int(u) for u in before[1]))

    async def test_idleSeesDelivery(self):
        """
        A message delivered while alice is in IDLE is announced to her with
        an untagged EXISTS.
        """
        await self.deliver("first")
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 1)
        connection = reader = None

        def command(line: bytes, until: bytes) -> list[bytes]:
            connection.sendall(line + b"\r\n")
            lines = []
            while True:
                got = reader.readline()
                if not got:
                    raise AssertionError(f"connection closed; got {lines}")
                lines.append(got)
                if got.startswith(until):
                    return lines

        def startIdle():
            nonlocal connection, reader
            raw = socket.create_connection(("127.0.0.1", self.ports["imaps"]), timeout=CLIENT_TIMEOUT)
            connection = insecureContext().wrap_socket(raw)
            self.addCleanup(connection.close)
            reader = connection.makefile("rb")
            reader.readline()  # greeting
            command(b"a LOGIN alice@example.test pw-alice", b"a ")
            selected = command(b"b SELECT INBOX", b"b ")
            return selected, command(b"c IDLE", b"+")

        selected, _ = await deferToThread(startIdle)
        self.assertIn(b"* 1 EXISTS\r\n", selected)
        await self.deliver("during idle")

        def waitExists():
            return reader.readline()

        announced = await deferToThread(waitExists)
        self.assertEqual(announced, b"* 2 EXISTS\r\n")

        def stop():
            done = command(b"DONE", b"c ")
            command(b"d LOGOUT", b"d ")
            return done

        done = await deferToThread(stop)
        self.assertTrue(done[-1].startswith(b"c OK"), done)

    async def test_appendToSent(self):
        """
        APPEND to Sent, then SELECT Sent and FETCH, gives back the appended
        message with its flag; the file in the folder is ciphertext.
        """
        message = note("my own copy")

        def run(client):
            status, _ = client.append("Sent", r"(\Seen)", None, message)
            client.select("Sent")
            _, data = client.fetch("1", "(FLAGS BODY.PEEK[])")
            return status, data[0][0], data[0][1]

        status, head, fetched = await self.imap(run)
        self.assertEqual(status, "OK")
        self.assertIn(rb"\Seen", head)
        self.assertEqual(fetched, message)
        sentCur = os.path.join(self.dataDir, "mail", "example.test", "alice", ".Sent", "cur")
        [name] = os.listdir(sentCur)
        with open(os.path.join(sentCur, name), "rb") as f:
            stored = f.read()
        # stored encrypted at rest, as internal mail is
        self.assertIn(b"multipart/encrypted", stored)
        self.assertNotIn(b"my own copy\r\n", stored.replace(b"\n", b"\r\n"))

    async def test_flagsSharedAndStored(self):
        """
        Flags set in one session are seen by another and are in the Maildir
        file name's C{:2,} suffix.
        """
        await self.deliver("flag me")
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 1)

        def setFlags(client):
            client.select("INBOX")
            return client.store("1", "+FLAGS", r"(\Flagged \Answered)")

        await self.imap(setFlags)

        def readFlags(client):
            client.select("INBOX", readonly=True)
            return client.fetch("1", "(FLAGS)")[1][0]

        flags = await self.imap(readFlags)
        self.assertIn(rb"\Flagged", flags)
        self.assertIn(rb"\Answered", flags)
        [path] = maildirFiles(self.dataDir, "alice@example.test")
        self.assertRegex(os.path.basename(path), r":2,[A-Z]*F")
        self.assertRegex(os.path.basename(path), r":2,[A-Z]*R")
        self.assertEqual(os.path.basename(os.path.dirname(path)), "cur")

    async def test_otherUsersUnreachable(self):
        """
        alice cannot SELECT, EXAMINE or STATUS any folder of bob's, by any
        path; each attempt gets NO and is logged; LIST shows none of his.
        """
        await self.deliver("for bob", to="bob@example.test")
        await waitFor(lambda: len(maildirFiles(self.dataDir, "bob@example.test")) == 1)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        attempts = ["../bob", "../../bob/INBOX", "../bob/INBOX", "../../example.test/bob", "/etc",
                    "..", "bob", "../../../etc/passwd", ".bob", "INBOX/../../bob"]

        def run(client):
            answers = []
            for name in attempts:
                quoted = '"' + name + '"'
                answers.append((client.select(quoted)[0], client.status(quoted, "(MESSAGES)")[0]))
            _, listing = client.list()
            return answers, listing

        answers, listing = await self.imap(run)
        self.assertEqual(answers, [("NO", "NO")] * len(attempts))
        self.assertFalse([line for line in listing if b"bob" in line.lower()], listing)
        text = " ".join(str(event.get("log_format", "")) + repr(sorted(event.items(), key=str))
                        for event in events)
        for name in ("../bob", "../../bob/INBOX"):
            self.assertIn(name, text)
        refusals = [e for e in events if "alice@example.test" in repr(e) and re.search(r"\.\./bob", repr(e))]
        self.assertTrue(refusals)

    async def test_shutdownSaysBye(self):
        """
        Stopping the server sends an open session an untagged BYE and closes
        it.
        """

        def login():
            client = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=insecureContext(),
                                       timeout=CLIENT_TIMEOUT)
            client.login("alice@example.test", "pw-alice")
            client.select("INBOX")
            return client

        client = await deferToThread(login)
        self.addCleanup(client.shutdown)
        await self.root.stopService()

        def readRest():
            return client.readline(), client.readline()

        bye, end = await deferToThread(readRest)
        self.assertTrue(bye.startswith(b"* BYE "), bye)
        self.assertEqual(end, b"")
