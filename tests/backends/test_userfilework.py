"""
Tests for L{qutemail.backends.userfile}: the password work factor, what
is logged, and lookups made while the file is reloaded.
"""

import json
import os

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.passwordhash import DEFAULT_WORK_FACTOR
from qutemail.backends.userfile import FileUserDirectory
from qutemail.backends.userrecords import UserFileError
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account
from tests.support import QueuedRunner

# Cheap scrypt (N = 16) so that the tests run fast; WorkFactorTests and
# tests.backends.test_passwordhash cover the real cost.

from tests.backends.test_userfile import CHEAP, PASSWORD, DirectoryTestsMixin


class WorkFactorTests(SynchronousTestCase):
    """
    The scrypt cost of the directory's hashes.
    """

    def test_directoryDefault(self) -> None:
        """
        A directory built without a work factor hashes at the default cost.
        """
        path = os.path.join(self.mktemp(), "users")
        directory = FileUserDirectory(path, InlineRunner(), Clock())
        self.assertEqual(directory.workFactor, DEFAULT_WORK_FACTOR)
        self.successResultOf(directory.addUser("bob@example.test", PASSWORD))
        with open(path, "rb") as f:
            stored = json.loads(f.read())["users"]["bob@example.test"]["password"]
        self.assertTrue(stored.startswith("scrypt$14$8$1$"), stored)

    def test_oldParametersStillVerify(self) -> None:
        """
        A hash made at another cost still verifies after the directory's
        cost changes.
        """
        dataDir = self.mktemp()
        path = os.path.join(dataDir, "users")
        old = FileUserDirectory(path, InlineRunner(), Clock(), workFactor=5)
        self.successResultOf(old.addUser("bob@example.test", PASSWORD))
        new = FileUserDirectory(path, InlineRunner(), Clock(), workFactor=CHEAP)
        self.assertIsNotNone(self.successResultOf(new.checkPassword("bob@example.test", PASSWORD)))


class LoggingTests(DirectoryTestsMixin, SynchronousTestCase):
    """
    What the directory logs.
    """

    def test_changesLoggedWithoutPassword(self) -> None:
        """
        Changes are logged with the address as a field, and no event holds
        the password.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.add()
        self.successResultOf(self.directory.setPassword("bob@example.test", b"second secret"))
        self.successResultOf(self.directory.checkPassword("bob@example.test", PASSWORD))
        self.assertIn("bob@example.test", [event.get("address") for event in events])
        for event in events:
            self.assertNotIn("correct horse", repr(event))
            self.assertNotIn("second secret", repr(event))

    def test_corruptFileLogged(self) -> None:
        """
        A corrupt file is logged as an error naming it, once per check.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.writeFile(b"garbage")
        self.failureResultOf(self.directory.listAccounts(), UserFileError)
        self.failureResultOf(self.directory.listAccounts(), UserFileError)
        errors = [event for event in events if event.get("path") == self.path and "reason" in event]
        self.assertEqual(len(errors), 1)
        self.assertIn("corrupt user file", errors[0]["reason"])


class ConcurrentLookupTests(SynchronousTestCase):
    """
    Lookups never queue behind a lock: they read the current snapshot, and
    only wait (all for the same re-read) when it is time to look at the
    file again.  Writers go one at a time.
    """

    def setUp(self) -> None:
        """
        A directory with one account, whose runner holds every call until
        the test runs it (a worker thread that takes its time).
        """
        self.dataDir = self.mktemp()
        os.mkdir(self.dataDir)
        self.path = os.path.join(self.dataDir, "users")
        FileUserDirectory(self.path, InlineRunner(), Clock(), workFactor=CHEAP).addUser("bob@example.test", PASSWORD)
        self.runner = QueuedRunner()
        self.clock = Clock()
        self.directory = FileUserDirectory(self.path, self.runner, self.clock, workFactor=CHEAP)

    def test_thousandLookupsDuringReread(self) -> None:
        """
        1,000 lookups made while a re-read is in flight start one re-read
        between them and all get their answer when it ends; the next ones
        are answered at once, without the runner.
        """
        lookups = [self.directory.getAccount("bob@example.test" if i % 2 else "nobody@example.test")
                   for i in range(1000)]
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runAll()
        results = [self.successResultOf(d) for d in lookups]
        self.assertEqual(results.count(Account("bob@example.test")), 500)
        self.assertEqual(results.count(None), 500)
        self.assertEqual(self.successResultOf(self.directory.getAccount("bob@example.test")),
                         Account("bob@example.test"))
        self.assertEqual(self.runner.calls, [])
        # A second later, another thousand share the next re-read.
        self.clock.advance(1)
        lookups = [self.directory.getAccount("bob@example.test") for _ in range(1000)]
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runAll()
        self.assertEqual({self.successResultOf(d) for d in lookups}, {Account("bob@example.test")})

    def test_lookupsDuringWrite(self) -> None:
        """
        While a change is being written, lookups answer from the snapshot
        at once; the write's result is seen as soon as it is done.
        """
        self.directory.listAccounts()
        self.runner.runAll()
        adding = self.directory.addUser("carol@example.test", PASSWORD)
        self.runner.runNext()  # the hash; the write is queued next
        self.assertEqual(len(self.runner.calls), 1)
        self.assertIsNone(self.successResultOf(self.directory.getAccount("carol@example.test")))
        self.runner.runAll()
        self.successResultOf(adding)
        self.assertEqual(self.successResultOf(self.directory.getAccount("carol@example.test")),
                         Account("carol@example.test"))

    def test_writesOneAtATime(self) -> None:
        """
        Changes wait for the one in flight, run in order, and all land.
        """
        self.directory.listAccounts()
        self.runner.runAll()
        changes = [self.directory.setQuota("bob@example.test", q) for q in range(300)]
        self.assertEqual([f.__name__ for f, *_ in self.runner.calls], ["_modify"])
        self.runner.runAll()
        for d in changes:
            self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.directory.getAccount("bob@example.test")).quotaBytes, 299)

    def test_rereadOlderThanWriteIgnored(self) -> None:
        """
        A re-read that started before a write of ours finished does not
        replace what the write stored.
        """
        self.directory.listAccounts()
        self.runner.runAll()
        self.clock.advance(1)
        lookup = self.directory.getAccount("carol@example.test")  # starts a re-read, held
        [(reread, args, kwargs, d)] = self.runner.calls
        self.runner.calls.clear()
        # The re-read sees the file as it is now, before carol exists.
        stale = reread(*args, **kwargs)
        adding = self.directory.addUser("carol@example.test", PASSWORD)
        self.runner.runAll()
        self.successResultOf(adding)
        d.callback(stale)
        self.assertEqual(self.successResultOf(lookup), Account("carol@example.test"))
