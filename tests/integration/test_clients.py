"""
Real mail clients against the submission listeners: swaks and msmtp
(Debian packages, installed by C{.ci/run}), as issue 3 asks.
"""

import subprocess

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import maildirFiles, readAsOwner, waitFor
from tests.support import requireCommand
from tests.integration.test_mta import RunningServerMixin


class ClientTests(RunningServerMixin, TestCase):
    """
    swaks and msmtp submit over 587 (STARTTLS, AUTH PLAIN) and 465 (implicit
    TLS, AUTH LOGIN); the mail lands in alice's Maildir.
    """

    timeout = 60

    async def deliveredSubjects(self, count: int) -> list[bytes]:
        """
        Wait for C{count} messages in alice's mailbox, stored encrypted
        (internal mail).

        @return: their Subject lines, as alice reads them.
        """
        paths = await waitFor(lambda: (lambda p: p if len(p) >= count else None)(
            maildirFiles(self.dataDir, "alice@example.test")))
        subjects = []
        for path in paths:
            with open(path, "rb") as f:
                self.assertIn(b"\nSubject: [encrypted message]\n", f.read())
            plain = await readAsOwner(self.dataDir, path)
            subjects += [line for line in plain.split(b"\n") if line.startswith(b"Subject:")]
        return subjects

    def runClient(self, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
        """
        Run a client, blocking (call in a thread).
        """
        return subprocess.run(args, input=stdin, capture_output=True, timeout=30)

    async def test_swaks(self):
        """
        swaks: STARTTLS + AUTH PLAIN on 587, then implicit TLS + AUTH LOGIN
        on 465.
        """
        swaks = requireCommand(self, "swaks")
        common = [swaks, "--server", "127.0.0.1", "--from", "bob@example.test", "--to", "alice@example.test",
                  "--auth-user", "bob@example.test", "--auth-password", "pw-bob",
                  "--header-From", "bob@example.test"]
        first = await deferToThread(self.runClient, common + ["--port", str(self.ports["submission"]), "--tls",
                                                        "--auth", "PLAIN", "--header", "Subject: swaks 587"])
        self.assertEqual(first.returncode, 0, first.stdout.decode(errors="replace")[-2000:])
        second = await deferToThread(self.runClient, common + ["--port", str(self.ports["smtps"]), "--tls-on-connect",
                                                         "--auth", "LOGIN", "--header", "Subject: swaks 465"])
        self.assertEqual(second.returncode, 0, second.stdout.decode(errors="replace")[-2000:])
        self.assertEqual(sorted(await self.deliveredSubjects(2)), [b"Subject: swaks 465", b"Subject: swaks 587"])

    async def test_msmtp(self):
        """
        msmtp: STARTTLS + AUTH PLAIN on 587, then implicit TLS + AUTH LOGIN
        on 465.
        """
        msmtp = requireCommand(self, "msmtp")
        message = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: msmtp %s\r\n\r\nhello\r\n"
        # (listener, STARTTLS or TLS from the first byte, mechanism, label)
        runs = [("submission", "on", "plain", b"587"), ("smtps", "off", "login", b"465")]
        for listener, starttls, auth, label in runs:
            args = [msmtp, "--host=127.0.0.1", f"--port={self.ports[listener]}", "--tls=on",
                    f"--tls-starttls={starttls}", "--tls-certcheck=off",
                    f"--auth={auth}", "--user=bob@example.test", "--passwordeval=echo pw-bob",
                    "--from=bob@example.test", "alice@example.test"]
            result = await deferToThread(self.runClient, args, message % label)
            self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        self.assertEqual(sorted(await self.deliveredSubjects(2)), [b"Subject: msmtp 465", b"Subject: msmtp 587"])
