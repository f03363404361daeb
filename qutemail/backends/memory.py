# -*- test-case-name: tests.test_interfaces,tests.contracts -*-
"""
In-memory implementations of the interfaces, for unit tests.

Nothing here touches a thread; every method returns an already-fired
Deferred.  Nothing touches the disk either, except that
L{MemoryMessageStore} reads a spilled message's body from its spill file.
"""

import hmac
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from qutemail.interfaces import (
    Account, IDKIMKeys, IKeyVault, IMessageStore, IRelayQueue, IUserDirectory, KeyGone, NoSuchUser, UserExists,
)
from qutemail.message import QueueEntry, SpooledMessage, dueEntries
from qutemail.qkd.vault import checkKey, checkKeyId
from qutemail.replies import MAILBOX_FULL, ReplyError


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


@implementer(IMessageStore)
@attrs.define
class MemoryMessageStore:
    """
    Mailboxes in a dict: test use only.  Each copy is stored as its body
    alone (no C{Return-Path} or added header fields), and usage and quota
    count those bytes.

    @ivar defaultQuotaBytes: the quota of accounts without their own (0:
        unlimited), as L{qutemail.store.maildir.MaildirStore} takes it.
    @ivar mailboxes: each account's INBOX (by address): stored ids to the
        bodies, in delivery order.
    """

    defaultQuotaBytes: int = 0
    mailboxes: dict[str, dict[str, bytes]] = attrs.field(factory=dict)

    def quotaOf(self, account: Account) -> int:
        """
        @return: the account's quota in bytes (0: unlimited).
        """
        return self.defaultQuotaBytes if account.quotaBytes is None else account.quotaBytes

    def deliver(self, message: SpooledMessage, account: Account, index: int = 0, checkExisting: bool = False):
        """
        See L{IMessageStore.deliver}.

        The stored id is a function of the queue entry and C{index} alone,
        as the Maildir store's file name is, so C{checkExisting} finds an
        earlier copy even when the mailbox has filled up since.  A spilled
        message's body is read from its spill file at once.
        """
        mailbox = self.mailboxes.setdefault(account.address, {})
        storedId = f"{message.queueId}.R{index}"
        if checkExisting and storedId in mailbox:
            return succeed(storedId)
        if message.inline is not None:
            body = message.inline
        else:
            try:
                with message.openBody() as f:
                    body = f.read()
            except OSError as e:
                return fail(e)
        quota = self.quotaOf(account)
        if quota and sum(map(len, mailbox.values())) + len(body) > quota:
            return fail(ReplyError(MAILBOX_FULL))
        mailbox[storedId] = body
        return succeed(storedId)

    def usage(self, account: Account):
        """
        See L{IMessageStore.usage}.
        """
        mailbox = self.mailboxes.get(account.address, {})
        return succeed((sum(map(len, mailbox.values())), len(mailbox)))

    def isFull(self, account: Account, extraBytes: int = 0):
        """
        Whether a message of C{extraBytes} would exceed the account's quota,
        as L{qutemail.store.maildir.MaildirStore.isFull} answers it (the
        recipient policy asks this at RCPT).

        @return: a Deferred firing with a bool.
        """
        quota = self.quotaOf(account)
        if not quota:
            return succeed(False)
        used = sum(map(len, self.mailboxes.get(account.address, {}).values()))
        return succeed(used >= quota or used + extraBytes > quota)


def _byDomain(keys: Iterable[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """
    Index signing keys by their domain.

    @param keys: L{qutemail.pipeline.dkim.SigningKey}s, or a mapping whose
        values are.
    @return: each key by its C{domain}.
    """
    if isinstance(keys, Mapping):
        keys = keys.values()
    return {key.domain: key for key in keys}


@implementer(IDKIMKeys)
@attrs.define
class MemoryDKIMKeys:
    """
    DKIM signing keys in a dict: each domain signs with its own key.

    @ivar keys: the L{qutemail.pipeline.dkim.SigningKey}s by signing
        domain; built from any iterable of them (or a mapping of them),
        each filed under its own C{domain}.
    """

    keys: dict[str, Any] = attrs.field(factory=dict, converter=_byDomain)

    def keyFor(self, domain: str):
        """
        See L{IDKIMKeys.keyFor}.
        """
        return succeed(self.keys.get(domain))


@implementer(IRelayQueue)
@attrs.define
class MemoryRelayQueue:
    """
    The relay queue in a dict.  Entries keep the message as given (a
    body inline or in its spill file).

    @ivar entries: the entries by queue id.
    """

    entries: dict[str, QueueEntry] = attrs.field(factory=dict)
    _subscribers: list = attrs.field(factory=list)

    def add(self, message: SpooledMessage, recipients: list, dkimHeader: str = ""):
        """
        See L{IRelayQueue.add}.
        """
        entry = self.entries.setdefault(message.queueId, QueueEntry(message, list(recipients), dkimHeader))
        for callback in self._subscribers:
            callback(entry)
        return succeed(entry)

    def update(self, entry: QueueEntry):
        """
        See L{IRelayQueue.update}.
        """
        if self.entries.get(entry.queueId) is entry and not entry.pending():
            del self.entries[entry.queueId]
        return succeed(None)

    def remove(self, queueId: str):
        """
        See L{IRelayQueue.remove}.
        """
        return succeed(self.entries.pop(queueId, None) is not None)

    def get(self, queueId: str):
        """
        See L{IRelayQueue.get}.
        """
        return succeed(self.entries.get(queueId))

    def refresh(self):
        """
        See L{IRelayQueue.refresh}: nobody else adds to a dict.
        """
        return succeed(0)

    def due(self, now: float, limit: int, busy: Any = ()):
        """
        See L{IRelayQueue.due}.
        """
        return succeed(dueEntries(self.entries.values(), now, limit, busy))

    def waiting(self):
        """
        See L{IRelayQueue.waiting}.
        """
        return succeed([e for e in self.entries.values() if e.pending()])

    def subscribe(self, callback: Any) -> None:
        """
        See L{IRelayQueue.subscribe}.
        """
        self._subscribers.append(callback)
