"""
Tests of the twistd plugin's options and C{makeService}, with a
L{MemoryReactor}: the service tree and the endpoints it listens on.
"""

import io
import os
import sys

import attrs

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from qutemail.backends.passwordhash import passwordThreads
from qutemail.tap import Options, makeService
from tests.integration.support import writeConfig


def recordingReactor() -> tuple[MemoryReactorClock, list]:
    """
    A memory reactor for building the whole service tree: results from the
    thread pool are dropped (it never runs), and processes are not started
    but their command lines recorded.

    @return: the reactor, and the list it records the delivery process's
        arguments in.
    """
    reactor = MemoryReactorClock()
    reactor.callFromThread = lambda f, *args, **kwargs: None
    spawned: list = []
    reactor.spawnProcess = lambda protocol, executable, args, **kwargs: (
        spawned.append(args) or attrs.make_class("Child", {"pid": attrs.field(default=1)})())
    return reactor, spawned


class TapTests(TestCase):
    """
    C{twistd qutemail} option parsing and service assembly.
    """

    def setUp(self):
        """
        A loopback configuration on port 2525.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.dataDir = os.path.join(base, "var")
        self.configPath = writeConfig(os.path.join(base, "q.ini"), self.dataDir, mtaPort=2525)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_pluginRegistered(self):
        """
        Twisted's plugin scan finds the C{qutemail} service maker.
        """
        names = [p.tapname for p in getPlugins(IServiceMaker)]
        self.assertIn("qutemail", names)

    def test_options(self):
        """
        C{--config} names the file; C{--mta-only} and C{--msa-only} are
        flags that exclude each other.
        """
        options = Options()
        options.parseOptions(["--config", self.configPath, "--mta-only"])
        self.assertEqual((options["config"], options["mta-only"], options["msa-only"]), (self.configPath, 1, 0))
        self.assertRaises(UsageError, Options().parseOptions, ["--mta-only", "--msa-only"])

    def test_serviceTree(self):
        """
        The service tree takes the queue lock, then starts the thread pool,
        the delivery process, the free-space loop, the
        embedded KME (on loopback, any port) and its client, the spool, the
        retention sweep, the scheduler and the MTA listener, in that order,
        and listens on the configured port and address.
        """
        reactor, spawned = recordingReactor()
        options = Options()
        options.parseOptions(["--config", self.configPath])
        root = makeService(options, reactor)
        self.assertEqual(
            [child.name for child in root],
            ["queue-lock", "blocking", "passwords", "delivery-process", "disk-space", "kme", "qkd-client", "spool",
             "retention", "retry-scheduler", "tls-reports", "queue-control", "listener-mta"],
        )
        # Passwords are hashed in threads of their own, not the general pool.
        passwords = root.getServiceNamed("passwords")
        self.assertIs(root.users.hashRunner, passwords)
        self.assertEqual((passwords.minThreads, passwords.maxThreads), (0, passwordThreads()))
        root.startService()
        # A memory reactor never delivers thread results, so the whole tree
        # cannot stop through it: stop the pieces that own real resources.
        self.addCleanup(root.getServiceNamed("blocking").stopService)
        self.addCleanup(root.getServiceNamed("queue-lock").stopService)
        # A second server on this data_dir stops with one line.
        with self.assertRaises(SystemExit):
            makeService(options, MemoryReactorClock())
        self.assertIn("is in use by a running server", self.stderr.getvalue())
        # It encrypts internal mail (the default): its delivery process,
        # which seals, loads that code as it starts.
        self.assertEqual([args[1:] for args in spawned],
                         [["-m", "qutemail.store.deliveryworker", "--preload-sealing"]])
        [kme, (port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((kme[0], kme[3]), (0, "127.0.0.1"))
        self.assertEqual((port, interface), (2525, "127.0.0.1"))
        self.assertEqual(type(factory).__name__, "SMTPServerFactory")
        self.assertTrue(os.path.isdir(os.path.join(self.dataDir, "queue", "journal")))

    def test_deliveryProcessPreloadsForIMAP(self):
        """
        Where the process serves IMAP, its delivery process is told to load
        the indexing code of first listings as it starts; with IMAP off, or
        with C{--mta-only}, it is not (an SMTP-only process never asks it
        to index).  The sealing code is loaded where the process encrypts
        internal mail, and not with C{[qkd] encrypt = no}.
        """
        with open(self.configPath) as f:
            text = f.read()
        with open(self.configPath, "w") as f:
            f.write(text.replace("[imap]\nport = 0\n", "[imap]\nport = 1143\n", 1))

        def spawnedWith(*flags):
            reactor, spawned = recordingReactor()
            options = Options()
            options.parseOptions(["--config", self.configPath, *flags])
            root = makeService(options, reactor)
            root.getServiceNamed("delivery-process").startService()
            return [args[1:] for args in spawned]

        worker = ["-m", "qutemail.store.deliveryworker"]
        self.assertEqual(spawnedWith(), [worker + ["--preload-indexing", "--preload-sealing"]])
        self.assertEqual(spawnedWith("--mta-only"), [worker + ["--preload-sealing"]])
        with open(self.configPath, "a") as f:
            f.write("\n[qkd]\nencrypt = no\n")
        self.assertEqual(spawnedWith(), [worker + ["--preload-indexing"]])
        self.assertEqual(spawnedWith("--mta-only"), [worker])

    def test_inboundChecksAndRetention(self):
        """
        With C{[inbound] checks} on, the checks' own thread pool comes
        before the listeners; with C{retention_days = 0} there is no
        retention sweep.
        """
        writeConfig(self.configPath, self.dataDir, mtaPort=2525,
                    extra="[inbound]\nchecks = yes\n[mailbox]\nretention_days = 0\n")
        options = Options()
        options.parseOptions(["--config", self.configPath])
        names = [child.name for child in makeService(options, MemoryReactorClock())]
        self.assertNotIn("retention", names)
        self.assertLess(names.index("inbound-checks"), names.index("listener-mta"))

    def test_badConfigExits(self):
        """
        A bad configuration ends the start with one line naming the key and
        exit status 1.
        """
        with open(self.configPath, "a") as f:
            f.write("\n[bogus]\nkey = 1\n")
        options = Options()
        options.parseOptions(["--config", self.configPath])
        error = self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertEqual(error.code, 1)
        [line] = self.stderr.getvalue().splitlines()
        self.assertTrue(line.startswith("qutemail: "), line)
        self.assertIn("bogus", line)

    def test_msaOnlyWithoutSubmission(self):
        """
        C{--msa-only} with no submission listener to run stops with one
        clear line rather than a server that listens on nothing.
        """
        options = Options()
        options.parseOptions(["--config", self.configPath, "--msa-only"])
        error = self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertEqual(error.code, 1)
        self.assertIn("no listener is enabled", self.stderr.getvalue())

    def test_expiredCertificateExits(self):
        """
        A configured certificate that has expired ends the start with one
        line naming the file, and exit status 1.
        """
        import datetime

        from qutemail.tlsserver import generateSelfSigned

        cert, key = generateSelfSigned("mail.example.test", datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        base = os.path.dirname(self.configPath)
        for name, data in (("old-cert.pem", cert), ("old-key.pem", key)):
            with open(os.path.join(base, name), "wb") as f:
                f.write(data)
        with open(self.configPath, "a") as f:
            f.write("\n[tls]\ncert = old-cert.pem\nkey = old-key.pem\n")
        options = Options()
        options.parseOptions(["--config", self.configPath])
        reactor = MemoryReactorClock()
        reactor.advance(datetime.datetime(2026, 11, 24, tzinfo=datetime.timezone.utc).timestamp())
        error = self.assertRaises(SystemExit, makeService, options, reactor)
        self.assertEqual(error.code, 1)
        [line] = self.stderr.getvalue().splitlines()
        self.assertTrue(line.startswith("qutemail: [tls] cert "), line)
        self.assertIn("old-cert.pem: expired on 2022-", line)

    def test_missingCertificateExits(self):
        """
        A configured certificate file that does not exist ends the start
        with one line.
        """
        with open(self.configPath, "a") as f:
            f.write("\n[tls]\ncert = missing.pem\nkey = missing-key.pem\n")
        options = Options()
        options.parseOptions(["--config", self.configPath])
        error = self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertEqual(error.code, 1)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn("missing.pem: cannot read it: No such file or directory", line)
