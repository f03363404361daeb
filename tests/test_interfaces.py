"""
Conformance tests: every backend of an interface passes the same contract.

The contracts of L{IUserDirectory} and L{IKeyVault} are here.  Those of the
other interfaces are in L{tests.contracts}, one module per interface:
C{test_ratelimiter} (IRateLimiter), C{test_messagestore} (IMessageStore),
C{test_qkdkeysource} (IQKDKeySource) and C{test_dkimkeys} (IDKIMKeys).
"""

import os
import uuid

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryKeyVault, MemoryUserDirectory
from qutemail.backends.redislimiter import connect
from qutemail.backends.redisusers import RedisUserDirectory, blockingCaller, txredisCaller
from qutemail.backends.redisvault import RedisKeyVault
from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.interfaces import (
    Account, IKeyVault, IUserDirectory, KeyGone, NoSuchUser, UserExists,
)
from qutemail.qkd.vault import FileKeyVault, InvalidKeyId
from tests.backends.test_redislimiter import startRedis


class UserDirectoryContractMixin:
    """
    The behaviour every L{IUserDirectory} has.  Subclasses provide
    C{makeDirectory()}.
    """

    def setUp(self):
        """
        A fresh, empty directory.
        """
        self.directory = self.makeDirectory()

    def test_provides(self):
        """
        The backend provides the interface.
        """
        self.assertTrue(verifyObject(IUserDirectory, self.directory))

    async def test_addAndLookUp(self):
        """
        An added account is found, with the default quota; another is not.
        """
        self.assertEqual(await self.directory.addUser("bob@example.test", b"pw"), Account("bob@example.test"))
        self.assertEqual(await self.directory.getAccount("bob@example.test"), Account("bob@example.test"))
        self.assertIsNone(await self.directory.getAccount("eve@example.test"))

    async def test_duplicate(self):
        """
        Adding an existing account fails with L{UserExists}.
        """
        await self.directory.addUser("bob@example.test", b"pw")
        with self.assertRaises(UserExists):
            await self.directory.addUser("bob@example.test", b"other")

    async def test_passwords(self):
        """
        The right password gives the account; a wrong one, or an unknown
        account, gives C{None}; a changed password replaces the old one.
        """
        await self.directory.addUser("bob@example.test", b"pw")
        self.assertEqual(await self.directory.checkPassword("bob@example.test", b"pw"), Account("bob@example.test"))
        self.assertIsNone(await self.directory.checkPassword("bob@example.test", b"PW"))
        self.assertIsNone(await self.directory.checkPassword("eve@example.test", b"pw"))
        await self.directory.setPassword("bob@example.test", b"new")
        self.assertIsNone(await self.directory.checkPassword("bob@example.test", b"pw"))
        self.assertIsNotNone(await self.directory.checkPassword("bob@example.test", b"new"))

    async def test_quotaRemoveList(self):
        """
        Quotas are kept per account, accounts list sorted, removed accounts
        are gone, and changing an unknown account fails with L{NoSuchUser}
        (without making it).
        """
        for name in ("carol", "bob"):
            await self.directory.addUser(f"{name}@example.test", b"pw")
        self.assertEqual(await self.directory.setQuota("bob@example.test", 1000), Account("bob@example.test", 1000))
        self.assertEqual(await self.directory.listAccounts(),
                         [Account("bob@example.test", 1000), Account("carol@example.test")])
        await self.directory.removeUser("carol@example.test")
        self.assertIsNone(await self.directory.getAccount("carol@example.test"))
        for call in (lambda: self.directory.removeUser("carol@example.test"),
                     lambda: self.directory.setQuota("carol@example.test", 1),
                     lambda: self.directory.setPassword("carol@example.test", b"x")):
            with self.assertRaises(NoSuchUser):
                await call()
        self.assertIsNone(await self.directory.getAccount("carol@example.test"))
        self.assertEqual(await self.directory.listAccounts(), [Account("bob@example.test", 1000)])


class MemoryUserDirectoryTests(UserDirectoryContractMixin, TestCase):
    """
    The contract for the memory backend.
    """

    def makeDirectory(self):
        """
        @return: an empty L{MemoryUserDirectory}.
        """
        return MemoryUserDirectory()


class FileUserDirectoryTests(UserDirectoryContractMixin, TestCase):
    """
    The contract for the file backend.
    """

    def makeDirectory(self):
        """
        @return: a L{FileUserDirectory} on a new file, with cheap hashing.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return FileUserDirectory(os.path.join(path, "users"), InlineRunner(), Clock(), workFactor=4)


class RedisUserDirectoryTests(UserDirectoryContractMixin, TestCase):
    """
    The contract for the Redis backend as the server uses it (txredisapi),
    against a real redis-server on a free loopback port.
    """

    def makeDirectory(self):
        """
        @return: a L{RedisUserDirectory} on a fresh redis-server, with cheap
            hashing, disconnected after the test.
        """
        connection = connect(f"redis://127.0.0.1:{startRedis(self)}/0")
        self.addCleanup(connection.disconnect)
        return RedisUserDirectory(txredisCaller(connection, reactor), InlineRunner(), workFactor=4)


class BlockingRedisUserDirectoryTests(UserDirectoryContractMixin, TestCase):
    """
    The contract for the Redis backend as the command line uses it
    (blocking calls), against a real redis-server.
    """

    def makeDirectory(self):
        """
        @return: a L{RedisUserDirectory} with blocking calls.
        """
        return RedisUserDirectory(blockingCaller(f"redis://127.0.0.1:{startRedis(self)}/0"), InlineRunner(),
                                  workFactor=4)


class KeyVaultContractMixin:
    """
    The behaviour every L{IKeyVault} has.  Subclasses provide
    C{makeVault()}.
    """

    def setUp(self):
        """
        A fresh, empty vault.
        """
        self.vault = self.makeVault()

    def test_provides(self):
        """
        The backend provides the interface.
        """
        self.assertTrue(verifyObject(IKeyVault, self.vault))

    async def test_storeFetch(self):
        """
        A stored key is fetched back, byte for byte, and each id keeps its
        own key.
        """
        keys = {str(uuid.uuid4()): os.urandom(32) for _ in range(3)}
        for keyId, key in keys.items():
            self.assertIsNone(await self.vault.store(keyId, key))
        for keyId, key in keys.items():
            self.assertEqual(await self.vault.fetch(keyId), key)

    async def test_neverStored(self):
        """
        Fetching an id that was never stored fails with L{KeyGone}.
        """
        with self.assertRaises(KeyGone):
            await self.vault.fetch(str(uuid.uuid4()))

    async def test_erase(self):
        """
        After C{erase} the key is gone; other keys stay.
        """
        gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
        await self.vault.store(gone, b"g" * 32)
        await self.vault.store(kept, b"k" * 32)
        self.assertIsNone(await self.vault.erase(gone))
        with self.assertRaises(KeyGone):
            await self.vault.fetch(gone)
        self.assertEqual(await self.vault.fetch(kept), b"k" * 32)

    async def test_eraseMissing(self):
        """
        Erasing a key that is not there (never stored, or already erased)
        is not an error.
        """
        keyId = str(uuid.uuid4())
        self.assertIsNone(await self.vault.erase(keyId))
        await self.vault.store(keyId, b"x" * 32)
        await self.vault.erase(keyId)
        self.assertIsNone(await self.vault.erase(keyId))

    async def test_craftedId(self):
        """
        An id that could escape a directory or namespace is refused by
        every method with L{InvalidKeyId}.
        """
        for keyId in ("../x", "a/b", "", ".", "x\n", "*"):
            with self.assertRaises(InvalidKeyId):
                await self.vault.store(keyId, b"x" * 32)
            with self.assertRaises(InvalidKeyId):
                await self.vault.fetch(keyId)
            with self.assertRaises(InvalidKeyId):
                await self.vault.erase(keyId)


class MemoryKeyVaultTests(KeyVaultContractMixin, TestCase):
    """
    The contract for the memory backend.
    """

    def makeVault(self):
        """
        @return: an empty L{MemoryKeyVault}.
        """
        return MemoryKeyVault()


class FileKeyVaultTests(KeyVaultContractMixin, TestCase):
    """
    The contract for the file backend.
    """

    def makeVault(self):
        """
        @return: a L{FileKeyVault} in a new directory, running inline.
        """
        base = os.path.abspath(self.mktemp())
        return FileKeyVault(os.path.join(base, "keys", "vault"), os.path.join(base, "keys", "master.key"),
                            InlineRunner())


class RedisKeyVaultTests(KeyVaultContractMixin, TestCase):
    """
    The contract for the Redis backend, against a real redis-server on a
    free loopback port.
    """

    def makeVault(self):
        """
        @return: a L{RedisKeyVault} on a fresh redis-server, disconnected
            after the test.
        """
        port = startRedis(self)
        vault = RedisKeyVault(connect(f"redis://127.0.0.1:{port}/0"), reactor,
                              os.path.join(os.path.abspath(self.mktemp()), "master.key"), InlineRunner())
        self.addCleanup(vault.disconnect)
        return vault
