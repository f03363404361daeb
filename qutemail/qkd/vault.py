# -*- test-case-name: tests.qkd.test_vault -*-
"""
The key vault on disk: L{FileKeyVault}, and the wrapping under the local
master key that every vault backend shares (L{KeyWrapper}).

A message encrypted at rest (see L{qutemail.qkd.cipher}) can be read only
with its KME key, so the key is kept until the message is deleted:

    - The master key is 32 random bytes in one file (the server passes
      C{data_dir/keys/master.key}).  It is created by the first C{store}
      with mode 0600: written to a temporary file, fsynced, then
      hard-linked to its name, which fails if the file already exists, so
      a master key is never overwritten and a crash never leaves a
      half-written one.  It is not created when the vault directory
      already holds key files (a lost master key must be restored, not
      replaced).  A master key file that is missing then, cannot be read or
      does not hold exactly 32 bytes stops the vault with
      L{MasterKeyError}.  Every node sharing one vault
      (L{qutemail.backends.redisvault}) needs a copy of the same file.
    - Each message key is wrapped with AES-256-GCM under the master key: a
      fresh 96-bit random nonce per key, and the key id as associated data,
      so a wrapped key copied to another id does not unwrap.  Random nonces
      allow 2**32 wraps per master key (NIST SP 800-38D §8.3), about 11,000
      years at a million messages a day.  The wrapped form is::

          b"QKV1" || nonce (12 bytes) || AES-GCM(key) || tag (16 bytes)

    - L{FileKeyVault} keeps one file per key, C{<directory>/<keyId>.key},
      mode 0600, written atomically and durably (L{replaceFile}) before
      C{store} fires.  C{erase} unlinks it and fsyncs the directory.  Note
      that unlinking does not scrub the disk: a wrapped key recovered from
      the raw device still unwraps while the master key exists.
    - L{FileKeyVault.addKeys} is how fresh message keys arrive: several
      keys in one job (up to L{KEYS_PER_JOB}; more go to several jobs at
      once) of a worker thread or, in the server, of the delivery process
      (its C{keyFiles}), each file created under its final name with
      C{O_EXCL} (so an id the vault already holds is refused, never
      replaced, even by another process sharing the directory).  The
      job's files are then made durable together, before the Deferred
      fires: on Linux by one C{syncfs} of the file system (one journal
      commit and one disk flush, where an fsync per file cost one each:
      the key files were half of internal mail's fsyncs), elsewhere by an
      fsync of each file and then of the directory.  A crash before that
      leaves at most a short file for an id no message uses: a message is
      sealed with a key only once its file is durable, and a delivery
      retried after a crash takes a new key.

Key ids are checked (L{checkKeyId}) before they are used in a file name or
a Redis key: one to 128 of C{A-Z a-z 0-9 _ -}, starting with a letter or a
digit.  UUIDs, which ETSI GS QKD 014 uses, fit; C{../x} does not.

All file work goes through the injected runner; the master key is read once
per vault and kept, so C{store} costs one small file write and two fsyncs,
and C{addKeys} one small file write per key and one C{syncfs} per job.
"""

import errno
import os
import re
import stat
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.durable import makeDirectories, replaceFile, syncDirectory, writeAll
from qutemail.interfaces import IKeyVault, KeyGone
# The key files' names and errors, and how new ones are written, are in a
# module of their own, light enough for the delivery process to import.
from qutemail.qkd.keyfiles import KEY_FILE_SUFFIX, KeyVaultError, addKeyFiles

MASTER_KEY_BYTES = 32
WRAP_MAGIC = b"QKV1"
WRAP_NONCE_BYTES = 12
# Keys longer than this are not message keys.
MAX_KEY_BYTES = 1024
# The most keys addKeys writes in one job (one after another, then made
# durable together).
KEYS_PER_JOB = 16

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_WRAP_AAD_PREFIX = b"qutemail-vault/1 key-id="
# The HKDF info of the queue key: a key of its own, never the master key.
QUEUE_KEY_INFO = b"qutemail-queue/1"


class InvalidKeyId(ValueError):
    """
    A key id that is not of the safe form (see L{checkKeyId}).
    """


class MasterKeyError(KeyVaultError):
    """
    The master key file cannot be read or created, or is not 32 bytes.
    """


def checkKeyId(keyId: Any) -> str:
    """
    Refuse a key id that could escape a directory or a namespace.

    @param keyId: the id.
    @return: C{keyId}, unchanged.
    @raise InvalidKeyId: it is not a C{str} of 1 to 128 characters from
        C{A-Z a-z 0-9 _ -} starting with a letter or a digit.
    """
    if not isinstance(keyId, str) or _KEY_ID.fullmatch(keyId) is None:
        raise InvalidKeyId(f"invalid key id {str(keyId)[:60]!r}")
    return keyId


def checkKey(key: Any) -> bytes:
    """
    Refuse something that is not a message key.

    @return: C{key}, unchanged.
    @raise TypeError: it is not C{bytes}.
    @raise ValueError: it is empty or longer than L{MAX_KEY_BYTES}.
    """
    if not isinstance(key, bytes):
        raise TypeError("keys are bytes")
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a key must be 1 to {MAX_KEY_BYTES} bytes, not {len(key)}")
    return key


def _readMasterKey(path: str) -> tuple[bytes, int] | None:
    """
    Read an existing master key file.

    @return: C{(key, mode)}, or C{None} when there is no file.
    @raise MasterKeyError: it cannot be read or has the wrong length.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MASTER_KEY_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MasterKeyError(f"cannot read the master key {path}: {e.strerror or e}") from None
    if len(data) != MASTER_KEY_BYTES:
        raise MasterKeyError(
            f"the master key {path} must hold exactly {MASTER_KEY_BYTES} bytes (it holds "
            f"{'more' if len(data) > MASTER_KEY_BYTES else len(data)})"
        )
    return data, stat.S_IMODE(mode)


def _makeDirectory(path: str) -> None:
    """
    Create a directory and any missing parents, mode 0700, fsyncing each
    parent so that the new names survive a crash.  Blocking.
    """
    makeDirectories(path, sync=True)


def loadMasterKey(path: str, create: bool = True, vaultDirectory: str | None = None) -> tuple[bytes, int, bool]:
    """
    Read the master key, creating it first if there is none.  Blocking:
    call it through a runner.

    @param path: the master key file.
    @param create: whether a missing file may be created (only to wrap a
        key; unwrapping under a fresh master key can only fail).
    @param vaultDirectory: a directory of key files; if it holds any, a
        missing master key is not replaced (they were wrapped under the
        lost one, which must be restored).
    @return: C{(key, mode, created)}: the 32 bytes, the file's permission
        bits, and whether this call created it.
    @raise MasterKeyError: the file cannot be read, created or has the
        wrong length, or is missing and may not be created.
    """
    existing = _readMasterKey(path)
    if existing is not None:
        return existing + (False,)
    try:
        orphans = vaultDirectory is not None and any(
            name.endswith(KEY_FILE_SUFFIX) for name in os.listdir(vaultDirectory))
    except FileNotFoundError:
        orphans = False
    except OSError as e:
        raise MasterKeyError(f"cannot list the key vault {vaultDirectory}: {e.strerror or e}") from None
    if not create or orphans:
        raise MasterKeyError(f"the master key {path} is missing"
                             + (f" but {vaultDirectory} holds keys wrapped under it; restore it" if orphans else ""))
    directory = os.path.dirname(path) or "."
    temp = f"{path}.new.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        _makeDirectory(directory)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            writeAll(fd, os.urandom(MASTER_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link() never replaces an existing name: if another process or
            # thread created the key meanwhile, theirs wins and is read below.
            os.link(temp, path)
            created = True
        except FileExistsError:
            created = False
        finally:
            os.unlink(temp)
        syncDirectory(directory)
    except OSError as e:
        raise MasterKeyError(f"cannot create the master key {path}: {e.strerror or e}") from None
    existing = _readMasterKey(path)
    if existing is None:
        raise MasterKeyError(f"the master key {path} vanished while it was being created")
    return existing + (created,)


def deriveQueueKey(masterKey: bytes) -> bytes:
    """
    The queue key, which seals deferred internal mail in the queue (see
    L{qutemail.queue.sealedbody}): HKDF-SHA256 of the master key with its
    own info string, so it is never the master key itself and never one of
    the keys the master key wraps.

    @param masterKey: the 32-byte master key.
    @return: the 32-byte queue key.
    """
    return HKDF(algorithm=hashes.SHA256(), length=MASTER_KEY_BYTES, salt=None,
                info=QUEUE_KEY_INFO).derive(masterKey)


def loadQueueKey(path: str, create: bool = False, vaultDirectory: str | None = None) -> bytes:
    """
    Read the master key (see L{loadMasterKey}, whose rules apply, creation
    included) and derive the queue key from it.  Blocking.

    @return: the queue key.
    @raise MasterKeyError: see L{loadMasterKey}.
    """
    key, _, _ = loadMasterKey(path, create, vaultDirectory)
    return deriveQueueKey(key)


def _wrapAAD(keyId: str) -> bytes:
    """
    @return: the associated data binding a wrapped key to its id.
    """
    return _WRAP_AAD_PREFIX + keyId.encode("ascii")


@attrs.define(eq=False)
class KeyWrapper:
    """
    Wraps and unwraps message keys under the local master key, which it
    reads (or creates) once, on first use, through the runner.

    @ivar masterKeyPath: the master key file.
    @ivar runner: runs the blocking read.
    @ivar vaultDirectory: the key files' directory, if any (see
        L{loadMasterKey}).
    """

    _log = Logger()

    masterKeyPath: str
    runner: Any
    vaultDirectory: str | None = None
    _aead: AESGCM | None = attrs.field(default=None, init=False)

    async def _cipher(self, create: bool) -> AESGCM:
        """
        @param create: whether a missing master key may be created.
        @return: the AES-GCM cipher of the master key.
        @raise MasterKeyError: see L{loadMasterKey}; the next call tries
            again.
        """
        if self._aead is None:
            key, mode, created = await self.runner.run(loadMasterKey, self.masterKeyPath, create,
                                                       self.vaultDirectory)
            if created:
                self._log.info("created the master key {path}", path=self.masterKeyPath)
            if mode & 0o077:
                self._log.warn("the master key {path} is readable by others (mode {mode:o}); it should be 0600",
                               path=self.masterKeyPath, mode=mode)
            if self._aead is None:
                self._aead = AESGCM(key)
        return self._aead

    async def wrap(self, keyId: str, key: bytes) -> bytes:
        """
        @return: C{key} wrapped for C{keyId} (see the module docstring).
        """
        aead = await self._cipher(True)
        nonce = os.urandom(WRAP_NONCE_BYTES)
        return WRAP_MAGIC + nonce + aead.encrypt(nonce, key, _wrapAAD(keyId))

    async def unwrap(self, keyId: str, wrapped: bytes) -> bytes:
        """
        @return: the key that L{wrap} wrapped for C{keyId}.
        @raise KeyVaultError: C{wrapped} is damaged, belongs to another id
            or was wrapped under another master key.
        """
        aead = await self._cipher(False)
        head = len(WRAP_MAGIC) + WRAP_NONCE_BYTES
        if not wrapped.startswith(WRAP_MAGIC) or len(wrapped) <= head + 16:
            raise KeyVaultError(f"the wrapped key {keyId} is damaged (not in the vault's format)")
        try:
            return aead.decrypt(wrapped[len(WRAP_MAGIC):head], wrapped[head:], _wrapAAD(keyId))
        except InvalidTag:
            raise KeyVaultError(
                f"the wrapped key {keyId} does not unwrap: damaged, moved from another id,"
                " or wrapped under another master key"
            ) from None


def _writeKeyFile(directory: str, keyId: str, wrapped: bytes) -> None:
    """
    Write one wrapped key durably, creating the directory if it is
    missing.  Blocking.
    """
    _makeDirectory(directory)
    replaceFile(os.path.join(directory, keyId + KEY_FILE_SUFFIX), wrapped, 0o600)


def _firstError(failure: Failure) -> Failure:
    """
    @return: the failure inside a L{FirstError} of C{gatherResults}.
    """
    return failure.value.subFailure if failure.check(FirstError) else failure


def _readKeyFile(directory: str, keyId: str) -> bytes | None:
    """
    Read one wrapped key.  Blocking.

    @return: its bytes, or C{None} when there is no such file.
    """
    try:
        with open(os.path.join(directory, keyId + KEY_FILE_SUFFIX), "rb") as f:
            return f.read(MAX_KEY_BYTES + 64)
    except FileNotFoundError:
        return None


def _eraseKeyFile(directory: str, keyId: str) -> None:
    """
    Unlink one wrapped key and fsync the directory; a missing file is fine.
    Blocking.
    """
    try:
        os.unlink(os.path.join(directory, keyId + KEY_FILE_SUFFIX))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    syncDirectory(directory)


@implementer(IKeyVault)
@attrs.define(eq=False)
class FileKeyVault:
    """
    Message keys in files, wrapped under the local master key; see the
    module docstring.

    @ivar directory: where the key files go (C{data_dir/keys/vault}); it is
        created, mode 0700, on the first C{store}.
    @ivar masterKeyPath: the master key file (C{data_dir/keys/master.key}).
    @ivar runner: runs all file work: a L{qutemail.blocking.BlockingRunner}
        in the server, an L{qutemail.blocking.InlineRunner} in tests and the
        command-line tool.
    @ivar keyFiles: writes the files of L{addKeys} instead of the runner,
        or C{None}: its C{addKeyFiles(directory, wrapped)} returns a
        Deferred firing with what L{addKeyFiles} returns (the server's
        L{qutemail.store.deliveryprocess.DeliveryProcess}, whose system
        calls do not take the GIL from the reactor).
    """

    _log = Logger()

    directory: str
    masterKeyPath: str
    runner: Any
    keyFiles: Any = None
    _wrapper: KeyWrapper = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        """
        Share one wrapper (one master key read) across calls.
        """
        self._wrapper = KeyWrapper(self.masterKeyPath, self.runner, self.directory)

    async def _store(self, keyId: str, key: bytes) -> None:
        """
        See L{store}.
        """
        checkKeyId(keyId)
        checkKey(key)
        wrapped = await self._wrapper.wrap(keyId, key)
        await self.runner.run(_writeKeyFile, self.directory, keyId, wrapped)

    async def _fetch(self, keyId: str) -> bytes:
        """
        See L{fetch}.
        """
        checkKeyId(keyId)
        wrapped = await self.runner.run(_readKeyFile, self.directory, keyId)
        if wrapped is None:
            raise KeyGone(keyId)
        return await self._wrapper.unwrap(keyId, wrapped)

    async def _erase(self, keyId: str) -> None:
        """
        See L{erase}.
        """
        checkKeyId(keyId)
        await self.runner.run(_eraseKeyFile, self.directory, keyId)
        self._log.debug("erased key {keyId}", keyId=keyId)

    def store(self, keyId: str, key: bytes) -> Deferred:
        """
        See L{IKeyVault.store}.  Storing an id again replaces its key.

        @raise InvalidKeyId: (in the Deferred) see L{checkKeyId}.
        @raise MasterKeyError: (in the Deferred) see L{loadMasterKey}.
        @raise OSError: (in the Deferred) the key file cannot be written.
        """
        return Deferred.fromCoroutine(self._store(keyId, key))

    async def _addKeys(self, keys: list[tuple[str, bytes]]) -> list[BaseException | None]:
        """
        See L{addKeys}.
        """
        for keyId, key in keys:
            checkKeyId(keyId)
            checkKey(key)
        wrapped = [(keyId, await self._wrapper.wrap(keyId, key)) for keyId, key in keys]
        # A large batch is written by several jobs at once (threads of the
        # runner, or of the delivery process).
        chunks = [wrapped[i:i + KEYS_PER_JOB] for i in range(0, len(wrapped), KEYS_PER_JOB)]
        if self.keyFiles is not None:
            jobs = [self.keyFiles.addKeyFiles(self.directory, chunk) for chunk in chunks]
        else:
            jobs = [self.runner.run(addKeyFiles, self.directory, chunk) for chunk in chunks]
        results = await gatherResults(jobs, consumeErrors=True).addErrback(_firstError)
        return [outcome for chunk in results for outcome in chunk]

    def addKeys(self, keys: list[tuple[str, bytes]]) -> Deferred:
        """
        Store fresh keys, never replacing one: one job and one sync for up
        to L{KEYS_PER_JOB} of them, several such jobs at once for more (see
        the module docstring).

        @param keys: C{(keyId, key)} pairs, each id new.
        @return: a Deferred firing, once every key that could be stored is
            durable, with one entry per key, in order: C{None} for a key
            stored, L{KeyExists} for an id the vault already holds (whose
            key is kept), or the C{OSError} its file failed with.
        @raise InvalidKeyId: (in the Deferred) a key id is not of the safe
            form; nothing is stored.
        @raise TypeError: (in the Deferred) a key is not C{bytes}; nothing
            is stored.
        @raise ValueError: (in the Deferred) a key is empty or longer than
            L{MAX_KEY_BYTES}; nothing is stored.
        @raise MasterKeyError: (in the Deferred) see L{loadMasterKey};
            nothing is stored.
        @raise OSError: (in the Deferred) the vault directory cannot be
            created.
        """
        return Deferred.fromCoroutine(self._addKeys(list(keys)))

    def fetch(self, keyId: str) -> Deferred:
        """
        See L{IKeyVault.fetch}.

        @raise InvalidKeyId: (in the Deferred) see L{checkKeyId}.
        @raise KeyVaultError: (in the Deferred) the key file is damaged, or
            the master key cannot be had.
        """
        return Deferred.fromCoroutine(self._fetch(keyId))

    def erase(self, keyId: str) -> Deferred:
        """
        See L{IKeyVault.erase}.

        @raise InvalidKeyId: (in the Deferred) see L{checkKeyId}.
        """
        return Deferred.fromCoroutine(self._erase(keyId))
