"""
Reading mail through the whole server (issue 6, acceptance items 1 and 2):
bob submits to alice over 587, alice's Maildir file holds ciphertext, and
Python's imaplib and poplib, mbsync (isync) and fetchmail each log in over
TLS and retrieve the message as bob sent it, apart from trace fields.
"""

import imaplib
import os
import poplib
import re
import subprocess

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, insecureContext, maildirFiles, waitFor
from tests.integration.test_mta import RunningServerMixin
from tests.support import requireCommand

SENT = (b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: read me\r\n"
        b"Message-ID: <reading-1@example.test>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nfirst line\r\n.a dotted line\r\n"
        b"caf\xc3\xa9 \xe2\x82\xac\r\n\r\nlast line\r\n")

# Fields a client or our delivery may put in front of the message.
_TRACE = (b"return-path:", b"received:", b"delivered-to:", b"x-original-to:")


def withoutTrace(data: bytes) -> bytes:
    """
    A retrieved message with CRLF line ends and the leading trace fields
    (with their continuation lines) removed.
    """
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    position = 0
    while position < len(lines):
        line = lines[position]
        if line.lower().startswith(_TRACE):
            position += 1
            while position < len(lines) and lines[position][:1] in (b" ", b"\t"):
                position += 1
            continue
        break
    return b"\r\n".join(lines[position:])


class ReadingTests(RunningServerMixin, TestCase):
    """
    Every reader gets bob's internal message decrypted; the disk has only
    ciphertext.
    """

    async def setUp(self):
        """
        Start the server, and have bob send alice the message.
        """
        await RunningServerMixin.setUp(self)
        await self.submit(lambda c: c.sendmail("bob@example.test", ["alice@example.test"], SENT))
        [self.storedPath] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(self.storedPath, "rb") as f:
            stored = f.read()
        self.assertIn(b"multipart/encrypted", stored)
        for line in (b"first line", b"last line", b"read me", b"caf\xc3\xa9"):
            self.assertNotIn(line, stored)
        self.certificate = os.path.join(self.dataDir, "keys", "tls-cert.pem")

    def assertAsSent(self, retrieved: bytes) -> None:
        """
        The retrieved message is what bob sent, apart from trace fields.
        """
        self.assertEqual(withoutTrace(retrieved), SENT)

    async def test_imaplibSTARTTLS(self):
        """
        Before STARTTLS the server advertises LOGINDISABLED and refuses
        LOGIN; after it, imaplib logs in and FETCHes the message.
        """

        def session():
            client = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=CLIENT_TIMEOUT)
            try:
                before = client.capabilities
                try:
                    client.login("alice@example.test", "pw-alice")
                    refused = None
                except imaplib.IMAP4.error as e:
                    refused = str(e)
                client.starttls(ssl_context=insecureContext())
                client.login("alice@example.test", "pw-alice")
                client.select("INBOX")
                _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
                return before, refused, data[0][1]
            finally:
                try:
                    client.logout()
                except (imaplib.IMAP4.error, OSError):
                    pass

        before, refused, message = await deferToThread(session)
        self.assertIn("LOGINDISABLED", before)
        self.assertIsNotNone(refused)
        self.assertAsSent(message)

    async def test_imaplibImplicitTLS(self):
        """
        On the implicit-TLS port imaplib logs in at once and reads the
        message; its RFC822.SIZE is the decrypted message's size.
        """

        def session():
            client = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=insecureContext(),
                                       timeout=CLIENT_TIMEOUT)
            try:
                client.login("alice@example.test", "pw-alice")
                client.select("INBOX", readonly=True)
                _, data = client.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
                return data[0][0], data[0][1]
            finally:
                client.logout()

        head, message = await deferToThread(session)
        self.assertAsSent(message)
        self.assertIn(b"RFC822.SIZE %d" % (len(message),), head)

    async def test_poplib(self):
        """
        poplib refuses USER before STLS, then reads the message after it.
        """

        def session():
            client = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=CLIENT_TIMEOUT)
            try:
                try:
                    client.user("alice@example.test")
                    refused = None
                except poplib.error_proto as e:
                    refused = e.args[0]
                client.stls(context=insecureContext())
                client.user("alice@example.test")
                client.pass_("pw-alice")
                _, lines, _ = client.retr(1)
                return refused, b"\r\n".join(lines) + b"\r\n"
            finally:
                client.quit()

        refused, message = await deferToThread(session)
        self.assertTrue(refused.startswith(b"-ERR"), refused)
        self.assertAsSent(message)

    async def test_mbsync(self):
        """
        mbsync pulls alice's INBOX over implicit TLS (trusting exactly the
        server's certificate) into a local Maildir.
        """
        requireCommand(self, "mbsync")
        base = os.path.abspath(self.mktemp())
        local = os.path.join(base, "local")
        os.makedirs(local)
        passwordFile = os.path.join(base, "password")
        with open(passwordFile, "w") as f:
            f.write("pw-alice")
        config = os.path.join(base, "mbsyncrc")
        with open(config, "w") as f:
            f.write(
                f"IMAPAccount alice\nHost 127.0.0.1\nPort {self.ports['imaps']}\nUser alice@example.test\n"
                f"PassCmd \"cat {passwordFile}\"\nSSLType IMAPS\nCertificateFile {self.certificate}\n\n"
                f"IMAPStore remote\nAccount alice\n\n"
                f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\n\n"
                f"Channel alice\nFar :remote:\nNear :local:\nPatterns INBOX\nSync Pull\nCreate Near\n"
                f"SyncState *\n"
            )
        result = await deferToThread(
            subprocess.run, ["mbsync", "-c", config, "-a"], capture_output=True, timeout=60,
            env=dict(os.environ, HOME=base))
        self.assertEqual(result.returncode, 0, result.stderr.decode("utf-8", "replace"))
        inbox = os.path.join(local, "INBOX")
        files = [os.path.join(inbox, sub, name) for sub in ("new", "cur")
                 for name in os.listdir(os.path.join(inbox, sub))]
        self.assertEqual(len(files), 1, files)
        with open(files[0], "rb") as f:
            copied = f.read()
        # mbsync's own bookkeeping field (its transaction id), added at the
        # end of the header section of each copy it makes
        copied, tuids = re.subn(rb"\nX-TUID: [A-Za-z0-9+/]+\r?\n", b"\n", copied, count=1)
        self.assertEqual(tuids, 1)
        self.assertAsSent(copied)

    async def test_fetchmail(self):
        """
        fetchmail fetches alice's message over POP3 with implicit TLS
        (certificate checked against the server's own) and hands it to a
        delivery command, keeping it on the server.
        """
        requireCommand(self, "fetchmail")
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        out = os.path.join(base, "delivered")
        rc = os.path.join(base, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                f"poll mail.example.test via 127.0.0.1 protocol pop3 service {self.ports['pop3s']}\n"
                f"  user \"alice@example.test\" password \"pw-alice\" is alice here\n"
                f"  ssl sslcertck sslcertfile \"{self.certificate}\" sslcommonname mail.example.test\n"
                f"  keep fetchall mda \"cat > {out}\"\n"
            )
        os.chmod(rc, 0o600)
        result = await deferToThread(
            subprocess.run, ["fetchmail", "-f", rc, "--nodetach", "--pidfile", os.path.join(base, "pid")],
            capture_output=True, timeout=60, env=dict(os.environ, HOME=base, FETCHMAILHOME=base))
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode("utf-8", "replace"))
        with open(out, "rb") as f:
            self.assertAsSent(f.read())
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [self.storedPath])
