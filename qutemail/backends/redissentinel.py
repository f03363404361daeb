# -*- test-case-name: tests.backends.test_redissentinel,tests.integration.test_redisfailover -*-
"""
Reactor-side connections to the Redis master that Redis Sentinel names
(C{[redis] url = redis-sentinel://...}; see
L{qutemail.configvalues.parseSentinelURL}), with txredisapi's own Sentinel
support.

Each connection has a L{txredisapi.Sentinel} of its own (one lazy
connection to each sentinel of the URL).  Before every attempt to connect,
txredisapi asks the sentinels (C{SENTINEL MASTERS}) where the master is,
taking the first answer that does not mark it down, and once connected it
asks the server C{ROLE}: a server that is not a master is dropped and the
next attempt asks again.  A lost connection is made again the same way, so
after a failover the connection finds the new master:
 - a master that dies drops its connections;
 - a master that Sentinel turns into a replica drops its clients itself
   (Sentinel sends it C{CLIENT KILL TYPE normal});
 - until then, such a server answers writes with C{READONLY}, which
   txredisapi does not act on: L{_MasterProtocol} drops the connection at
   that reply.

txredisapi waits 10 s for the sentinels by default and backs off up to
10 s between attempts; here both are bounded by the caller's timeout and
L{RETRY_SECONDS}, so a connection follows a failover within a few seconds
of Sentinel's.  Commands sent meanwhile wait for the next connection, or
fail: every caller bounds them with a timeout, as with C{redis://}.

The sentinels are asked without a password; the URL's is the Redis
servers'.
"""

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, gatherResults

from qutemail.configvalues import SentinelURL

# The longest wait between attempts to reach the master (txredisapi also
# gives an attempt this long to connect).
RETRY_SECONDS = 2.0


class _MasterProtocol(txredisapi.SentinelRedisProtocol):
    """
    txredisapi's connection to a Sentinel master (which checks C{ROLE} on
    connecting), dropped when the server turns out to be read-only.
    """

    def replyReceived(self, reply: Any) -> None:
        """
        Hand on a reply; on C{READONLY} (the server is a replica now), drop
        the connection, so that the next one asks the sentinels again.
        """
        if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("READONLY"):
            self.transport.loseConnection()
        super().replyReceived(reply)


class MasterConnections(txredisapi.SentinelConnectionFactory):
    """
    txredisapi's factory of connections to a Sentinel master, with
    L{_MasterProtocol} and a shorter back-off.
    """

    protocol = _MasterProtocol
    maxDelay = RETRY_SECONDS


class SentinelConnection(txredisapi.ConnectionHandler):
    """
    What L{connectMaster} returns: used as txredisapi's
    C{lazyConnection}, and closing the sentinels' connections with its
    own.
    """

    def disconnect(self) -> Deferred:
        """
        Close the connection to the master and those to the sentinels.

        @return: a Deferred that fires when they are closed.
        """
        return gatherResults([self._factory.disconnect(), self._factory.sentinel_manager.disconnect()],
                             consumeErrors=True)


def connectMaster(url: SentinelURL, timeoutSeconds: float, factoryClass: type = MasterConnections,
                  **arguments: Any) -> SentinelConnection:
    """
    Open a lazy txredisapi connection that follows the master the
    sentinels of C{url} name; see the module docstring.

    @param url: the parsed C{[redis] url}.
    @param timeoutSeconds: how long to wait for a sentinel, or to connect
        to one.
    @param factoryClass: a C{txredisapi.SentinelConnectionFactory}: the
        master's L{MasterConnections} by default (the mailbox notices pass
        their subscribers').
    @param arguments: more arguments of the factory (by default C{dbid}
        and C{password} come from the URL).
    @return: the connection.
    """
    sentinel = txredisapi.Sentinel(url.sentinels, connectTimeout=timeoutSeconds)
    # txredisapi's default (10 s) would outlast a failover.
    sentinel.discovery_timeout = timeoutSeconds
    arguments = {"dbid": url.db, "password": url.password, **arguments}
    return sentinel.master_for(url.masterName, factory_class=factoryClass, isLazy=True, handler=SentinelConnection,
                               **arguments)
