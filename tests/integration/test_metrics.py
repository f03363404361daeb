"""
Metrics and health end to end (issue 15): the real server in a subprocess
with C{[metrics] port} set, scraped over a real socket, checked by
Debian's C{promtool} and scraped by Debian's C{prometheus} itself; with
two SMTP workers the counters add up; C{/healthz} follows the KME and the
journal directory.
"""

import json
import os
import shutil
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.qkd.kme import EmbeddedKMEService
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from tests.dnsserver import startDNSServer
from tests.integration.support import (
    CLIENT_TIMEOUT,
    REMOTE_ZONE,
    ServerProcess,
    freePort,
    insecureContext,
    maildirFiles,
    relaySection,
    runCLI,
    waitFor,
    writeConfig,
)
from tests.qkd.test_kmeservice import makePKI
from tests.relay.remote import Script, startRemote
from tests.support import requireCommand

ALICE = "alice@example.test"


def fetch(url: str) -> tuple[int, str]:
    """
    GET a URL (blocking).

    @return: the status and the body.
    """
    try:
        with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(exposition: str, name: str, **labels: str) -> float:
    """
    @return: the sum of the samples called C{name} whose labels include
        C{labels}, read with prometheus_client's own parser (0 for none).
    """
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class MetricsSetup(TestCase):
    """
    A server with metrics on, a loopback DNS server and remote exchanger
    (set-up only; tests in the subclasses).
    """

    timeout = 120
    workers = 1

    async def setUp(self):
        """
        Start DNS, the remote exchanger (one recipient deferred), and the
        server with users alice and bob.
        """
        self.dns = await startDNSServer(self, REMOTE_ZONE)
        self.remote = await startRemote(self, Script(rcpt={"later@remote.test": [b"451 4.3.0 Try later"]}))
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.base = base
        self.dataDir = os.path.join(base, "var")
        self.port, self.submissionPort, self.metricsPort = freePort(), freePort(), freePort()
        extra = relaySection(self.dns, self.remote) + f"\n[inbound]\nchecks = no\n[metrics]\nport = {self.metricsPort}\n"
        self.configPath = writeConfig(os.path.join(base, "q.ini"), self.dataDir, mtaPort=self.port,
                                      submissionPort=self.submissionPort, workers=self.workers,
                                      extra=extra + self.extraConfig())
        for address in (ALICE, "bob@example.test"):
            result = await deferToThread(runCLI, self.configPath, "user", "add", address, "--password-stdin",
                                         stdin="pw\n")
            self.assertEqual(result.returncode, 0, result.stderr)
        self.server = ServerProcess(self.configPath, os.path.join(base, "out.log"), self.port,
                                    logToStdout=self.workers > 1)
        self.addCleanup(self.server.kill)
        await deferToThread(self.server.start)

    def extraConfig(self) -> str:
        """
        @return: more configuration sections.
        """
        return ""

    def scrape(self) -> str:
        """
        @return: C{/metrics} (blocking).
        """
        status, body = fetch(f"http://127.0.0.1:{self.metricsPort}/metrics")
        self.assertEqual(status, 200)
        return body

    def send(self, recipients: list[str], count: int = 1, submission: bool = False) -> list:
        """
        Send C{count} messages over one connection (blocking).

        @return: what C{sendmail} returned for each, or the exception.
        """
        results = []
        client = smtplib.SMTP("127.0.0.1", self.submissionPort if submission else self.port,
                              local_hostname="client.remote.test", timeout=CLIENT_TIMEOUT)
        try:
            if submission:
                client.starttls(context=insecureContext())
                client.login("bob@example.test", "pw")
            for i in range(count):
                sender = "bob@example.test" if submission else "x@remote.test"
                try:
                    results.append(client.sendmail(sender, recipients, b"Subject: m %d\r\n\r\nhello\r\n" % i))
                except smtplib.SMTPException as e:
                    results.append(e)
        finally:
            client.quit()
        return results


class ScrapeTests(MetricsSetup):
    """
    The counters match what was sent; promtool and Prometheus accept them.
    """

    async def test_countersMatch(self) -> None:
        """
        Two messages accepted for alice, one RCPT refused with 550 5.1.1,
        one relayed and one deferred recipient: each shows in the
        exposition, and C{promtool check metrics} finds nothing wrong.
        """
        self.assertEqual(await deferToThread(self.send, [ALICE], 2), [{}, {}])
        refused = await deferToThread(self.send, ["nobody@example.test"])
        self.assertIsInstance(refused[0], smtplib.SMTPRecipientsRefused)
        self.assertEqual(await deferToThread(self.send, ["ok@remote.test", "later@remote.test"], 1,
                                             True), [{}])
        await waitFor(lambda: len(maildirFiles(self.dataDir, ALICE)) == 2)

        def settled():
            text = self.scrape()
            return text if sample(text, "qutemail_recipients_total", outcome="deferred") >= 1 and \
                sample(text, "qutemail_recipients_total", outcome="relayed") >= 1 else None

        text = await deferToThread(self._poll, settled)
        self.assertEqual(sample(text, "qutemail_smtp_messages_total", listener="mta", result="accepted"), 2)
        self.assertEqual(sample(text, "qutemail_smtp_messages_total", listener="submission", result="accepted"), 1)
        self.assertEqual(sample(text, "qutemail_smtp_error_replies_total", listener="mta", code="550",
                                enhanced="5.1.1"), 1)
        self.assertEqual(sample(text, "qutemail_recipients_total", outcome="delivered"), 2)
        self.assertEqual(sample(text, "qutemail_recipients_total", outcome="relayed"), 1)
        self.assertEqual(sample(text, "qutemail_recipients_total", outcome="deferred"), 1)
        self.assertEqual(sample(text, "qutemail_auth_attempts_total", result="success"), 1)
        self.assertEqual(sample(text, "qutemail_tls_handshakes_total", version="TLSv1.3"), 1)
        self.assertEqual(sample(text, "qutemail_delivery_seconds_count", path="local"), 2)
        self.assertEqual(sample(text, "qutemail_delivery_seconds_count", path="remote"), 1)
        self.assertGreater(sample(text, "qutemail_received_bytes_total", listener="mta"), 40)
        self.assertGreaterEqual(sample(text, "qutemail_journal_fsync_seconds_count"), 1)
        self.assertGreaterEqual(sample(text, "qutemail_kme_requests_total", outcome="ok"), 1)
        self.assertGreater(sample(text, "qutemail_qkd_stored_keys"), 0)
        promtool = requireCommand(self, "promtool")
        checked = await deferToThread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                      capture_output=True, text=True, timeout=30)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def _poll(self, probe, timeout: float = 30.0):
        """
        Call C{probe} (blocking) until it returns something true.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.2)
        self.fail("the metrics did not settle")

    async def test_prometheusScrapes(self) -> None:
        """
        Debian's prometheus, pointed at the endpoint, has the accepted
        messages counter in its query API.
        """
        binary = requireCommand(self, "prometheus")
        self.assertEqual(await deferToThread(self.send, [ALICE], 3), [{}, {}, {}])
        directory = os.path.join(self.base, "prometheus")
        os.makedirs(directory)
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: qutemail\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{self.metricsPort}']\n")
        port = freePort()
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory}/data",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (process.poll() is None and process.terminate(), process.wait(30)))
        query = ("http://127.0.0.1:%d/api/v1/query?query=" % port) + urllib.request.quote(
            'sum(qutemail_smtp_messages_total{result="accepted"})')

        def answered():
            try:
                status, body = fetch(query)
            except OSError:
                return None
            result = json.loads(body)["data"]["result"] if status == 200 else []
            return result[0]["value"][1] if result else None

        self.assertEqual(await deferToThread(self._poll, answered, 60), "3")


class WorkersTests(MetricsSetup):
    """
    With two SMTP workers, the counters add up across processes.
    """

    workers = 2

    async def test_acceptedAddsUp(self) -> None:
        """
        Messages taken by the worker alone (the main process frozen), then
        by both: the accepted counter, scraped from the main process, is
        their sum, and both processes wrote values.
        """
        await waitFor(lambda: os.path.isdir(os.path.join(self.dataDir, "queue", "journal-1")))
        os.kill(self.server.process.pid, signal.SIGSTOP)
        try:
            byWorker = await deferToThread(self.send, [ALICE], 5)
        finally:
            os.kill(self.server.process.pid, signal.SIGCONT)
        results = await gatherResults([deferToThread(self.send, [ALICE], 5) for _ in range(4)])
        self.assertEqual(byWorker + sum(results, []), [{}] * 25)
        text = await deferToThread(self.scrape)
        self.assertEqual(sample(text, "qutemail_smtp_messages_total", listener="mta", result="accepted"), 25)
        writers = {name.rsplit("_", 1)[1] for name in os.listdir(os.path.join(self.dataDir, "metrics"))
                   if name.startswith("counter_")}
        self.assertGreaterEqual(len(writers), 2, writers)


class HealthTests(MetricsSetup):
    """
    C{/healthz} with the embedded KME and the journal.
    """

    async def test_journalUnwritable(self) -> None:
        """
        200 C{ok}; 503 naming the journal when its directory cannot take a
        new file; 200 again once it can.
        """
        url = f"http://127.0.0.1:{self.metricsPort}/healthz"
        # 503 until the KME's first answer, just after the start.
        await waitFor(lambda: fetch(url) == (200, "ok\n"), timeout=30, interval=0.5)
        journal = os.path.join(self.dataDir, "queue", "journal")
        self.assertTrue(os.path.isdir(journal))
        said = await deferToThread(runCLI, self.configPath, "status")
        self.assertEqual((said.returncode, said.stdout),
                         (0, "healthy: every listener listens, the journal is writable, the KME answers\n"))
        undo = makeUnwritable(self, journal)
        status, body = await deferToThread(fetch, url)
        self.assertEqual(status, 503)
        self.assertIn(f"journal directory {journal} is not writable", body)
        said = await deferToThread(runCLI, self.configPath, "status")
        self.assertEqual(said.returncode, 1)
        self.assertIn(f"unhealthy (HTTP 503):\n- journal directory {journal} is not writable", said.stdout)
        undo()
        self.assertEqual(await deferToThread(fetch, url), (200, "ok\n"))


def makeUnwritable(testCase, directory: str):
    """
    Make a directory refuse new files, for root too (C{chattr +i}; as
    another user, mode 0500).

    @return: what undoes it (also run at clean-up).
    """
    if os.getuid() == 0:
        chattr = shutil.which("chattr")
        testCase.assertIsNotNone(chattr, "chattr (e2fsprogs) is needed to make a directory unwritable for root")
        subprocess.run([chattr, "+i", directory], check=True)

        def undo():
            subprocess.run([chattr, "-i", directory], check=True)
    else:
        mode = os.stat(directory).st_mode & 0o7777
        os.chmod(directory, 0o500)

        def undo():
            os.chmod(directory, mode)

    done = []

    def once():
        if not done:
            done.append(True)
            undo()

    testCase.addCleanup(once)
    return once


class KMEHealthTests(MetricsSetup):
    """
    C{/healthz} with an external KME that stops and starts again.
    """

    async def setUp(self):
        """
        Start a KME on a fixed free port first, then the server using it.
        """
        self.pki = makePKI(self, ("mail-sae",))
        self.kmePort = freePort()
        self.kme = EmbeddedKMEService(reactor, KME("kme-health", ("mail-sae",), QKDLink(PoolSettings())), self.pki,
                                      endpoint=f"tcp:{self.kmePort}:interface=127.0.0.1")
        self.kme.startService()
        self.addCleanup(lambda: self.kme.stopService() if self.kme.running else None)
        await self.kme.whenListening()
        await super().setUp()

    def extraConfig(self) -> str:
        """
        @return: a C{[qkd]} section naming the KME.
        """
        client = self.pki.client("mail-sae")
        return (f"\n[qkd]\nkme_url = {self.kme.baseURL}\nsae_id = mail-sae\nclient_cert = {client.certPath}\n"
                f"client_key = {client.keyPath}\nca_cert = {self.pki.ca.certPath}\n")

    async def test_kmeStopped(self) -> None:
        """
        200 while the KME answers; 503 naming the KME once it has been
        silent for a while after it stopped; 200 again when it is back.
        """
        url = f"http://127.0.0.1:{self.metricsPort}/healthz"

        async def status(wanted: int) -> str:
            answers = []

            def check():
                answers[:] = [fetch(url)]
                return answers[0][0] == wanted

            await waitFor(check, timeout=40, interval=0.5)
            return answers[0][1]

        self.assertEqual(await status(200), "ok\n")
        await self.kme.stopService()
        body = await status(503)
        self.assertIn("KME has not answered for SAE mail-sae for", body)
        self.kme.startService()
        await self.kme.whenListening()
        self.assertEqual(await status(200), "ok\n")
