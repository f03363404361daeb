"""
Conformance tests: every backend of an interface passes the same contract.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryUserDirectory
from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, IMessageStore, IUserDirectory, NoSuchUser, UserExists
from qutemail.store.maildir import MaildirStore


class UserDirectoryContractMixin:
    """
    The behaviour every L{IUserDirectory} has.  Subclasses provide
    C{makeDirectory()}.
    """

    def setUp(self):
        """
        A fresh, empty directory.
        """
        self.directory = self.makeDirectory()

    def test_provides(self):
        """
        The backend provides the interface.
        """
        self.assertTrue(verifyObject(IUserDirectory, self.directory))

    def test_addAndLookUp(self):
        """
        An added account is found, with the default quota; another is not.
        """
        self.assertEqual(self.successResultOf(self.directory.addUser("bob@example.test", b"pw")),
                         Account("bob@example.test"))
        self.assertEqual(self.successResultOf(self.directory.getAccount("bob@example.test")),
                         Account("bob@example.test"))
        self.assertIsNone(self.successResultOf(self.directory.getAccount("eve@example.test")))

    def test_duplicate(self):
        """
        Adding an existing account fails with L{UserExists}.
        """
        self.successResultOf(self.directory.addUser("bob@example.test", b"pw"))
        self.failureResultOf(self.directory.addUser("bob@example.test", b"other"), UserExists)

    def test_passwords(self):
        """
        The right password gives the account; a wrong one, or an unknown
        account, gives C{None}; a changed password replaces the old one.
        """
        self.successResultOf(self.directory.addUser("bob@example.test", b"pw"))
        self.assertEqual(self.successResultOf(self.directory.checkPassword("bob@example.test", b"pw")),
                         Account("bob@example.test"))
        self.assertIsNone(self.successResultOf(self.directory.checkPassword("bob@example.test", b"PW")))
        self.assertIsNone(self.successResultOf(self.directory.checkPassword("eve@example.test", b"pw")))
        self.successResultOf(self.directory.setPassword("bob@example.test", b"new"))
        self.assertIsNone(self.successResultOf(self.directory.checkPassword("bob@example.test", b"pw")))
        self.assertIsNotNone(self.successResultOf(self.directory.checkPassword("bob@example.test", b"new")))

    def test_quotaRemoveList(self):
        """
        Quotas are kept per account, accounts list sorted, removed accounts
        are gone, and changing an unknown account fails with L{NoSuchUser}.
        """
        for name in ("carol", "bob"):
            self.successResultOf(self.directory.addUser(f"{name}@example.test", b"pw"))
        self.assertEqual(self.successResultOf(self.directory.setQuota("bob@example.test", 1000)),
                         Account("bob@example.test", 1000))
        self.assertEqual(self.successResultOf(self.directory.listAccounts()),
                         [Account("bob@example.test", 1000), Account("carol@example.test")])
        self.successResultOf(self.directory.removeUser("carol@example.test"))
        self.assertIsNone(self.successResultOf(self.directory.getAccount("carol@example.test")))
        for call in (lambda: self.directory.removeUser("carol@example.test"),
                     lambda: self.directory.setQuota("carol@example.test", 1),
                     lambda: self.directory.setPassword("carol@example.test", b"x")):
            self.failureResultOf(call(), NoSuchUser)


class MemoryUserDirectoryTests(UserDirectoryContractMixin, SynchronousTestCase):
    """
    The contract for the memory backend.
    """

    def makeDirectory(self):
        """
        @return: an empty L{MemoryUserDirectory}.
        """
        return MemoryUserDirectory()


class FileUserDirectoryTests(UserDirectoryContractMixin, SynchronousTestCase):
    """
    The contract for the file backend.
    """

    def makeDirectory(self):
        """
        @return: a L{FileUserDirectory} on a new file, with cheap hashing.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return FileUserDirectory(os.path.join(path, "users"), InlineRunner(), Clock(), workFactor=4)


class MessageStoreTests(SynchronousTestCase):
    """
    The Maildir store provides L{IMessageStore}.
    """

    def test_provides(self):
        """
        L{MaildirStore} provides the interface.
        """
        self.assertTrue(verifyObject(IMessageStore, MaildirStore(self.mktemp(), InlineRunner(), "h.test", 1)))
