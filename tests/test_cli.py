# -*- test-case-name: tests.test_cli -*-
"""
Tests for L{qutemail.cli}: the command run in-process with its standard
streams replaced, and the real console entry point run as a subprocess.
"""

import getpass
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import dkim
import dns.zone
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

import qutemail
from qutemail import cli
from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.pipeline.dkim import SigningKey, loadPrivateKey, signHeader
from qutemail.message import Envelope, SpooledMessage
from qutemail.relay.mtasts import parseRecord
from qutemail.relay.tlsrpt import parseReportRecord
from qutemail.stspolicy import ownPolicy, policyId
from qutemail.queue.control import ControlService, controlPath
from qutemail.queue.deferred import DeferredQueue
from qutemail.message import RecipientState
from qutemail.queue.journal import Journal
from tests.queue.test_control import FakeScheduler

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


QUEUED_ID = "18F2A3B4C5D6E7ABCD0001"
OTHER_ID = "18F2A3B4C5D6E7ABCD0002"
# A stored message, LF line ends, with a byte that is not UTF-8.
STORED = (b"From: Alice <alice@example.test>\nTo: dave@remote.test\nSubject: hi\n\n"
          b"caf\xe9\n.dot line\nno final newline")
SIGNED_MESSAGE = b"From: Alice <alice@example.test>\nTo: dave@remote.test\nSubject: signed\n\nHello\n"


def queueMessage(dataDir: str, queueId: str = QUEUED_ID, dkimHeader: str = "") -> None:
    """
    Put a message with a deferred and a pending recipient in the deferred
    queue of C{dataDir}, queued five minutes ago.
    """
    directory = os.path.join(dataDir, "queue", "deferred")
    envelope = Envelope("x@remote.test", ("alice@example.test", "dave@remote.test"), "c", "192.0.2.1",
                        time.time() - 300)
    DeferredQueue(directory, InlineRunner()).add(SpooledMessage(queueId, envelope, len(STORED), inline=STORED), [
        RecipientState("alice@example.test", 0, "deferred", 2, time.time() + 600, "452 4.2.2 Mailbox full"),
        RecipientState("dave@remote.test", 1, "pending", 0, 0.0, ""),
    ], dkimHeader)


class QueueShowTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{queue show ID}: read-only, whether or not the server runs.
    """

    def runBinary(self, *args: str) -> tuple[int, bytes, str]:
        """
        Run a command whose standard output is bytes.

        @return: the exit status, standard output and standard error.
        """
        raw, stderr = io.BytesIO(), io.StringIO()
        stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        status = cli.main(["--config", self.configPath, *args])
        stdout.flush()
        return status, raw.getvalue(), stderr.getvalue()

    def test_show(self) -> None:
        """
        The envelope, each recipient's state, attempts, next attempt and
        last reply, then a blank line and the stored message byte for
        byte; the queue is left as it was.
        """
        queueMessage(self.dataDir, dkimHeader="DKIM-Signature: v=1; a=rsa-sha256\n")
        directory = os.path.join(self.dataDir, "queue", "deferred")
        before = {name: os.path.getmtime(os.path.join(directory, name)) for name in os.listdir(directory)}
        status, out, err = self.runBinary("queue", "show", QUEUED_ID)
        self.assertEqual((status, err), (0, ""))
        header, _, body = out.partition(b"\n\n")
        self.assertEqual(body, STORED)
        lines = header.decode().splitlines()
        self.assertEqual(lines[0], f"queue id:     {QUEUED_ID}")
        self.assertEqual(lines[1], "sender:       <x@remote.test>")
        self.assertRegex(lines[2], r"^queued:       \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \([45]m ago\)$")
        self.assertEqual(lines[3], f"size:         {len(STORED)} bytes")
        self.assertEqual(lines[4], "DKIM-signed:  yes")
        self.assertRegex(lines[5], r"^recipient:    <alice@example\.test>  deferred  attempts=2  "
                                   r"next attempt in (9|10)m  last reply: 452 4\.2\.2 Mailbox full$")
        self.assertEqual(lines[6], "recipient:    <dave@remote.test>  pending  attempts=0  next attempt now")
        self.assertEqual(len(lines), 7)
        self.assertEqual({name: os.path.getmtime(os.path.join(directory, name)) for name in os.listdir(directory)},
                         before)

    def test_unsigned(self) -> None:
        """
        A message without a DKIM signature says so; the id may be given in
        lower case.
        """
        queueMessage(self.dataDir)
        status, out, err = self.runBinary("queue", "show", QUEUED_ID.lower())
        self.assertEqual((status, err), (0, ""))
        self.assertIn(b"\nDKIM-signed:  no\n", out)
        self.assertTrue(out.endswith(b"\n\n" + STORED))

    def test_inFlight(self) -> None:
        """
        A message still in a journal is shown with its recipients active.
        """
        journal = Journal(os.path.join(self.dataDir, "queue", "journal"), InlineRunner(), Clock())
        journal.recover()
        envelope = Envelope("x@remote.test", ("alice@example.test",), "c", "192.0.2.1", time.time())
        journal.commit(SpooledMessage(QUEUED_ID, envelope, len(STORED), inline=STORED))
        status, out, err = self.runBinary("queue", "show", QUEUED_ID)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(b"\nrecipient:    <alice@example.test>  active\n\n", out)
        self.assertIn(b"\nDKIM-signed:  not yet\n", out)
        self.assertTrue(out.endswith(b"\n\n" + STORED))

    def test_unknown(self) -> None:
        """
        An id not in the queue is one line of error.
        """
        queueMessage(self.dataDir)
        self.assertEqual(self.runFailing("queue", "show", OTHER_ID), f"no message {OTHER_ID} in the queue")

    def test_badId(self) -> None:
        """
        Something that is not a queue id is refused before any file is
        looked at.
        """
        for text in ["../deferred/x", "G00D", "A" * 41, ""]:
            self.assertTrue(self.runFailing("queue", "show", text).startswith(f"bad queue id {text!r}"))


class QueueOfflineTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{queue flush}, C{queue delete} and C{queue bounce} with no server
    running.
    """

    def test_flush(self) -> None:
        """
        C{queue flush} needs the server.
        """
        self.assertEqual(self.runFailing("queue", "flush"),
                         "the server is not running; queued mail is retried when it starts")

    def test_bounce(self) -> None:
        """
        C{queue bounce} needs the server, which sends the bounce.
        """
        queueMessage(self.dataDir)
        message = self.runFailing("queue", "bounce", QUEUED_ID)
        self.assertIn("the server is not running", message)
        self.assertIn("bounce", message)
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "queue", "deferred", QUEUED_ID + ".json")))

    def test_delete(self) -> None:
        """
        C{queue delete} removes the entry's files itself; other entries
        stay.
        """
        queueMessage(self.dataDir)
        queueMessage(self.dataDir, OTHER_ID)
        self.assertEqual(self.runOk("queue", "delete", QUEUED_ID), f"deleted {QUEUED_ID}\n")
        directory = os.path.join(self.dataDir, "queue", "deferred")
        self.assertEqual(sorted(os.listdir(directory)), [OTHER_ID + ".json", OTHER_ID + ".msg"])
        self.assertNotIn(QUEUED_ID, self.runOk("queue", "list"))

    def test_deleteUnknown(self) -> None:
        """
        Deleting an id not in the queue fails with one line.
        """
        self.assertEqual(self.runFailing("queue", "delete", QUEUED_ID), f"no message {QUEUED_ID} in the queue")
        self.assertTrue(self.runFailing("queue", "delete", "../users").startswith("bad queue id '../users'"))

    def test_deleteInFlight(self) -> None:
        """
        A message still in the journal cannot be deleted offline; the error
        says what to do.
        """
        journal = Journal(os.path.join(self.dataDir, "queue", "journal"), InlineRunner(), Clock())
        journal.recover()
        envelope = Envelope("x@remote.test", ("alice@example.test",), "c", "192.0.2.1", time.time())
        journal.commit(SpooledMessage(QUEUED_ID, envelope, 5, inline=b"body\n"))
        self.assertIn("start the server", self.runFailing("queue", "delete", QUEUED_ID))


class QueueControlTests(CommandTestsMixin, TestCase):
    """
    C{queue flush}, C{queue delete} and C{queue bounce} with a server
    listening on the control socket (a L{ControlService} over a fake
    scheduler); the command runs in a thread, as it blocks.
    """

    def setUp(self) -> None:
        """
        A data directory with a short path (UNIX socket paths are short),
        and the control service listening in it.
        """
        from twisted.internet import reactor

        super().setUp()
        self.dataDir = tempfile.mkdtemp(prefix="qm-")
        self.addCleanup(shutil.rmtree, self.dataDir, True)
        with open(self.configPath, "w") as f:
            f.write(CONFIG.replace("data_dir = data", f"data_dir = {self.dataDir}"))
        self.scheduler = FakeScheduler()
        service = ControlService(reactor, controlPath(self.dataDir), self.scheduler)
        service.startService()
        self.addCleanup(service.stopService)

    async def test_flush(self) -> None:
        """
        C{queue flush} asks the server and prints its answer.
        """
        self.assertEqual(await deferToThread(self.runOk, "queue", "flush"), "flushed 2 messages\n")
        self.assertEqual(self.scheduler.calls, [("flush", None)])

    async def test_delete(self) -> None:
        """
        C{queue delete} goes through the server, which removes the entry:
        the command leaves the files alone.
        """
        queueMessage(self.dataDir)
        self.assertEqual(await deferToThread(self.runOk, "queue", "delete", QUEUED_ID.lower()),
                         f"deleted {QUEUED_ID}\n")
        self.assertEqual(self.scheduler.calls, [("delete", QUEUED_ID)])
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "queue", "deferred", QUEUED_ID + ".json")))

    async def test_bounce(self) -> None:
        """
        C{queue bounce} asks the server, which sends the bounce.
        """
        self.assertEqual(await deferToThread(self.runOk, "queue", "bounce", QUEUED_ID), f"bounced {QUEUED_ID}\n")
        self.assertEqual(self.scheduler.calls, [("bounceNow", QUEUED_ID)])

    async def test_unknown(self) -> None:
        """
        The server's refusal of an unknown id is one line of error.
        """
        for action in ["delete", "bounce"]:
            message = await deferToThread(self.runFailing, "queue", action, OTHER_ID)
            self.assertEqual(message, f"no message {OTHER_ID} in the queue")

    async def test_internalError(self) -> None:
        """
        A failure inside the server is reported as one line pointing to
        the server's log.
        """
        self.scheduler.error = RuntimeError("boom")
        message = await deferToThread(self.runFailing, "queue", "flush")
        self.assertEqual(message, "internal error, see the server log")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def loadZone(text: str, domain: str) -> dns.zone.Zone:
    """
    Load zone-file text as a DNS server would; records of other domains are
    ignored.
    """
    return dns.zone.from_text(text, origin=domain, relativize=False, check_origin=False)


def signatureVerifies(zone: dns.zone.Zone, domain: str, keyPath: str) -> bool:
    """
    Sign a message for C{domain} with the key file, as the server does, and
    verify it with dkimpy, resolving the key record from C{zone}.
    """
    with open(keyPath, "rb") as f:
        pem, algorithm = loadPrivateKey(f.read())
    signature = signHeader(io.BytesIO(SIGNED_MESSAGE), SigningKey("mail", domain, pem, algorithm), 10000)
    wire = (signature + SIGNED_MESSAGE).replace(b"\n", b"\r\n")

    def lookupTXT(name: bytes, timeout: float = 5) -> bytes | None:
        """
        @return: the TXT record of C{name} in the zone.
        """
        rdataset = zone.get_rdataset(name.decode("ascii"), "TXT")
        return None if rdataset is None else b"".join(rdataset[0].strings)

    return dkim.verify(wire, dnsfunc=lookupTXT)


class DKIMKeygenTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dkim keygen}.
    """

    def setUp(self) -> None:
        """
        Where the key goes by default.
        """
        super().setUp()
        self.keyPath = os.path.join(self.dataDir, "keys", "dkim-mail.key")

    def keygen(self, *args: str) -> str:
        """
        Run C{dkim keygen} with a small RSA key (fast), which must succeed
        with a note on standard error.

        @return: standard output.
        """
        status, out, err = self.runCommand("dkim", "keygen", *(args or ("--bits", "1024")))
        self.assertEqual(status, 0, err)
        self.assertIn("restart the server", err)
        return out

    def test_keygen(self) -> None:
        """
        The key is written under C{data_dir/keys}, mode 0600, and the
        printed records, one per local domain, load as zone files and
        verify a signature made with the key.
        """
        status, out, err = self.runCommand("dkim", "keygen", "--bits", "1024")
        self.assertEqual(status, 0, err)
        self.assertIn(self.keyPath, err)
        self.assertEqual(stat.S_IMODE(os.stat(self.keyPath).st_mode), 0o600)
        self.assertEqual(len(out.splitlines()), 2)
        for domain in ["example.test", "other.test"]:
            zone = loadZone(out, domain)
            [rdata] = zone.find_rdataset(f"mail._domainkey.{domain}.", "TXT")
            self.assertTrue(b"".join(rdata.strings).startswith(b"v=DKIM1; k=rsa; p="))
            self.assertTrue(signatureVerifies(zone, domain, self.keyPath))

    def test_refusesOverwrite(self) -> None:
        """
        An existing key is kept unless C{--force} is given.
        """
        self.keygen()
        with open(self.keyPath, "rb") as f:
            before = f.read()
        message = self.runFailing("dkim", "keygen", "--bits", "1024")
        self.assertIn(f"a DKIM key already exists at {self.keyPath}", message)
        self.assertIn("--force", message)
        with open(self.keyPath, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_force(self) -> None:
        """
        C{--force} replaces the key: the new record verifies the new key's
        signatures, the old record no longer does.
        """
        old = loadZone(self.keygen(), "example.test")
        new = loadZone(self.keygen("--bits", "1024", "--force"), "example.test")
        self.assertEqual(stat.S_IMODE(os.stat(self.keyPath).st_mode), 0o600)
        self.assertTrue(signatureVerifies(new, "example.test", self.keyPath))
        self.assertFalse(signatureVerifies(old, "example.test", self.keyPath))

    def test_domain(self) -> None:
        """
        C{--domain} prints only that domain's record; a domain that is not
        local is refused before any key is made.
        """
        out = self.keygen("--domain", "Other.Test", "--bits", "1024")
        self.assertEqual(len(out.splitlines()), 1)
        self.assertTrue(out.startswith("mail._domainkey.other.test. "), out)
        os.unlink(self.keyPath)
        message = self.runFailing("dkim", "keygen", "--domain", "elsewhere.test")
        self.assertEqual(message, "'elsewhere.test' is not a local domain (example.test, other.test)")
        self.assertFalse(os.path.exists(self.keyPath))

    def test_configuredPath(self) -> None:
        """
        The key goes to C{[dkim] private_key} when it is set, with the
        configured selector; its directory is made if missing.
        """
        keyPath = os.path.join(self.base, "dkim", "signing.pem")
        with open(self.configPath, "a") as f:
            f.write(f"\n[dkim]\nselector = s2024\nprivate_key = {keyPath}\n")
        out = self.keygen()
        self.assertTrue(os.path.exists(keyPath))
        self.assertFalse(os.path.exists(self.keyPath))
        self.assertTrue(out.startswith("s2024._domainkey.example.test. "), out)

    def test_badBits(self) -> None:
        """
        RSA keys have 1024 to 4096 bits; C{--bits} does not apply to
        Ed25519.
        """
        for bits in ["512", "8192"]:
            self.assertIn("1024 to 4096 bits", self.runFailing("dkim", "keygen", "--bits", bits))
        self.assertEqual(self.runFailing("dkim", "keygen", "--algorithm", "ed25519", "--bits", "256"),
                         "--bits is for RSA keys only")
        self.assertFalse(os.path.exists(self.keyPath))

    def test_ed25519(self) -> None:
        """
        An Ed25519 key gets a C{k=ed25519} record that loads as a zone.
        """
        out = self.keygen("--algorithm", "ed25519")
        [rdata] = loadZone(out, "example.test").find_rdataset("mail._domainkey.example.test.", "TXT")
        self.assertTrue(b"".join(rdata.strings).startswith(b"v=DKIM1; k=ed25519; p="))
        self.assertEqual(stat.S_IMODE(os.stat(self.keyPath).st_mode), 0o600)


class DNSRecordsTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{dns-records}.
    """

    def test_withKey(self) -> None:
        """
        Each local domain gets a comment header, then MX, SPF, DKIM and
        DMARC records that load as a zone; the DKIM record verifies a
        signature made with the key.
        """
        self.runCommand("dkim", "keygen", "--bits", "1024")
        out = self.runOk("dns-records")
        self.assertTrue(out.startswith("; example.test\n"), out)
        self.assertIn("\n\n; other.test\n", out)
        for domain in ["example.test", "other.test"]:
            zone = loadZone(out, domain)
            [mx] = zone.find_rdataset(f"{domain}.", "MX")
            self.assertEqual((mx.preference, mx.exchange.to_text()), (10, "mail.example.test."))
            [spf] = zone.find_rdataset(f"{domain}.", "TXT")
            self.assertEqual(spf.strings, (b"v=spf1 mx -all",))
            [dmarc] = zone.find_rdataset(f"_dmarc.{domain}.", "TXT")
            self.assertTrue(b"".join(dmarc.strings).startswith(b"v=DMARC1; "))
            zone.find_rdataset(f"mail._domainkey.{domain}.", "TXT")
            self.assertTrue(signatureVerifies(zone, domain, os.path.join(self.dataDir, "keys", "dkim-mail.key")))
            [sts] = zone.find_rdataset(f"_mta-sts.{domain}.", "TXT")
            self.assertEqual(parseRecord([b"".join(sts.strings)]), policyId(ownPolicy("mail.example.test", "testing")))
            [tlsrpt] = zone.find_rdataset(f"_smtp._tls.{domain}.", "TXT")
            self.assertEqual(parseReportRecord([b"".join(tlsrpt.strings)]), [f"postmaster@{domain}"])

    def test_noKey(self) -> None:
        """
        Without a key, a comment says how to make one in place of the DKIM
        record; the rest still loads.
        """
        out = self.runOk("dns-records", "--domain", "example.test")
        lines = out.splitlines()
        self.assertEqual(lines[0], "; example.test")
        self.assertIn("; no DKIM key: run qutemail dkim keygen", lines)
        self.assertNotIn("other.test", out)
        zone = loadZone(out, "example.test")
        self.assertEqual(len(zone.find_rdataset("example.test.", "MX")), 1)
        self.assertIsNone(zone.get_rdataset("mail._domainkey.example.test.", "TXT"))

    def test_unknownDomain(self) -> None:
        """
        C{--domain} must be a local domain.
        """
        self.assertIn("is not a local domain", self.runFailing("dns-records", "--domain", "elsewhere.test"))

    def test_badKey(self) -> None:
        """
        A key file that holds no key is one line of error naming it.
        """
        keyPath = os.path.join(self.dataDir, "keys", "dkim-mail.key")
        os.makedirs(os.path.dirname(keyPath))
        with open(keyPath, "w") as f:
            f.write("not a key")
        self.assertTrue(self.runFailing("dns-records").startswith(f"cannot use the DKIM key {keyPath}: "))
