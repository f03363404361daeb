"""
Tests of the start-time check that the key vault's Redis keeps its data
across a crash, against real redis-servers on loopback.
"""

import os

import attrs
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from qutemail.assembly import buildBackends
from qutemail.backends.redislimiter import RedisURLError
from qutemail.backends.redisvault import VolatileVaultError, checkVaultPersistence, redisPersistence
from qutemail.blocking import InlineRunner
from qutemail.config import Config, RedisConfig, ServerConfig
from tests.backends.test_redislimiter import startRedis
from tests.integration.support import freePort


def url(port: int) -> str:
    """
    @return: the URL of the redis-server on C{port}.
    """
    return f"redis://127.0.0.1:{port}/0"


class PersistenceTests(TestCase):
    """
    L{redisPersistence}: only C{appendonly yes} is durable.
    """

    def test_appendonly(self):
        """
        C{appendonly yes} is durable; the fsync policy is reported.
        """
        persistence = redisPersistence(url(startRedis(self)))
        self.assertEqual((persistence.durable, persistence.description), (True, "appendonly yes, appendfsync always"))

    def test_nothing(self):
        """
        No AOF and no RDB schedule is not durable.
        """
        persistence = redisPersistence(url(startRedis(self, persistent=False)))
        self.assertEqual((persistence.durable, persistence.description),
                         (False, 'appendonly no, save "": nothing is written to disk'))

    def test_snapshotsOnly(self):
        """
        RDB snapshots alone are not durable: a crash loses the keys written
        since the last one.
        """
        persistence = redisPersistence(url(startRedis(self, persistent=False, args=("--save", "3600 1 300 100"))))
        self.assertIs(persistence.durable, False)
        self.assertIn("RDB snapshots only (save 3600 1 300 100)", persistence.description)

    def test_configRenamed(self):
        """
        A Redis that refuses C{CONFIG} cannot tell.
        """
        persistence = redisPersistence(url(startRedis(self, args=("--rename-command", "CONFIG", ""))))
        self.assertIsNone(persistence.durable)
        self.assertIn("asking CONFIG GET: Redis answered: ERR unknown command 'CONFIG'", persistence.description)

    def test_unreachable(self):
        """
        A Redis that cannot be reached cannot tell.
        """
        persistence = redisPersistence(url(freePort()), 1.0)
        self.assertEqual((persistence.durable, persistence.description),
                         (None, "cannot reach Redis: Connection refused"))

    def test_scheme(self):
        """
        A scheme the backend cannot use is the usual URL error.
        """
        self.assertRaises(RedisURLError, redisPersistence, "rediss://127.0.0.1:1/0")


class CheckTests(TestCase):
    """
    L{checkVaultPersistence}: refuse, warn, or one quiet line.
    """

    def setUp(self) -> None:
        """
        Record log events.
        """
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def levels(self) -> list[LogLevel]:
        """
        @return: the levels of the events logged.
        """
        return [e["log_level"] for e in self.events]

    def test_volatileRefused(self):
        """
        A Redis without persistence is refused, in one line naming the
        setting that allows it.
        """
        error = self.assertRaises(VolatileVaultError, checkVaultPersistence,
                                  url(startRedis(self, persistent=False)), False)
        self.assertEqual(str(error), "[redis] url: the key vault's Redis would lose it in a crash "
                         '(appendonly no, save "": nothing is written to disk); turn on appendonly in Redis, '
                         "or set [redis] allow_volatile_vault = yes to run anyway")
        self.assertEqual(self.levels(), [])

    def test_volatileAllowed(self):
        """
        With C{allow_volatile_vault}, it runs with one warning.
        """
        checkVaultPersistence(url(startRedis(self, persistent=False)), True)
        self.assertEqual(self.levels(), [LogLevel.warn])
        [event] = self.events
        self.assertIn("allow_volatile_vault = yes", event["log_format"])
        self.assertIn("would lose it in a crash", event["problem"])

    def test_unknownRefused(self):
        """
        A Redis that refuses C{CONFIG} is refused unless allowed, saying it
        cannot tell; allowed, it warns.
        """
        port = startRedis(self, args=("--rename-command", "CONFIG", ""))
        error = self.assertRaises(VolatileVaultError, checkVaultPersistence, url(port), False)
        self.assertIn("[redis] url: cannot tell whether the key vault's Redis keeps it across a crash", str(error))
        self.assertIn("allow_volatile_vault = yes", str(error))
        self.assertNotIn("\n", str(error))
        checkVaultPersistence(url(port), True)
        self.assertEqual(self.levels(), [LogLevel.warn])

    def test_durableQuiet(self):
        """
        C{appendonly yes} passes with one informational line and no
        warning.
        """
        checkVaultPersistence(url(startRedis(self)), False)
        self.assertEqual(self.levels(), [LogLevel.info])


class BuildBackendsTests(TestCase):
    """
    The server's backends check the vault's Redis before connecting to it.
    """

    def config(self, port: int, allow: bool = False) -> Config:
        """
        @return: a configuration with its vault in the Redis on C{port}.
        """
        server = ServerConfig(hostname="mail.example.test", domains=("example.test",),
                              dataDir=os.path.abspath(self.mktemp()))
        return attrs.evolve(Config(path="q.ini", server=server),
                            redis=RedisConfig(url=url(port), allowVolatileVault=allow))

    def test_refused(self):
        """
        The server's backends are not built on a volatile Redis (and no
        connection is left open); the command line's read-only vault does
        not ask.
        """
        config = self.config(startRedis(self, persistent=False))
        self.assertRaises(VolatileVaultError, buildBackends, config, InlineRunner(), reactor, reactor)
        buildBackends(config, InlineRunner(), reactor)

    def test_allowed(self):
        """
        With C{allow_volatile_vault = yes} the vault is built.
        """
        backends = buildBackends(self.config(startRedis(self, persistent=False), allow=True), InlineRunner(),
                                 reactor, reactor)
        self.addCleanup(backends.close)
        self.assertIsNotNone(backends.vault)
