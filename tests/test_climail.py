"""
Tests for L{qutemail.climail}: C{mail list} and C{mail show}, including the
refusals when a key is gone or the stored data was tampered with.
"""

import io
import os
import uuid

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.vault import FileKeyVault
from tests.test_cli import CommandTestsMixin

ORIGINAL = b"Received: from c.test\nFrom: bob@example.test\nSubject: private\n\nthe plan\n"


class BinaryOutput(io.StringIO):
    """
    A text standard output with a binary buffer, like the real one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.buffer = io.BytesIO()


class MailCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    Reading alice's mailbox from the command line.
    """

    def setUp(self) -> None:
        """
        Alice's INBOX with one encrypted and one plain message.
        """
        super().setUp()
        keys = os.path.join(self.dataDir, "keys")
        self.vault = FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), InlineRunner())
        self.keyId, key = str(uuid.uuid4()), os.urandom(32)
        self.successResultOf(ensureDeferred(_store(self.vault, self.keyId, key)))
        self.new = os.path.join(self.dataDir, "mail", "example.test", "alice", "new")
        os.makedirs(self.new)
        self.encrypted = os.path.join(self.new, "1700000001.M1Q1R0.host,S=1")
        with open(self.encrypted, "wb") as f:
            f.write(b"Return-Path: <bob@example.test>\n" + encryptBytes(ORIGINAL, self.keyId, key))
        with open(os.path.join(self.new, "1700000002.M2Q2R0.host,S=2"), "wb") as f:
            f.write(b"Return-Path: <x@remote.test>\nSubject: from outside\n\nhello\n")
        os.utime(self.encrypted, (1700000001, 1700000001))

    def show(self, messageId: str) -> tuple[int, bytes, str]:
        """
        Run C{mail show}.

        @return: the status, the bytes written, standard error.
        """
        out = BinaryOutput()
        stderr = io.StringIO()
        import sys

        from qutemail import cli

        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", stderr)
        status = cli.main(["--config", self.configPath, "mail", "show", "alice@example.test", messageId])
        return status, out.buffer.getvalue() + out.getvalue().encode(), stderr.getvalue()

    def test_list(self) -> None:
        """
        One line a message, ID first, oldest first, saying which are
        encrypted.
        """
        lines = self.runOk("mail", "list", "alice@example.test").splitlines()
        self.assertEqual([(line.split()[0], line.split()[-1]) for line in lines],
                         [("1700000001.M1Q1R0.host,S=1", "encrypted"), ("1700000002.M2Q2R0.host,S=2", "plain")])

    def test_showDecrypts(self) -> None:
        """
        The encrypted message is printed decrypted, exactly.
        """
        self.assertEqual(self.show("1700000001.M1Q1R0.host,S=1"), (0, ORIGINAL, ""))

    def test_showPlain(self) -> None:
        """
        A plain message is printed as stored.
        """
        status, data, _ = self.show("1700000002.M2Q2R0.host,S=2")
        self.assertEqual((status, data), (0, b"Return-Path: <x@remote.test>\nSubject: from outside\n\nhello\n"))

    def test_keyGone(self) -> None:
        """
        With its key erased (crypto-erase), the message is refused in one
        line and nothing is printed.
        """
        self.successResultOf(self.vault.erase(self.keyId))
        status, data, err = self.show("1700000001.M1Q1R0.host,S=1")
        self.assertEqual((status, data), (1, b""))
        self.assertIn("is no longer in the vault", err)
        self.assertEqual(err.count("\n"), 1)

    def test_tampered(self) -> None:
        """
        One changed byte of ciphertext: refused in one line, nothing
        printed.
        """
        with open(self.encrypted, "rb") as f:
            data = bytearray(f.read())
        where = data.rindex(b"\n--qutemail-qkd") - 10
        data[where] = ord("A") if data[where] != ord("A") else ord("B")
        with open(self.encrypted, "wb") as f:
            f.write(bytes(data))
        status, out, err = self.show("1700000001.M1Q1R0.host,S=1")
        self.assertEqual((status, out), (1, b""))
        self.assertIn("failed authentication", err)
        self.assertEqual(err.count("\n"), 1)

    def test_unknownAndForeign(self) -> None:
        """
        An unknown ID, and an address outside our domains, are refused.
        """
        self.assertEqual(self.runFailing("mail", "show", "alice@example.test", "nope"),
                         "no message nope for alice@example.test")
        self.assertIn("remote.test", self.runFailing("mail", "list", "x@remote.test"))


async def _store(vault, keyId: str, key: bytes) -> None:
    """
    Keep a key in the vault.
    """
    await vault.store(keyId, key)
