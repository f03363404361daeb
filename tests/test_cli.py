# -*- test-case-name: tests.test_cli -*-
"""
Tests for L{qutemail.cli}: the command run in-process with its standard
streams replaced, and the real console entry point run as a subprocess.
"""

import getpass
import io
import os
import subprocess
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import qutemail
from qutemail import cli
from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import InlineRunner

CONFIG = """\
[server]
hostname = mail.example.test
domains = example.test, other.test
data_dir = data

[mailbox]
default_quota_mb = 100
"""


def cleanEnvironment() -> dict[str, str]:
    """
    @return: the environment without C{QUTEMAIL_} variables, which would
        override the test configuration.
    """
    return {name: value for name, value in os.environ.items() if not name.startswith("QUTEMAIL_")}


class TerminalInput(io.StringIO):
    """
    Standard input that claims to be a terminal.
    """

    def isatty(self) -> bool:
        """
        @return: C{True}.
        """
        return True


class CommandTestsMixin:
    """
    A configuration file in a fresh directory, and a way to run commands
    against it.
    """

    def setUp(self) -> None:
        """
        Write the configuration; its C{data_dir} does not exist yet.
        """
        self.base = os.path.abspath(self.mktemp())
        os.mkdir(self.base)
        self.configPath = os.path.join(self.base, "qutemail.ini")
        with open(self.configPath, "w") as f:
            f.write(CONFIG)
        self.dataDir = os.path.join(self.base, "data")
        self.patch(os, "environ", cleanEnvironment())

    def runCommand(self, *args: str, stdin: str | io.StringIO = "", config: bool = True) -> tuple[int, str, str]:
        """
        Run C{qutemail [--config PATH] args...}.

        @param stdin: what standard input holds.
        @param config: whether to pass C{--config}.
        @return: the exit status, standard output and standard error.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin))
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        argv = (["--config", self.configPath] if config else []) + list(args)
        status = cli.main(argv)
        return status, stdout.getvalue(), stderr.getvalue()

    def runOk(self, *args: str, stdin: str = "") -> str:
        """
        Run a command that must succeed quietly on standard error.

        @return: its standard output.
        """
        status, out, err = self.runCommand(*args, stdin=stdin)
        self.assertEqual((status, err), (0, ""), out)
        return out

    def runFailing(self, *args: str, stdin: str = "") -> str:
        """
        Run a command that must fail with status 1, one line on standard
        error and nothing on standard output.

        @return: the error message, without C{qutemail: } and the newline.
        """
        status, out, err = self.runCommand(*args, stdin=stdin)
        self.assertEqual((status, out), (1, ""), err)
        self.assertTrue(err.startswith("qutemail: ") and err.endswith("\n"), err)
        self.assertEqual(err.count("\n"), 1, err)
        return err[len("qutemail: ") : -1]

    def addBob(self, password: str = "pw1") -> None:
        """
        Add C{bob@example.test}.
        """
        self.runOk("user", "add", "bob@example.test", "--password-stdin", stdin=password + "\n")

    def checkPassword(self, address: str, password: bytes) -> bool:
        """
        @return: whether the user file accepts this password.
        """
        directory = FileUserDirectory(os.path.join(self.dataDir, "users"), InlineRunner(), Clock())
        return self.successResultOf(directory.checkPassword(address, password)) is not None

    def writeUsage(self, address: str, usage: str) -> None:
        """
        Write a mailbox's Maildir++ C{maildirsize} file.
        """
        local, _, domain = address.partition("@")
        mailbox = os.path.join(self.dataDir, "mail", domain, local)
        os.makedirs(mailbox)
        with open(os.path.join(mailbox, "maildirsize"), "w") as f:
            f.write(usage)


class UserAddTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{user add}.
    """

    def test_addThenList(self) -> None:
        """
        An added user is listed with the default quota and an empty mailbox.
        """
        self.assertEqual(
            self.runOk("user", "add", "bob@example.test", "--password-stdin", stdin="pw1\n"),
            "added bob@example.test\n",
        )
        self.assertEqual(
            self.runOk("user", "list"), "bob@example.test  quota=100M (default)  used=0 (0 messages)\n"
        )

    def test_passwordFirstLine(self) -> None:
        """
        The password is the first line of standard input, without its
        line ending.
        """
        self.runOk("user", "add", "bob@example.test", "--password-stdin", stdin="two words \r\nmore\n")
        self.assertTrue(self.checkPassword("bob@example.test", b"two words "))
        self.assertFalse(self.checkPassword("bob@example.test", b"two words \r"))

    def test_passwordWithoutNewline(self) -> None:
        """
        A password not followed by a newline is taken whole.
        """
        self.runOk("user", "add", "bob@example.test", "--password-stdin", stdin="pässword")
        self.assertTrue(self.checkPassword("bob@example.test", "pässword".encode("utf-8")))

    def test_normalised(self) -> None:
        """
        The address is stored in normal form.
        """
        self.runOk("user", "add", "Bob@Example.TEST", "--password-stdin", stdin="pw\n")
        self.assertTrue(self.runOk("user", "list").startswith("bob@example.test  "))

    def test_emptyPassword(self) -> None:
        """
        An empty password is refused and no user is created.
        """
        for stdin in ["", "\n", "\nsecond line\n"]:
            self.assertEqual(
                self.runFailing("user", "add", "bob@example.test", "--password-stdin", stdin=stdin),
                "empty password refused",
            )
        self.assertEqual(self.runCommand("user", "list"), (0, "", "no users\n"))

    def test_noPasswordWithoutTerminal(self) -> None:
        """
        Without C{--password-stdin}, a standard input that is not a
        terminal is an error rather than a silent read.
        """
        message = self.runFailing("user", "add", "bob@example.test", stdin="pw\n")
        self.assertIn("--password-stdin", message)

    def test_prompt(self) -> None:
        """
        Without C{--password-stdin} on a terminal, the password is asked
        for twice.
        """
        answers = iter(["typed", "typed"])
        self.patch(getpass, "getpass", lambda prompt: next(answers))
        status, out, err = self.runCommand("user", "add", "bob@example.test", stdin=TerminalInput())
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(self.checkPassword("bob@example.test", b"typed"))

    def test_promptMismatch(self) -> None:
        """
        Two different answers at the prompt create no user.
        """
        answers = iter(["typed", "tpyed"])
        self.patch(getpass, "getpass", lambda prompt: next(answers))
        status, out, err = self.runCommand("user", "add", "bob@example.test", stdin=TerminalInput())
        self.assertEqual((status, err), (1, "qutemail: the passwords do not match\n"))

    def test_duplicate(self) -> None:
        """
        Adding an existing user fails and keeps the old password.
        """
        self.addBob("first")
        self.assertEqual(
            self.runFailing("user", "add", "BOB@example.test", "--password-stdin", stdin="second\n"),
            "user bob@example.test already exists",
        )
        self.assertTrue(self.checkPassword("bob@example.test", b"first"))

    def test_badAddress(self) -> None:
        """
        A malformed address is refused with the reason.
        """
        for address in ["bob", "bob@@example.test", "a/b@example.test", ".bob@example.test"]:
            message = self.runFailing("user", "add", address, "--password-stdin", stdin="pw\n")
            self.assertIn(repr(address), message)

    def test_unknownDomain(self) -> None:
        """
        An address outside the local domains is refused, naming them.
        """
        message = self.runFailing("user", "add", "bob@elsewhere.test", "--password-stdin", stdin="pw\n")
        self.assertIn("'elsewhere.test' is not a local domain", message)
        self.assertIn("example.test, other.test", message)


class UserChangeTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{user passwd}, C{user del} and C{user quota}.
    """

    def test_passwd(self) -> None:
        """
        After C{user passwd} only the new password works.
        """
        self.addBob("old")
        self.runOk("user", "passwd", "bob@example.test", "--password-stdin", stdin="new\n")
        self.assertTrue(self.checkPassword("bob@example.test", b"new"))
        self.assertFalse(self.checkPassword("bob@example.test", b"old"))

    def test_passwdUnknown(self) -> None:
        """
        C{user passwd} of an unknown user fails before reading a password.
        """
        self.assertEqual(self.runFailing("user", "passwd", "eve@example.test"), "no such user eve@example.test")

    def test_passwdEmpty(self) -> None:
        """
        C{user passwd} refuses an empty password and keeps the old one.
        """
        self.addBob("old")
        self.runFailing("user", "passwd", "bob@example.test", "--password-stdin", stdin="\n")
        self.assertTrue(self.checkPassword("bob@example.test", b"old"))

    def test_del(self) -> None:
        """
        C{user del} removes the account but keeps its mailbox.
        """
        self.addBob()
        self.writeUsage("bob@example.test", "0S\n10 1\n")
        self.assertIn("removed bob@example.test", self.runOk("user", "del", "bob@example.test"))
        self.assertEqual(self.runCommand("user", "list"), (0, "", "no users\n"))
        self.assertTrue(os.path.isdir(os.path.join(self.dataDir, "mail", "example.test", "bob")))

    def test_delUnknown(self) -> None:
        """
        C{user del} of an unknown user fails.
        """
        self.assertEqual(self.runFailing("user", "del", "eve@example.test"), "no such user eve@example.test")

    def test_quota(self) -> None:
        """
        C{user quota} sets a quota, and C{default} resets it.
        """
        self.addBob()
        self.assertEqual(
            self.runOk("user", "quota", "bob@example.test", "5G"), "quota of bob@example.test: 5G\n"
        )
        self.assertIn("quota=5G  ", self.runOk("user", "list"))
        self.runOk("user", "quota", "bob@example.test", "default")
        self.assertIn("quota=100M (default)  ", self.runOk("user", "list"))

    def test_quotaBadSize(self) -> None:
        """
        A size that does not parse, or zero, is refused.
        """
        self.addBob()
        for size in ["lots", "5X", "0"]:
            self.assertTrue(self.runFailing("user", "quota", "bob@example.test", size).startswith("bad size: "))

    def test_quotaUnknown(self) -> None:
        """
        C{user quota} of an unknown user fails.
        """
        self.assertEqual(self.runFailing("user", "quota", "eve@example.test", "1G"), "no such user eve@example.test")


class UserListTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{user list}.
    """

    def test_noUsers(self) -> None:
        """
        With no users, nothing is printed on standard output and a note on
        standard error; that is not a failure.
        """
        self.assertEqual(self.runCommand("user", "list"), (0, "", "no users\n"))

    def test_usage(self) -> None:
        """
        Each user's line shows the quota and the usage from the mailbox's
        C{maildirsize}, sorted by address and aligned.
        """
        self.addBob()
        self.runOk("user", "add", "al@other.test", "--password-stdin", stdin="pw\n")
        self.runOk("user", "quota", "al@other.test", "1536")
        self.writeUsage("bob@example.test", "104857600S\n1000 2\n234 1\n")
        self.writeUsage("al@other.test", "1536S\n500 1\n")
        self.assertEqual(
            self.runOk("user", "list"),
            "al@other.test     quota=1536  used=500 (1 message)\n"
            "bob@example.test  quota=100M (default)  used=1234 (3 messages)\n",
        )

    def test_corruptUserFile(self) -> None:
        """
        A corrupt user file gives one line naming it.
        """
        os.mkdir(self.dataDir)
        with open(os.path.join(self.dataDir, "users"), "w") as f:
            f.write("{")
        message = self.runFailing("user", "list")
        self.assertTrue(message.startswith(os.path.join(self.dataDir, "users") + ": corrupt user file"), message)


class ConfigurationTests(CommandTestsMixin, SynchronousTestCase):
    """
    Finding and loading the configuration; usage errors.
    """

    def test_noConfig(self) -> None:
        """
        Without C{--config} or C{QUTEMAIL_CONFIG}, it is a usage error.
        """
        status, out, err = self.runCommand("user", "list", config=False)
        self.assertEqual(status, 2)
        self.assertIn("--config is required", err)

    def test_configFromEnvironment(self) -> None:
        """
        C{QUTEMAIL_CONFIG} names the file when C{--config} is absent, and
        is not taken for an unknown setting.
        """
        os.environ["QUTEMAIL_CONFIG"] = self.configPath
        self.addBob()
        status, out, err = self.runCommand("user", "list", config=False)
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("bob@example.test  "))

    def test_missingConfigFile(self) -> None:
        """
        An unreadable configuration file gives one line naming it.
        """
        self.configPath = os.path.join(self.base, "absent.ini")
        self.assertIn(self.configPath, self.runFailing("user", "list"))

    def test_badConfig(self) -> None:
        """
        A configuration with problems gives them all on one line.
        """
        with open(self.configPath, "w") as f:
            f.write("[server]\nhostname = mail.example.test\n[bogus]\nx = 1\n")
        message = self.runFailing("user", "list")
        self.assertIn("data_dir", message)
        self.assertIn("bogus", message)

    def test_usageErrors(self) -> None:
        """
        A missing or unknown command or action exits with status 2.
        """
        for args in [(), ("user",), ("user", "frob"), ("nonsense",), ("user", "add")]:
            status, out, err = self.runCommand(*args)
            self.assertEqual(status, 2, args)
            self.assertIn("usage: qutemail", err)

    def test_help(self) -> None:
        """
        C{--help} lists the commands and exits with status 0.
        """
        status, out, err = self.runCommand("--help", config=False)
        self.assertEqual(status, 0)
        self.assertIn("user", out)


class ConsoleScriptTests(SynchronousTestCase):
    """
    The real entry point, C{python -m qutemail.cli}, in a subprocess.
    """

    def setUp(self) -> None:
        """
        Write the configuration.
        """
        base = os.path.abspath(self.mktemp())
        os.mkdir(base)
        self.configPath = os.path.join(base, "qutemail.ini")
        with open(self.configPath, "w") as f:
            f.write(CONFIG)

    def qutemail(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        """
        Run C{qutemail --config PATH args...} as a new process.

        @return: the finished process, with text output.
        """
        environment = cleanEnvironment()
        root = os.path.dirname(os.path.dirname(os.path.abspath(qutemail.__file__)))
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", "qutemail.cli", "--config", self.configPath, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
        )

    def assertFailed(self, process: subprocess.CompletedProcess, reason: str) -> None:
        """
        The process exited with status 1 and one line on standard error,
        prefixed C{qutemail: }, that holds C{reason}.
        """
        self.assertEqual(process.returncode, 1, process.stderr)
        self.assertEqual(process.stdout, "")
        lines = process.stderr.splitlines()
        self.assertEqual(len(lines), 1, process.stderr)
        self.assertTrue(lines[0].startswith("qutemail: "), lines[0])
        self.assertIn(reason, lines[0])

    def test_session(self) -> None:
        """
        An administrator's session: add, list, mistakes, passwd, quota, del.
        """
        added = self.qutemail("user", "add", "bob@example.test", "--password-stdin", stdin="pw1\n")
        self.assertEqual((added.returncode, added.stderr), (0, ""))
        listed = self.qutemail("user", "list")
        self.assertEqual(listed.returncode, 0)
        self.assertEqual(listed.stdout, "bob@example.test  quota=100M (default)  used=0 (0 messages)\n")

        self.assertFailed(
            self.qutemail("user", "add", "bob@example.test", "--password-stdin", stdin="x\n"), "already exists"
        )
        self.assertFailed(
            self.qutemail("user", "add", "not-an-address", "--password-stdin", stdin="x\n"), "not-an-address"
        )
        self.assertFailed(
            self.qutemail("user", "add", "bob@elsewhere.test", "--password-stdin", stdin="x\n"), "elsewhere.test"
        )

        passwd = self.qutemail("user", "passwd", "bob@example.test", "--password-stdin", stdin="pw2\n")
        self.assertEqual((passwd.returncode, passwd.stderr), (0, ""))
        quota = self.qutemail("user", "quota", "bob@example.test", "2G")
        self.assertEqual((quota.returncode, quota.stderr), (0, ""))
        self.assertIn("quota=2G  ", self.qutemail("user", "list").stdout)
        self.assertFailed(self.qutemail("user", "quota", "bob@example.test", "huge"), "bad size")

        removed = self.qutemail("user", "del", "bob@example.test")
        self.assertEqual((removed.returncode, removed.stderr), (0, ""))
        self.assertFailed(self.qutemail("user", "del", "bob@example.test"), "no such user bob@example.test")
        empty = self.qutemail("user", "list")
        self.assertEqual((empty.returncode, empty.stdout, empty.stderr), (0, "", "no users\n"))

    def test_usageError(self) -> None:
        """
        A usage error exits with status 2.
        """
        self.assertEqual(self.qutemail("user").returncode, 2)

    def test_queueAndDKIM(self) -> None:
        """
        The queue, DKIM and DNS commands, which live in
        L{qutemail.cliqueue}, fail with one line and succeed through the
        real entry point too.
        """
        self.assertFailed(self.qutemail("queue", "flush"), "the server is not running")
        self.assertFailed(self.qutemail("queue", "show", "ABC"), "no message ABC in the queue")
        keygen = self.qutemail("dkim", "keygen", "--bits", "1024", "--domain", "example.test")
        self.assertEqual(keygen.returncode, 0, keygen.stderr)
        self.assertTrue(keygen.stdout.startswith("mail._domainkey.example.test. 3600 IN TXT "), keygen.stdout)
        self.assertFailed(self.qutemail("dkim", "keygen"), "already exists")
        records = self.qutemail("dns-records", "--domain", "example.test")
        self.assertEqual((records.returncode, records.stderr), (0, ""))
        self.assertIn(keygen.stdout, records.stdout)


class QueueListTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{qutemail queue list}.
    """

    def test_empty(self) -> None:
        """
        An empty queue says so and exits 0.
        """
        self.assertEqual(self.runOk("queue", "list"), "queue is empty\n")

    def test_deferredEntry(self) -> None:
        """
        A deferred message is listed with its id, sender and each
        recipient's state, attempts and last reply; listing changes
        nothing on disk.
        """
        from qutemail.blocking import InlineRunner
        from qutemail.message import Envelope, SpooledMessage
        from qutemail.queue.deferred import DeferredQueue
        from qutemail.message import RecipientState

        directory = os.path.join(self.dataDir, "queue", "deferred")
        queue = DeferredQueue(directory, InlineRunner())
        envelope = Envelope("x@remote.test", ("alice@example.test", "dave@remote.test"), "c", "192.0.2.1", 1.0)
        queue.add(SpooledMessage("Q1", envelope, 42, inline=b"x" * 42), [
            RecipientState("alice@example.test", 0, "deferred", 2, 4e9, "452 4.2.2 Mailbox full"),
            RecipientState("dave@remote.test", 1, "pending", 0, 0.0, "waiting for the first relay attempt"),
        ])
        before = sorted(os.listdir(directory))
        out = self.runOk("queue", "list")
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("Q1  "), out)
        self.assertTrue(lines[0].endswith("  42  <x@remote.test>"), out)
        self.assertRegex(lines[1], r"^    alice@example\.test  deferred  attempts=2  next in \S+  452 4\.2\.2 Mailbox full$")
        self.assertEqual(lines[2], "    dave@remote.test  pending  attempts=0  waiting for the first relay attempt")
        self.assertEqual(lines[3], "-- 1 message in the queue")
        self.assertEqual(sorted(os.listdir(directory)), before)

    def test_inFlightMessage(self) -> None:
        """
        A message in a journal but not yet delivered (the server is working
        on it, or it crashed) is listed as active, from any worker's
        journal, and the journal is left as it was.
        """
        from twisted.internet.task import Clock

        from qutemail.blocking import InlineRunner
        from qutemail.message import Envelope, SpooledMessage
        from qutemail.queue.journal import Journal

        directory = os.path.join(self.dataDir, "queue", "journal-1")
        journal = Journal(directory, InlineRunner(), Clock())
        journal.recover()
        envelope = Envelope("x@remote.test", ("alice@example.test",), "c", "192.0.2.1", 1.0)
        journal.commit(SpooledMessage("Q2", envelope, 5, inline=b"body\n"))
        before = {n: os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)}
        lines = self.runOk("queue", "list").splitlines()
        self.assertTrue(lines[0].startswith("Q2  "))
        self.assertEqual(lines[1:], ["    alice@example.test  active", "-- 1 message in the queue"])
        self.assertEqual({n: os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)}, before)
