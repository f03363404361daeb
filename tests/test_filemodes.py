"""
Issue 20, file by file: what the server's writers create is mode 0600 (files)
or 0700 (directories) with the mode given explicitly, so that even a umask
of 0 changes nothing.  The whole server is checked end to end in
L{tests.integration.test_filemodes}; these cover the paths it does not
reach (a Maildir++ folder delivery, the C{maildirsize} fold).
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.durable import makeDirectories
from qutemail.interfaces import Account
from qutemail.message import DEFERRED, Envelope, RecipientState, SpooledMessage
from qutemail.pipeline.spool import SpoolWriter
from qutemail.queue.deferred import DeferredQueue
from qutemail.queue.journal import Journal
from qutemail.store.mailbox import MAILDIRSIZE_MAX_BYTES, recordUsage
from qutemail.store.maildir import MaildirStore
from tests.integration.test_filemodes import modeProblems


def mode(path: str) -> int:
    """
    @return: the permission bits of C{path}.
    """
    return stat.S_IMODE(os.stat(path).st_mode)


class FileModeTests(SynchronousTestCase):
    """
    Each writer, under a umask of 0.
    """

    def setUp(self):
        """
        Umask 0 for the test, and a fresh base directory (made by the test,
        so not checked itself).
        """
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.dataDir = os.path.join(self.base, "var")

    def test_makeDirectories(self):
        """
        L{makeDirectories} makes every missing directory 0700, parents
        included, returns the path, leaves existing directories alone and
        refuses a path through a file.
        """
        os.mkdir(self.dataDir, 0o750)
        path = os.path.join(self.dataDir, "a", "b", "c")
        self.assertEqual(makeDirectories(path), path)
        self.assertEqual([mode(os.path.join(self.dataDir, *parts)) for parts in ("a", "ab", "abc")],
                         [0o700] * 3)
        self.assertEqual(makeDirectories(path, sync=True), path)
        self.assertEqual(mode(self.dataDir), 0o750)
        with open(os.path.join(self.dataDir, "file"), "wb"):
            pass
        self.assertRaises(FileExistsError, makeDirectories, os.path.join(self.dataDir, "file", "x"))

    def test_spillFile(self):
        """
        A large body's spill file is 0600 from the moment it is created.
        """
        spill = os.path.join(self.base, "spill")
        writer = SpoolWriter(InlineRunner(), spill, thresholdBytes=10)
        writer.write(b"x" * 100)
        self.assertEqual(mode(spill), 0o600)
        self.successResultOf(writer.finish("Q1", Envelope("a@b.test", ("c@d.test",))))
        self.assertEqual(mode(spill), 0o600)

    def test_deferredQueue(self):
        """
        The deferred queue's directory and files, a large body's copy
        included, are private, and so are the journal's.
        """
        spill = os.path.join(self.base, "spill")
        with open(spill, "wb") as f:
            f.write(b"large body\n")
        envelope = Envelope("a@b.test", ("c@d.test",))
        queue = DeferredQueue(os.path.join(self.dataDir, "queue", "deferred"), InlineRunner())
        for message in (SpooledMessage("Q1", envelope, 11, path=spill),
                        SpooledMessage("Q2", envelope, 6, inline=b"small\n")):
            self.successResultOf(queue.add(message, [RecipientState("c@d.test", 0, DEFERRED)]))
        journal = Journal(os.path.join(self.dataDir, "queue", "journal"), InlineRunner(), None)
        journal.recover()
        self.addCleanup(lambda: self.successResultOf(journal.close()))
        self.assertEqual(sorted(os.listdir(os.path.join(self.dataDir, "queue", "deferred"))),
                         ["Q1.json", "Q1.msg", "Q2.json", "Q2.msg"])
        self.assertEqual(modeProblems(self.dataDir), [])

    def test_maildirFolder(self):
        """
        A delivery into a Maildir++ folder makes the mailbox, the folder,
        its C{maildirfolder} marker and C{maildirsize} private.
        """
        store = MaildirStore(self.dataDir, InlineRunner(), "mail.example.test", 10 * 1024 * 1024, None)
        envelope = Envelope("a@b.test", ("alice@example.test",), folder="Junk")
        self.successResultOf(store.deliver(SpooledMessage("Q1", envelope, 6, inline=b"spam!\n"),
                                           Account("alice@example.test")))
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "mail", "example.test", "alice", ".Junk",
                                                    "maildirfolder")))
        self.assertEqual(modeProblems(self.dataDir), [])

    def test_maildirsizeFold(self):
        """
        A C{maildirsize} past its size limit is folded into a new file,
        0600 too.
        """
        root = makeDirectories(os.path.join(self.dataDir, "mail", "example.test", "alice"))
        for _ in range(MAILDIRSIZE_MAX_BYTES // 4):
            recordUsage(root, 1024, 1, 1)
        with open(os.path.join(root, "maildirsize"), "rb") as f:
            self.assertLess(len(f.read()), MAILDIRSIZE_MAX_BYTES)
        self.assertEqual(modeProblems(self.dataDir), [])
