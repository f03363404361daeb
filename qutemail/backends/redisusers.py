# -*- test-case-name: tests.test_interfaces,tests.backends.test_redisusers -*-
"""
The user directory in Redis (C{[redis] url}), shared by every node: a
user added, changed or removed on one is so on all at once.

Each account is a Redis hash, C{qutemail:user:<address>}, with the fields
C{password} (the scrypt hash of L{qutemail.backends.passwordhash}, made in
a worker thread), C{quota} (bytes; empty for the configured default) and
C{enabled} (C{1}); the set C{qutemail:users} lists the addresses.  A change
to an account that must exist runs as one Lua script, so a concurrent
removal cannot be undone by it.

One class, two ways to reach Redis: the server's txredisapi connection
(L{txredisCaller}, with a timeout), and the command line's blocking calls
(L{blockingCaller}), which runs no reactor.
"""

from typing import Any, Callable
from urllib.parse import urlsplit

import attrs
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.backends.passwordhash import DEFAULT_WORK_FACTOR, hashInThread, verifyInThread
from qutemail.backends.redisblocking import RedisReadError, askRedis
from qutemail.backends.redislimiter import REDIS_TIMEOUT_SECONDS
from qutemail.backends.userrecords import checkAddress, checkQuota
from qutemail.interfaces import Account, IUserDirectory, NoSuchUser, UserDirectoryUnavailable, UserExists

USER_PREFIX = "qutemail:user:"
USERS_SET = "qutemail:users"
# Set one field of a hash that exists; 0 when it does not.
_SET_IF_EXISTS = ("if redis.call('exists', KEYS[1]) == 1 then "
                  "redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return 1 else return 0 end")


def txredisCaller(connection: Any, clock: Any, timeoutSeconds: float = REDIS_TIMEOUT_SECONDS) -> Callable:
    """
    @param connection: a txredisapi connection
        (L{qutemail.backends.redislimiter.connect}).
    @return: C{call(*args)}: one command, a Deferred of its reply, failing
        with L{UserDirectoryUnavailable}.
    """

    def call(*args: Any) -> Deferred:
        d = connection.execute_command(*args)
        d.addTimeout(timeoutSeconds, clock)

        def unavailable(failure: Any) -> None:
            failure.trap(txredisapi.RedisError, ConnectionError, ConnectError, TimeoutError, CancelledError)
            reason = (f"no answer within {timeoutSeconds:g}s" if failure.check(TimeoutError, CancelledError)
                      else failure.getErrorMessage() or failure.type.__name__)
            raise UserDirectoryUnavailable(f"the Redis user directory failed ({args[0]}): {reason}")

        return d.addErrback(unavailable)

    return call


def blockingCaller(url: str, timeoutSeconds: float = REDIS_TIMEOUT_SECONDS) -> Callable:
    """
    @param url: C{[redis] url}.
    @return: C{call(*args)} for the command line: the command runs at
        once, and the Deferred has fired when it returns.
    """
    parts = urlsplit(url)

    def call(*args: Any) -> Deferred:
        encoded = [a if isinstance(a, bytes) else str(a).encode("utf-8") for a in args]
        try:
            return succeed(askRedis(parts, timeoutSeconds, encoded)[0])
        except (OSError, RedisReadError) as e:
            return fail(UserDirectoryUnavailable(f"the Redis user directory failed ({args[0]}): "
                                                 f"{getattr(e, 'strerror', None) or e}"))

    return call


def _text(value: Any) -> str:
    """
    @return: a reply value as text (txredisapi decodes, and turns numbers
        into ints; the blocking calls give bytes).
    """
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _fields(reply: Any) -> dict[str, str]:
    """
    @return: an C{HGETALL} reply as a dict of text.
    """
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    reply = reply or []
    return {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


def _account(address: str, fields: dict[str, str]) -> Account | None:
    """
    @return: the account a hash describes, or C{None} when there is none
        (or it is disabled).
    """
    if "password" not in fields or fields.get("enabled", "1") != "1":
        return None
    quota = fields.get("quota", "")
    return Account(address, int(quota) if quota.isdigit() else None)


@implementer(IUserDirectory)
@attrs.define(eq=False)
class RedisUserDirectory:
    """
    Accounts in Redis; see the module docstring.

    @ivar call: runs one Redis command (L{txredisCaller} or
        L{blockingCaller}).
    @ivar runner: runs the scrypt work (the server's password threads, or
        inline).
    @ivar workFactor: the scrypt cost of new hashes.
    """

    _log = Logger()

    call: Callable[..., Deferred]
    runner: Any
    workFactor: int = DEFAULT_WORK_FACTOR

    def getAccount(self, address: str) -> Deferred:
        """
        See L{IUserDirectory.getAccount}.
        """
        return self.call("HGETALL", USER_PREFIX + address).addCallback(lambda reply: _account(address,
                                                                                               _fields(reply)))

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
        fields = _fields(await self.call("HGETALL", USER_PREFIX + address))
        account = _account(address, fields)
        passwordHash = None if account is None else fields["password"]
        if not await verifyInThread(self.runner, passwordHash, password, self.workFactor):
            return None
        return account

    def addUser(self, address: str, password: bytes) -> Deferred:
        """
        See L{IUserDirectory.addUser}.

        @raise AddressInvalid: (in the Deferred) not a normalised address.
        @raise ValueError: (in the Deferred) the password is empty.
        """
        return Deferred.fromCoroutine(self._addUser(address, password))

    async def _addUser(self, address: str, password: bytes) -> Account:
        """
        See L{addUser}.
        """
        checkAddress(address)
        passwordHash = await hashInThread(self.runner, password, self.workFactor)
        if not await self._create(address, passwordHash, None):
            raise UserExists(address)
        self._log.info("added user {address}", address=address)
        return Account(address)

    def importRecord(self, address: str, passwordHash: str, quotaBytes: int | None) -> Deferred:
        """
        Copy an account from the users file (C{qutemail user import}),
        hash and all, unless Redis has it already.

        @return: a Deferred firing with C{True} when it was added, C{False}
            when the address was there (and is left as it is).
        """
        return Deferred.fromCoroutine(self._importRecord(address, passwordHash, quotaBytes))

    async def _importRecord(self, address: str, passwordHash: str, quotaBytes: int | None) -> bool:
        """
        See L{importRecord}.
        """
        return await self._create(address, passwordHash, quotaBytes)

    async def _create(self, address: str, passwordHash: str, quotaBytes: int | None) -> bool:
        """
        Make an account, unless the address has one.

        @return: whether it was made.
        """
        key = USER_PREFIX + address
        # HSETNX makes the account, or finds it there already, atomically.
        if not int(await self.call("HSETNX", key, "password", passwordHash)):
            return False
        await self.call("HSET", key, "quota", "" if quotaBytes is None else str(quotaBytes))
        await self.call("HSET", key, "enabled", "1")
        await self.call("SADD", USERS_SET, address)
        return True

    async def _setIfExists(self, address: str, field: str, value: str) -> None:
        """
        Set one field of an existing account.

        @raise NoSuchUser: there is no such account.
        """
        if not int(await self.call("EVAL", _SET_IF_EXISTS, 1, USER_PREFIX + address, field, value)):
            raise NoSuchUser(address)

    def setPassword(self, address: str, password: bytes) -> Deferred:
        """
        See L{IUserDirectory.setPassword}.
        """
        return Deferred.fromCoroutine(self._setPassword(address, password))

    async def _setPassword(self, address: str, password: bytes) -> None:
        """
        See L{setPassword}.
        """
        passwordHash = await hashInThread(self.runner, password, self.workFactor)
        await self._setIfExists(address, "password", passwordHash)
        self._log.info("changed the password of {address}", address=address)

    def setQuota(self, address: str, quotaBytes: int | None) -> Deferred:
        """
        See L{IUserDirectory.setQuota}.
        """
        return Deferred.fromCoroutine(self._setQuota(address, quotaBytes))

    async def _setQuota(self, address: str, quotaBytes: int | None) -> Account:
        """
        See L{setQuota}.
        """
        checkQuota(quotaBytes)
        await self._setIfExists(address, "quota", "" if quotaBytes is None else str(quotaBytes))
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
        removed = int(await self.call("DEL", USER_PREFIX + address))
        await self.call("SREM", USERS_SET, address)
        if not removed:
            raise NoSuchUser(address)
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
        accounts = []
        for address in sorted(_text(a) for a in (await self.call("SMEMBERS", USERS_SET) or ())):
            account = await self.getAccount(address)
            if account is not None:
                accounts.append(account)
        return accounts
