# -*- test-case-name: tests.test_service -*-
"""
Service assembly: C{buildService(config, reactor)} returns the whole server
as a tree of single-purpose services.  This is the only module that creates
concrete backends.

Start order: the thread pool, the spool (journal recovery, deferred queue),
the retry scheduler, then one listener per enabled port.  Stop order is the
reverse, one child at a time: listeners stop accepting and tell open
sessions the server is going away (a message being committed gets its 250
first), background routing finishes, the journal is flushed and closed, and
the thread pool goes last.
"""

import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import BlockingRunner
from qutemail.listener.smtp import SMTPServerFactory
from qutemail.policy.envelope import RecipientPolicy
from qutemail.pipeline.router import QueueIds, Router
from qutemail.queue.deferred import DeferredQueue
from qutemail.queue.journal import Journal
from qutemail.queue.scheduler import RetryScheduler
from qutemail.store.maildir import MaildirStore


class NoListeners(Exception):
    """
    The configuration and options leave nothing to listen on.
    """


class SequentialMultiService(MultiService):
    """
    A L{MultiService} that stops its children one at a time, in reverse
    order, waiting for each (as Buildbot's C{AsyncMultiService} does).
    """

    def stopService(self):
        """
        Stop the children in reverse order, each after the previous one's
        Deferred fired.
        """
        Service.stopService(self)
        return ensureDeferred(self._stopChildren())

    async def _stopChildren(self) -> None:
        """
        Await each child's C{stopService} in turn.
        """
        for child in reversed(list(self)):
            await _maybeAwait(child.stopService())


async def _maybeAwait(result: Any) -> Any:
    """
    Await C{result} when it is a Deferred.
    """
    if result is not None and hasattr(result, "addCallbacks"):
        return await result
    return result


class SpoolService(Service):
    """
    Owns the journal: recovers it at start, drains and closes it at stop.
    """

    _log = Logger()
    name = "spool"

    def __init__(self, journal: Journal, queue: DeferredQueue, router: Router, spillDirectory: str) -> None:
        """
        @param journal: the journal.
        @param queue: the deferred queue.
        @param router: the router, which gets the recovered messages.
        @param spillDirectory: C{queue/large/}.
        """
        self.journal = journal
        self.queue = queue
        self.router = router
        self.spillDirectory = spillDirectory

    def startService(self) -> None:
        """
        Recover before any listener starts: this runs once at start-up,
        before there is anything else to serve, so it reads the disk
        directly.
        """
        Service.startService(self)
        os.makedirs(self.spillDirectory, exist_ok=True)
        entries = self.queue.load()
        recovered = self.journal.recover()
        live = {m.path for m in recovered if m.path}
        for name in os.listdir(self.spillDirectory):
            path = os.path.join(self.spillDirectory, name)
            if path not in live:
                # A body never acknowledged (no journal record): not ours.
                os.unlink(path)
        if recovered or entries:
            self._log.info("recovered {messages} unfinished messages and {deferred} deferred entries",
                           messages=len(recovered), deferred=len(entries))
        for message in recovered:
            self.router.accept(message, recovering=True)

    def stopService(self):
        """
        Let background routing finish, then flush and close the journal.
        """
        Service.stopService(self)
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """
        Wait for routing, then close the journal.
        """
        await self.router.stop()
        await self.journal.close()


class ListenerService(StreamServerEndpointService):
    """
    A listener whose sessions are told when the server stops.
    """

    def whenListening(self) -> Deferred:
        """
        @return: a Deferred firing with the listening port (tests and logs
            use it to learn an ephemeral port number).
        """
        d: Deferred = Deferred()

        def listening(port):
            d.callback(port)
            return port

        self._waitingForPort.addCallback(listening)
        return d

    def stopService(self):
        """
        Stop listening, then ask open sessions to finish.
        """
        d = StreamServerEndpointService.stopService(self)
        self.factory.shutdown()
        return d


def endpointFor(bind: str, port: int) -> str:
    """
    @return: the endpoint description for a TCP listener.
    """
    interface = bind.replace(":", "\\:")
    return f"tcp:{port}:interface={interface}"


def buildService(config: Any, reactor: Any, *, listen: dict[str, str] | None = None,
                 mtaOnly: bool = False, msaOnly: bool = False) -> MultiService:
    """
    Build the server.

    @param config: the L{qutemail.config.Config}.
    @param reactor: the reactor everything schedules, listens and reads the
        time with.
    @param listen: endpoint descriptions by listener name (C{mta}),
        overriding the configured ports (tests listen on port 0).
    @param mtaOnly: run only the MTA (port 25) listener.
    @param msaOnly: run only the submission listeners.
    @return: the root service; its C{listeners} attribute maps listener names
        to their L{ListenerService}.
    """
    server = config.server
    dataDir = server.dataDir
    queueDir = os.path.join(dataDir, "queue")
    root = SequentialMultiService()
    root.setName("qutemail")

    runner = BlockingRunner(reactor)
    runner.setServiceParent(root)

    users = FileUserDirectory(os.path.join(dataDir, "users"), runner, reactor)
    store = MaildirStore(dataDir, runner, server.hostname, config.mailbox.defaultQuotaBytes, reactor)
    journal = Journal(os.path.join(queueDir, "journal"), runner, reactor)
    queue = DeferredQueue(os.path.join(queueDir, "deferred"), runner)
    queueIds = QueueIds(reactor)
    router = Router(journal=journal, store=store, users=users, queue=queue, clock=reactor,
                    hostname=server.hostname, domains=server.domains, queueIds=queueIds,
                    retrySchedule=config.relay.retrySchedule, runner=runner)
    spillDir = os.path.join(queueDir, "large")
    SpoolService(journal, queue, router, spillDir).setServiceParent(root)
    scheduler = RetryScheduler(router, reactor, config.relay.retrySchedule,
                               config.relay.queueLifetimeSeconds)
    scheduler.setServiceParent(root)

    policy = RecipientPolicy(users, store, server.domains, config.smtp.maxMessageBytes)
    factoryArgs = dict(
        hostname=server.hostname, domains=server.domains, policy=policy, journal=journal,
        router=router, runner=runner, queueIds=queueIds, clock=reactor, spoolDirectory=spillDir,
        maxMessageBytes=config.smtp.maxMessageBytes, maxRecipients=config.smtp.maxRecipients,
        idleTimeoutSeconds=config.smtp.idleTimeoutSeconds,
    )
    listen = listen or {}
    root.listeners = {}
    wanted = []
    if not msaOnly:
        wanted.append(("mta", config.smtp.mtaPort))
    for name, port in wanted:
        description = listen.get(name) or (endpointFor(server.bind, port) if port else None)
        if description is None:
            continue
        factory = SMTPServerFactory(**factoryArgs)
        service = ListenerService(serverFromString(reactor, description), factory)
        service.setName(f"listener-{name}")
        service.setServiceParent(root)
        root.listeners[name] = service
    if not root.listeners:
        raise NoListeners(
            "no listener is enabled: "
            + ("--msa-only, but the submission listeners (587/465) are not built yet"
               if msaOnly else "every port in [smtp] is 0")
        )
    root.router = router
    root.scheduler = scheduler
    root.users = users
    return root
