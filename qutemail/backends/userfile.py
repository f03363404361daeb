# -*- test-case-name: tests.backends.test_userfile -*-
"""
L{FileUserDirectory}: the local accounts in one text file, C{data_dir/users}.

The file is UTF-8 JSON, written with mode 0600::

    {
      "users": {
        "bob@example.test": {
          "password": "scrypt$14$8$1$<salt>$<hash>",
          "quota": null
        }
      },
      "version": 1
    }

C{users} maps each normalised address (see L{qutemail.address}) to its
record: C{password} is a scrypt hash in the form
C{scrypt$<log2 N>$<r>$<p>$<base64 salt>$<base64 key>}, so the cost
parameters travel with each hash and can be raised later without making old
hashes unreadable; C{quota} is the mailbox quota in bytes, or C{null} for the
configured default.  A missing file means there are no users.

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

import base64
import binascii
import errno
import fcntl
import json
import os
import tempfile
from typing import Any, Callable

import attrs
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from qutemail.address import AddressInvalid, parseAccountAddress
from qutemail.durable import syncDirectory, writeAll
from qutemail.interfaces import Account, IUserDirectory, NoSuchUser, UserExists
from qutemail.serial import SerialQueue, Waiters

FORMAT_VERSION = 1

# scrypt cost: N = 2**14, r = 8, p = 1 takes 16 MiB and ~50 ms per hash
# (the parameters RFC 7914 §2 and OWASP suggest for interactive logins).
DEFAULT_WORK_FACTOR = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

# Bounds on the parameters accepted from the file, so that an edited or
# damaged file cannot make one login allocate gigabytes.
_MAX_WORK_FACTOR = 20
_MAX_R = 32
_MAX_P = 16

# A fixed salt for the work done on behalf of unknown users; what comes out
# is thrown away.
_DUMMY_SALT = b"\0" * SALT_BYTES

# How often, in seconds of the injected clock, the file is checked for
# changes made by another process.
RECHECK_SECONDS = 1.0

_SCHEME = "scrypt"


class UserFileError(Exception):
    """
    The user file cannot be read or written: it is corrupt, or the
    operating system refused.  C{str()} is one line naming the file.
    """


def _b64encode(data: bytes) -> str:
    """
    @return: C{data} in standard base64 without padding.
    """
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """
    Decode base64 written by L{_b64encode}.

    @raise ValueError: C{text} is not base64.
    """
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(f"bad base64: {e}") from None


def _scrypt(salt: bytes, workFactor: int, r: int, p: int, length: int) -> Scrypt:
    """
    @return: a one-use scrypt KDF with these parameters.
    """
    return Scrypt(salt=salt, length=length, n=2**workFactor, r=r, p=p)


def hashPassword(password: bytes, workFactor: int = DEFAULT_WORK_FACTOR) -> str:
    """
    Hash a password with scrypt and a fresh random salt.  Blocking and slow:
    call it through a runner.

    @param password: the password.
    @param workFactor: log2 of scrypt's N.
    @return: C{scrypt$<log2 N>$<r>$<p>$<base64 salt>$<base64 key>}.
    """
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(salt, workFactor, SCRYPT_R, SCRYPT_P, KEY_BYTES).derive(password)
    return "$".join(
        [_SCHEME, str(workFactor), str(SCRYPT_R), str(SCRYPT_P), _b64encode(salt), _b64encode(key)]
    )


def parsePasswordHash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """
    Split a hash written by L{hashPassword}, checking every part.

    @param encoded: the stored hash.
    @return: C{(workFactor, r, p, salt, key)}.
    @raise ValueError: it is not such a hash, or its parameters are out of
        the range this server accepts.
    """
    if not isinstance(encoded, str):
        raise ValueError("the password hash is not a string")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("the password hash is not of the form scrypt$N$r$p$salt$key")
    numbers = []
    for part in parts[1:4]:
        if not part.isascii() or not part.isdigit():
            raise ValueError(f"the password hash has a bad parameter {part!r}")
        numbers.append(int(part))
    workFactor, r, p = numbers
    if not 1 <= workFactor <= _MAX_WORK_FACTOR or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise ValueError(f"the password hash's parameters N=2**{workFactor} r={r} p={p} are out of range")
    salt, key = _b64decode(parts[4]), _b64decode(parts[5])
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        raise ValueError("the password hash's salt or key has a bad length")
    return workFactor, r, p, salt, key


def verifyPassword(encoded: str, password: bytes) -> bool:
    """
    Check a password against a stored hash, comparing in constant time.
    Blocking and slow: call it through a runner.

    @param encoded: a hash written by L{hashPassword}.
    @param password: the candidate.
    @return: whether it matches.
    @raise ValueError: C{encoded} is not a valid hash.
    """
    workFactor, r, p, salt, key = parsePasswordHash(encoded)
    try:
        _scrypt(salt, workFactor, r, p, len(key)).verify(password, key)
    except InvalidKey:
        return False
    return True


def _dummyVerify(password: bytes, workFactor: int) -> bool:
    """
    Spend the time a L{verifyPassword} takes, for a user who does not exist.

    @return: C{False}, always.
    """
    _scrypt(_DUMMY_SALT, workFactor, SCRYPT_R, SCRYPT_P, KEY_BYTES).derive(password)
    return False


@attrs.frozen
class _Record:
    """
    One account as stored.

    @ivar passwordHash: see L{hashPassword}.
    @ivar quotaBytes: the quota, or C{None} for the configured default.
    """

    passwordHash: str
    quotaBytes: int | None


@attrs.frozen
class _Snapshot:
    """
    What the file held when last read.

    @ivar key: C{(mtime_ns, size, inode)}, or C{None} when there was no file.
    @ivar users: the records by address (empty when C{error} is set).
    @ivar error: the reason, when the file was unreadable or corrupt.
    """

    key: tuple[int, int, int] | None
    users: dict[str, _Record]
    error: str | None = None


def _statKey(st: os.stat_result) -> tuple[int, int, int]:
    """
    @return: what identifies one version of the file.
    """
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _isQuota(value: Any) -> bool:
    """
    @return: whether C{value} is a valid stored quota.
    """
    return value is None or (type(value) is int and value >= 0)


def _parse(path: str, data: bytes) -> dict[str, _Record]:
    """
    Parse and check the file's contents.

    @param path: the file, for error messages.
    @param data: its contents.
    @return: the records by address.
    @raise UserFileError: the contents are not a valid user file.
    """

    def corrupt(reason: str) -> UserFileError:
        """
        @return: the error for this fault in the file.
        """
        return UserFileError(f"{path}: corrupt user file: {reason}")

    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise corrupt(f"not UTF-8 (byte {e.start})") from None
    except ValueError as e:
        raise corrupt(f"not JSON ({e})") from None
    if not isinstance(document, dict):
        raise corrupt("the top level is not an object")
    if document.get("version") != FORMAT_VERSION:
        raise corrupt(f"unsupported version {document.get('version')!r} (expected {FORMAT_VERSION})")
    entries = document.get("users")
    if not isinstance(entries, dict):
        raise corrupt('"users" is not an object')
    users = {}
    for address, entry in entries.items():
        try:
            normal = str(parseAccountAddress(address))
        except AddressInvalid as e:
            raise corrupt(str(e)) from None
        if normal != address:
            raise corrupt(f"{address!r} is not in normal form ({normal!r})")
        if not isinstance(entry, dict):
            raise corrupt(f"the entry for {address} is not an object")
        passwordHash = entry.get("password")
        try:
            parsePasswordHash(passwordHash)
        except ValueError as e:
            raise corrupt(f"{address}: {e}") from None
        quota = entry.get("quota")
        if not _isQuota(quota):
            raise corrupt(f"{address}: quota {quota!r} is not null or a byte count")
        users[address] = _Record(passwordHash, quota)
    return users


def _serialise(users: dict[str, _Record]) -> bytes:
    """
    @return: the file's contents for these records.
    """
    document = {
        "version": FORMAT_VERSION,
        "users": {
            address: {"password": record.passwordHash, "quota": record.quotaBytes}
            for address, record in sorted(users.items())
        },
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


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
    return _Snapshot(key, _parse(path, data))


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
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=".users.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, 0o600)
            writeAll(fd, data)
            os.fsync(fd)
            key = _statKey(os.fstat(fd))
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    syncDirectory(directory)
    return key


def _modify(path: str, change: Callable[[dict[str, _Record]], Any]) -> tuple[_Snapshot, Any]:
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
            key = _writeFile(path, _serialise(users))
        except OSError as e:
            raise _osError(path, "write the user file", e) from None
        return _Snapshot(key, users), result
    finally:
        os.close(lockFd)


def _checkAddress(address: str) -> None:
    """
    Refuse an address that is not normalised.

    @raise AddressInvalid: it is not.
    """
    normal = str(parseAccountAddress(address))
    if normal != address:
        raise AddressInvalid(f"{address!r} is not in normal form ({normal!r})")


def _checkPasswordValue(password: bytes) -> None:
    """
    Refuse a password that cannot be stored.

    @raise TypeError: it is not bytes.
    @raise ValueError: it is empty.
    """
    if not isinstance(password, bytes):
        raise TypeError("passwords are bytes")
    if not password:
        raise ValueError("the password is empty")


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
    The accounts in C{data_dir/users}; see the module docstring for the
    file's format and how changes by other processes are picked up.

    @ivar path: the user file.
    @ivar runner: runs blocking work (file access, hashing): a
        L{qutemail.blocking.BlockingRunner} in the server, an
        L{qutemail.blocking.InlineRunner} in the command-line tool and tests.
    @ivar clock: reads the time that paces re-reading the file.
    @ivar workFactor: log2 of scrypt's N for new hashes.  Existing hashes
        keep the parameters they were made with.
    """

    _log = Logger()

    path: str
    runner: Any
    clock: Any = attrs.field(validator=_providesTime)
    workFactor: int = attrs.field(
        default=DEFAULT_WORK_FACTOR, validator=attrs.validators.in_(range(1, _MAX_WORK_FACTOR + 1))
    )
    _snapshot: _Snapshot | None = attrs.field(default=None, init=False)
    _checkedAt: float = attrs.field(default=0.0, init=False)
    # A re-read is in flight; those who need it wait in _reread.
    _rereading: bool = attrs.field(default=False, init=False)
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

    def _recordsNow(self) -> dict[str, _Record]:
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

    def _change(self, change: Callable[[dict[str, _Record]], Any]) -> Deferred:
        """
        Apply a change to the file, after every change asked for before it,
        and remember what was written.

        @param change: see L{_modify}.
        @return: fires with what C{change} returned.
        """
        return self._writes.run(lambda: Deferred.fromCoroutine(self._write(change)))

    async def _write(self, change: Callable[[dict[str, _Record]], Any]) -> Any:
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
        if record is None:
            await self.runner.run(_dummyVerify, password, self.workFactor)
            return None
        if not await self.runner.run(verifyPassword, record.passwordHash, password):
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
        _checkAddress(address)
        _checkPasswordValue(password)
        passwordHash = await self.runner.run(hashPassword, password, self.workFactor)

        def add(users: dict[str, _Record]) -> None:
            """
            Add the record, unless the address is taken.
            """
            if address in users:
                raise UserExists(address)
            users[address] = _Record(passwordHash, None)

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
        _checkPasswordValue(password)
        passwordHash = await self.runner.run(hashPassword, password, self.workFactor)

        def setHash(users: dict[str, _Record]) -> None:
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
        if not _isQuota(quotaBytes):
            raise ValueError(f"{quotaBytes!r} is not a quota in bytes")

        def setQuota(users: dict[str, _Record]) -> None:
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

        def remove(users: dict[str, _Record]) -> None:
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
