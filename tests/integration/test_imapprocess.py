"""
IMAP against a real C{twistd qutemail} process (issue 6, acceptance item
6): a 25 MB internal message, stored encrypted, is fetched in full over
implicit TLS while the server's peak RSS grows by less than 40 MB.
"""

import hashlib
import imaplib
import os
import smtplib

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    ServerProcess,
    freePort,
    insecureContext,
    maildirFiles,
    runCLI,
    waitFor,
    writeConfig,
)


def resetPeak(pid: int) -> None:
    """
    Reset a process's peak RSS (C{VmHWM}) to its current RSS (Linux
    C{clear_refs}, value 5).
    """
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


class LargeFetchTests(TestCase):
    """
    The memory of the server while it decrypts and sends a 25 MB message.
    """

    timeout = 240

    async def test_largeFetchFlatMemory(self):
        """
        bob submits a 25 MB message to alice (stored encrypted); alice
        FETCHes BODY[] over implicit TLS and gets every byte, while the
        server's peak RSS grows by less than 40 MB over its RSS before the
        fetch.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        dataDir = os.path.join(base, "var")
        mta, submission, imaps = freePort(), freePort(), freePort()
        configPath = writeConfig(os.path.join(base, "qutemail.ini"), dataDir, mtaPort=mta,
                                 submissionPort=submission, maxMessageSize="30M")
        with open(configPath) as f:
            text = f.read()
        with open(configPath, "w") as f:
            f.write(text.replace("[imap]\nport = 0\ntls_port = 0\n", f"[imap]\nport = 0\ntls_port = {imaps}\n"))
        for user in ("alice", "bob"):
            result = runCLI(configPath, "user", "add", f"{user}@example.test", "--password-stdin",
                            stdin=f"pw-{user}\n")
            self.assertEqual(result.returncode, 0, result.stderr)
        server = ServerProcess(configPath, os.path.join(base, "twistd.log"), mta)
        await deferToThread(server.start)
        self.addCleanup(lambda: deferToThread(server.stop))

        line = b"0123456789" * 7 + b"abcdef\r\n"
        body = (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: big\r\n"
                b"Message-ID: <big-1@example.test>\r\n\r\n" + line * (25_000_000 // len(line)))

        def submit():
            client = smtplib.SMTP("127.0.0.1", submission, local_hostname="client.test", timeout=120)
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw-bob")
            client.sendmail("bob@example.test", ["alice@example.test"], body)
            client.quit()

        await deferToThread(submit)
        [stored] = await waitFor(lambda: maildirFiles(dataDir, "alice@example.test"), timeout=120)
        with open(stored, "rb") as f:
            self.assertIn(b"multipart/encrypted", f.read(4096))

        def login():
            client = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=insecureContext(), timeout=120)
            client.login("alice@example.test", "pw-alice")
            client.select("INBOX", readonly=True)
            return client

        # Warm up the session code on a small fetch, then measure.
        client = await deferToThread(login)
        await deferToThread(client.fetch, "1", "(RFC822.SIZE)")
        resetPeak(server.process.pid)
        baseline = server.rssKiB("VmRSS")
        _, data = await deferToThread(client.fetch, "1", "(BODY.PEEK[])")
        peak = server.rssKiB("VmHWM")
        await deferToThread(client.logout)
        fetched = data[0][1]
        self.assertTrue(fetched.endswith(body), (len(fetched), len(body)))
        self.assertEqual(hashlib.sha256(fetched[-len(body):]).digest(), hashlib.sha256(body).digest())
        growthMiB = (peak - baseline) / 1024
        self.assertLess(growthMiB, 40, f"peak RSS grew by {growthMiB:.1f} MiB")
