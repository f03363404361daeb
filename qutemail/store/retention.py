# -*- test-case-name: tests.store.test_retention -*-
"""
Retention: mail older than C{[mailbox] retention_days} is removed, and the
vault keys of removed encrypted messages are erased (crypto-erase).

A sweep (L{RetentionSweep}) looks at every account's mailbox under
C{data_dir/mail/<domain>/<localpart>/}: the INBOX and every Maildir++
folder (C{.Sent}, C{.Junk} ...), C{new/} and C{cur/}.  A message's
delivery time is the leading seconds of its Maildir name (C{<secs>.M...},
as L{qutemail.store.maildir.messageFileName} and other Maildir writers
make them), or its modification time when the name does not start with
them.  A message delivered more than C{retentionDays} days before the
sweep's C{now} (read from the injected clock) is expired; 0 days keeps
mail for ever.

Order of removal, so that an interrupted sweep leaves nothing unreadable:

  1. the expired files are unlinked and their directories fsynced;
  2. the Maildir++ usage (C{maildirsize}) is lowered by their sizes, with
     negative lines as Maildir++ does it (quota usage counts the folders
     too, see L{qutemail.store.mailbox.countMailbox});
  3. only then are their keys erased from the vault.

A crash between 1 and 3 leaves a key without a message, which is harmless
(the next sweep does not know about it, but it decrypts nothing); the
other order could leave a message whose key is gone.  A key is kept while
some message of the same account still carries it (an IMAP copy of an
encrypted message shares its key), and when its message could not be
removed.  Copies for several recipients of one transaction share a key
too, but have the same delivery time, so they expire in the same sweep.

Every function here blocks; L{RetentionSweep} runs them through the
runner.  L{RetentionService} runs a sweep every hour (and at start); one
failing sweep is logged and the next runs as planned; sweeps never
overlap.
"""

import os
import re
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qutemail.store.folders import MaildirFolders
from qutemail.durable import syncDirectory
from qutemail.qkd.cipher import DecryptionError, readEnvelope
from qutemail.store.mailbox import messageEntries, recordUsage
from qutemail.store.reader import storedId

DAY_SECONDS = 86400.0
DEFAULT_INTERVAL_SECONDS = 3600.0
_LEADING_SECONDS = re.compile(r"([0-9]{1,12})\.")

# What L{_removeEach} did with one message (or the OSError it got).
REMOVED = "removed"
GONE = "gone"


@attrs.frozen
class Expired:
    """
    One message past the retention time.

    @ivar path: its file.
    @ivar address: the account, C{localpart@domain}.
    @ivar folder: the folder's IMAP name: C{"INBOX"}, C{"Sent"} ...
    @ivar sizeBytes: its size as quota usage counts it (the Maildir++
        C{,S=} size of its name, else the file's size).
    @ivar keyId: the vault key it was encrypted with, C{None} for a plain
        message.
    @ivar deliveredAt: its delivery time, POSIX seconds.
    """

    path: str
    address: str
    folder: str
    sizeBytes: int
    keyId: str | None
    deliveredAt: float


def _subdirectories(path: str) -> list[str]:
    """
    @return: the names of the directories in C{path} (not hidden), sorted;
        none when it does not exist.
    """
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def mailboxes(dataDir: str) -> list[tuple[str, str]]:
    """
    Every account mailbox on disk.

    @param dataDir: the server's C{data_dir}.
    @return: C{(address, path)} pairs, sorted.
    """
    mailRoot = os.path.join(dataDir, "mail")
    found = []
    for domain in _subdirectories(mailRoot):
        for localpart in _subdirectories(os.path.join(mailRoot, domain)):
            found.append((f"{localpart}@{domain}", os.path.join(mailRoot, domain, localpart)))
    return found


def _sizeOf(entry: os.DirEntry) -> int:
    """
    @return: a message's size as L{qutemail.store.mailbox.countMailbox}
        counts it.
    @raise FileNotFoundError: it vanished meanwhile.
    """
    _, marker, rest = entry.name.partition(",S=")
    digits = rest.split(":")[0].split(",")[0]
    return int(digits) if marker and digits.isdigit() else entry.stat(follow_symlinks=False).st_size


def _deliveredAt(entry: os.DirEntry) -> float:
    """
    @return: a message's delivery time: the leading seconds of its Maildir
        name, else its modification time.
    @raise FileNotFoundError: it vanished meanwhile.
    """
    match = _LEADING_SECONDS.match(entry.name)
    if match:
        return float(match.group(1))
    return entry.stat(follow_symlinks=False).st_mtime


def keyIdOf(path: str) -> str | None:
    """
    The vault key a stored message was encrypted with.

    @param path: the message file.
    @return: the key id, or C{None} for a message that is not in our
        encrypted format.
    @raise OSError: it cannot be read (C{FileNotFoundError}: it vanished).
    """
    with open(path, "rb") as f:
        try:
            return readEnvelope(f).keyId
        except DecryptionError:
            return None


def _folders(root: str) -> list[tuple[str, str]]:
    """
    @return: C{(IMAP name, directory)} of a mailbox's INBOX and folders.
    """
    return [(entry.name, entry.path) for entry in MaildirFolders(root).listFolders()]


def findExpired(dataDir: str, now: float, retentionDays: int) -> list[Expired]:
    """
    Find the messages past the retention time (see the module docstring).
    Blocking.

    @param dataDir: the server's C{data_dir}.
    @param now: the current time, POSIX seconds.
    @param retentionDays: how many days mail is kept; 0 (or less): for
        ever, nothing is expired.
    @return: the expired messages, oldest first.  Files that vanish during
        the scan are left out.
    @raise OSError: a mailbox directory cannot be read.
    """
    if retentionDays <= 0:
        return []
    cutoff = now - retentionDays * DAY_SECONDS
    found = []
    for address, root in mailboxes(dataDir):
        for folder, path in _folders(root):
            for entry in messageEntries(path):
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    deliveredAt = _deliveredAt(entry)
                    if deliveredAt >= cutoff:
                        continue
                    size = _sizeOf(entry)
                    keyId = keyIdOf(entry.path)
                except FileNotFoundError:
                    continue
                found.append(Expired(entry.path, address, folder, size, keyId, deliveredAt))
    found.sort(key=lambda e: (e.deliveredAt, e.path))
    return found


def _locate(path: str) -> str | None:
    """
    Find a message that moved within its folder (C{new/} to C{cur/}, or
    its flags changed) since it was found.

    @return: its current path, or C{None}.
    """
    folder = os.path.dirname(os.path.dirname(path))
    wanted = storedId(os.path.basename(path))
    for entry in messageEntries(folder):
        if storedId(entry.name) == wanted:
            return entry.path
    return None


def _removeOne(path: str) -> str:
    """
    Unlink a message, following it if it moved.

    @return: L{REMOVED}, or L{GONE} when it is no longer there.
    @raise OSError: it is there but cannot be removed.
    """
    for _ in range(3):
        try:
            os.unlink(path)
            return REMOVED
        except FileNotFoundError:
            moved = _locate(path)
            if moved is None:
                return GONE
            path = moved
    return GONE


def _removeEach(dataDir: str, expired: list[Expired], unlink: Any = None) -> list[Any]:
    """
    Remove expired messages, then sync their directories and lower their
    mailboxes' usage.  Blocking.

    @param unlink: removes one file (see L{_removeOne}); tests pass their
        own.
    @return: for each message, L{REMOVED}, L{GONE} or the C{OSError} that
        stopped its removal.
    """
    unlink = unlink or _removeOne
    outcomes: list[Any] = []
    directories: set[str] = set()
    usage: dict[str, list[int]] = {}
    for item in expired:
        try:
            outcome = unlink(item.path)
        except OSError as e:
            outcomes.append(e)
            continue
        outcomes.append(outcome)
        folder = os.path.dirname(os.path.dirname(item.path))
        directories.update(os.path.join(folder, sub) for sub in ("new", "cur"))
        if outcome == REMOVED:
            root = _mailboxRoot(dataDir, item.address)
            totals = usage.setdefault(root, [0, 0])
            totals[0] += item.sizeBytes
            totals[1] += 1
    for directory in sorted(directories):
        # the names must be gone for good before any key is erased
        try:
            syncDirectory(directory)
        except FileNotFoundError:
            continue
    for root, (sizeBytes, count) in sorted(usage.items()):
        recordUsage(root, 0, -sizeBytes, -count)
    return outcomes


def _mailboxRoot(dataDir: str, address: str) -> str:
    """
    @return: the mailbox directory of an address found by L{mailboxes}.
    """
    localpart, _, domain = address.rpartition("@")
    return os.path.join(dataDir, "mail", domain, localpart)


def removeExpired(dataDir: str, expired: list[Expired]) -> tuple[int, int]:
    """
    Remove expired messages and lower their mailboxes' quota usage.
    Blocking.

    A message already gone is skipped; one that moved within its folder
    (C{new/} to C{cur/}, flags changed) is followed; one that cannot be
    removed is left, and not counted.

    @param dataDir: the server's C{data_dir}.
    @param expired: what L{findExpired} found.
    @return: C{(count, bytes)} removed.
    """
    outcomes = _removeEach(dataDir, expired)
    removed = [item for item, outcome in zip(expired, outcomes) if outcome == REMOVED]
    return len(removed), sum(item.sizeBytes for item in removed)


def keysInUse(dataDir: str, addresses: list[str], keyIds: set[str]) -> set[str]:
    """
    Which of some keys a message of some accounts still carries.  Blocking:
    reads the header of every message of those accounts.

    @param dataDir: the server's C{data_dir}.
    @param addresses: the accounts.
    @param keyIds: the keys asked about.
    @return: those carried by a message in any folder of those accounts.
    """
    used: set[str] = set()
    for address in sorted(set(addresses)):
        for _, path in _folders(_mailboxRoot(dataDir, address)):
            for entry in messageEntries(path):
                try:
                    keyId = keyIdOf(entry.path) if entry.is_file(follow_symlinks=False) else None
                except OSError:
                    continue
                if keyId in keyIds:
                    used.add(keyId)
                    if used == keyIds:
                        return used
    return used


@attrs.define(eq=False)
class RetentionSweep:
    """
    One pass of retention over every mailbox (see the module docstring).

    @ivar dataDir: the server's C{data_dir}.
    @ivar retentionDays: how many days mail is kept, 0 for ever.
    @ivar vault: the L{qutemail.interfaces.IKeyVault} whose keys are
        erased, or C{None} when mail is not stored encrypted.
    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    @ivar clock: an C{IReactorTime}: C{now} is its C{seconds()}.
    @ivar unlink: removes one message file (L{_removeOne}); tests pass
        their own.
    """

    dataDir: str
    retentionDays: int
    vault: Any
    runner: Any
    clock: Any
    unlink: Any = None

    _log = Logger()

    def run(self, dryRun: bool = False) -> Deferred:
        """
        Sweep once.

        @param dryRun: only find the expired messages: nothing is removed
            or erased.
        @return: a Deferred firing with the L{Expired} messages removed by
            this sweep (for a dry run, those that would be); it fails only
            when the mailboxes cannot be scanned.
        """
        return Deferred.fromCoroutine(self._run(dryRun))

    async def _run(self, dryRun: bool) -> list[Expired]:
        """
        See L{run}.
        """
        now = self.clock.seconds()
        expired = await self.runner.run(findExpired, self.dataDir, now, self.retentionDays)
        if dryRun:
            self._log.info("retention (dry run): {count} messages, {bytes} bytes, {keys} keys older than"
                           " {days} days would be removed", count=len(expired),
                           bytes=sum(e.sizeBytes for e in expired),
                           keys=len({e.keyId for e in expired if e.keyId}), days=self.retentionDays)
            return expired
        if not expired:
            return []
        outcomes = await self.runner.run(_removeEach, self.dataDir, expired, self.unlink)
        removed, kept = [], set()
        candidates: set[str] = set()
        for item, outcome in zip(expired, outcomes):
            if isinstance(outcome, OSError):
                self._log.warn("retention could not remove {path} of {address}: {error}",
                               path=item.path, address=item.address, error=str(outcome))
                if item.keyId:
                    kept.add(item.keyId)
                continue
            if outcome == REMOVED:
                removed.append(item)
            if item.keyId:
                candidates.add(item.keyId)
        erased = await self._eraseKeys(candidates - kept, [e.address for e in expired if e.keyId])
        self._log.info("retention removed {count} messages, {bytes} bytes, older than {days} days;"
                       " erased {keys} keys", count=len(removed), bytes=sum(e.sizeBytes for e in removed),
                       keys=erased, days=self.retentionDays)
        return removed

    async def _eraseKeys(self, candidates: set[str], addresses: list[str]) -> int:
        """
        Erase the keys of removed messages that no remaining message
        carries; a failure is logged and the others are still erased.

        @return: how many keys were erased.
        """
        if not candidates or self.vault is None:
            return 0
        inUse = await self.runner.run(keysInUse, self.dataDir, addresses, candidates)
        erased = 0
        for keyId in sorted(candidates - inUse):
            try:
                await self.vault.erase(keyId)
            except Exception:
                # one key's trouble must not keep the others
                self._log.failure("retention could not erase key {keyId}", keyId=keyId)
                continue
            erased += 1
        return erased


class RetentionService(Service):
    """
    Runs a L{RetentionSweep} at start and then every C{intervalSeconds}
    on the injected clock.  A failed sweep is logged and the loop goes on;
    a sweep still running when the next is due delays it (no overlap).
    """

    _log = Logger()

    def __init__(self, sweep: RetentionSweep, clock: Any,
                 intervalSeconds: float = DEFAULT_INTERVAL_SECONDS) -> None:
        """
        @param sweep: the sweep to run.
        @param clock: an C{IReactorTime} driving the loop.
        @param intervalSeconds: the time between the starts of two
            sweeps.
        """
        self.sweep = sweep
        self.clock = clock
        self.intervalSeconds = intervalSeconds
        self._loop: LoopingCall | None = None
        self._running = False
        self._idle: list[Deferred] = []

    def startService(self) -> None:
        """
        Start the loop; the first sweep runs now.
        """
        Service.startService(self)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.intervalSeconds, now=True).addErrback(
            lambda failure: self._log.failure("the retention loop stopped", failure))

    def _tick(self) -> Deferred | None:
        """
        Run one sweep unless one is running; never fails (a failing
        C{LoopingCall} stops for good).

        @return: a Deferred firing when the sweep is over, or C{None}.
        """
        if self._running:
            return None
        self._running = True
        d = self.sweep.run()
        d.addErrback(lambda failure: self._log.failure("retention sweep failed", failure))
        d.addBoth(self._finished)
        return d

    def _finished(self, result: Any) -> None:
        """
        A sweep is over: release whoever waits for it.
        """
        self._running = False
        waiting, self._idle = self._idle, []
        for d in waiting:
            d.callback(None)

    def stopService(self) -> Deferred | None:
        """
        Stop the loop.

        @return: a Deferred firing when a sweep still running is over, or
            C{None} when none is.
        """
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if not self._running:
            return None
        d: Deferred = Deferred()
        self._idle.append(d)
        return d
