"""
Tests of the deferred queue's view of entries other processes add.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.message import Envelope, SpooledMessage
from qutemail.queue.deferred import DeferredQueue
from qutemail.message import DEFERRED, SENT, RecipientState
from tests.support import QueuedRunner

ENVELOPE = Envelope("s@remote.test", ("alice@example.test",), "c.test", "192.0.2.1", 1700000000.0)


class RefreshTests(SynchronousTestCase):
    """
    L{DeferredQueue.refresh} picks up entries written by another process.
    """

    def test_entryFromAnotherProcess(self):
        """
        An entry added through a second queue object on the same directory
        (an extra SMTP worker) appears in the first after C{refresh}, once,
        with its recipients' state.
        """
        directory = self.mktemp()
        main = DeferredQueue(directory, InlineRunner())
        main.load()
        worker = DeferredQueue(directory, InlineRunner())
        message = SpooledMessage("Q1", ENVELOPE, 5, inline=b"body\n")
        self.successResultOf(worker.add(message, [RecipientState("alice@example.test", 0, DEFERRED, 1, 300.0, "452 4.2.2 Mailbox full")]))
        self.assertEqual(main.entries, {})
        self.assertEqual(self.successResultOf(main.refresh()), 1)
        [entry] = main.entries.values()
        self.assertEqual(entry.recipients[0].lastReply, "452 4.2.2 Mailbox full")
        self.assertEqual(entry.message.path, os.path.join(directory, "Q1.msg"))
        self.assertEqual(self.successResultOf(main.refresh()), 0)

    def test_halfWrittenEntryIgnored(self):
        """
        A body whose metadata is not yet in place is not an entry yet.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "Q2.msg"), "wb") as f:
            f.write(b"body\n")
        with open(os.path.join(directory, "Q2.json.tmp.123"), "wb") as f:
            f.write(b"{")
        main = DeferredQueue(directory, InlineRunner())
        self.assertEqual(self.successResultOf(main.refresh()), 0)


class RefreshRaceTests(SynchronousTestCase):
    """
    A refresh that overlaps this process's own adds and removals never
    brings back an entry that is done, nor a second copy of one being
    added (either would send a message twice; the inter-site benchmark
    showed it).
    """

    def setUp(self):
        self.directory = self.mktemp()
        self.runner = QueuedRunner()
        self.queue = DeferredQueue(self.directory, self.runner)
        self.message = SpooledMessage("Q9", ENVELOPE, 5, inline=b"body\n")

    def addEntry(self):
        d = self.queue.add(self.message, [RecipientState("alice@example.test", 0, DEFERRED, 1, 300.0, "")])
        self.runner.runAll()
        return self.successResultOf(d)

    def test_removedWhileRefreshing(self):
        """
        The entry is done and popped, its files still on disk (their
        removal queued after the refresh's listing): the refresh does not
        take it back.
        """
        entry = self.addEntry()
        refreshed = self.queue.refresh()
        entry.recipients[0].state = SENT
        removed = self.queue.update(entry)
        self.runner.runNext()  # the refresh's listing: the files are there
        self.assertEqual(self.successResultOf(refreshed), 0)
        self.runner.runAll()
        self.successResultOf(removed)
        self.assertEqual(self.queue.entries, {})

    def test_refreshAfterRemovalStarted(self):
        """
        A refresh that starts after the entry was popped, its files not
        yet removed, does not take it back either.
        """
        entry = self.addEntry()
        entry.recipients[0].state = SENT
        removed = self.queue.update(entry)
        refreshed = self.queue.refresh()
        self.runner.calls.reverse()  # the listing runs before the removal
        self.runner.runAll()
        self.successResultOf(removed)
        self.assertEqual(self.successResultOf(refreshed), 0)
        self.assertEqual(self.queue.entries, {})

    def test_addedWhileRefreshing(self):
        """
        An entry being added (its files written, the add not yet done)
        is not read as another process's: one object, the one the add
        gives.
        """
        added = self.queue.add(self.message, [RecipientState("alice@example.test", 0, DEFERRED, 1, 300.0, "")])
        self.runner.runNext()  # the add's writes
        refreshed = self.queue.refresh()
        self.runner.runAll()
        self.assertEqual(self.successResultOf(refreshed), 0)
        self.assertIs(self.queue.entries["Q9"], self.successResultOf(added))


class RecoveryAddTests(SynchronousTestCase):
    """
    A message routed again from the journal after a crash does not replace
    the entry it already has.
    """

    def test_existingEntryWins(self):
        """
        Adding an entry whose files exist (in this process or another)
        returns the entry on disk, half-done state included, and rewrites
        nothing.
        """
        directory = self.mktemp()
        first = DeferredQueue(directory, InlineRunner())
        message = SpooledMessage("Q3", ENVELOPE, 5, inline=b"body\n")
        entry = self.successResultOf(first.add(message, [RecipientState("alice@example.test", 0, DEFERRED)]))
        entry.recipients[0].attempts = 3
        self.successResultOf(first.update(entry))
        again = self.successResultOf(first.add(message, [RecipientState("alice@example.test", 0, DEFERRED)]))
        self.assertIs(again, entry)
        restarted = DeferredQueue(directory, InlineRunner())
        recovered = self.successResultOf(restarted.add(message, [RecipientState("alice@example.test", 0, DEFERRED)]))
        self.assertEqual(recovered.recipients[0].attempts, 3)
        self.assertIs(restarted.entries["Q3"], recovered)
