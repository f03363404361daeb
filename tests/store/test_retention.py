"""
Tests for L{qutemail.store.retention}: expired mail removed from real
Maildirs, quota usage lowered, and the vault keys of encrypted messages
erased after their files are gone.
"""

import os
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.folders import MaildirFolders
from qutemail.access.uids import sync
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, KeyGone
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.vault import FileKeyVault, KeyVaultError
from qutemail.store import retention
from qutemail.store.maildir import MaildirStore
from qutemail.store.mailbox import MAILDIRSIZE_MAX_BYTES, mailboxPath, readUsage
from qutemail.store.retention import (
    Expired, RetentionService, RetentionSweep, findExpired, keyIdOf, removeExpired,
)
from tests.support import QueuedRunner

HOSTNAME = "mail.example.test"
ALICE = Account("alice@example.test")
BOB = Account("bob@example.test")
DAY = 86400.0
NOW = 1_750_000_000.0
RETENTION_DAYS = 30
OLD = NOW - 40 * DAY
YOUNG = NOW - 1 * DAY
BODY = b"From: carol@remote.test\nSubject: hello\nMessage-ID: <%d@remote.test>\n\nsecret text\n"


@attrs.define
class FlakyVault:
    """
    A vault whose C{erase} fails for some keys, wrapping a real one.

    @ivar inner: the real vault.
    @ivar failing: the key ids whose erase fails.
    @ivar erased: the key ids erased, in order.
    @ivar onErase: called with each key id before it is erased, or C{None}.
    """

    inner: FileKeyVault
    failing: set = attrs.field(factory=set)
    erased: list = attrs.field(factory=list)
    onErase: Any = None

    def store(self, keyId: str, key: bytes) -> Deferred:
        """
        See L{qutemail.interfaces.IKeyVault.store}.
        """
        return self.inner.store(keyId, key)

    def fetch(self, keyId: str) -> Deferred:
        """
        See L{qutemail.interfaces.IKeyVault.fetch}.
        """
        return self.inner.fetch(keyId)

    def erase(self, keyId: str) -> Deferred:
        """
        Fail for the keys in L{failing}, else erase and remember.
        """
        if self.onErase is not None:
            self.onErase(keyId)
        if keyId in self.failing:
            return fail(KeyVaultError(f"cannot erase {keyId}"))
        self.erased.append(keyId)
        return self.inner.erase(keyId)


class RetentionTestsMixin:
    """
    Real Maildirs delivered by L{MaildirStore} under a fresh data
    directory, a file vault, the inline runner and a L{Clock} at L{NOW}.
    """

    def setUp(self):
        """
        Fresh directories, store, vault and clock.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.runner = InlineRunner()
        self.store = MaildirStore(self.dataDir, self.runner, HOSTNAME, 0)
        self.vault = FlakyVault(FileKeyVault(os.path.join(self.dataDir, "keys", "vault"),
                                             os.path.join(self.dataDir, "keys", "master.key"), self.runner))
        self.clock = Clock()
        self.clock.advance(NOW)
        self.count = 0

    def deliver(self, account: Account = ALICE, receivedAt: float = OLD, keyId: str | None = None) -> str:
        """
        Deliver a message through the store, encrypted under a new vault
        key when C{keyId} is given.

        @return: the stored file's path.
        """
        self.count += 1
        body = BODY % (self.count,)
        if keyId is not None:
            key = os.urandom(32)
            self.successResultOf(self.vault.store(keyId, key))
            body = encryptBytes(body, keyId, key)
        envelope = Envelope("carol@remote.test", (account.address,), "client.test", "192.0.2.7", receivedAt)
        message = SpooledMessage(f"Q{self.count:04d}", envelope, len(body), inline=body)
        name = self.successResultOf(self.store.deliver(message, account))
        return os.path.join(mailboxPath(self.dataDir, account.address), "new", name)

    def inFolder(self, path: str, folder: str, flags: str = "S") -> str:
        """
        Move a delivered message into a Maildir++ folder's C{cur/} (as an
        IMAP MOVE does: same name, flags added), creating the folder.

        @return: its new path.
        """
        root = os.path.dirname(os.path.dirname(path))
        folders = MaildirFolders(root)
        if not folders.exists(folder):
            folders.create(folder)
        target = os.path.join(folders.pathOf(folder), "cur", os.path.basename(path) + ":2," + flags)
        os.rename(path, target)
        return target

    def sweep(self, **kwargs) -> RetentionSweep:
        """
        @return: a sweep over this test's data directory.
        """
        arguments = dict(dataDir=self.dataDir, retentionDays=RETENTION_DAYS, vault=self.vault,
                         runner=self.runner, clock=self.clock)
        arguments.update(kwargs)
        return RetentionSweep(**arguments)

    def hasKey(self, keyId: str) -> bool:
        """
        @return: whether the vault still gives the key.
        """
        d = self.vault.fetch(keyId)
        if self.successResultOf(d.addErrback(lambda f: f.trap(KeyGone) and None)) is None:
            return False
        return True


class FindExpiredTests(RetentionTestsMixin, SynchronousTestCase):
    """
    L{findExpired} finds the messages past the retention time, in every
    mailbox and folder.
    """

    def test_oldAndYoung(self):
        """
        Messages delivered before C{now - retentionDays} are found, in
        C{new/}, C{cur/} and folders, with their account, folder, size,
        key id and delivery time; younger ones are not.
        """
        inbox = self.deliver(ALICE, OLD)
        sent = self.inFolder(self.deliver(ALICE, OLD - 5), "Sent")
        encrypted = self.deliver(BOB, OLD + 5, keyId="key-bob-1")
        self.deliver(ALICE, YOUNG)
        self.inFolder(self.deliver(BOB, YOUNG), "Archive")
        found = findExpired(self.dataDir, NOW, RETENTION_DAYS)
        self.assertEqual(
            [(e.path, e.address, e.folder, e.keyId, e.deliveredAt) for e in found],
            [(sent, "alice@example.test", "Sent", None, OLD - 5),
             (inbox, "alice@example.test", "INBOX", None, OLD),
             (encrypted, "bob@example.test", "INBOX", "key-bob-1", OLD + 5)])
        for item in found:
            self.assertEqual(item.sizeBytes, os.path.getsize(item.path))

    def test_boundary(self):
        """
        A message exactly C{retentionDays} old is kept; one second older is
        not.
        """
        self.deliver(ALICE, NOW - RETENTION_DAYS * DAY)
        self.assertEqual(findExpired(self.dataDir, NOW, RETENTION_DAYS), [])
        self.assertEqual(len(findExpired(self.dataDir, NOW + 1, RETENTION_DAYS)), 1)

    def test_forever(self):
        """
        0 retention days keeps everything.
        """
        self.deliver(ALICE, 0.0)
        self.assertEqual(findExpired(self.dataDir, NOW, 0), [])

    def test_noMail(self):
        """
        A data directory without mail has nothing expired.
        """
        self.assertEqual(findExpired(self.dataDir, NOW, RETENTION_DAYS), [])

    def test_modificationTimeFallback(self):
        """
        A file whose name does not start with the delivery seconds is aged
        by its modification time; dot files and directories are ignored.
        """
        self.deliver(ALICE, YOUNG)
        new = os.path.join(mailboxPath(self.dataDir, ALICE.address), "new")
        odd = os.path.join(new, "odd-name")
        with open(odd, "wb") as f:
            f.write(b"Subject: x\n\nhi\n")
        os.utime(odd, (OLD, OLD))
        with open(os.path.join(new, ".hidden"), "wb") as f:
            f.write(b"x")
        os.mkdir(os.path.join(new, "123.dir"))
        [found] = findExpired(self.dataDir, NOW, RETENTION_DAYS)
        self.assertEqual((found.path, found.deliveredAt, found.sizeBytes), (odd, OLD, 15))

    def test_keyIdOf(self):
        """
        L{keyIdOf} reads the key id of an encrypted message, C{None} for a
        plain one.
        """
        self.assertEqual(keyIdOf(self.deliver(keyId="key-1")), "key-1")
        self.assertIsNone(keyIdOf(self.deliver()))


class RemoveExpiredTests(RetentionTestsMixin, SynchronousTestCase):
    """
    L{removeExpired} unlinks and keeps quota usage right.
    """

    def test_usageDrops(self):
        """
        The removed messages' sizes leave the C{maildirsize} usage, folders
        included; young messages stay.
        """
        old = [self.deliver(ALICE, OLD), self.inFolder(self.deliver(ALICE, OLD), "Sent")]
        young = self.deliver(ALICE, YOUNG)
        root = mailboxPath(self.dataDir, ALICE.address)
        before = readUsage(root)
        expired = findExpired(self.dataDir, NOW, RETENTION_DAYS)
        sizes = sum(e.sizeBytes for e in expired)
        self.assertEqual(removeExpired(self.dataDir, expired), (2, sizes))
        for path in old:
            self.assertFalse(os.path.exists(path))
        self.assertTrue(os.path.exists(young))
        self.assertEqual(readUsage(root), (before[0] - sizes, before[1] - 2))
        self.assertEqual(readUsage(root), (os.path.getsize(young), 1))

    def test_goneAndMoved(self):
        """
        A message already gone is skipped; one that moved to C{cur/} or got
        flags since the scan is followed and removed.
        """
        gone, moved = self.deliver(ALICE, OLD), self.deliver(ALICE, OLD)
        expired = findExpired(self.dataDir, NOW, RETENTION_DAYS)
        os.unlink(gone)
        root = mailboxPath(self.dataDir, ALICE.address)
        os.rename(moved, os.path.join(root, "cur", os.path.basename(moved) + ":2,S"))
        usage = readUsage(root)
        movedSize = os.path.getsize(os.path.join(root, "cur", os.path.basename(moved) + ":2,S"))
        self.assertEqual(removeExpired(self.dataDir, expired), (1, movedSize))
        self.assertEqual(os.listdir(os.path.join(root, "cur")), [])
        self.assertEqual(readUsage(root), (usage[0] - movedSize, usage[1] - 1))

    def test_withoutUsageFile(self):
        """
        A mailbox without C{maildirsize} does not get one: its usage is
        counted from what is left.
        """
        self.deliver(ALICE, OLD)
        young = self.deliver(ALICE, YOUNG)
        root = mailboxPath(self.dataDir, ALICE.address)
        os.unlink(os.path.join(root, "maildirsize"))
        removeExpired(self.dataDir, findExpired(self.dataDir, NOW, RETENTION_DAYS))
        self.assertFalse(os.path.exists(os.path.join(root, "maildirsize")))
        self.assertEqual(readUsage(root), (os.path.getsize(young), 1))

    def test_usageFileFolded(self):
        """
        A C{maildirsize} grown past its limit is folded into one line with
        the same totals, its quota line kept.
        """
        young = self.deliver(ALICE, YOUNG)
        self.deliver(ALICE, OLD)
        root = mailboxPath(self.dataDir, ALICE.address)
        sizeFile = os.path.join(root, "maildirsize")
        with open(sizeFile, "ab") as f:
            while f.tell() < MAILDIRSIZE_MAX_BYTES:
                f.write(b"10 1\n-10 -1\n")
        removeExpired(self.dataDir, findExpired(self.dataDir, NOW, RETENTION_DAYS))
        with open(sizeFile, "rb") as f:
            self.assertEqual(f.read(), b"0S\n%d 1\n" % (os.path.getsize(young),))

    def test_uidsForgetRemoved(self):
        """
        IMAP UIDs of removed messages are dropped at the next sync; the
        others keep theirs.
        """
        root = mailboxPath(self.dataDir, ALICE.address)
        self.deliver(ALICE, OLD)
        young = self.deliver(ALICE, YOUNG)
        before = sync(root, NOW)
        removeExpired(self.dataDir, findExpired(self.dataDir, NOW, RETENTION_DAYS))
        after = sync(root, NOW)
        self.assertEqual([m.path for m in after.messages], [young])
        self.assertEqual(after.messages[0].uid, before.messages[1].uid)
        self.assertEqual(after.uidValidity, before.uidValidity)


class RetentionSweepTests(RetentionTestsMixin, SynchronousTestCase):
    """
    L{RetentionSweep} removes expired mail and erases its keys.
    """

    def test_sweep(self):
        """
        Old messages go, plain and encrypted, in the INBOX and in folders;
        the keys of the encrypted ones are erased; young messages and their
        keys stay; the counts are logged.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        old = [self.deliver(ALICE, OLD, keyId="old-1"), self.deliver(ALICE, OLD),
               self.inFolder(self.deliver(BOB, OLD, keyId="old-2"), "Sent")]
        young = [self.deliver(ALICE, YOUNG, keyId="young-1"), self.deliver(BOB, YOUNG)]
        usage = readUsage(mailboxPath(self.dataDir, ALICE.address))
        expected = findExpired(self.dataDir, NOW, RETENTION_DAYS)
        removed = self.successResultOf(self.sweep().run())
        self.assertEqual(removed, expected)
        self.assertEqual([os.path.exists(p) for p in old + young], [False] * 3 + [True] * 2)
        self.assertFalse(self.hasKey("old-1"))
        self.assertFalse(self.hasKey("old-2"))
        self.assertTrue(self.hasKey("young-1"))
        aliceRemoved = sum(e.sizeBytes for e in removed if e.address == ALICE.address)
        self.assertEqual(readUsage(mailboxPath(self.dataDir, ALICE.address)), (usage[0] - aliceRemoved, usage[1] - 2))
        [event] = [e for e in events if "count" in e]
        self.assertEqual((event["count"], event["bytes"], event["keys"]),
                         (3, sum(e.sizeBytes for e in removed), 2))

    def test_timeFromClock(self):
        """
        C{now} is the injected clock's: the same message is kept, then
        removed once the clock has moved past its retention.
        """
        path = self.deliver(ALICE, NOW - RETENTION_DAYS * DAY + 10)
        sweep = self.sweep()
        self.assertEqual(self.successResultOf(sweep.run()), [])
        self.clock.advance(11)
        self.assertEqual([e.path for e in self.successResultOf(sweep.run())], [path])

    def test_dryRun(self):
        """
        A dry run lists what would go and removes nothing.
        """
        old = self.deliver(ALICE, OLD, keyId="old-1")
        self.deliver(ALICE, YOUNG)
        root = mailboxPath(self.dataDir, ALICE.address)
        usage = readUsage(root)
        found = self.successResultOf(self.sweep().run(dryRun=True))
        self.assertEqual([e.path for e in found], [old])
        self.assertTrue(os.path.exists(old))
        self.assertTrue(self.hasKey("old-1"))
        self.assertEqual(readUsage(root), usage)
        self.assertEqual(self.vault.erased, [])

    def test_keyStillUsed(self):
        """
        A key that a younger copy of the message still carries (an IMAP
        COPY shares the sealed bytes) is not erased.
        """
        old = self.deliver(ALICE, OLD, keyId="shared")
        root = mailboxPath(self.dataDir, ALICE.address)
        folders = MaildirFolders(root)
        folders.create("Archive")
        copy = os.path.join(folders.pathOf("Archive"), "cur", f"{int(YOUNG)}.M1P1.{HOSTNAME}:2,S")
        with open(old, "rb") as source, open(copy, "wb") as target:
            target.write(source.read())
        self.successResultOf(self.sweep().run())
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(copy))
        self.assertTrue(self.hasKey("shared"))
        self.assertEqual(self.vault.erased, [])

    def test_unlinkFailureContinues(self):
        """
        A message that cannot be removed is logged and left with its key;
        the others are still removed and their keys erased.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        stuck = self.deliver(ALICE, OLD, keyId="stuck")
        other = self.deliver(BOB, OLD, keyId="other")

        def unlink(path):
            if path == stuck:
                raise PermissionError(13, "Permission denied", path)
            return retention._removeOne(path)

        removed = self.successResultOf(self.sweep(unlink=unlink).run())
        self.assertEqual([e.path for e in removed], [other])
        self.assertTrue(os.path.exists(stuck))
        self.assertFalse(os.path.exists(other))
        self.assertTrue(self.hasKey("stuck"))
        self.assertFalse(self.hasKey("other"))
        self.assertEqual([e["path"] for e in events if "could not remove" in e.get("log_format", "")], [stuck])

    def test_realUnlinkFailure(self):
        """
        A path that turned into a directory after the scan cannot be
        unlinked: the sweep goes on with the rest.
        """
        stuck, other = self.deliver(ALICE, OLD - 1), self.deliver(ALICE, OLD)
        runner = QueuedRunner()
        d = self.sweep(runner=runner).run()
        runner.runNext()  # the scan
        os.unlink(stuck)
        os.mkdir(stuck)
        runner.runAll()
        self.assertEqual([e.path for e in self.successResultOf(d)], [other])
        self.assertTrue(os.path.isdir(stuck))

    def test_eraseFailureContinues(self):
        """
        A key the vault fails to erase is logged; the other keys are still
        erased, and the messages are gone either way.
        """
        first = self.deliver(ALICE, OLD - 1, keyId="key-a")
        second = self.deliver(ALICE, OLD, keyId="key-b")
        self.vault.failing.add("key-a")
        removed = self.successResultOf(self.sweep().run())
        self.assertEqual(len(removed), 2)
        self.assertFalse(os.path.exists(first) or os.path.exists(second))
        self.assertEqual(self.vault.erased, ["key-b"])
        self.assertTrue(self.hasKey("key-a"))
        self.assertEqual(len(self.flushLoggedErrors(KeyVaultError)), 1)

    def test_eraseAfterUnlink(self):
        """
        Keys are erased only once the files are gone.
        """
        path = self.deliver(ALICE, OLD, keyId="late")
        seen = []
        self.vault.onErase = lambda keyId: seen.append(os.path.exists(path))
        self.successResultOf(self.sweep().run())
        self.assertEqual(seen, [False])

    def test_withoutVault(self):
        """
        Without a vault (no encryption), mail is still removed.
        """
        path = self.deliver(ALICE, OLD)
        self.assertEqual(len(self.successResultOf(self.sweep(vault=None).run())), 1)
        self.assertFalse(os.path.exists(path))


@attrs.define
class ControlledSweep:
    """
    A sweep whose runs the test finishes by hand.

    @ivar runs: the Deferred of each run, in order.
    """

    runs: list = attrs.field(factory=list)

    def run(self, dryRun: bool = False) -> Deferred:
        """
        @return: a new Deferred, fired by the test.
        """
        d: Deferred = Deferred()
        self.runs.append(d)
        return d


class RetentionServiceTests(RetentionTestsMixin, SynchronousTestCase):
    """
    L{RetentionService} sweeps at start and then on every tick of the
    injected clock.
    """

    def test_ticks(self):
        """
        Old mail goes at start; mail that ages past the retention goes at
        the next tick, with its key, and the usage drops by its size.
        """
        old = self.deliver(ALICE, OLD)
        later = self.deliver(ALICE, NOW - RETENTION_DAYS * DAY + 1800, keyId="later")
        service = RetentionService(self.sweep(), self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(later))
        self.clock.advance(3599)
        self.assertTrue(os.path.exists(later))
        self.assertTrue(self.hasKey("later"))
        mailbox = mailboxPath(self.dataDir, ALICE.address)
        before = readUsage(mailbox)
        size = os.path.getsize(later)
        self.clock.advance(1)
        self.assertFalse(os.path.exists(later))
        self.assertFalse(self.hasKey("later"))
        self.assertEqual(readUsage(mailbox), (before[0] - size, before[1] - 1))

    def test_noOverlap(self):
        """
        A sweep still running when the next is due delays it; the loop goes
        on after it.
        """
        sweep = ControlledSweep()
        service = RetentionService(sweep, self.clock, intervalSeconds=60)
        service.startService()
        self.clock.advance(300)
        self.assertEqual(len(sweep.runs), 1)
        sweep.runs[0].callback([])
        self.assertEqual(len(sweep.runs), 1)
        self.clock.advance(60)
        self.assertEqual(len(sweep.runs), 2)
        sweep.runs[1].callback([])
        service.stopService()

    def test_failureLogged(self):
        """
        A failed sweep is logged and the next runs as planned.
        """
        sweep = ControlledSweep()
        service = RetentionService(sweep, self.clock, intervalSeconds=60)
        service.startService()
        sweep.runs[0].errback(OSError("disk gone"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(60)
        self.assertEqual(len(sweep.runs), 2)
        sweep.runs[1].callback([])
        self.assertIsNone(service.stopService())

    def test_stopWaits(self):
        """
        Stopping waits for a running sweep, and no sweep starts after.
        """
        sweep = ControlledSweep()
        service = RetentionService(sweep, self.clock, intervalSeconds=60)
        service.startService()
        stopped = service.stopService()
        self.assertNoResult(stopped)
        sweep.runs[0].callback([])
        self.successResultOf(stopped)
        self.clock.advance(600)
        self.assertEqual(len(sweep.runs), 1)


class ExpiredTests(SynchronousTestCase):
    """
    L{Expired} is a plain value.
    """

    def test_value(self):
        """
        Two records of the same message are equal.
        """
        self.assertEqual(Expired("p", "a@b", "INBOX", 1, None, 2.0), Expired("p", "a@b", "INBOX", 1, None, 2.0))
