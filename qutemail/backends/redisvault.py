# -*- test-case-name: tests.test_interfaces -*-
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
durable as the Redis server is configured to make it (run it with
C{appendonly yes} and C{appendfsync always} if a crash of Redis must not
lose keys of mail already accepted).  A call that fails or takes longer than
L{REDIS_TIMEOUT_SECONDS} fails with L{KeyVaultError}; the delivery that
needed the key is deferred and retried.

txredisapi uses the global reactor for its connection; that is why this
backend is tested against a real redis-server only.
"""

import base64
import binascii
from typing import Any

import attrs
import txredisapi
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.backends.redislimiter import REDIS_TIMEOUT_SECONDS
from qutemail.interfaces import IKeyVault, KeyGone
from qutemail.qkd.vault import KeyVaultError, KeyWrapper, checkKey, checkKeyId

KEY_PREFIX = "qutemail:vault:"


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
    """

    _log = Logger()

    connection: Any
    clock: Any
    masterKeyPath: str
    runner: Any
    timeoutSeconds: float = REDIS_TIMEOUT_SECONDS
    _wrapper: KeyWrapper = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        """
        Share one wrapper (one master key read) across calls.
        """
        self._wrapper = KeyWrapper(self.masterKeyPath, self.runner)

    async def _call(self, command: str, *args: Any) -> Any:
        """
        Run one Redis command with the timeout.

        @return: its reply.
        @raise KeyVaultError: Redis failed or did not answer in time.
        """
        d = getattr(self.connection, command)(*args)
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
        await self._call("set", KEY_PREFIX + keyId, base64.b64encode(wrapped).decode("ascii"))
        self._log.debug("stored key {keyId} in Redis", keyId=keyId)

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
        Close the connection.

        @return: a Deferred that fires when it is closed.
        """
        return self.connection.disconnect()
