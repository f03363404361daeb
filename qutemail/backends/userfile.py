# -*- test-case-name: tests.backends.test_userfile -*-
"""
L{FileUserDirectory}: the local accounts in one text file, C{data_dir/users},
written with mode 0600.  L{qutemail.backends.userrecords} describes its
contents: one record per normalised address, with a scrypt password hash
(L{qutemail.backends.passwordhash}) and a quota.  A missing file means
there are no users.

Every change rewrites the whole file atomically (a temporary file in the same
directory, fsynced, renamed over the old one, then the directory fsynced),
while holding an exclusive C{flock} on C{users.lock} beside it: the server
and the C{qutemail} command-line tool are separate processes that may both
change the file.  Readers take no lock; they see either the old or the new
file.  The server notices changes made by other processes by comparing the
file's C{(mtime_ns, size, inode)} with what it last read, at most once per
second of its clock.

Lookups read an immutable snapshot of the file, replaced whole when the
file changes; they never queue behind a lock.  Only when it is time to
look at the file again do they wait, all of them for the same single
re-read, and they are woken from one loop (L{qutemail.serial.Waiters}).
Changes made by this process go one at a time (L{qutemail.serial.SerialQueue}).

All file access and all password hashing run through the injected runner:
scrypt takes tens of milliseconds and fsync may take longer still.
"""

import errno
import fcntl
import os
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from qutemail.backends.passwordhash import (
    DEFAULT_WORK_FACTOR, MAX_WORK_FACTOR, hashInThread, verifyInThread,
)
from qutemail.backends.userrecords import (
    UserFileError, UserRecord, checkAddress, checkQuota, parseUserFile, serialiseUserFile,
)
from qutemail.durable import replaceFile
from qutemail.interfaces import Account, IUserDirectory, NoSuchUser, UserExists
from qutemail.serial import SerialQueue, Waiters

# How often, in seconds of the injected clock, the file is checked for
# changes made by another process.
RECHECK_SECONDS = 1.0


@attrs.frozen
class _Snapshot:
    """
    What the file held when last read.

    @ivar key: C{(mtime_ns, size, inode)}, or C{None} when there was no file.
    @ivar users: the records by address (empty when C{error} is set).
    @ivar error: the reason, when the file was unreadable or corrupt.
    """

    key: tuple[int, int, int] | None
    users: dict[str, UserRecord]
    error: str | None = None


def _statKey(st: os.stat_result) -> tuple[int, int, int]:
    """
    @return: what identifies one version of the file.
    """
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _osError(path: str, doing: str, e: OSError) -> UserFileError:
    """
    @return: a one-line error for an operating system failure.
    """
    return UserFileError(f"{path}: cannot {doing}: {e.strerror or errno.errorcode.get(e.errno, e)}")


def _readFile(path: str) -> _Snapshot:
    """
    Read the file as it is now.  Blocking.

    @return: the snapshot; an empty one when there is no file.
    @raise UserFileError: the file is unreadable or corrupt.
    """
    try:
        with open(path, "rb") as f:
            # fstat of the open file: the key then matches the bytes read,
            # even if the file is renamed over meanwhile.
            key = _statKey(os.fstat(f.fileno()))
            data = f.read()
    except FileNotFoundError:
        return _Snapshot(None, {})
    except OSError as e:
        raise _osError(path, "read the user file", e) from None
    return _Snapshot(key, parseUserFile(path, data))


def _refresh(path: str, known: tuple[int, int, int] | None, force: bool) -> _Snapshot | None:
    """
    Re-read the file if it changed since it was read.  Blocking.

    @param known: the key of the version last read.
    @param force: read even if the key did not change (the last read
        failed, or nothing was read yet).
    @return: a new snapshot, possibly carrying an error; C{None} when the
        file did not change.
    """
    try:
        key: tuple[int, int, int] | None = _statKey(os.stat(path))
    except FileNotFoundError:
        key = None
    except OSError as e:
        return _Snapshot(None, {}, str(_osError(path, "read the user file", e)))
    if key == known and not force:
        return None
    try:
        return _readFile(path)
    except UserFileError as e:
        return _Snapshot(key, {}, str(e))


def _writeFile(path: str, data: bytes) -> tuple[int, int, int]:
    """
    Replace the file atomically and durably.  Blocking.

    @return: the key of the new version.
    @raise OSError: the write failed; the old file is untouched.
    """
    return _statKey(replaceFile(path, data))


def _modify(path: str, change: Callable[[dict[str, UserRecord]], Any]) -> tuple[_Snapshot, Any]:
    """
    Read, change and rewrite the file under an exclusive lock.  Blocking.

    @param change: called with a copy of the records, which it changes in
        place; what it returns is passed on.  It may raise to abandon the
        change.
    @return: the snapshot written, and what C{change} returned.
    @raise UserFileError: the file is corrupt, or could not be written.
    """
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        lockFd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise _osError(path, "lock the user file", e) from None
    try:
        # flock, not fcntl locks: two threads of one process each opening
        # the lock file exclude each other too.
        fcntl.flock(lockFd, fcntl.LOCK_EX)
        users = dict(_readFile(path).users)
        result = change(users)
        try:
            key = _writeFile(path, serialiseUserFile(users))
        except OSError as e:
            raise _osError(path, "write the user file", e) from None
        return _Snapshot(key, users), result
    finally:
        os.close(lockFd)


def _providesTime(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """
    attrs validator: C{value} must provide L{IReactorTime}.
    """
    if not IReactorTime.providedBy(value):
        raise TypeError(f"{attribute.name} must provide IReactorTime, not {value!r}")


@implementer(IUserDirectory)
@attrs.define(eq=False)
class FileUserDirectory:
    """
    The accounts in C{data_dir/users}; see the module docstring for how
    changes by other processes are picked up, and
    L{qutemail.backends.userrecords} for the file's format.

    @ivar path: the user file.
    @ivar runner: runs blocking work (file access, hashing): a
        L{qutemail.blocking.BlockingRunner} in the server, an
        L{qutemail.blocking.InlineRunner} in the command-line tool and tests.
    @ivar clock: reads the time that paces re-reading the file.
    @ivar workFactor: log2 of scrypt's N for new hashes.  Existing hashes
        keep the parameters they were made with.
    @ivar hashRunner: runs the scrypt work, or C{None} for C{runner}: the
        server's password threads (see
        L{qutemail.backends.passwordhash.passwordThreads}).
    """

    _log = Logger()

    path: str
    runner: Any
    clock: Any = attrs.field(validator=_providesTime)
    workFactor: int = attrs.field(
        default=DEFAULT_WORK_FACTOR, validator=attrs.validators.in_(range(1, MAX_WORK_FACTOR + 1))
    )
    hashRunner: Any = None
    _snapshot: _Snapshot | None = attrs.field(default=None, init=False)
    _checkedAt: float = attrs.field(default=0.0, init=False)
    # A re-read is in flight; those who need it wait in _reread.
    _rereading: bool = attrs.field(default=False, init=False)

    @property
    def _hashing(self) -> Any:
        """
        What runs the scrypt work: C{hashRunner}, else C{runner}.
        """
        return self.hashRunner or self.runner
    _reread: Waiters = attrs.field(factory=Waiters, init=False)
    # Writers go one at a time; each bumps the generation, so that a
    # re-read started before a write never replaces what the write stored.
    _writes: SerialQueue = attrs.field(factory=SerialQueue, init=False)
    _generation: int = attrs.field(default=0, init=False)

    def _due(self) -> bool:
        """
        @return: whether the snapshot must be (re)read before it answers.
        """
        return self._snapshot is None or self.clock.seconds() - self._checkedAt >= RECHECK_SECONDS

    def _users(self) -> Deferred:
        """
        The records: from the current snapshot, which is immutable and is
        replaced whole when the file changes.  Only when it is time to look
        at the file again does a lookup wait, for the one re-read in
        flight, never behind a lock.

        @return: fires with the records by address, or fails with
            L{UserFileError} when the file is unreadable or corrupt.
        """
        if self._due():
            if not self._rereading:
                self._startReread()
            if self._rereading:
                return self._reread.wait().addCallback(lambda _: self._recordsNow())
        return maybeDeferred(self._recordsNow)

    def _recordsNow(self) -> dict[str, UserRecord]:
        """
        @return: the records of the current snapshot.
        @raise UserFileError: it records a failure to read the file.
        """
        snapshot = self._snapshot
        if snapshot is None or snapshot.error is not None:
            raise UserFileError(snapshot.error if snapshot is not None else f"{self.path}: not read yet")
        return snapshot.users

    def _startReread(self) -> None:
        """
        Look at the file again (in the runner); answer the waiters when done.
        """
        snapshot = self._snapshot
        # After a failure, look again at the next check even if the file
        # seems unchanged: the failure may have been passing.
        force = snapshot is None or snapshot.error is not None
        known = None if snapshot is None else snapshot.key
        self._rereading = True
        d = self.runner.run(_refresh, self.path, known, force)
        d.addBoth(self._rereadDone, self.clock.seconds(), self._generation)

    def _rereadDone(self, fresh: Any, startedAt: float, generation: int) -> None:
        """
        Keep what a re-read found (unless a write came meanwhile), then wake
        every lookup that waited for it.
        """
        self._rereading = False
        if isinstance(fresh, Failure):
            self._log.failure("while reading {path}", fresh, path=self.path)
            fresh = _Snapshot(None, {}, f"{self.path}: cannot read the user file: {fresh.getErrorMessage()}")
        if generation == self._generation:
            self._checkedAt = startedAt
            if fresh is not None:
                self._snapshot = fresh
                if fresh.error is None:
                    self._log.debug("read {path}: {userCount} users", path=self.path, userCount=len(fresh.users))
                else:
                    self._log.error("{reason}", path=self.path, reason=fresh.error)
        self._reread.fire(None)

    def _change(self, change: Callable[[dict[str, UserRecord]], Any]) -> Deferred:
        """
        Apply a change to the file, after every change asked for before it,
        and remember what was written.

        @param change: see L{_modify}.
        @return: fires with what C{change} returned.
        """
        return self._writes.run(lambda: Deferred.fromCoroutine(self._write(change)))

    async def _write(self, change: Callable[[dict[str, UserRecord]], Any]) -> Any:
        """
        See L{_change}; runs alone.
        """
        snapshot, result = await self.runner.run(_modify, self.path, change)
        self._generation += 1
        self._snapshot = snapshot
        self._checkedAt = self.clock.seconds()
        return result

    def getAccount(self, address: str) -> Deferred:
        """
        See L{IUserDirectory.getAccount}.
        """
        snapshot = self._snapshot
        if snapshot is not None and snapshot.error is None and not self._due():
            # Every RCPT and every delivery asks: answer from the fresh
            # snapshot without the coroutine machinery.
            record = snapshot.users.get(address)
            return succeed(None if record is None else Account(address, record.quotaBytes))
        return Deferred.fromCoroutine(self._getAccount(address))

    async def _getAccount(self, address: str) -> Account | None:
        """
        See L{getAccount}.
        """
        record = (await self._users()).get(address)
        return None if record is None else Account(address, record.quotaBytes)

    def checkPassword(self, address: str, password: bytes) -> Deferred:
        """
        See L{IUserDirectory.checkPassword}.  An unknown address costs the
        same scrypt work as a known one.
        """
        return Deferred.fromCoroutine(self._checkPassword(address, password))

    async def _checkPassword(self, address: str, password: bytes) -> Account | None:
        """
        See L{checkPassword}.
        """
        record = (await self._users()).get(address)
        passwordHash = None if record is None else record.passwordHash
        if not await verifyInThread(self._hashing, passwordHash, password, self.workFactor):
            return None
        return Account(address, record.quotaBytes)

    def addUser(self, address: str, password: bytes) -> Deferred:
        """
        See L{IUserDirectory.addUser}.

        @raise AddressInvalid: (in the Deferred) C{address} is not a
            normalised address.
        @raise ValueError: (in the Deferred) the password is empty.
        """
        return Deferred.fromCoroutine(self._addUser(address, password))

    async def _addUser(self, address: str, password: bytes) -> Account:
        """
        See L{addUser}.
        """
        checkAddress(address)
        passwordHash = await hashInThread(self._hashing, password, self.workFactor)

        def add(users: dict[str, UserRecord]) -> None:
            """
            Add the record, unless the address is taken.
            """
            if address in users:
                raise UserExists(address)
            users[address] = UserRecord(passwordHash, None)

        await self._change(add)
        self._log.info("added user {address}", address=address)
        return Account(address)

    def setPassword(self, address: str, password: bytes) -> Deferred:
        """
        See L{IUserDirectory.setPassword}.

        @raise ValueError: (in the Deferred) the password is empty.
        """
        return Deferred.fromCoroutine(self._setPassword(address, password))

    async def _setPassword(self, address: str, password: bytes) -> None:
        """
        See L{setPassword}.
        """
        passwordHash = await hashInThread(self._hashing, password, self.workFactor)

        def setHash(users: dict[str, UserRecord]) -> None:
            """
            Replace the account's hash.
            """
            if address not in users:
                raise NoSuchUser(address)
            users[address] = attrs.evolve(users[address], passwordHash=passwordHash)

        await self._change(setHash)
        self._log.info("changed the password of {address}", address=address)

    def setQuota(self, address: str, quotaBytes: int | None) -> Deferred:
        """
        See L{IUserDirectory.setQuota}.

        @raise ValueError: (in the Deferred) C{quotaBytes} is neither C{None}
            nor an C{int >= 0}.
        """
        return Deferred.fromCoroutine(self._setQuota(address, quotaBytes))

    async def _setQuota(self, address: str, quotaBytes: int | None) -> Account:
        """
        See L{setQuota}.
        """
        checkQuota(quotaBytes)

        def setQuota(users: dict[str, UserRecord]) -> None:
            """
            Replace the account's quota.
            """
            if address not in users:
                raise NoSuchUser(address)
            users[address] = attrs.evolve(users[address], quotaBytes=quotaBytes)

        await self._change(setQuota)
        self._log.info("set the quota of {address} to {quotaBytes}", address=address, quotaBytes=quotaBytes)
        return Account(address, quotaBytes)

    def removeUser(self, address: str) -> Deferred:
        """
        See L{IUserDirectory.removeUser}.
        """
        return Deferred.fromCoroutine(self._removeUser(address))

    async def _removeUser(self, address: str) -> None:
        """
        See L{removeUser}.
        """

        def remove(users: dict[str, UserRecord]) -> None:
            """
            Delete the account's record.
            """
            if address not in users:
                raise NoSuchUser(address)
            del users[address]

        await self._change(remove)
        self._log.info("removed user {address}", address=address)

    def listAccounts(self) -> Deferred:
        """
        See L{IUserDirectory.listAccounts}.
        """
        return Deferred.fromCoroutine(self._listAccounts())

    async def _listAccounts(self) -> list[Account]:
        """
        See L{listAccounts}.
        """
        users = await self._users()
        return [Account(address, users[address].quotaBytes) for address in sorted(users)]
