"""
Tests of the real C{twistd qutemail} process: crash recovery after
C{kill -9}, memory use with a 25 MB message, clean stop on SIGTERM.
"""

import os
import signal
import smtplib
import subprocess
import sys
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.backends.test_redislimiter import startRedis
from tests.integration.support import (
    CLIENT_TIMEOUT,
    ServerProcess,
    freePort,
    holdPort,
    maildirFiles,
    runCLI,
    waitFor,
    writeConfig,
)


class ProcessTestsMixin:
    """
    A configuration, a user and a server process per test.
    """

    def setUp(self):
        """
        Write a config on a free port and create alice with the CLI.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.dataDir = os.path.join(base, "var")
        self.port = freePort()
        self.configPath = writeConfig(os.path.join(base, "qutemail.ini"), self.dataDir, mtaPort=self.port)
        result = runCLI(self.configPath, "user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.server = self.newServer()

    def assertCleanStop(self, status: int) -> None:
        """
        The server stopped because of SIGTERM (recent twistd re-raises the
        signal after a clean shutdown, so the status says "killed by
        SIGTERM"), logged its shutdown and no error.
        """
        self.assertIn(status, (0, -signal.SIGTERM, 128 + signal.SIGTERM))
        with open(os.path.join(self.base, "twistd.log")) as f:
            log = f.read()
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)

    def newServer(self) -> ServerProcess:
        """
        A server process for this test's configuration (not started).
        """
        server = ServerProcess(self.configPath, os.path.join(self.base, "twistd.log"), self.port)
        self.addCleanup(server.kill)
        return server


class CrashRecoveryTests(ProcessTestsMixin, TestCase):
    """
    Acceptance item 4 of issue 2.
    """

    timeout = 120

    async def test_killNineAfterLastReply(self):
        """
        Forty messages get 250, the server is killed with SIGKILL right
        after the last one, and after a restart all forty are in the Maildir
        and none twice.
        """
        await deferToThread(self.server.start)

        def send():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            client.ehlo()
            for i in range(40):
                body = b"Subject: crash %d\r\nX-Seq: %d\r\n\r\nbody of message %d\r\n" % (i, i, i)
                code, _ = client.docmd("MAIL", "FROM:<x@remote.test>")
                assert code == 250, code
                assert client.rcpt("alice@example.test")[0] == 250
                code, reply = client.data(body)
                assert code == 250, (code, reply)
            # The instant the last 250 is read: no QUIT, no grace.
            self.server.kill()
            client.close()

        await deferToThread(send)
        restarted = self.newServer()
        await deferToThread(restarted.start)
        files = await waitFor(lambda: (lambda f: f if len(f) >= 40 else None)(maildirFiles(self.dataDir, "alice@example.test")))
        # Give a second chance for any duplicate to show up.
        await deferToThread(time.sleep, 1.5)
        files = maildirFiles(self.dataDir, "alice@example.test")
        seqs = []
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            seqs.append(int(data.split(b"X-Seq: ")[1].split(b"\n")[0]))
        self.assertEqual(sorted(seqs), list(range(40)))
        self.assertCleanStop(await deferToThread(restarted.stop))


class MemoryTests(ProcessTestsMixin, TestCase):
    """
    Acceptance item 5 of issue 2.
    """

    timeout = 180

    async def test_largeMessageFlatMemory(self):
        """
        A 25 MB message is accepted and delivered while the server's peak
        RSS grows by less than 30 MB.
        """
        await deferToThread(self.server.start)

        def sendSmall():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: warm-up\r\n\r\nhello\r\n")
            client.quit()

        # Warm up: imports, thread pool, first delivery.
        await deferToThread(sendSmall)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 1)
        baseline = self.server.rssKiB("VmRSS")
        line = b"0123456789" * 7 + b"abcdef\r\n"
        lines = 25_000_000 // len(line)  # 25 MB; the default limit is 25 MiB
        body = b"Subject: big\r\n\r\n" + line * lines
        self.assertGreaterEqual(len(body), 25_000_000 - len(line))

        def sendBig():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=60)
            result = client.sendmail("x@remote.test", ["alice@example.test"], body)
            client.quit()
            return result

        self.assertEqual(await deferToThread(sendBig), {})
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 2, timeout=60)
        peak = self.server.rssKiB("VmHWM")
        growthMiB = (peak - baseline) / 1024
        self.assertLess(growthMiB, 30, f"peak RSS grew by {growthMiB:.1f} MiB")
        stored = [p for p in maildirFiles(self.dataDir, "alice@example.test") if os.path.getsize(p) > 1024 * 1024]
        self.assertEqual(len(stored), 1)
        self.assertGreater(os.path.getsize(stored[0]), len(body) - lines)

    async def test_inlineSizesDelivered(self):
        """
        With the default delivery process, a small message (written by the
        child) and a 100 KB one (held in memory, written by this process's
        threads: L{qutemail.store.maildir.SplitWriter}) in one session both
        land in the Maildir with their bodies intact.
        """
        await deferToThread(self.server.start)
        line = b"0123456789" * 7 + b"abcdef\r\n"
        bodies = {b"small": line * 10, b"medium": line * 1300}

        def send():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            for name, body in bodies.items():
                client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: " + name + b"\r\n\r\n" + body)
            client.quit()

        await deferToThread(send)
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 2)
        stored = {}
        for path in maildirFiles(self.dataDir, "alice@example.test"):
            with open(path, "rb") as f:
                text = f.read()
            stored[text.split(b"Subject: ", 1)[1].split(b"\n", 1)[0]] = text.split(b"\n\n", 1)[1]
        self.assertEqual(set(stored), set(bodies))
        for name, body in bodies.items():
            self.assertEqual(stored[name], body.replace(b"\r\n", b"\n"), name)

    async def test_sigtermStopsCleanly(self):
        """
        SIGTERM stops the server with exit status 0 and the journal holds
        nothing unfinished.
        """
        await deferToThread(self.server.start)
        self.assertCleanStop(await deferToThread(self.server.stop))
        journal = os.path.join(self.dataDir, "queue", "journal")
        for name in os.listdir(journal):
            self.assertNotIn(b"M ", open(os.path.join(journal, name), "rb").read()[:2])


class StartFailureTests(TestCase):
    """
    A real C{twistd qutemail} start that cannot succeed stops with one line.
    """

    timeout = 60

    def twistd(self, configPath: str) -> subprocess.CompletedProcess:
        """
        Run twistd on a configuration (blocking).
        """
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "qutemail", "--config", configPath],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )

    def startWith(self, extra: str, mtaPort: int | None = None):
        """
        Run twistd (in a thread) on a loopback configuration plus C{extra}.

        @param mtaPort: the MTA port (default: a free one).
        @return: a Deferred firing with the completed process.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        path = writeConfig(os.path.join(base, "q.ini"), os.path.join(base, "var"), mtaPort=mtaPort or freePort())
        with open(path, "a") as f:
            f.write(extra)
        return deferToThread(self.twistd, path)

    async def test_missingCertificate(self):
        """
        A configured certificate that does not exist: exit status 1 and one
        line naming the file.
        """
        result = await self.startWith("\n[tls]\ncert = /nonexistent/cert.pem\nkey = /nonexistent/key.pem\n")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(),
                         ["qutemail: [tls] cert /nonexistent/cert.pem: cannot read it: No such file or directory"])

    async def test_badConfigValue(self):
        """
        A bad configuration value: exit status 1 and one line naming the
        file, section and key.
        """
        result = await self.startWith("\n[limits]\nconnections_per_ip = many\n")
        self.assertEqual(result.returncode, 1)
        [line] = result.stderr.strip().splitlines()
        self.assertIn("[limits] connections_per_ip", line)

    async def test_portInUse(self):
        """
        The MTA port is held by another program: exit status 1 and one
        line naming the listener, its address and why, no traceback (the
        server used to log an Unhandled Error and run on without it).
        """
        port = holdPort(self)
        result = await self.startWith("", mtaPort=port)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(),
                         [f"qutemail: listener-mta: cannot listen on 127.0.0.1:{port}: Address already in use"])
        self.assertNotIn("Traceback", result.stdout)
        self.assertIn(f"listener-mta: cannot listen on 127.0.0.1:{port}: Address already in use; stopping",
                      result.stdout)


class VaultPersistenceStartTests(TestCase):
    """
    Issue 20: a real C{twistd qutemail} start with the key vault in Redis
    checks that Redis keeps it across a crash.
    """

    timeout = 90

    def configure(self, redisPort: int, extra: str = "") -> tuple[str, int, str]:
        """
        Write a loopback configuration with the vault in the Redis on
        C{redisPort}, plus C{extra} lines in C{[redis]}.

        @return: the configuration path, its MTA port and the log path.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        port = freePort()
        path = writeConfig(os.path.join(base, "q.ini"), os.path.join(base, "var"), mtaPort=port,
                           extra=f"\n[redis]\nurl = redis://127.0.0.1:{redisPort}/0\n{extra}")
        return path, port, os.path.join(base, "twistd.log")

    def twistd(self, configPath: str) -> subprocess.CompletedProcess:
        """
        Run twistd on a configuration (blocking) until it exits.
        """
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "qutemail", "--config", configPath],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )

    async def runs(self, redisPort: int, extra: str = "") -> str:
        """
        Start the server, check it accepts connections, stop it cleanly.

        @return: its log.
        """
        path, port, logPath = self.configure(redisPort, extra)
        server = ServerProcess(path, logPath, port)
        self.addCleanup(server.kill)
        await deferToThread(server.start)
        self.assertIn(await deferToThread(server.stop), (0, -signal.SIGTERM, 128 + signal.SIGTERM))
        with open(logPath) as f:
            return f.read()

    async def test_volatileRefused(self):
        """
        A Redis started with C{--appendonly no --save ""}: exit status 1
        and one line naming the key that would allow it.
        """
        path, _, _ = self.configure(startRedis(self, persistent=False))
        result = await deferToThread(self.twistd, path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(), [
            "qutemail: [redis] url: the key vault's Redis would lose it in a crash (appendonly no, "
            'save "": nothing is written to disk); turn on appendonly in Redis, '
            "or set [redis] allow_volatile_vault = yes to run anyway"])

    async def test_volatileAllowed(self):
        """
        The same Redis with C{allow_volatile_vault = yes}: the server runs,
        and its log has one warning line about it.
        """
        log = await self.runs(startRedis(self, persistent=False), "allow_volatile_vault = yes\n")
        warnings = [line for line in log.splitlines() if "allow_volatile_vault" in line]
        self.assertEqual(len(warnings), 1, log)
        self.assertIn("the key vault's Redis would lose it in a crash", warnings[0])
        self.assertNotIn("Traceback", log)

    async def test_appendonlyQuiet(self):
        """
        A Redis with C{--appendonly yes}: the server runs without a warning.
        """
        log = await self.runs(startRedis(self))
        self.assertIn("the key vault's Redis keeps it across a crash (appendonly yes", log)
        self.assertNotIn("allow_volatile_vault", log)
        self.assertNotIn("would lose", log)

    async def test_configRefused(self):
        """
        A Redis with C{CONFIG} renamed away: the start stops, saying it
        cannot tell.
        """
        path, _, _ = self.configure(startRedis(self, args=("--rename-command", "CONFIG", "")))
        result = await deferToThread(self.twistd, path)
        self.assertEqual(result.returncode, 1)
        [line] = result.stderr.strip().splitlines()
        self.assertTrue(line.startswith("qutemail: [redis] url: cannot tell whether the key vault's Redis keeps "
                                        "it across a crash (asking CONFIG GET: "), line)
