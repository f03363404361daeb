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

from qutemail.interfaces import Account, IUserDirectory, NoSuchUser, UserExists


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
