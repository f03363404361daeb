# -*- test-case-name: tests.backends.test_userrecords -*-
"""
Tests for L{qutemail.backends.userrecords}, through the directory that
reads the file (L{qutemail.backends.userfile}).
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.userrecords import UserFileError
from tests.backends.test_userfile import PASSWORD, DirectoryTestsMixin


class CorruptFileTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    A file that is not a valid user file gives one clear error.
    """

    # name: (contents, a word the message must hold)
    CORRUPT = {
        "not JSON": (b'{"version": 1, "users": {', "not JSON"),
        "not UTF-8": (b"\xff\xfe", "not UTF-8"),
        "not an object": (b"[]", "top level"),
        "wrong version": (b'{"version": 2, "users": {}}', "version 2"),
        "users not an object": (b'{"version": 1, "users": []}', '"users"'),
        "bad address": (b'{"version": 1, "users": {"bob": {"password": "x", "quota": null}}}', "'bob'"),
        "unnormalised address": (
            b'{"version": 1, "users": {"Bob@example.test": {"password": "x", "quota": null}}}',
            "normal form",
        ),
        "bad hash": (
            b'{"version": 1, "users": {"bob@example.test": {"password": "plain", "quota": null}}}',
            "password hash",
        ),
        "bad quota": (
            b'{"version": 1, "users": {"bob@example.test": {"password": '
            b'"scrypt$4$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "quota": -5}}}',
            "quota -5",
        ),
        "entry not an object": (b'{"version": 1, "users": {"bob@example.test": "secret"}}', "not an object"),
    }

    def test_corrupt(self) -> None:
        """
        Every kind of corruption fails reads with L{UserFileError}, whose
        message is one line naming the file and the fault.
        """
        for name, (data, reason) in self.CORRUPT.items():
            self.writeFile(data)
            directory = self.makeDirectory()
            failure = self.failureResultOf(directory.listAccounts(), UserFileError)
            message = str(failure.value)
            self.assertTrue(message.startswith(self.path + ": corrupt user file: "), (name, message))
            self.assertIn(reason, message, name)
            self.assertNotIn("\n", message, name)

    def test_checkPasswordOnCorruptFile(self) -> None:
        """
        Password checks fail with the error too, rather than saying the
        user does not exist.
        """
        self.writeFile(b"garbage")
        self.failureResultOf(self.directory.checkPassword("bob@example.test", PASSWORD), UserFileError)

    def test_notOverwritten(self) -> None:
        """
        A change refuses to replace a corrupt file (whose accounts would be
        lost).
        """
        self.writeFile(b"garbage")
        self.failureResultOf(self.directory.addUser("bob@example.test", PASSWORD), UserFileError)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"garbage")

    def test_recovers(self) -> None:
        """
        Once the file is repaired, the next check reads it again.
        """
        self.writeFile(b"garbage")
        self.failureResultOf(self.directory.listAccounts(), UserFileError)
        os.unlink(self.path)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(self.directory.listAccounts()), [])
