# -*- test-case-name: tests.test_cliretention -*-
"""
Tests for C{qutemail retention run}: the retention sweep run once from the
command line, against real Maildirs and the server's file key vault.
"""

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, KeyGone
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.vault import FileKeyVault
from qutemail.store.maildir import MaildirStore
from qutemail.store.mailbox import mailboxPath, readUsage
from tests.test_cli import CommandTestsMixin

DAY = 86400.0
BOB = Account("bob@example.test")


class RetentionRunTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{retention run [--dry-run]} with the default 365 days: two messages
    of bob's are 400 days old (one encrypted), one is a day old.
    """

    def setUp(self) -> None:
        """
        Deliver the three messages through the store, the encrypted one's
        key in the vault the server uses.
        """
        super().setUp()
        runner = InlineRunner()
        keys = os.path.join(self.dataDir, "keys")
        self.vault = FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), runner)
        store = MaildirStore(self.dataDir, runner, "mail.example.test", 0)
        now = time.time()
        self.paths = []
        for n, (age, keyId) in enumerate([(400, "k-old"), (400, None), (1, None)]):
            body = b"From: carol@remote.test\nSubject: %d\n\ntext\n" % (n,)
            if keyId:
                key = os.urandom(32)
                self.successResultOf(self.vault.store(keyId, key))
                body = encryptBytes(body, keyId, key)
            envelope = Envelope("carol@remote.test", (BOB.address,), "c.test", "192.0.2.7", now - age * DAY)
            name = self.successResultOf(store.deliver(SpooledMessage(f"Q{n}", envelope, len(body), inline=body), BOB))
            self.paths.append(os.path.join(mailboxPath(self.dataDir, BOB.address), "new", name))
        self.usage = readUsage(mailboxPath(self.dataDir, BOB.address))

    def test_dryRun(self) -> None:
        """
        A dry run lists the two old messages and a summary, and removes
        nothing: files, usage and key stay.
        """
        out = self.runOk("retention", "run", "--dry-run")
        lines = out.splitlines()
        self.assertEqual(len(lines), 3, out)
        listed = sorted(line.split()[2] for line in lines[:2])
        self.assertEqual(listed, sorted(os.path.basename(p) for p in self.paths[:2]))
        self.assertTrue(all(line.startswith("bob@example.test  INBOX  ") for line in lines[:2]))
        self.assertTrue(lines[2].startswith("would remove 2 messages, "), lines[2])
        self.assertTrue(all(os.path.exists(p) for p in self.paths))
        self.assertEqual(readUsage(mailboxPath(self.dataDir, BOB.address)), self.usage)
        self.assertEqual(len(self.successResultOf(self.vault.fetch("k-old"))), 32)

    def test_run(self) -> None:
        """
        A real run removes the two old messages, lowers bob's usage by
        their sizes and erases the old message's key; the young message
        stays.
        """
        sizes = sum(os.path.getsize(p) for p in self.paths[:2])
        out = self.runOk("retention", "run")
        self.assertIn(f"removed 2 messages, {sizes} bytes, older than 365 days", out)
        self.assertEqual([os.path.exists(p) for p in self.paths], [False, False, True])
        self.assertEqual(readUsage(mailboxPath(self.dataDir, BOB.address)),
                         (self.usage[0] - sizes, self.usage[1] - 2))
        self.failureResultOf(self.vault.fetch("k-old"), KeyGone)
        self.assertEqual(self.runOk("retention", "run"), "removed 0 messages, 0 bytes, older than 365 days\n")

    def test_forever(self) -> None:
        """
        With C{retention_days = 0} nothing is looked at.
        """
        with open(self.configPath, "a") as f:
            f.write("retention_days = 0\n")
        self.assertIn("kept for ever", self.runOk("retention", "run"))
        self.assertTrue(all(os.path.exists(p) for p in self.paths))
