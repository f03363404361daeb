# -*- test-case-name: tests.test_service -*-
"""
Service assembly: C{buildService(config, reactor)} returns the whole server
as a tree of single-purpose services.  This is the only module that creates
concrete backends.

Start order: the thread pool, the free-space loop, the spool (journal
recovery, deferred queue), the retry scheduler, then one listener per
enabled port.  Stop order is the reverse, one child at a time: listeners
stop accepting and tell open sessions the server is going away (a message
being committed gets its 250 first), background routing finishes, the
journal is flushed and closed, and the thread pool goes last.
"""

import datetime
import os
from functools import partial
import socket
from typing import Any

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.cred.portal import Portal
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger

from qutemail.access.imapaccount import imapPortal
from qutemail.access.imapseal import AppendSealer
from qutemail.access.imapserver import IMAPFactory
from qutemail.access.pop3 import POP3Factory, pop3Portal
from qutemail.backends.localnotify import LocalMailboxNotifier
from qutemail.backends.redislimiter import RedisRateLimiter
from qutemail.backends.redisnotify import RedisMailboxNotifier
from qutemail.backends.redisusers import txredisCaller
from qutemail.backends.redislimiter import connect as connectRedis
from qutemail.assembly import ClosingService, ServiceConfigError, buildBackends, buildContent, buildInbound, buildRelay
from qutemail.pipeline.transitin import TransitReceiver
from qutemail.pipeline.transitkeys import TransitKeySweep
from qutemail.qkdsetup import buildEncryptor, buildKeyPools, buildTransit
from qutemail.backends.passwordhash import passwordThreads
from qutemail.blocking import BlockingRunner
from qutemail.cred import MailRealm, UserDirectoryChecker, submitterFactory
from qutemail.listener.factory import SMTPServerFactory
from qutemail.listener.settings import SessionSettings
from qutemail.jmapsetup import buildJMAPFactory
from qutemail.store.diskspace import watchDiskSpace
from qutemail.store.retention import RetentionService, RetentionSweep
from qutemail.tlsserver import contextFactory, serverCredentials
from qutemail.policy.envelope import RecipientPolicy
from qutemail.policy.ratelimit import MemoryRateLimiter
from qutemail.policy.sessions import SessionLimits
from qutemail.policy.throttle import AuthThrottle
from qutemail.durable import makeDirectories
from qutemail.portservice import PortService
from qutemail.pipeline.dkim import FileDKIMKeys
from qutemail.pipeline.intake import Intake
from qutemail.pipeline.router import Router
from qutemail.policy.session import SessionPolicy
from qutemail.store.delivery import LocalDelivery
from qutemail.message import QueueIds
from qutemail.pipeline.signing import OutboundSigner, ensureKey
from qutemail.queue.adopt import QueueAdopter, QueueInUse, QueueLock, takeQueueLock
from qutemail.queue.control import ControlService, controlPath
from qutemail.queue.deferred import DeferredQueue
from qutemail.queue.journal import Journal
from qutemail.queue.nodes import NodeHeartbeat
from qutemail.queue.scheduler import RetryScheduler
from qutemail.relay.tlsrpt import TLSReporter
from qutemail.workers import WorkerPool
from qutemail.metrics.registry import processGone
from qutemail.metricssetup import buildMetrics, metricsDirectory, serveMetrics
from qutemail.store.deliveryprocess import DeliveryProcess
from qutemail.store.maildir import (
    BATCH_DELAY_SECONDS, BATCH_IDLE_SECONDS, SHARED_USAGE_CACHE_SECONDS, USAGE_CACHE_SECONDS, MaildirStore,
    SplitWriter, ThreadWriter,
)


_log = Logger()


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
    The main process also recovers the journals of workers that no longer
    exist (a run with fewer workers than the last).
    """

    _log = Logger()
    name = "spool"

    def __init__(self, intake: Intake, queue: DeferredQueue, spillDirectory: str,
                 orphans: list | None = None, loadQueue: bool = True) -> None:
        """
        @param intake: the intake, which owns the journal and gets the
            recovered messages.
        @param queue: the deferred queue.
        @param spillDirectory: C{queue/large/}.
        @param orphans: C{(intake, spillDirectory)} of the journals left by
            workers that no longer exist, each with an intake of its own.
        @param loadQueue: read the deferred queue (the main process only:
            it alone retries).
        """
        self.intake = intake
        self.queue = queue
        self.spillDirectory = spillDirectory
        self.orphans = orphans or []
        self.loadQueue = loadQueue

    def startService(self) -> None:
        """
        Recover before any listener starts: this runs once at start-up,
        before there is anything else to serve, so it reads the disk
        directly.
        """
        Service.startService(self)
        entries = self.queue.load() if self.loadQueue else []
        recovered = self._recover(self.intake, self.spillDirectory)
        for intake, spill in self.orphans:
            recovered += self._recover(intake, spill)
        if recovered or entries:
            self._log.info("recovered {messages} unfinished messages and {deferred} deferred entries",
                           messages=recovered, deferred=len(entries))

    def _recover(self, intake: Intake, spillDirectory: str) -> int:
        """
        Recover one journal and hand its unfinished messages to its intake.

        @return: how many there were.
        """
        makeDirectories(spillDirectory)
        recovered = intake.journal.recover()
        live = {m.path for m in recovered if m.path}
        for name in os.listdir(spillDirectory):
            path = os.path.join(spillDirectory, name)
            if path not in live:
                # A body never acknowledged (no journal record): not ours.
                os.unlink(path)
        for message in recovered:
            intake.recover(message)
        return len(recovered)

    def stopService(self):
        """
        Let background routing finish, then flush and close the journals.
        """
        Service.stopService(self)
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        """
        Wait for routing, then close the journals.
        """
        for intake in [self.intake] + [i for i, _ in self.orphans]:
            await intake.stop()
            await intake.journal.close()


class AdoptedListenerService(Service):
    """
    A worker's listener on a socket inherited from the main process.
    """

    def __init__(self, reactor: Any, fd: int, factory: SMTPServerFactory) -> None:
        """
        @param reactor: an C{IReactorSocket}.
        @param fd: the inherited listening socket.
        @param factory: the session factory.
        """
        self.reactor = reactor
        self.fd = fd
        self.factory = factory
        self._port = None

    def startService(self) -> None:
        """
        Accept connections on the inherited socket.
        """
        Service.startService(self)
        probe = socket.socket(fileno=os.dup(self.fd))
        family = probe.family
        probe.close()
        self._port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        os.close(self.fd)

    def stopService(self):
        """
        Stop accepting, then ask open sessions to finish.
        """
        Service.stopService(self)
        port, self._port = self._port, None
        self.factory.shutdown()
        return port.stopListening() if port is not None else None


class ListenerService(PortService):
    """
    A listener whose sessions are told when the server stops, and whose
    port, if it cannot be opened, stops the start (L{PortService}).
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

    def isListening(self) -> bool:
        """
        @return: whether the port is open now (for the health check).
        """
        waiting = getattr(self, "_waitingForPort", None)
        # Not yet open, or closed: one that fails to open stops the start.
        return bool(self.running and waiting is not None and waiting.called
                    and IListeningPort.providedBy(waiting.result))

    def stopService(self):
        """
        Stop listening, then ask open sessions to finish.
        """
        d = PortService.stopService(self)
        shutdown = getattr(getattr(self, "smtpFactory", self.factory), "shutdown", None)
        if shutdown is not None:
            shutdown()
        return d


def endpointFor(bind: str, port: int) -> str:
    """
    @return: the endpoint description for a TCP listener.
    """
    interface = bind.replace(":", "\\:")
    return f"tcp:{port}:interface={interface}"


def journalPaths(queueDir: str, workerIndex: int) -> tuple[str, str]:
    """
    Where one SMTP process keeps its journal and spill files: each process
    has its own, so that none waits on another's group commit.

    @param queueDir: C{data_dir/queue}.
    @param workerIndex: 0 for the main process, 1.. for extra workers.
    @return: the journal directory and the spill directory.
    """
    if workerIndex == 0:
        return os.path.join(queueDir, "journal"), os.path.join(queueDir, "large")
    return (os.path.join(queueDir, f"journal-{workerIndex}"),
            os.path.join(queueDir, f"large-{workerIndex}"))


def orphanIndexes(queueDir: str, workers: int) -> list[int]:
    """
    Worker journals left by a run with more workers than this one: the
    main process recovers them.

    @return: their worker indexes.
    """
    found = []
    if os.path.isdir(queueDir):
        for name in os.listdir(queueDir):
            prefix, _, number = name.partition("-")
            if prefix == "journal" and number.isdigit() and int(number) >= workers:
                found.append(int(number))
    return sorted(found)


def _listens(listen: dict[str, str], name: str, port: int) -> bool:
    """
    @param listen: endpoint descriptions given by listener name.
    @return: whether a listener is on: an endpoint given for it, or its
        port set.
    """
    return bool(listen.get(name) or port)


def buildService(config: Any, reactor: Any, *, listen: dict[str, str] | None = None,
                 mtaOnly: bool = False, msaOnly: bool = False, workerIndex: int = 0,
                 adoptFd: int | None = None) -> MultiService:
    """
    Build the server.

    @param config: the L{qutemail.config.Config}.
    @param reactor: the reactor everything schedules, listens and reads the
        time with.
    @param listen: endpoint descriptions by listener name (C{mta}),
        overriding the configured ports (tests listen on port 0).
    @param mtaOnly: run only the MTA (port 25) listener.
    @param msaOnly: run only the submission listeners.
    @param workerIndex: 0 in the main process; an extra worker (see
        L{qutemail.workers}) has its own index, journal and spill directory,
        and no retry scheduler.
    @param adoptFd: in an extra worker, the MTA listening socket inherited
        from the main process.
    @return: the root service; its C{listeners} attribute maps listener names
        to their L{ListenerService}, and C{sessionLimits} is the
        L{SessionLimits} every listener counts its sessions in.
    """
    server = config.server
    dataDir = server.dataDir
    queueDir = os.path.join(dataDir, "queue")
    root = SequentialMultiService()
    root.setName("qutemail" if workerIndex == 0 else f"qutemail-worker-{workerIndex}")

    if workerIndex == 0:
        # One server per data_dir: the lock is checked now, for a clear
        # error, and held from start to stop (queue adopt looks for it).
        try:
            os.close(takeQueueLock(queueDir))
        except QueueInUse as e:
            raise ServiceConfigError(str(e)) from None
        QueueLock(queueDir).setServiceParent(root)
    listen = listen or {}
    metrics = buildMetrics(config, workerIndex)
    runner = BlockingRunner(reactor)
    runner.setServiceParent(root)
    # Passwords are hashed and checked in threads of their own (see
    # passwordThreads): few, so few keep scrypt's memory; none until the
    # first password.
    passwords = BlockingRunner(reactor, minThreads=0, maxThreads=passwordThreads(), name="passwords")
    passwords.setServiceParent(root)
    # The mailbox listeners (POP3, IMAP, JMAP) run in the main process,
    # unless it serves SMTP only.
    servesMailboxes = workerIndex == 0 and not mtaOnly and not msaOnly
    deliveryWriter = deliveryProcess = None
    if server.deliveryProcess:
        # Stopped after everything that delivers (children stop in reverse).
        # It indexes first IMAP listings too, where this process serves IMAP.
        servesIMAP = servesMailboxes and (_listens(listen, "imap", config.imap.port)
                                          or _listens(listen, "imaps", config.imap.tlsPort))
        # It seals internal mail where this process encrypts it (below).
        deliveryProcess = DeliveryProcess(reactor, preloadIndexing=servesIMAP,
                                          preloadSealing=workerIndex == 0 and config.qkd.encrypt)
        deliveryProcess.setServiceParent(root)
        deliveryWriter = SplitWriter(deliveryProcess, ThreadWriter(runner))
    diskSpace = watchDiskSpace(dataDir, runner, reactor, config.smtp.maxMessageBytes, root)

    # The delivery process writes the vault's key files too: as many
    # system calls per internal message as its delivery.
    backends = buildBackends(config, runner, reactor, reactor, withVault=workerIndex == 0,
                             keyFiles=deliveryProcess, hashRunner=passwords)
    users, queue, vault = backends.users, backends.queue, backends.vault
    if config.redis.url:
        # The users' and the vault's Redis connection.
        ClosingService("redis-backends", backends.close).setServiceParent(root)
        notifier: Any = RedisMailboxNotifier(reactor, config.redis.url, backends.redis)
        notifier.setServiceParent(root)
    else:
        notifier = LocalMailboxNotifier()
    store = MaildirStore(dataDir, runner, server.hostname, config.mailbox.defaultQuotaBytes, reactor,
                         batchDelaySeconds=BATCH_DELAY_SECONDS, batchIdleSeconds=BATCH_IDLE_SECONDS,
                         writer=deliveryWriter, notifier=notifier,
                         usageCacheSeconds=SHARED_USAGE_CACHE_SECONDS if config.mailbox.mailDir
                         else USAGE_CACHE_SECONDS)
    queueIds = QueueIds(reactor)

    encryptor = None
    if workerIndex == 0:
        if config.qkd.encrypt:
            # The delivery process seals internal mail held in memory, on
            # its core: in a thread here the seals held the interpreter.
            encryptor = buildEncryptor(config, reactor, runner, root, vault, metrics, sealer=deliveryProcess)
    created = ensureKey(dataDir, config.dkim.privateKey, config.dkim.selector, server.domains)
    if created is not None and workerIndex == 0:
        _log.info("created a DKIM key; publish these records:\n{records}", records=created)
    signer = OutboundSigner(FileDKIMKeys.fromConfig(config.dkim, dataDir, server.domains, runner), runner,
                            server.domains, config.smtp.maxMessageBytes)

    local = LocalDelivery(store=store, users=users, domains=server.domains, encryptor=encryptor)
    sealer = None
    if encryptor is not None and config.qkd.peers:
        receiver, sealer = buildTransit(config, encryptor, vault, runner, signer, reactor)
        TransitKeySweep(receiver.keyLog, vault, config.relay.queueLifetimeSeconds).setServiceParent(root)
    else:
        # No peers: a transit message can only be refused (550 5.7.1), which
        # beats storing ciphertext its recipient cannot read.
        receiver = TransitReceiver(peers={}, saeId=config.qkd.saeId or server.hostname, keySource=None,
                                   vault=None, runner=runner)
    router = Router(local=local, queue=queue, clock=reactor, retrySchedule=config.relay.retrySchedule, metrics=metrics,
                    signer=signer, sealedDomains=frozenset() if sealer is None else sealer.sealedDomains)
    inbound = buildInbound(config, reactor, root, metrics)
    content = buildContent(config, reactor, runner, root, metrics)

    def intakeFor(journalDir: str, spillDir: str) -> Intake:
        return Intake(journal=Journal(journalDir, runner, reactor, metrics=metrics), router=router, clock=reactor,
                      runner=runner, queueIds=queueIds, spoolDirectory=spillDir, hostname=server.hostname,
                      inbound=inbound, transit=receiver, content=content)

    journalDir, spillDir = journalPaths(queueDir, workerIndex)
    intake = intakeFor(journalDir, spillDir)
    orphans = []
    if workerIndex == 0:
        for index in orphanIndexes(queueDir, server.workers):
            orphanDir, orphanSpill = journalPaths(queueDir, index)
            orphans.append((intakeFor(orphanDir, orphanSpill), orphanSpill))
    SpoolService(intake, queue, spillDir, orphans, loadQueue=workerIndex == 0).setServiceParent(root)
    if workerIndex == 0 and config.mailbox.retentionDays:
        retention = RetentionService(
            RetentionSweep(dataDir, config.mailbox.retentionDays, vault, runner, reactor), reactor)
        retention.setName("retention")
        retention.setServiceParent(root)
    scheduler = None
    if workerIndex == 0:
        relay = buildRelay(config, reactor, runner)
        scheduler = RetryScheduler(queue=queue, local=local, bounce=intake.bounce, clock=reactor, metrics=metrics,
                                   retrySchedule=config.relay.retrySchedule,
                                   queueLifetimeSeconds=config.relay.queueLifetimeSeconds, relay=relay,
                                   delayWarningSeconds=config.relay.delayWarningSeconds, transit=sealer)
        scheduler.setServiceParent(root)
        if relay.tlsReports is not None:
            # RFC 8460: a daily report to each domain that asks for one.
            root.tlsReporter = TLSReporter(log=relay.tlsReports, resolver=relay.resolver, clock=reactor,
                                           submitter=server.hostname, sender=f"postmaster@{server.domains[0]}",
                                           submit=intake.originate)
            root.tlsReporter.setServiceParent(root)
        adopter = QueueAdopter(intake=intake, queue=queue, runner=runner, clock=reactor, dataDir=dataDir,
                               hostname=server.hostname, masterKeyPath=os.path.join(dataDir, "keys", "master.key"))
        ControlService(reactor, controlPath(dataDir), scheduler, adopter).setServiceParent(root)
        if backends.redis is not None:
            # Nodes sharing Redis announce their queues (queue list --all).
            NodeHeartbeat(call=txredisCaller(backends.redis, reactor), clock=reactor, hostname=server.hostname,
                          dataDir=os.path.abspath(dataDir), queue=queue).setServiceParent(root)

    now = datetime.datetime.fromtimestamp(reactor.seconds(), datetime.timezone.utc)
    credentials = serverCredentials(config.tls.cert, config.tls.key, server.hostname, dataDir, now)
    tlsContext = contextFactory(credentials, now, metrics)

    envelopePolicy = RecipientPolicy(users, store, server.domains, config.smtp.maxMessageBytes, metrics)
    keyPool, peerPools = None, {}
    if encryptor is not None and (config.qkd.minPoolKeys or metrics is not None):
        keyPool, peerPools = buildKeyPools(config, encryptor, reactor, root, metrics)
    root.listeners = {}
    portal = Portal(MailRealm(submitterFactory), [UserDirectoryChecker(users)])
    throttle = AuthThrottle(metrics=metrics)
    limiter = MemoryRateLimiter()
    if config.redis.url:
        limiter = RedisRateLimiter(connectRedis(config.redis.url), reactor)
        ClosingService("redis", limiter.disconnect).setServiceParent(root)
    limits = config.limits
    # One count for every listener of this process (a worker has its own).
    sessionLimits = SessionLimits(maxSessions=limits.maxSessions, connectionsPerIp=limits.connectionsPerIp,
                                  metrics=metrics)
    root.sessionLimits = sessionLimits
    settings = SessionSettings(
        hostname=server.hostname, domains=server.domains, maxMessageBytes=config.smtp.maxMessageBytes,
        maxRecipients=config.smtp.maxRecipients, idleTimeoutSeconds=config.smtp.idleTimeoutSeconds,
        tlsContext=tlsContext, connectionsPerIp=limits.connectionsPerIp, metrics=metrics)
    mtaPolicy = SessionPolicy(envelopePolicy, reactor, limiter, limits.messagesPerIpHour, inbound, diskSpace,
                              keyPool, peerDomains=frozenset(domain for domain, _ in config.qkd.peers))
    if receiver is not None:
        receiver.charge = mtaPolicy.chargeMessage
    factoryArgs = dict(intake=intake, clock=reactor, settings=settings, limits=sessionLimits, policy=mtaPolicy)
    submissionArgs = dict(factoryArgs, settings=attrs.evolve(settings, portal=portal, throttle=throttle),
                          policy=SessionPolicy(envelopePolicy, reactor, limiter, limits.messagesPerUserHour,
                                               diskSpace=diskSpace, keyPool=keyPool, peerPools=peerPools))
    if adoptFd is not None:
        service = AdoptedListenerService(reactor, adoptFd, SMTPServerFactory(**factoryArgs))
        service.setName("listener-mta")
        service.setServiceParent(root)
        root.listeners["mta"] = service
    wanted = []
    if adoptFd is None:
        if not msaOnly:
            wanted.append(("mta", config.smtp.mtaPort, factoryArgs))
        if not mtaOnly and workerIndex == 0:
            wanted.append(("submission", config.smtp.submissionPort, submissionArgs))
            wanted.append(("smtps", config.smtp.smtpsPort, dict(
                submissionArgs, settings=attrs.evolve(submissionArgs["settings"], implicitTLS=True))))
        if servesMailboxes:
            popPortal = pop3Portal(users, dataDir, vault, runner)
            for name, port, implicit in (("pop3", config.pop3.port, False), ("pop3s", config.pop3.tlsPort, True)):
                wanted.append((name, port, dict(pop3=True, implicitTLS=implicit, portal=popPortal)))
            sealer = None
            if encryptor is not None:
                sealer = AppendSealer(encryptor, runner, os.path.join(dataDir, "queue", "append"))
            mailPortal = imapPortal(users, dataDir, vault, runner, sealer=sealer, indexer=deliveryProcess)
            for name, port, implicit in (("imap", config.imap.port, False), ("imaps", config.imap.tlsPort, True)):
                wanted.append((name, port, dict(imap=True, implicitTLS=implicit, portal=mailPortal)))
            if config.jmap.port or "jmap" in listen:
                jmap = buildJMAPFactory(config, reactor, runner, mailPortal, throttle, notifier, intake,
                                        submissionArgs["policy"], sessionLimits)
                wanted.append(("jmap", config.jmap.port, dict(jmap=jmap, implicitTLS=True)))
    for name, port, args in wanted:
        if not _listens(listen, name, port):
            continue
        description = listen.get(name) or endpointFor(server.bind, port)
        if args.get("jmap"):
            factory = args["jmap"]
        elif args.get("pop3"):
            factory = POP3Factory(args["portal"], runner, reactor, throttle, tlsContext,
                                  implicitTLS=args["implicitTLS"], limits=sessionLimits, listenerName=name)
        elif args.get("imap"):
            factory = IMAPFactory(args["portal"], runner, reactor, throttle, tlsContext,
                                  implicitTLS=args["implicitTLS"], hostname=server.hostname,
                                  defaultQuotaBytes=config.mailbox.defaultQuotaBytes,
                                  maxAppendBytes=config.smtp.maxMessageBytes, limits=sessionLimits,
                                  notifier=notifier, listenerName=name)
        else:
            factory = SMTPServerFactory(**dict(args, settings=attrs.evolve(args["settings"], listenerName=name)))
        listening = factory
        if args.get("implicitTLS") or ("settings" in args and args["settings"].implicitTLS):
            # RFC 8314: TLS from the first byte on the submissions port.
            listening = TLSMemoryBIOFactory(tlsContext, False, factory)
        service = ListenerService(serverFromString(reactor, description), listening)
        service.smtpFactory = factory
        service.setName(f"listener-{name}")
        service.setServiceParent(root)
        root.listeners[name] = service
    if not root.listeners:
        raise NoListeners(
            "no listener is enabled: "
            + ("--msa-only, but submission_port and smtps_port are 0" if msaOnly
               else "--mta-only, but mta_port is 0" if mtaOnly else "every port in [smtp] is 0")
        )
    if workerIndex == 0 and server.workers > 1 and "mta" in root.listeners:
        WorkerPool(reactor, os.path.abspath(config.path), server.workers - 1, root.listeners["mta"],
                   workerGone=partial(processGone, metricsDirectory(dataDir)) if metrics else None,
                   ).setServiceParent(root)
    if metrics is not None and workerIndex == 0:
        watches = list(dict.fromkeys([keyPool, *peerPools.values()])) if keyPool is not None else []
        root.metricsService = serveMetrics(config, reactor, runner, metrics, root, root.listeners, journalDir,
                                           watches, listen=listen.get("metrics"))
    root.router = router
    root.intake = intake
    root.queue = queue
    root.encryptor = encryptor
    root.scheduler = scheduler
    root.users = users
    return root
