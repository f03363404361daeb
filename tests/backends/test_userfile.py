# -*- test-case-name: tests.backends.test_userfile -*-
"""
Tests for L{qutemail.backends.userfile}, over a temporary directory with an
inline runner and a L{Clock}.
"""

import json
import os
import stat
from typing import Any, Callable

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.address import AddressInvalid
from qutemail import durable
from qutemail.backends import userfile
from qutemail.backends.userfile import FileUserDirectory
from qutemail.backends.userrecords import UserFileError
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, IUserDirectory, NoSuchUser, UserExists

# Cheap scrypt (N = 16) so that the tests run fast; WorkFactorTests and
# tests.backends.test_passwordhash cover the real cost.
CHEAP = 4
PASSWORD = b"correct horse battery staple"


@attrs.define
class RecordingRunner:
    """
    An inline runner that remembers the name of every function it ran.

    @ivar calls: the names, in order.
    """

    calls: list[str] = attrs.field(factory=list)

    def run(self, f: Callable[..., Any], *args: Any) -> Any:
        """
        Record C{f}'s name and run it inline.
        """
        self.calls.append(f.__name__)
        return InlineRunner().run(f, *args)


class DirectoryTestsMixin:
    """
    A directory over C{users} in a fresh temporary directory.
    """

    def setUp(self) -> None:
        """
        Build the directory, its runner and its clock.
        """
        self.dataDir = self.mktemp()
        os.mkdir(self.dataDir)
        self.path = os.path.join(self.dataDir, "users")
        self.runner = RecordingRunner()
        self.clock = Clock()
        self.directory = self.makeDirectory()

    def makeDirectory(self, clock: Clock | None = None, workFactor: int = CHEAP) -> FileUserDirectory:
        """
        @return: another directory over the same file, as a second process
            would have.
        """
        return FileUserDirectory(self.path, self.runner, clock or self.clock, workFactor=workFactor)

    def add(self, address: str = "bob@example.test", password: bytes = PASSWORD) -> Account:
        """
        Add an account, which must succeed.
        """
        return self.successResultOf(self.directory.addUser(address, password))

    def fileDocument(self) -> dict:
        """
        @return: the parsed user file.
        """
        with open(self.path, "rb") as f:
            return json.loads(f.read())

    def writeFile(self, data: bytes) -> None:
        """
        Replace the user file's contents, as a careless editor would.
        """
        with open(self.path, "wb") as f:
            f.write(data)


class AccountTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    Adding, finding, changing and removing accounts.
    """

    def test_interface(self) -> None:
        """
        L{FileUserDirectory} provides L{IUserDirectory}.
        """
        self.assertTrue(verifyObject(IUserDirectory, self.directory))

    def test_clockMustProvideTime(self) -> None:
        """
        A clock that does not provide C{IReactorTime} is refused at once.
        """
        self.assertRaises(TypeError, FileUserDirectory, self.path, self.runner, object())

    def test_missingFileMeansNoUsers(self) -> None:
        """
        Without a user file there are no users, and reading creates none.
        """
        self.assertEqual(self.successResultOf(self.directory.listAccounts()), [])
        self.assertIsNone(self.successResultOf(self.directory.getAccount("bob@example.test")))
        self.assertFalse(os.path.exists(self.path))

    def test_addUser(self) -> None:
        """
        A new account has the default quota and can be looked up.
        """
        self.assertEqual(self.add(), Account("bob@example.test", None))
        self.assertEqual(
            self.successResultOf(self.directory.getAccount("bob@example.test")),
            Account("bob@example.test", None),
        )

    def test_addUserCreatesDataDir(self) -> None:
        """
        Adding the first user creates the data directory if it is missing.
        """
        self.path = os.path.join(self.mktemp(), "data", "users")
        self.directory = self.makeDirectory()
        self.add()
        self.assertEqual(self.fileDocument()["users"].keys(), {"bob@example.test"})

    def test_addDuplicate(self) -> None:
        """
        Adding an existing address fails with L{UserExists} and leaves the
        first password in place.
        """
        self.add()
        self.failureResultOf(self.directory.addUser("bob@example.test", b"other"), UserExists)
        self.assertIsNotNone(self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD)))

    def test_addUnnormalisedAddress(self) -> None:
        """
        Addresses must come normalised; anything else is refused rather than
        stored under a key no lookup would find.
        """
        for address in ["Bob@example.test", "bob@EXAMPLE.test", "bob", "a/b@example.test"]:
            self.failureResultOf(self.directory.addUser(address, PASSWORD), AddressInvalid)
        self.assertFalse(os.path.exists(self.path))

    def test_addEmptyPassword(self) -> None:
        """
        An empty password is refused.
        """
        self.failureResultOf(self.directory.addUser("bob@example.test", b""), ValueError)
        self.assertFalse(os.path.exists(self.path))

    def test_checkPassword(self) -> None:
        """
        The right password gives the account; a wrong one, or one for an
        unknown user, gives C{None}.
        """
        self.add()
        check = self.directory.checkPassword
        self.assertEqual(
            self.successResultOf(check("bob@example.test", PASSWORD)), Account("bob@example.test")
        )
        self.assertIsNone(self.successResultOf(check("bob@example.test", PASSWORD + b"!")))
        self.assertIsNone(self.successResultOf(check("bob@example.test", b"")))
        self.assertIsNone(self.successResultOf(check("eve@example.test", PASSWORD)))

    def test_hashingThroughRunner(self) -> None:
        """
        Hashing, verifying and the dummy work for an unknown user all run
        through the runner, never on the caller's thread.
        """
        self.add()
        self.assertIn("hashPassword", self.runner.calls)
        del self.runner.calls[:]
        self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD))
        self.assertEqual(self.runner.calls, ["verifyPassword"])
        del self.runner.calls[:]
        self.successResultOf(self.directory.checkPassword("eve@example.test", PASSWORD))
        self.assertEqual(self.runner.calls, ["dummyVerify"])

    def test_hashingThroughHashRunner(self) -> None:
        """
        Given a C{hashRunner} (the server's password threads), hashing,
        verifying and the dummy work run there, and only the file work
        through the runner.
        """
        hashing = RecordingRunner()
        self.directory = FileUserDirectory(self.path, self.runner, self.clock, workFactor=CHEAP,
                                           hashRunner=hashing)
        self.add()
        self.successResultOf(self.directory.setPassword("bob@example.test", PASSWORD + b"2"))
        self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD + b"2"))
        self.successResultOf(self.directory.checkPassword("eve@example.test", PASSWORD))
        self.assertEqual(hashing.calls, ["hashPassword", "hashPassword", "verifyPassword", "dummyVerify"])
        self.assertNotIn("hashPassword", self.runner.calls)
        self.assertNotIn("verifyPassword", self.runner.calls)
        self.assertIn("_modify", self.runner.calls)

    def test_fileAccessThroughRunner(self) -> None:
        """
        Writing and re-reading the file run through the runner.
        """
        self.add()
        self.assertEqual(self.runner.calls, ["hashPassword", "_modify"])
        self.clock.advance(1)
        self.successResultOf(self.directory.listAccounts())
        self.assertEqual(self.runner.calls[-1], "_refresh")

    def test_setPassword(self) -> None:
        """
        After a password change only the new password works.
        """
        self.add()
        self.assertIsNone(self.successResultOf(self.directory.setPassword("bob@example.test", b"new")))
        self.assertIsNone(self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD)))
        self.assertIsNotNone(self.successResultOf(self.directory.checkPassword("bob@example.test", b"new")))

    def test_setPasswordKeepsQuota(self) -> None:
        """
        Changing the password leaves the quota as it was.
        """
        self.add()
        self.successResultOf(self.directory.setQuota("bob@example.test", 1000))
        self.successResultOf(self.directory.setPassword("bob@example.test", b"new"))
        self.assertEqual(
            self.successResultOf(self.directory.getAccount("bob@example.test")),
            Account("bob@example.test", 1000),
        )

    def test_setPasswordUnknown(self) -> None:
        """
        Changing the password of an unknown user fails with L{NoSuchUser}.
        """
        self.failureResultOf(self.directory.setPassword("eve@example.test", b"new"), NoSuchUser)

    def test_removeUser(self) -> None:
        """
        A removed account is gone, and its password no longer works.
        """
        self.add()
        self.add("carol@example.test")
        self.assertIsNone(self.successResultOf(self.directory.removeUser("bob@example.test")))
        self.assertIsNone(self.successResultOf(self.directory.getAccount("bob@example.test")))
        self.assertIsNone(self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD)))
        self.assertEqual(self.fileDocument()["users"].keys(), {"carol@example.test"})

    def test_removeUnknown(self) -> None:
        """
        Removing an unknown user fails with L{NoSuchUser}.
        """
        self.failureResultOf(self.directory.removeUser("eve@example.test"), NoSuchUser)

    def test_setQuota(self) -> None:
        """
        A quota can be set, and reset to the default with C{None}.
        """
        self.add()
        self.assertEqual(
            self.successResultOf(self.directory.setQuota("bob@example.test", 5 * 2**30)),
            Account("bob@example.test", 5 * 2**30),
        )
        self.assertEqual(
            self.successResultOf(self.directory.getAccount("bob@example.test")).quotaBytes, 5 * 2**30
        )
        self.successResultOf(self.directory.setQuota("bob@example.test", None))
        self.assertIsNone(self.successResultOf(self.directory.getAccount("bob@example.test")).quotaBytes)

    def test_setQuotaUnknown(self) -> None:
        """
        Setting the quota of an unknown user fails with L{NoSuchUser}.
        """
        self.failureResultOf(self.directory.setQuota("eve@example.test", 10), NoSuchUser)

    def test_setQuotaInvalid(self) -> None:
        """
        A quota must be C{None} or a whole number of bytes, not negative.
        """
        self.add()
        for quota in [-1, 1.5, "10M", True]:
            self.failureResultOf(self.directory.setQuota("bob@example.test", quota), ValueError)

    def test_listAccounts(self) -> None:
        """
        The list holds every account with its quota, sorted by address.
        """
        self.add("carol@example.test")
        self.add("bob@example.test")
        self.add("alice@other.test")
        self.successResultOf(self.directory.setQuota("carol@example.test", 42))
        self.assertEqual(
            self.successResultOf(self.directory.listAccounts()),
            [
                Account("alice@other.test"),
                Account("bob@example.test"),
                Account("carol@example.test", 42),
            ],
        )


class FileTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    The file on disk: format, permissions, atomic replacement.
    """

    def test_format(self) -> None:
        """
        The file is the documented JSON: a version and a record per address
        with a parameterised scrypt hash and the quota.
        """
        self.add()
        self.successResultOf(self.directory.setQuota("bob@example.test", 2048))
        document = self.fileDocument()
        self.assertEqual(document["version"], 1)
        record = document["users"]["bob@example.test"]
        self.assertEqual(record["quota"], 2048)
        self.assertTrue(record["password"].startswith(f"scrypt${CHEAP}$8$1$"), record["password"])

    def test_passwordNotInClear(self) -> None:
        """
        Neither the password nor any encoding of it that is easy to spot
        appears in the file.
        """
        self.add()
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertNotIn(PASSWORD, data)
        self.assertNotIn(b"correct", data)

    def test_mode(self) -> None:
        """
        The user file and its lock file are readable and writable by their
        owner only, after every rewrite.
        """
        self.add()
        self.add("carol@example.test")
        for path in [self.path, self.path + ".lock"]:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

    def test_noTemporaryFilesLeft(self) -> None:
        """
        After a write, the directory holds the user file and its lock file
        only.
        """
        self.add()
        self.successResultOf(self.directory.removeUser("bob@example.test"))
        self.assertEqual(sorted(os.listdir(self.dataDir)), ["users", "users.lock"])

    def test_replacedNotRewritten(self) -> None:
        """
        A change writes a new file and renames it over the old one, so a
        reader holding the old file still sees it whole.
        """
        self.add()
        with open(self.path, "rb") as old:
            before = old.read()
            self.add("carol@example.test")
            old.seek(0)
            self.assertEqual(old.read(), before)
        self.assertIn("carol@example.test", self.fileDocument()["users"])

    def test_failedWriteKeepsFile(self) -> None:
        """
        When the new file cannot be written, the old one stays, no
        temporary file is left, and the error names the file.
        """
        self.add()
        with open(self.path, "rb") as f:
            before = f.read()

        def failingWriteAll(fd: int, data: bytes) -> None:
            """
            Fail as a full disk does.
            """
            raise OSError(28, "No space left on device")

        self.patch(durable, "writeAll", failingWriteAll)
        failure = self.failureResultOf(self.directory.addUser("carol@example.test", PASSWORD), UserFileError)
        self.assertIn(self.path, str(failure.value))
        self.assertIn("No space left on device", str(failure.value))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(sorted(os.listdir(self.dataDir)), ["users", "users.lock"])


class ReloadTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    Changes made by another process (the command-line tool) reach the
    server within a second of its clock.
    """

    def setUp(self) -> None:
        """
        A second directory over the same file, with its own clock.
        """
        super().setUp()
        self.other = self.makeDirectory(Clock())
        # The server has read the (missing) file once.
        self.assertEqual(self.successResultOf(self.directory.listAccounts()), [])

    def test_addSeenAfterASecond(self) -> None:
        """
        An account added elsewhere is not seen before the clock has moved
        a second, and is seen after.
        """
        self.successResultOf(self.other.addUser("bob@example.test", PASSWORD))
        self.assertIsNone(self.successResultOf(self.directory.getAccount("bob@example.test")))
        self.clock.advance(0.999)
        self.assertIsNone(self.successResultOf(self.directory.getAccount("bob@example.test")))
        self.clock.advance(0.001)
        self.assertEqual(
            self.successResultOf(self.directory.getAccount("bob@example.test")), Account("bob@example.test")
        )
        self.assertIsNotNone(self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD)))

    def test_cachedWithinASecond(self) -> None:
        """
        Within a second of the last check the file is not even stat()ed.
        """
        self.clock.advance(1)
        self.successResultOf(self.directory.listAccounts())
        before = self.runner.calls.count("_refresh")
        for _ in range(10):
            self.clock.advance(0.05)
            self.successResultOf(self.directory.listAccounts())
        self.assertEqual(self.runner.calls.count("_refresh"), before)
        self.clock.advance(0.5)
        self.successResultOf(self.directory.listAccounts())
        self.assertEqual(self.runner.calls.count("_refresh"), before + 1)

    def test_unchangedNotReread(self) -> None:
        """
        When the file has not changed, a check costs a stat() and the
        cached accounts are kept.
        """
        self.add()
        reads = []
        realReadFile = userfile._readFile

        def countingReadFile(path: str) -> Any:
            """
            Count the reads, then read.
            """
            reads.append(path)
            return realReadFile(path)

        self.patch(userfile, "_readFile", countingReadFile)
        self.clock.advance(5)
        self.assertEqual(len(self.successResultOf(self.directory.listAccounts())), 1)
        self.assertEqual(reads, [])

    def test_passwordChangeSeen(self) -> None:
        """
        A password changed elsewhere takes effect after a second.
        """
        self.add()
        self.successResultOf(self.other.setPassword("bob@example.test", b"new"))
        self.assertIsNotNone(self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD)))
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD)))
        self.assertIsNotNone(self.successResultOf(self.directory.checkPassword("bob@example.test", b"new")))

    def test_removeAndQuotaSeen(self) -> None:
        """
        Removals and quota changes made elsewhere are seen after a second.
        """
        self.add()
        self.add("carol@example.test")
        self.successResultOf(self.other.removeUser("bob@example.test"))
        self.successResultOf(self.other.setQuota("carol@example.test", 99))
        self.clock.advance(1)
        self.assertEqual(
            self.successResultOf(self.directory.listAccounts()), [Account("carol@example.test", 99)]
        )

    def test_fileDeletedSeen(self) -> None:
        """
        When the file disappears, the users go with it.
        """
        self.add()
        os.unlink(self.path)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(self.directory.listAccounts()), [])

    def test_changesMergeNotClobber(self) -> None:
        """
        A change re-reads the file under the lock, so it keeps accounts
        another process added since this one last looked.
        """
        self.successResultOf(self.other.addUser("carol@example.test", PASSWORD))
        self.add()
        self.assertEqual(self.fileDocument()["users"].keys(), {"bob@example.test", "carol@example.test"})

    def test_ownChangesSeenAtOnce(self) -> None:
        """
        A directory sees its own changes without waiting for the clock.
        """
        self.add()
        self.assertEqual(self.successResultOf(self.directory.listAccounts()), [Account("bob@example.test")])
