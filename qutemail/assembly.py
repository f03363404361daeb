# -*- test-case-name: tests.test_assembly -*-
"""
The backends a configuration asks for, built in one place for the server
(L{qutemail.service}) and the command-line tool (L{qutemail.cli}) alike:
the user directory, the relay queue and the key vault.

The server passes its thread pool and the reactor; the command-line tool,
which runs no reactor, passes an L{qutemail.blocking.InlineRunner} and a
clock of its own, and gets a vault it can use without one.
"""

import os
from typing import Any

import attrs

from qutemail.backends.redisvault import BlockingRedisKeys, RedisKeyVault, checkVaultPersistence
from qutemail.backends.redislimiter import connect as connectRedis
from qutemail.backends.userfile import FileUserDirectory
from qutemail.qkd.vault import FileKeyVault
from qutemail.queue.deferred import DeferredQueue


@attrs.frozen
class Backends:
    """
    What one process works with.

    @ivar users: the L{qutemail.interfaces.IUserDirectory}.
    @ivar queue: the L{qutemail.interfaces.IRelayQueue}.
    @ivar vault: the L{qutemail.interfaces.IKeyVault}.
    @ivar close: closes what the backends hold open (a Redis connection);
        may return a Deferred.
    """

    users: Any
    queue: Any
    vault: Any
    close: Any = lambda: None


def buildBackends(config: Any, runner: Any, clock: Any, reactor: Any = None, withVault: bool = True) -> Backends:
    """
    Build the backends of a configuration.

    @param config: the L{qutemail.config.Config}.
    @param runner: runs blocking work (the server's thread pool, or an
        inline runner).
    @param clock: an C{IReactorTime}.
    @param reactor: the running reactor, in the server; C{None} in the
        command-line tool, which then gets a blocking Redis vault.
    @param withVault: build the vault (an extra SMTP worker has none).
    @return: the L{Backends}.
    @raise qutemail.backends.redisvault.VolatileVaultError: the server's
        vault would be in a Redis that may lose it (asked with a short
        blocking call: the server builds its backends before the reactor
        runs), and C{[redis] allow_volatile_vault} is not set.
    """
    dataDir = config.server.dataDir
    keys = os.path.join(dataDir, "keys")
    masterKey = os.path.join(keys, "master.key")
    users = FileUserDirectory(os.path.join(dataDir, "users"), runner, clock)
    queue = DeferredQueue(os.path.join(dataDir, "queue", "deferred"), runner)
    if not withVault:
        return Backends(users, queue, None)
    if not config.redis.url:
        return Backends(users, queue, FileKeyVault(os.path.join(keys, "vault"), masterKey, runner))
    if reactor is None:
        return Backends(users, queue, BlockingRedisKeys(config.redis.url, masterKey))
    checkVaultPersistence(config.redis.url, config.redis.allowVolatileVault)
    vault = RedisKeyVault(connectRedis(config.redis.url), reactor, masterKey, runner)
    return Backends(users, queue, vault, vault.disconnect)
