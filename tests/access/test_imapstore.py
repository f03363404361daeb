# -*- test-case-name: tests.access.test_imapstore -*-
"""
Tests for L{qutemail.access.imapstore}: the Maildir++ file work of IMAP
sessions, called directly (it blocks).
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.folders import MaildirFolders
from qutemail.access.imapstore import (
    OverQuota, abortAppend, beginAppend, deleteFolder, expunge, finishAppend, storeFlags, syncFolder,
    transfer, usage, writeAppend,
)
from qutemail.access.uids import sync, withTimes
from qutemail.store.mailbox import readUsage, recordUsage


def deliver(folder: str, name: str, data: bytes, mtime: float = 1700000000.0, sub: str = "new") -> str:
    """
    Put a message file in a folder, as the store does.

    @return: its path.
    """
    path = os.path.join(folder, sub, name)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))
    return path


class StoreTests(SynchronousTestCase):
    """
    APPEND, COPY, MOVE, EXPUNGE and folder deletion keep the folder and
    C{maildirsize} right.
    """

    def setUp(self) -> None:
        """
        A mailbox with its special folders and one message in C{new/}.
        """
        self.root = os.path.abspath(self.mktemp())
        self.folders = MaildirFolders(self.root)
        self.folders.ensureSpecialFolders()
        self.path = deliver(self.root, "1700000000.M1Q1R0.host,S=12", b"Subject: x\n\nhi\n")

    def test_syncClaimsNew(self) -> None:
        """
        A message in C{new/} is recent for the session that claims it,
        and moves to C{cur/} keeping its UID; the next sync sees it as not
        recent.
        """
        state, recent = syncFolder(self.root, 1700000100, True)
        [message] = state.messages
        self.assertEqual(recent, {"1700000000.M1Q1R0.host,S=12"})
        self.assertEqual(message.path, os.path.join(self.root, "cur", "1700000000.M1Q1R0.host,S=12:2,"))
        self.assertEqual(withTimes(self.root, [message])[0].mtime, 1700000000.0)
        again, recent = syncFolder(self.root, 1700000200, True)
        self.assertEqual((again.messages[0].uid, recent), (message.uid, frozenset()))

    def test_examineDoesNotClaim(self) -> None:
        """
        Without claiming, the message stays in C{new/}.
        """
        syncFolder(self.root, 1700000100, False)
        self.assertTrue(os.path.exists(self.path))

    def test_storeFlagsFollowsRename(self) -> None:
        """
        Flags go in the file name, even after another session moved it.
        """
        state, _ = syncFolder(self.root, 1700000100, True)
        message = state.messages[0]
        newPath = storeFlags(self.root, message.baseName, self.path, frozenset({"\\Seen", "\\Flagged"}))
        self.assertTrue(newPath.endswith(":2,FS"))
        self.assertTrue(os.path.exists(newPath))

    def test_append(self) -> None:
        """
        An appended message lands in C{new/} (so it is C{\\Recent}, RFC 3501
        §6.3.11) with its flags and date, is counted in C{maildirsize}, and
        gets a UID.
        """
        sent = self.folders.pathOf("Sent")
        append = beginAppend(sent, 1700000000.5, "mail.example.test", 7)
        writeAppend(append, b"Subj")
        writeAppend(append, b"ect")
        uidValidity, uid = finishAppend(append, sent, frozenset({"\\Seen"}), 1600000000.0, self.root, 0, 1700000001)
        [name] = os.listdir(os.path.join(sent, "new"))
        self.assertRegex(name, r"^1700000000\.M500000P\d+R[0-9a-f]{24}\.mail\.example\.test,S=7:2,S$")
        self.assertEqual(os.stat(os.path.join(sent, "new", name)).st_mtime, 1600000000.0)
        self.assertEqual(os.listdir(os.path.join(sent, "tmp")), [])
        self.assertEqual(readUsage(self.root), (12 + 7, 2))
        self.assertEqual((uidValidity, uid), (sync(sent, 0).uidValidity, 1))

    def test_appendOverQuota(self) -> None:
        """
        An APPEND past the quota is refused and leaves no file.
        """
        sent = self.folders.pathOf("Sent")
        append = beginAppend(sent, 1700000000, "h", 10)
        writeAppend(append, b"x" * 10)
        self.assertRaises(OverQuota, finishAppend, append, sent, frozenset(), 0, self.root, 20, 1700000001)
        self.assertEqual(os.listdir(os.path.join(sent, "tmp")) + os.listdir(os.path.join(sent, "cur")), [])
        aborted = beginAppend(sent, 1700000000, "h", 1)
        abortAppend(aborted)
        self.assertEqual(os.listdir(os.path.join(sent, "tmp")), [])

    def test_copyAndMove(self) -> None:
        """
        COPY links the file under a new name with its flags into the
        target's C{new/} (so it is C{\\Recent}, RFC 3501 §6.4.7; counted in
        the quota); MOVE renames it (not counted again); both report the
        new UIDs.
        """
        state, _ = syncFolder(self.root, 1700000100, True)
        storeFlags(self.root, state.messages[0].baseName, state.messages[0].path, frozenset({"\\Seen"}))
        state, _ = syncFolder(self.root, 1700000100, True)
        trash = self.folders.pathOf("Trash")
        self.assertRaises(OverQuota, transfer, list(state.messages), self.root, trash, False, self.root, 13, 0, "h")
        validity, uids, moved = transfer(list(state.messages), self.root, trash, False, self.root, 0, 1700000200, "h")
        self.assertEqual((validity, uids, moved), (sync(trash, 0).uidValidity, [1], []))
        [copy] = os.listdir(os.path.join(trash, "new"))
        self.assertTrue(copy.endswith(",S=12:2,S"))
        self.assertEqual(os.stat(os.path.join(trash, "new", copy)).st_mtime, 1700000000.0)
        self.assertEqual(readUsage(self.root), (24, 2))
        junk = self.folders.pathOf("Junk")
        validity, uids, moved = transfer(list(state.messages), self.root, junk, True, self.root, 0, 1700000300, "h")
        self.assertEqual((uids, moved), ([1], [state.messages[0].baseName]))
        self.assertEqual(os.listdir(os.path.join(self.root, "cur")), [])
        self.assertEqual(readUsage(self.root), (24, 2))

    def test_expungeAndDelete(self) -> None:
        """
        EXPUNGE and DELETE take their messages off C{maildirsize}.
        """
        state, _ = syncFolder(self.root, 1700000100, True)
        trash = self.folders.pathOf("Trash")
        transfer(list(state.messages), self.root, trash, False, self.root, 0, 1700000200, "h")
        self.assertEqual(expunge(self.root, list(state.messages), self.root, 0), [state.messages[0].baseName])
        self.assertEqual(readUsage(self.root), (12, 1))
        deleteFolder(self.root, "Trash", 0)
        self.assertEqual(readUsage(self.root), (0, 0))
        self.assertFalse(self.folders.exists("Trash"))

    def test_usageCountsEveryFolder(self) -> None:
        """
        Without C{maildirsize}, usage counts every folder; a removal leaves
        the file missing, an addition creates it from such a count, with
        the quota line.
        """
        deliver(self.folders.pathOf("Junk"), "1.M1Q2R0.h,S=30", b"x" * 30)
        self.assertEqual(usage(self.root), (42, 2))
        recordUsage(self.root, 1000, -5, -1)
        self.assertFalse(os.path.exists(os.path.join(self.root, "maildirsize")))
        recordUsage(self.root, 1000, 5, 1)
        with open(os.path.join(self.root, "maildirsize"), "rb") as f:
            self.assertEqual(f.read(), b"1000S\n42 2\n")
        recordUsage(self.root, 1000, -30, -1)
        self.assertEqual(usage(self.root), (12, 1))

    def test_usageFolded(self) -> None:
        """
        A long C{maildirsize} is folded into one line, its quota line kept.
        """
        recordUsage(self.root, 1000, 1, 1)
        for _ in range(600):
            recordUsage(self.root, 5, 1, 1)
        with open(os.path.join(self.root, "maildirsize"), "rb") as f:
            lines = f.read().split(b"\n")
        self.assertEqual(lines[0], b"1000S")
        self.assertEqual(usage(self.root), (12 + 600, 601))
