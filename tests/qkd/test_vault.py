# -*- test-case-name: tests.qkd.test_vault -*-
"""
Tests for L{qutemail.qkd.vault} and L{qutemail.backends.redisvault}: the
master key file, the key files, id checks, and nodes sharing Redis.  The
interface contract is in L{tests.test_interfaces}.
"""

import base64
import errno
import os
import stat
import uuid

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.backends.redislimiter import connect
from qutemail.backends.redisvault import KEY_PREFIX, RedisKeyVault
from qutemail.blocking import InlineRunner
from qutemail.interfaces import KeyGone
from qutemail import durable
from qutemail.qkd import keyfiles as keyfilesModule
from qutemail.qkd.keyfiles import KeyExists, addKeyFiles
from qutemail.qkd.vault import (
    KEYS_PER_JOB, MASTER_KEY_BYTES, FileKeyVault, InvalidKeyId, KeyVaultError, MasterKeyError, checkKeyId,
    loadMasterKey,
)
from tests.backends.test_redislimiter import startRedis
from tests.integration.support import freePort


class _CountingRunner(InlineRunner):
    """
    An inline runner that records which functions it ran.
    """

    def __init__(self) -> None:
        """
        Start with no calls.
        """
        self.calls: list[str] = []

    def run(self, f, *args, **kwargs):
        """
        Record C{f}'s name, then run it inline.
        """
        self.calls.append(f.__name__)
        return InlineRunner.run(self, f, *args, **kwargs)


class FileKeyVaultTests(TestCase):
    """
    L{FileKeyVault} on a temporary directory, running inline.
    """

    def setUp(self):
        """
        Paths as the server lays them out: C{keys/vault/} and
        C{keys/master.key}, neither existing yet.
        """
        base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(base, "keys", "vault")
        self.masterPath = os.path.join(base, "keys", "master.key")

    def vault(self, runner=None) -> FileKeyVault:
        """
        @return: a vault on this test's paths.
        """
        return FileKeyVault(self.directory, self.masterPath, runner or InlineRunner())

    async def test_masterKeyCreated(self):
        """
        The first store creates the master key: 32 bytes, mode 0600, logged
        once.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await self.vault().store(str(uuid.uuid4()), os.urandom(32))
        st = os.stat(self.masterPath)
        self.assertEqual(st.st_size, MASTER_KEY_BYTES)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual([e["path"] for e in events if "created the master key" in e["log_format"]],
                         [self.masterPath])
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.masterPath))), ["master.key", "vault"])
        for directory in (self.directory, os.path.dirname(self.directory)):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)

    async def test_reusedAcrossInstances(self):
        """
        A key stored by one vault is fetched by a new one on the same
        paths (as after a restart); the master key is not replaced.
        """
        keyId, key = str(uuid.uuid4()), os.urandom(32)
        await self.vault().store(keyId, key)
        with open(self.masterPath, "rb") as f:
            master = f.read()
        self.assertEqual(await self.vault().fetch(keyId), key)
        with open(self.masterPath, "rb") as f:
            self.assertEqual(f.read(), master)

    def test_existingNeverOverwritten(self):
        """
        L{loadMasterKey} returns an existing master key as it is.
        """
        os.makedirs(os.path.dirname(self.masterPath))
        with open(self.masterPath, "wb") as f:
            f.write(b"m" * 32)
        os.chmod(self.masterPath, 0o600)
        self.assertEqual(loadMasterKey(self.masterPath), (b"m" * 32, 0o600, False))
        self.assertEqual(loadMasterKey(self.masterPath), (b"m" * 32, 0o600, False))

    async def test_masterKeyReadOnce(self):
        """
        Many stores read the master key once: each later store is one file
        write through the runner.
        """
        runner = _CountingRunner()
        vault = self.vault(runner)
        for _ in range(5):
            await vault.store(str(uuid.uuid4()), os.urandom(32))
        self.assertEqual(runner.calls, ["loadMasterKey"] + ["_writeKeyFile"] * 5)

    async def test_wrongLength(self):
        """
        A master key file of the wrong length stops the vault with a clear
        L{MasterKeyError} naming the file, and is left alone.
        """
        os.makedirs(os.path.dirname(self.masterPath))
        for content, said in ((b"short", "it holds 5"), (b"x" * 33, "it holds more")):
            with open(self.masterPath, "wb") as f:
                f.write(content)
            with self.assertRaises(MasterKeyError) as caught:
                await self.vault().store(str(uuid.uuid4()), os.urandom(32))
            self.assertIn(self.masterPath, str(caught.exception))
            self.assertIn("exactly 32 bytes", str(caught.exception))
            self.assertIn(said, str(caught.exception))
            with open(self.masterPath, "rb") as f:
                self.assertEqual(f.read(), content)

    async def test_unreadable(self):
        """
        A master key path that cannot be read (here a directory) gives a
        L{MasterKeyError} naming it.
        """
        os.makedirs(self.masterPath)
        with self.assertRaises(MasterKeyError) as caught:
            await self.vault().store(str(uuid.uuid4()), os.urandom(32))
        self.assertIn(f"cannot read the master key {self.masterPath}", str(caught.exception))

    async def test_craftedIdRefused(self):
        """
        An id like C{../x} is refused before any file is touched.
        """
        runner = _CountingRunner()
        for keyId in ("../x", "../../etc/passwd", "/abs", "a/../b", ".hidden", "x" * 129, "é"):
            with self.assertRaises(InvalidKeyId):
                await self.vault(runner).store(keyId, b"k" * 32)
            with self.assertRaises(InvalidKeyId):
                await self.vault(runner).fetch(keyId)
            with self.assertRaises(InvalidKeyId):
                await self.vault(runner).erase(keyId)
        self.assertEqual(runner.calls, [])
        self.assertFalse(os.path.exists(os.path.dirname(self.masterPath)))

    def test_checkKeyId(self):
        """
        UUIDs and simple tokens pass L{checkKeyId} unchanged; anything else
        raises L{InvalidKeyId}, a L{ValueError}.
        """
        for keyId in (str(uuid.uuid4()), str(uuid.uuid4()).upper(), "a", "key_1-2", "x" * 128):
            self.assertEqual(checkKeyId(keyId), keyId)
        for keyId in ("", "-a", "_a", "a.b", "a b", "a\n", 1, None, b"abc"):
            self.assertRaises(ValueError, checkKeyId, keyId)

    async def test_wrappedOnDisk(self):
        """
        The key file is mode 0600, named after the id, and does not hold
        the raw key.
        """
        keyId, key = str(uuid.uuid4()), os.urandom(32)
        await self.vault().store(keyId, key)
        path = os.path.join(self.directory, keyId + ".key")
        with open(path, "rb") as f:
            data = f.read()
        self.assertNotIn(key, data)
        self.assertNotIn(key[:8], data)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), [keyId + ".key"])

    async def test_boundToId(self):
        """
        A key file copied to another id does not unwrap there.
        """
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        await self.vault().store(a, os.urandom(32))
        os.link(os.path.join(self.directory, a + ".key"), os.path.join(self.directory, b + ".key"))
        with self.assertRaises(KeyVaultError) as caught:
            await self.vault().fetch(b)
        self.assertIn("does not unwrap", str(caught.exception))

    async def test_lostMasterKey(self):
        """
        A master key that is gone while the vault holds keys is not
        replaced: fetching and storing fail with L{MasterKeyError}.
        """
        keyId = str(uuid.uuid4())
        await self.vault().store(keyId, os.urandom(32))
        os.unlink(self.masterPath)
        for attempt in (lambda v: v.fetch(keyId), lambda v: v.store(str(uuid.uuid4()), os.urandom(32))):
            with self.assertRaises(MasterKeyError) as caught:
                await attempt(self.vault())
            self.assertEqual(str(caught.exception), f"the master key {self.masterPath} is missing but "
                                                    f"{self.directory} holds keys wrapped under it; restore it")
        self.assertFalse(os.path.exists(self.masterPath))

    async def test_otherMasterKey(self):
        """
        Keys stored under one master key do not unwrap under another, and
        a damaged key file is reported, not returned.
        """
        keyId = str(uuid.uuid4())
        await self.vault().store(keyId, os.urandom(32))
        with open(self.masterPath, "wb") as f:
            f.write(os.urandom(32))
        with self.assertRaises(KeyVaultError) as caught:
            await self.vault().fetch(keyId)
        self.assertIn("does not unwrap", str(caught.exception))
        with open(os.path.join(self.directory, keyId + ".key"), "wb") as f:
            f.write(b"garbage")
        with self.assertRaises(KeyVaultError) as caught:
            await self.vault().fetch(keyId)
        self.assertIn("damaged", str(caught.exception))

    async def test_eraseRemovesFile(self):
        """
        C{erase} removes the key file; a later fetch fails with
        L{KeyGone}.
        """
        keyId = str(uuid.uuid4())
        vault = self.vault()
        await vault.store(keyId, os.urandom(32))
        await vault.erase(keyId)
        self.assertEqual(os.listdir(self.directory), [])
        with self.assertRaises(KeyGone):
            await vault.fetch(keyId)

    async def test_badKey(self):
        """
        A key that is not bytes, or is empty, is refused.
        """
        with self.assertRaises(TypeError):
            await self.vault().store(str(uuid.uuid4()), "text")
        with self.assertRaises(ValueError):
            await self.vault().store(str(uuid.uuid4()), b"")

    async def test_addKeys(self):
        """
        C{addKeys} stores fresh keys with one worker-thread job and one
        C{syncfs} for all of them; each is wrapped on disk, mode 0600, and
        fetched back as stored.
        """
        runner = _CountingRunner()
        synced = self.countSyncs()
        vault = self.vault(runner)
        keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(4)]
        self.assertEqual(await vault.addKeys(keys), [None] * 4)
        self.assertEqual(runner.calls, ["loadMasterKey", "addKeyFiles"])
        self.assertEqual(synced, [self.directory])
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(k + ".key" for k, _ in keys))
        for keyId, key in keys:
            path = os.path.join(self.directory, keyId + ".key")
            with open(path, "rb") as f:
                self.assertNotIn(key, f.read())
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            self.assertEqual(await vault.fetch(keyId), key)

    async def test_addKeysSeveralJobs(self):
        """
        More than L{KEYS_PER_JOB} keys are written by several jobs, each
        syncing once; the results keep the keys' order.
        """
        runner = _CountingRunner()
        synced = self.countSyncs()
        vault = self.vault(runner)
        held = str(uuid.uuid4())
        await vault.store(held, os.urandom(32))
        del runner.calls[:]
        keys = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(2 * KEYS_PER_JOB + 1)]
        keys[KEYS_PER_JOB + 3] = (held, os.urandom(32))
        results = await vault.addKeys(keys)
        self.assertEqual(runner.calls, ["addKeyFiles"] * 3)
        self.assertEqual(len(synced), 3)
        self.assertEqual([i for i, r in enumerate(results) if r is not None], [KEYS_PER_JOB + 3])
        self.assertIsInstance(results[KEYS_PER_JOB + 3], KeyExists)
        for keyId, key in keys[:KEYS_PER_JOB + 3] + keys[KEYS_PER_JOB + 4:]:
            self.assertEqual(await vault.fetch(keyId), key)

    async def test_addKeysNeverReplaces(self):
        """
        An id the vault already holds is refused with L{KeyExists} and its
        key is kept; the other keys of the call are stored.
        """
        vault = self.vault()
        held, old = str(uuid.uuid4()), os.urandom(32)
        await vault.store(held, old)
        fresh, key = str(uuid.uuid4()), os.urandom(32)
        [first, second] = await vault.addKeys([(held, os.urandom(32)), (fresh, key)])
        self.assertIsInstance(first, KeyExists)
        self.assertIsInstance(first, KeyVaultError)
        self.assertIn(held, str(first))
        self.assertIsNone(second)
        self.assertEqual(await vault.fetch(held), old)
        self.assertEqual(await vault.fetch(fresh), key)

    async def test_addKeysWriteFails(self):
        """
        A key whose file cannot be written gets its C{OSError} and leaves
        no file; the others are stored.  A failed sync fails every key of
        the call and removes their files.
        """
        vault = self.vault()
        await vault.store(str(uuid.uuid4()), os.urandom(32))
        bad, good = str(uuid.uuid4()), str(uuid.uuid4())
        realWriteAll = keyfilesModule.writeAll
        calls = []

        def writeAll(fd, data):
            calls.append(fd)
            if len(calls) == 1:
                raise OSError(errno.EIO, "I/O error")
            realWriteAll(fd, data)

        self.patch(keyfilesModule, "writeAll", writeAll)
        [first, second] = await vault.addKeys([(bad, os.urandom(32)), (good, os.urandom(32))])
        self.assertEqual(first.errno, errno.EIO)
        self.assertIsNone(second)
        self.assertFalse(os.path.exists(os.path.join(self.directory, bad + ".key")))
        self.assertTrue(os.path.exists(os.path.join(self.directory, good + ".key")))

        def syncFileSystem(fd):
            raise OSError(errno.EIO, "I/O error")

        self.patch(keyfilesModule, "syncFileSystem", syncFileSystem)
        more = [str(uuid.uuid4()), str(uuid.uuid4())]
        results = await vault.addKeys([(keyId, os.urandom(32)) for keyId in more])
        self.assertEqual([r.errno for r in results], [errno.EIO, errno.EIO])
        for keyId in more:
            self.assertFalse(os.path.exists(os.path.join(self.directory, keyId + ".key")))

    def countSyncs(self) -> list[str]:
        """
        Have the vault use C{syncfs} (made, and recorded) on whatever file
        system the test runs on.

        @return: the list that gets, per call, the directory the file
            descriptor is open on.
        """
        synced: list[str] = []
        realSync = keyfilesModule.syncFileSystem
        # Whatever file system the test runs on.
        self.patch(durable, "canSyncFileSystem", lambda path=None: True)

        def syncFileSystem(fd):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            realSync(fd)

        self.patch(keyfilesModule, "syncFileSystem", syncFileSystem)
        return synced

    def test_addKeyFilesOneByOne(self):
        """
        Where C{syncfs} is not to be had, each key file is fsynced and then
        the directory, once; a failed directory sync fails every key of
        the call and removes their files.
        """
        synced, fsynced = [], []
        realFsync = os.fsync
        self.assertEqual(addKeyFiles(self.directory, []), [])

        def fsync(fd):
            fsynced.append(fd)
            realFsync(fd)

        self.patch(keyfilesModule, "syncDirectory", synced.append)
        self.patch(keyfilesModule, "syncFileSystem", lambda fd: self.fail("syncfs used"))
        self.patch(keyfilesModule.os, "fsync", fsync)
        keys = [(str(uuid.uuid4()), b"w" * 60) for _ in range(3)]
        self.assertEqual(addKeyFiles(self.directory, keys, wholeSync=False), [None] * 3)
        self.assertEqual((len(fsynced), synced), (3, [self.directory]))
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(k + ".key" for k, _ in keys))

        def broken(path):
            raise OSError(errno.EIO, "I/O error")

        self.patch(keyfilesModule, "syncDirectory", broken)
        more = [(str(uuid.uuid4()), b"w" * 60) for _ in range(2)]
        self.assertEqual([r.errno for r in addKeyFiles(self.directory, more, wholeSync=False)], [errno.EIO] * 2)
        self.assertEqual(len(os.listdir(self.directory)), 3)

    async def test_addKeysChecked(self):
        """
        A crafted id or a key that is not one fails the whole call before
        any file is touched.
        """
        runner = _CountingRunner()
        with self.assertRaises(InvalidKeyId):
            await self.vault(runner).addKeys([(str(uuid.uuid4()), os.urandom(32)), ("../x", os.urandom(32))])
        with self.assertRaises(ValueError):
            await self.vault(runner).addKeys([(str(uuid.uuid4()), b"")])
        self.assertEqual(runner.calls, [])
        self.assertFalse(os.path.exists(os.path.dirname(self.masterPath)))


class RedisKeyVaultTests(TestCase):
    """
    L{RedisKeyVault} against a real redis-server on a free loopback port:
    nodes share keys through it when they share the master key file.
    """

    def vault(self, port: int, masterPath: str, timeoutSeconds: float = 2.0) -> RedisKeyVault:
        """
        @return: a vault (one node) on C{port}, disconnected after the test.
        """
        vault = RedisKeyVault(connect(f"redis://127.0.0.1:{port}/0"), reactor, masterPath, InlineRunner(),
                              timeoutSeconds)
        self.addCleanup(vault.disconnect)
        return vault

    async def test_sharedBetweenNodes(self):
        """
        A key stored by one node is fetched by another with a copy of the
        same master key; Redis holds it wrapped, never in the clear.
        """
        port = startRedis(self)
        base = os.path.abspath(self.mktemp())
        one, two = os.path.join(base, "one", "master.key"), os.path.join(base, "two", "master.key")
        keyId, key = str(uuid.uuid4()), os.urandom(32)
        await self.vault(port, one).store(keyId, key)
        os.makedirs(os.path.dirname(two))
        with open(one, "rb") as source, open(two, "wb") as copy:
            copy.write(source.read())
        node = self.vault(port, two)
        self.assertEqual(await node.fetch(keyId), key)
        stored = await node.connection.get(KEY_PREFIX + keyId)
        self.assertNotIn(key, base64.b64decode(stored))

    async def test_otherMasterKey(self):
        """
        A node with another master key cannot unwrap the shared keys.
        """
        port = startRedis(self)
        base = os.path.abspath(self.mktemp())
        keyId = str(uuid.uuid4())
        await self.vault(port, os.path.join(base, "one.key")).store(keyId, os.urandom(32))
        with open(os.path.join(base, "two.key"), "wb") as f:
            f.write(os.urandom(32))
        with self.assertRaises(KeyVaultError) as caught:
            await self.vault(port, os.path.join(base, "two.key")).fetch(keyId)
        self.assertIn("does not unwrap", str(caught.exception))

    async def test_redisDown(self):
        """
        With Redis unreachable, calls fail with L{KeyVaultError} after the
        timeout instead of hanging.
        """
        vault = self.vault(freePort(), os.path.join(os.path.abspath(self.mktemp()), "master.key"), 0.3)
        with self.assertRaises(KeyVaultError) as caught:
            await vault.store(str(uuid.uuid4()), os.urandom(32))
        self.assertIn("the Redis key vault failed (set)", str(caught.exception))
