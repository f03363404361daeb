# -*- test-case-name: tests.test_interfaces,tests.backends.test_redisvault,tests.backends.test_redissentinel -*-
"""
L{RedisKeyVault}: the key vault shared by several nodes through Redis
(C{[redis] url}), with txredisapi.

Each message key is wrapped exactly as L{qutemail.qkd.vault.FileKeyVault}
wraps it (AES-256-GCM under the local master key, bound to its id; see
L{qutemail.qkd.vault.KeyWrapper}) and kept, base64, under the Redis key
C{qutemail:vault:<keyId>}.  Redis never sees a key in the clear, so a copy
of the Redis data alone reads no mail; the price is that B{every node needs
the same master key file}: copy C{data_dir/keys/master.key} (mode 0600) to
each node before it first starts, or the first node to start creates one
that the others cannot unwrap with.

C{store} fires once Redis has acknowledged the C{SET}: the key is as
durable as the Redis server is configured to make it.  A lost key makes its
message unreadable for ever, so the server checks at start
(L{checkVaultPersistence}) that Redis keeps its data across a crash of
Redis (C{appendonly yes}; C{appendfsync always} also survives a power
loss), and refuses to start otherwise unless C{[redis] allow_volatile_vault}
is set.  A call that fails or takes longer than
L{REDIS_TIMEOUT_SECONDS} fails with L{KeyVaultError}; the delivery that
needed the key is deferred and retried.

Through Sentinel (C{redis-sentinel://}) an acknowledged C{SET} is not
enough: replication is asynchronous, and a failover promotes a replica that
may lack a key the old master acknowledged.  There each C{SET} is followed
by C{WAIT 1} (up to L{REPLICA_WAIT_MILLISECONDS}), and a store that no
replica acknowledged fails: the delivery is deferred and retried, with
another key.  C{WAIT} holds up the connection it is sent on (for the whole
wait while no replica is up), so these writes get a connection of their
own (L{RedisKeyVault.writes}): the users' lookups and the vault's reads do
not wait behind them.

txredisapi uses the global reactor for its connection; that is why this
backend is tested against a real redis-server only.
"""

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

import attrs
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError, fail, gatherResults
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.backends.redisblocking import RedisReadError, askRedis
from qutemail.backends.redislimiter import REDIS_TIMEOUT_SECONDS, RedisURLError, checkURL
from qutemail.interfaces import IKeyVault, KeyGone
from qutemail.qkd.vault import KeyVaultError, KeyWrapper, checkKey, checkKeyId

KEY_PREFIX = "qutemail:vault:"
# How long a store through Sentinel waits for a replica to acknowledge its
# key (well within the call's timeout, L{REDIS_TIMEOUT_SECONDS}).
REPLICA_WAIT_MILLISECONDS = 1000

_log = Logger()


@implementer(IKeyVault)
@attrs.define(eq=False)
class RedisKeyVault:
    """
    Message keys in Redis, wrapped under the local master key; see the
    module docstring.

    @ivar connection: a txredisapi connection (see
        L{qutemail.backends.redislimiter.connect}).
    @ivar clock: an C{IReactorTime}, for the call timeout.
    @ivar masterKeyPath: the master key file, the same on every node.
    @ivar runner: runs the blocking read of the master key.
    @ivar timeoutSeconds: how long one Redis call may take.
    @ivar writes: the connection of the stores that wait for a replica, or
        C{None} when they do not.
    @ivar replicas: how many replicas a store waits for (C{WAIT}), when
        C{writes} is set.
    """

    _log = Logger()

    connection: Any
    clock: Any
    masterKeyPath: str
    runner: Any
    timeoutSeconds: float = REDIS_TIMEOUT_SECONDS
    writes: Any = None
    replicas: int = 1
    _wrapper: KeyWrapper = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        """
        Share one wrapper (one master key read) across calls.
        """
        self._wrapper = KeyWrapper(self.masterKeyPath, self.runner)

    async def _call(self, command: str, *args: Any, connection: Any = None) -> Any:
        """
        Run one Redis command with the timeout.

        @param connection: the connection to send it on (C{connection} by
            default).
        @return: its reply.
        @raise KeyVaultError: Redis failed or did not answer in time.
        """
        d = getattr(connection or self.connection, command)(*args)
        d.addTimeout(self.timeoutSeconds, self.clock)
        try:
            return await d
        except (txredisapi.RedisError, ConnectionError, ConnectError, TimeoutError, CancelledError) as e:
            raise KeyVaultError(f"the Redis key vault failed ({command}): {str(e) or type(e).__name__}") from None

    async def _store(self, keyId: str, key: bytes) -> None:
        """
        See L{store}.
        """
        checkKeyId(keyId)
        checkKey(key)
        wrapped = await self._wrapper.wrap(keyId, key)
        value = base64.b64encode(wrapped).decode("ascii")
        if self.writes is None:
            await self._call("set", KEY_PREFIX + keyId, value)
            return
        # WAIT counts the replicas that have every write of its connection
        # so far; both are sent at once, in this order, on the one
        # connection (a lost connection fails both).
        stored = Deferred.fromCoroutine(self._call("set", KEY_PREFIX + keyId, value, connection=self.writes))
        waited = Deferred.fromCoroutine(self._call("execute_command", "WAIT", self.replicas,
                                                   REPLICA_WAIT_MILLISECONDS, connection=self.writes))
        results = await DeferredList([stored, waited], consumeErrors=True)
        for ok, result in results:
            if not ok:
                result.raiseException()
        if results[1][1] < self.replicas:
            raise KeyVaultError(f"the Redis key vault failed (WAIT): no replica took key {keyId} within "
                                f"{REPLICA_WAIT_MILLISECONDS} ms, and a failover now would lose it")

    async def _fetch(self, keyId: str) -> bytes:
        """
        See L{fetch}.
        """
        checkKeyId(keyId)
        value = await self._call("get", KEY_PREFIX + keyId)
        if value is None:
            raise KeyGone(keyId)
        try:
            wrapped = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise KeyVaultError(f"the wrapped key {keyId} in Redis is damaged (not base64)") from None
        return await self._wrapper.unwrap(keyId, wrapped)

    async def _erase(self, keyId: str) -> None:
        """
        See L{erase}.
        """
        checkKeyId(keyId)
        await self._call("delete", KEY_PREFIX + keyId)
        self._log.debug("erased key {keyId} from Redis", keyId=keyId)

    def store(self, keyId: str, key: bytes) -> Deferred:
        """
        See L{IKeyVault.store}.

        @raise qutemail.qkd.vault.InvalidKeyId: (in the Deferred) see
            L{qutemail.qkd.vault.checkKeyId}.
        @raise KeyVaultError: (in the Deferred) Redis failed, or the master
            key cannot be had.
        """
        return Deferred.fromCoroutine(self._store(keyId, key))

    def fetch(self, keyId: str) -> Deferred:
        """
        See L{IKeyVault.fetch}.

        @raise KeyVaultError: (in the Deferred) Redis failed, or the
            wrapped key is damaged or from another master key.
        """
        return Deferred.fromCoroutine(self._fetch(keyId))

    def erase(self, keyId: str) -> Deferred:
        """
        See L{IKeyVault.erase}.

        @raise KeyVaultError: (in the Deferred) Redis failed.
        """
        return Deferred.fromCoroutine(self._erase(keyId))

    def disconnect(self) -> Deferred:
        """
        Close the connection (and that of the writes).

        @return: a Deferred that fires when they are closed.
        """
        if self.writes is None:
            return self.connection.disconnect()
        return gatherResults([self.connection.disconnect(), self.writes.disconnect()], consumeErrors=True)


@implementer(IKeyVault)
class BlockingRedisKeys:
    """
    Read-only access to the Redis key vault for the command line, which
    runs no reactor: one blocking connection a fetch (RESP over TCP or a
    UNIX socket), keys unwrapped with the local master key.
    """

    def __init__(self, url: str, masterKeyPath: str, timeoutSeconds: float = REDIS_TIMEOUT_SECONDS) -> None:
        """
        @param url: C{[redis] url} (C{redis://}, C{unix://} or
            C{redis-sentinel://}).
        @param masterKeyPath: the master key file, the same on every node.
        """
        from qutemail.blocking import InlineRunner

        self._url = urlsplit(url)
        self._timeout = timeoutSeconds
        self._wrapper = KeyWrapper(masterKeyPath, InlineRunner())

    def _get(self, key: str) -> bytes | None:
        """
        C{GET key}, after C{AUTH} and C{SELECT} as the URL says.
        """
        try:
            return askRedis(self._url, self._timeout, [b"GET", key.encode()])[0]
        except OSError as e:
            raise RedisReadError(f"cannot read the key vault in Redis: {e.strerror or e}") from None

    def store(self, keyId: str, key: bytes) -> Deferred:
        """
        Not for the command line.
        """
        raise NotImplementedError("the command line only reads the vault")

    def erase(self, keyId: str) -> Deferred:
        """
        Not for the command line.
        """
        raise NotImplementedError("the command line only reads the vault")

    def fetch(self, keyId: str) -> Deferred:
        """
        See L{IKeyVault.fetch}; blocking, the result already there.
        """
        try:
            checkKeyId(keyId)
            value = self._get(KEY_PREFIX + keyId)
            if value is None:
                raise KeyGone(keyId)
            try:
                wrapped = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise KeyVaultError(f"the wrapped key {keyId} in Redis is damaged (not base64)") from None
        except Exception:
            return fail()
        return Deferred.fromCoroutine(self._wrapper.unwrap(keyId, wrapped))


class VolatileVaultError(RedisURLError):
    """
    The key vault's Redis may lose it in a crash (or cannot tell), and
    C{[redis] allow_volatile_vault} is not set.
    """


@attrs.frozen
class Persistence:
    """
    What Redis says about keeping its data across a crash.

    @ivar durable: C{True} with C{appendonly yes}; C{False} without;
        C{None} when it cannot tell (C{CONFIG} refused or renamed, Redis
        unreachable).
    @ivar description: its settings, or why it cannot tell, for one line.
    """

    durable: bool | None
    description: str


def _configValue(reply: Any) -> str:
    """
    @param reply: the reply to C{CONFIG GET name}: C{[name, value]}.
    @return: the value.
    @raise RedisReadError: any other reply (an unknown parameter gives
        C{[]}).
    """
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], bytes):
        raise RedisReadError(f"CONFIG GET answered {reply!r}")
    return reply[1].decode("utf-8", "replace")


def redisPersistence(url: str, timeoutSeconds: float = REDIS_TIMEOUT_SECONDS) -> Persistence:
    """
    Ask Redis how it keeps its data (blocking: only before the reactor
    runs).

    Only C{appendonly yes} counts as durable: with RDB snapshots alone
    (C{save}), a crash of Redis loses every key written since the last
    snapshot, minutes of them, and each lost key is a message nobody can
    read again.  The AOF is written before Redis replies, so a crash of
    Redis loses nothing acknowledged whatever C{appendfsync} says; only
    C{appendfsync always} also survives a power loss.

    Through Sentinel, the master it finds is asked; a replica that a
    failover promotes is not, so give the replicas the same settings.

    @param url: C{[redis] url}.
    @raise RedisURLError: a scheme this backend cannot use.
    """
    parts = checkURL(url)
    try:
        replies = askRedis(parts, timeoutSeconds, [b"CONFIG", b"GET", b"appendonly"], [b"CONFIG", b"GET", b"save"],
                       [b"CONFIG", b"GET", b"appendfsync"])
        appendonly, save, appendfsync = map(_configValue, replies)
    except OSError as e:
        return Persistence(None, f"cannot reach Redis: {e.strerror or e}")
    except RedisReadError as e:
        return Persistence(None, f"asking CONFIG GET: {e}")
    if appendonly == "yes":
        return Persistence(True, f"appendonly yes, appendfsync {appendfsync}")
    if save.strip():
        return Persistence(False, f"appendonly no; RDB snapshots only (save {save}) lose the keys since the last one")
    return Persistence(False, 'appendonly no, save "": nothing is written to disk')


def checkVaultPersistence(url: str, allowVolatile: bool, timeoutSeconds: float = REDIS_TIMEOUT_SECONDS) -> None:
    """
    At start: refuse a key vault in a Redis that would lose it in a crash,
    unless C{[redis] allow_volatile_vault} is set; log one line either way.

    @param url: C{[redis] url}.
    @param allowVolatile: C{[redis] allow_volatile_vault}.
    @raise VolatileVaultError: not durable, or cannot tell, and not allowed.
    @raise RedisURLError: a scheme this backend cannot use.
    """
    persistence = redisPersistence(url, timeoutSeconds)
    if persistence.durable:
        _log.info("the key vault's Redis keeps it across a crash ({description})",
                  description=persistence.description)
        return
    if persistence.durable is None:
        problem = f"cannot tell whether the key vault's Redis keeps it across a crash ({persistence.description})"
    else:
        problem = f"the key vault's Redis would lose it in a crash ({persistence.description})"
    if allowVolatile:
        _log.warn("[redis] allow_volatile_vault = yes: {problem}; mail sealed with a lost key is unreadable for ever",
                  problem=problem)
        return
    raise VolatileVaultError(f"[redis] url: {problem}; turn on appendonly in Redis, "
                             "or set [redis] allow_volatile_vault = yes to run anyway")
