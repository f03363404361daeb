# -*- test-case-name: tests.test_interfaces,tests.integration.test_redisusers,tests.backends.test_redissentinel -*-
"""
L{RedisMailboxNotifier}: mailbox change notices shared by every node
through Redis publish/subscribe, so an IMAP IDLE session on one node hears
at once of a delivery on another.

A notice is C{PUBLISH qutemail:mailbox:<address>} on the node's shared
connection.  Each node holds one more connection, a subscriber to the
pattern C{qutemail:mailbox:*} (subscribed again on every reconnection),
and hands what arrives to its L{LocalMailboxNotifier}.  Notices are hints:
one lost while Redis is away costs the watcher at most its polling
interval, since IDLE still polls.

Through Sentinel (C{redis-sentinel://}) the subscriber connects to the
master the sentinels name, and, like every connection, finds it again
after a failover (L{qutemail.backends.redissentinel}); Sentinel drops the
subscribers of a server it reconfigures, so none stays on the old master.
"""

from typing import Any, Callable
from urllib.parse import unquote

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.backends.localnotify import LocalMailboxNotifier
from qutemail.backends.redislimiter import REDIS_TIMEOUT_SECONDS, checkURL
from qutemail.backends.redissentinel import connectMaster
from qutemail.configvalues import parseSentinelURL
from qutemail.interfaces import IMailboxNotifier

CHANNEL_PREFIX = "qutemail:mailbox:"


class _Subscriber(txredisapi.SubscriberProtocol):
    """
    The node's subscriber connection: every mailbox notice, handed on.
    """

    _log = Logger()

    def connectionMade(self) -> Deferred:
        """
        Once connected (after C{AUTH} and C{SELECT}), subscribe.
        """
        d = super().connectionMade()

        def subscribe(_: Any) -> Any:
            return self.psubscribe(CHANNEL_PREFIX + "*")

        def lost(failure: Any) -> None:
            # Nobody waits on connectionMade's result: a connection lost
            # before the subscription was answered (a master dying, a
            # failover) would otherwise be an unhandled error.  The factory
            # connects again and subscribes anew.
            self._log.info("mailbox notices: the subscriber connection was lost while subscribing ({reason})",
                           reason=failure.getErrorMessage())

        d = d.addCallback(subscribe) if isinstance(d, Deferred) else subscribe(None)
        return d.addErrback(lost) if isinstance(d, Deferred) else d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        """
        A notice: tell this node's watchers.
        """
        channel = channel.decode("utf-8") if isinstance(channel, bytes) else str(channel)
        if channel.startswith(CHANNEL_PREFIX):
            self.factory.notifier.local.dispatch(channel[len(CHANNEL_PREFIX):])


class _SentinelSubscribers(txredisapi.SentinelConnectionFactory):
    """
    The subscriber connection through Sentinel: to whichever server is the
    master.
    """

    protocol = _Subscriber
    maxDelay = 5

    def __init__(self, *args: Any, notifier: Any, **kwargs: Any) -> None:
        """
        @param notifier: the L{RedisMailboxNotifier} to hand notices to.
        """
        super().__init__(*args, **kwargs)
        self.notifier = notifier


@implementer(IMailboxNotifier)
class RedisMailboxNotifier(Service):
    """
    Mailbox notices through Redis; see the module docstring.  A service:
    it holds the subscriber connection while it runs.
    """

    _log = Logger()
    name = "mailbox-notices"

    def __init__(self, reactor: Any, url: str, connection: Any,
                 timeoutSeconds: float = REDIS_TIMEOUT_SECONDS) -> None:
        """
        @param reactor: an C{IReactorTCP}, C{IReactorUNIX} and
            C{IReactorTime}.
        @param url: C{[redis] url}, for the subscriber connection.
        @param connection: the node's txredisapi connection, for publishing.
        """
        self.reactor = reactor
        self.url = url
        self.connection = connection
        self.timeoutSeconds = timeoutSeconds
        self.local = LocalMailboxNotifier()
        self._subscriber: Any = None

    def startService(self) -> None:
        """
        Connect the subscriber (reconnecting whenever it is lost).
        """
        Service.startService(self)
        parts = checkURL(self.url)
        if parts.scheme == "redis-sentinel":
            # Channels are not in a database: no SELECT, only AUTH.
            self._subscriber = connectMaster(parseSentinelURL(self.url), REDIS_TIMEOUT_SECONDS, _SentinelSubscribers,
                                             dbid=None, notifier=self)
            return
        factory = txredisapi.SubscriberFactory()
        # Channels are not in a database: no SELECT, only AUTH.
        factory.password = unquote(parts.password) if parts.password else None
        factory.protocol = _Subscriber
        factory.notifier = self
        factory.maxDelay = 5
        self._subscriber = factory
        if parts.scheme == "redis":
            endpoint: Any = TCP4ClientEndpoint(self.reactor, parts.hostname or "localhost", parts.port or 6379,
                                               timeout=REDIS_TIMEOUT_SECONDS)
        else:
            endpoint = UNIXClientEndpoint(self.reactor, parts.path, timeout=REDIS_TIMEOUT_SECONDS)
        # txredisapi's own way to connect a factory, reconnecting as it goes.
        factory.startConnecting(endpoint)

    def stopService(self) -> Any:
        """
        Drop the subscriber for good (and, through Sentinel, the
        connections to the sentinels).

        @return: a Deferred that fires once it is closed.
        """
        Service.stopService(self)
        if self._subscriber is not None:
            return self._subscriber.disconnect()
        return None

    def publish(self, address: str) -> Deferred:
        """
        See L{IMailboxNotifier.publish}.
        """
        d = self.connection.execute_command("PUBLISH", CHANNEL_PREFIX + address, "1")
        d.addTimeout(self.timeoutSeconds, self.reactor)

        def lost(failure: Any) -> None:
            self._log.warn("mailbox notice for {address} not published: {reason}", address=address,
                           reason=failure.getErrorMessage() or failure.type.__name__)

        return d.addCallbacks(lambda _: None, lost)

    def subscribe(self, address: str, callback: Callable[[], None]) -> Callable[[], None]:
        """
        See L{IMailboxNotifier.subscribe}.
        """
        return self.local.subscribe(address, callback)
