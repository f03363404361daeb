# -*- test-case-name: tests.test_interfaces -*-
"""
In-memory implementations of the interfaces, for unit tests.

Nothing here touches the disk or a thread; every method returns an
already-fired Deferred.
"""

import hmac

import attrs
from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from qutemail.interfaces import Account, IKeyVault, IUserDirectory, KeyGone, NoSuchUser, UserExists
from qutemail.qkd.vault import checkKey, checkKeyId


@implementer(IUserDirectory)
@attrs.define
class MemoryUserDirectory:
    """
    Accounts in a dict.  Passwords are kept as given: test use only.
    """

    _accounts: dict[str, Account] = attrs.field(factory=dict)
    _passwords: dict[str, bytes] = attrs.field(factory=dict)

    def getAccount(self, address: str):
        """
        See L{IUserDirectory.getAccount}.
        """
        return succeed(self._accounts.get(address))

    def checkPassword(self, address: str, password: bytes):
        """
        See L{IUserDirectory.checkPassword}.
        """
        stored = self._passwords.get(address, b"\0" * 16)
        ok = hmac.compare_digest(stored, password) and address in self._accounts
        return succeed(self._accounts[address] if ok else None)

    def addUser(self, address: str, password: bytes):
        """
        See L{IUserDirectory.addUser}.
        """
        if address in self._accounts:
            return fail(UserExists(address))
        self._accounts[address] = Account(address)
        self._passwords[address] = password
        return succeed(self._accounts[address])

    def setPassword(self, address: str, password: bytes):
        """
        See L{IUserDirectory.setPassword}.
        """
        if address not in self._accounts:
            return fail(NoSuchUser(address))
        self._passwords[address] = password
        return succeed(None)

    def setQuota(self, address: str, quotaBytes: int | None):
        """
        See L{IUserDirectory.setQuota}.
        """
        if address not in self._accounts:
            return fail(NoSuchUser(address))
        self._accounts[address] = attrs.evolve(self._accounts[address], quotaBytes=quotaBytes)
        return succeed(self._accounts[address])

    def removeUser(self, address: str):
        """
        See L{IUserDirectory.removeUser}.
        """
        if address not in self._accounts:
            return fail(NoSuchUser(address))
        del self._accounts[address]
        del self._passwords[address]
        return succeed(None)

    def listAccounts(self):
        """
        See L{IUserDirectory.listAccounts}.
        """
        return succeed(sorted(self._accounts.values(), key=lambda a: a.address))


@implementer(IKeyVault)
@attrs.define
class MemoryKeyVault:
    """
    Message keys in a dict, unwrapped: test use only.  Key ids and keys are
    checked as the real vaults check them.
    """

    _keys: dict[str, bytes] = attrs.field(factory=dict)

    def store(self, keyId: str, key: bytes):
        """
        See L{IKeyVault.store}.

        @raise qutemail.qkd.vault.InvalidKeyId: (in the Deferred) see
            L{qutemail.qkd.vault.checkKeyId}.
        """
        try:
            self._keys[checkKeyId(keyId)] = checkKey(key)
        except (TypeError, ValueError) as e:
            return fail(e)
        return succeed(None)

    def fetch(self, keyId: str):
        """
        See L{IKeyVault.fetch}.
        """
        try:
            checkKeyId(keyId)
        except ValueError as e:
            return fail(e)
        if keyId not in self._keys:
            return fail(KeyGone(keyId))
        return succeed(self._keys[keyId])

    def erase(self, keyId: str):
        """
        See L{IKeyVault.erase}.
        """
        try:
            checkKeyId(keyId)
        except ValueError as e:
            return fail(e)
        self._keys.pop(keyId, None)
        return succeed(None)
