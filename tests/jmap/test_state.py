# -*- test-case-name: tests.jmap.test_state -*-
"""
Unit tests of L{qutemail.jmap.state} and L{qutemail.jmap.ids}: keywords
and flags, snapshots of a Maildir++ mailbox, kept states and changes.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.jmap import ids
from qutemail.jmap.state import CannotCalculateChanges, changesSince, flagsOf, keywordsOf, takeSnapshot
from qutemail.store.folders import MaildirFolders


class KeywordTests(SynchronousTestCase):
    """
    IMAP flags and JMAP keywords.
    """

    def test_roundTrip(self):
        """
        System flags map to the C{$} keywords, keywords are lower case,
        C{\\Deleted} stays hidden and is kept.
        """
        flags = frozenset({"\\Seen", "\\Flagged", "$Forwarded", "\\Deleted", "Label1", "\\Draft", "\\Answered"})
        keywords = keywordsOf(flags)
        self.assertEqual(keywords, dict.fromkeys(("$seen", "$flagged", "$forwarded", "label1", "$draft",
                                                  "$answered"), True))
        self.assertEqual(flagsOf(keywords, frozenset({"\\Deleted"})),
                         frozenset({"\\Seen", "\\Flagged", "$Forwarded", "\\Deleted", "label1", "\\Draft",
                                    "\\Answered"}))


class MailboxMixin:
    """
    A Maildir++ mailbox to take snapshots of.
    """

    def setUp(self):
        """
        A mailbox with one message in the INBOX.
        """
        self.root = self.mktemp()
        MaildirFolders(self.root).ensureSpecialFolders()
        self.states = self.mktemp()
        self.write("1000.M1P1.host,S=10", "new")

    def write(self, name: str, sub: str = "cur", folder: str = "") -> str:
        """
        @return: the path of a new message file.
        """
        path = os.path.join(self.root, folder, sub, name)
        with open(path, "wb") as f:
            f.write(b"Subject: x\n\nbody\n")
        return path


class SnapshotTests(MailboxMixin, SynchronousTestCase):
    """
    L{takeSnapshot} and L{changesSince}.
    """

    def test_snapshotAndChanges(self):
        """
        The snapshot has the folders with roles and the message; a flag
        change, a new message and a removal give updated, created and
        destroyed; an unknown state cannot be compared.
        """
        first = takeSnapshot(self.root, 1000.0, self.states)
        roles = {m.role for m in first.mailboxes}
        self.assertEqual(roles, {"inbox", "sent", "drafts", "trash", "junk"})
        [email] = first.emails
        self.assertEqual(email.id, ids.emailId("1000.M1P1.host,S=10"))
        self.assertEqual(email.size, 10)
        os.rename(email.path, os.path.join(self.root, "cur", "1000.M1P1.host,S=10:2,S"))
        other = self.write("1001.M2P1.host,S=10", folder=".Trash")
        second = takeSnapshot(self.root, 1001.0, self.states)
        self.assertNotEqual(first.emailState, second.emailState)
        self.assertNotEqual(first.mailboxState, second.mailboxState)
        current = {e.id: e.signature() for e in second.emails}
        created, updated, destroyed, _ = changesSince(self.states, "email", first.emailState, current)
        self.assertEqual((created, updated, destroyed),
                         ([ids.emailId("1001.M2P1.host,S=10")], [email.id], []))
        boxes = {m.id: m.signature() for m in second.mailboxes}
        _, updatedBoxes, _, countsOnly = changesSince(self.states, "mailbox", first.mailboxState, boxes)
        self.assertEqual(len(updatedBoxes), 2)
        self.assertTrue(countsOnly)
        os.unlink(other)
        third = takeSnapshot(self.root, 1002.0, self.states)
        current = {e.id: e.signature() for e in third.emails}
        self.assertEqual(changesSince(self.states, "email", second.emailState, current)[2],
                         [ids.emailId("1001.M2P1.host,S=10")])
        self.assertRaises(CannotCalculateChanges, changesSince, self.states, "email", "sUnknown", current)
        self.assertRaises(CannotCalculateChanges, changesSince, self.states, "email", "../../etc", current)
        for name in os.listdir(self.states):
            self.assertEqual(os.stat(os.path.join(self.states, name)).st_mode & 0o777, 0o600, name)


class FolderCacheTests(MailboxMixin, SynchronousTestCase):
    """
    Folder readings kept between snapshots.
    """

    def age(self) -> None:
        """
        Make every folder directory look a minute old.
        """
        for directory, subdirs, _ in os.walk(self.root):
            os.utime(directory, (900.0, 900.0))

    def test_keptUntilChanged(self):
        """
        An unchanged folder older than the racy window is not read again;
        a flag change (a rename in cur/) is seen at once.
        """
        cache: dict = {}
        self.age()
        first = takeSnapshot(self.root, 1000.0, self.states, cache)
        self.assertIn(self.root, cache)
        [email] = first.emails
        cache[self.root] = (cache[self.root][0], ([], 0, 0))
        self.assertEqual(takeSnapshot(self.root, 1000.0, self.states, cache).emails, ())
        os.rename(email.path, os.path.join(self.root, "cur", "1000.M1P1.host,S=10:2,S"))
        later = takeSnapshot(self.root, os.stat(os.path.join(self.root, "cur")).st_mtime + 5, self.states, cache)
        self.assertEqual([e.keywords for e in later.emails], [{"$seen": True}])

    def test_timesKeptAcrossReadings(self):
        """
        A changed folder is read again, but a message seen before under the
        same name keeps the delivery time first seen (a stored message
        never changes, so its file is not stat'ed again), a new one gets
        its file's.
        """
        cache: dict = {}
        self.age()
        [first] = takeSnapshot(self.root, 1000.0, self.states, cache).emails
        os.utime(first.path, (1_600_000_000, 1_600_000_000))
        os.utime(self.write("2000.M2P2.host,S=10"), (1_650_000_000, 1_650_000_000))
        later = takeSnapshot(self.root, os.stat(os.path.join(self.root, "cur")).st_mtime + 5, self.states, cache)
        self.assertEqual({e.baseName: e.receivedAt for e in later.emails},
                         {"1000.M1P1.host,S=10": first.receivedAt, "2000.M2P2.host,S=10": 1_650_000_000})
        self.assertNotEqual(first.receivedAt, 1_600_000_000)

    def test_racyNotKept(self):
        """
        A folder changed within the racy window is read, not kept.
        """
        cache: dict = {}
        now = os.stat(os.path.join(self.root, "new")).st_mtime
        takeSnapshot(self.root, now, self.states, cache)
        self.assertNotIn(self.root, cache)


class IdTests(SynchronousTestCase):
    """
    L{qutemail.jmap.ids}.
    """

    def test_wellFormed(self):
        """
        Every id is a JMAP Id, and blob ids parse back.
        """
        for value in (ids.accountId("a@b"), ids.mailboxId("Gr\u00fc\u00dfe/x"), ids.emailId("1.M2P3.h,S=4"),
                      ids.threadId("x"), ids.messageBlobId("x"), ids.partBlobId("x", "12")):
            self.assertTrue(ids.isId(value), value)
        self.assertEqual(ids.parseBlobId(ids.partBlobId("x", "12")), ("part", ids.emailDigest("x"), "12"))
        self.assertEqual(ids.parseBlobId(ids.messageBlobId("x")), ("message", ids.emailDigest("x"), None))
        for bad in ("", "u1", "p" + "0" * 24 + "_x", "../x", "b" + "g" * 24):
            self.assertIsNone(ids.parseBlobId(bad), bad)
