# -*- test-case-name: tests.test_assembly -*-
"""
The parts a configuration asks for.  The backends (the user directory,
the relay queue and the key vault) are built in one place for the server
(L{qutemail.service}) and the command-line tool (L{qutemail.cli}) alike;
the relay and the inbound checks for the server alone.

The server passes its thread pool and the reactor; the command-line tool,
which runs no reactor, passes an L{qutemail.blocking.InlineRunner} and a
clock of its own, and gets a vault it can use without one.
"""

import os
from functools import partial
from typing import Any

import attrs
from cryptography import x509
from OpenSSL import crypto
from twisted.application.service import MultiService, Service
from twisted.internet.ssl import Certificate, trustRootFromCertificates

from qutemail.backends.redisvault import BlockingRedisKeys, RedisKeyVault, checkVaultPersistence
from qutemail.backends.redislimiter import connect as connectRedis
from qutemail.backends.redisusers import RedisUserDirectory, blockingCaller, txredisCaller
from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import BlockingRunner
from qutemail.configvalues import splitHostPort
from qutemail.content.clamd import ClamdClient, clamdEndpoint
from qutemail.content.rspamd import RspamdClient
from qutemail.content.scanner import ContentScanner
from qutemail.dns import ResolverCache
from qutemail.pipeline.dkimverify import DKIMVerifier
from qutemail.policy.dmarc import DMARCEvaluator
from qutemail.policy.inbound import InboundChecks
from qutemail.policy.spf import SPFChecker
from qutemail.qkd.vault import FileKeyVault, loadQueueKey
from qutemail.queue.deferred import DeferredQueue
from qutemail.relay.mtasts import MTASTSPolicies
from qutemail.relay.tlsrpt import TLSReportLog
from qutemail.relay.mx import MXResolver
from qutemail.relay.sender import Relay
from qutemail.store.encrypted import isInternal
from qutemail.store.mailbox import MailDirError, linkMailDir
from qutemail.ttlcache import ExpiringCache


@attrs.frozen
class Backends:
    """
    What one process works with.

    @ivar users: the L{qutemail.interfaces.IUserDirectory}.
    @ivar queue: the L{qutemail.interfaces.IRelayQueue}.
    @ivar vault: the L{qutemail.interfaces.IKeyVault}.
    @ivar close: closes what the backends hold open (a Redis connection);
        may return a Deferred.
    @ivar redis: the server's txredisapi connection, or C{None}.
    """

    users: Any
    queue: Any
    vault: Any
    close: Any = lambda: None
    redis: Any = None


def buildBackends(config: Any, runner: Any, clock: Any, reactor: Any = None, withVault: bool = True,
                  keyFiles: Any = None, hashRunner: Any = None) -> Backends:
    """
    Build the backends of a configuration.

    @param config: the L{qutemail.config.Config}.
    @param runner: runs blocking work (the server's thread pool, or an
        inline runner).
    @param clock: an C{IReactorTime}.
    @param reactor: the running reactor, in the server; C{None} in the
        command-line tool, which then gets a blocking Redis vault.
    @param withVault: build the vault (an extra SMTP worker has none).
    @param keyFiles: what writes the file vault's new key files (see
        L{FileKeyVault.keyFiles}), or C{None} for the runner.
    @param hashRunner: runs the user directory's password hashing and
        checks (the server's password threads), or C{None} for the runner.
    @return: the L{Backends}.
    @raise qutemail.backends.redisvault.VolatileVaultError: the server's
        vault would be in a Redis that may lose it (asked with a short
        blocking call: the server builds its backends before the reactor
        runs), and C{[redis] allow_volatile_vault} is not set.
    """
    dataDir = config.server.dataDir
    keys = os.path.join(dataDir, "keys")
    masterKey = os.path.join(keys, "master.key")
    try:
        linkMailDir(dataDir, config.mailbox.mailDir)
    except (MailDirError, OSError) as e:
        raise ServiceConfigError(str(e)) from None
    connection = None
    if not config.redis.url:
        users: Any = FileUserDirectory(os.path.join(dataDir, "users"), runner, clock, hashRunner=hashRunner)
    elif reactor is None:
        users = RedisUserDirectory(blockingCaller(config.redis.url), hashRunner or runner)
    else:
        # One connection for the users and the vault.
        connection = connectRedis(config.redis.url)
        users = RedisUserDirectory(txredisCaller(connection, reactor), hashRunner or runner)
    close = connection.disconnect if connection is not None else (lambda: None)
    # Deferred internal mail is sealed under a key derived from master.key.
    queue = DeferredQueue(os.path.join(dataDir, "queue", "deferred"), runner,
                          queueKey=partial(loadQueueKey, masterKey,
                                           vaultDirectory=None if config.redis.url else os.path.join(keys, "vault")),
                          sealIf=partial(isInternal, domains=config.server.domains) if config.qkd.encrypt else None)
    if not withVault:
        return Backends(users, queue, None, close, connection)
    if not config.redis.url:
        return Backends(users, queue, FileKeyVault(os.path.join(keys, "vault"), masterKey, runner,
                                                      keyFiles=keyFiles))
    if reactor is None:
        return Backends(users, queue, BlockingRedisKeys(config.redis.url, masterKey))
    checkVaultPersistence(config.redis.url, config.redis.allowVolatileVault)
    if not config.redis.url.startswith("redis-sentinel://"):
        return Backends(users, queue, RedisKeyVault(connection, reactor, masterKey, runner), close, connection)
    # Through Sentinel the vault's writes wait for a replica (WAIT), on a
    # connection of their own.
    writes = connectRedis(config.redis.url)
    vault = RedisKeyVault(connection, reactor, masterKey, runner, writes=writes)
    return Backends(users, queue, vault, vault.disconnect, connection)


class ServiceConfigError(Exception):
    """
    A part cannot be set up from its configuration (an unreadable smarthost
    password file, KME client credentials missing or unreadable).
    """


def smarthostAddress(text: str) -> tuple[str, int] | None:
    """
    @param text: C{[relay] smarthost}: C{host}, C{host:port} or
        C{[ipv6]:port}, or empty.
    @return: C{(host, port)}, or C{None} for MX delivery.
    """
    return splitHostPort(text) if text else None


def readSecret(path: str, key: str) -> str:
    """
    Read a password file named by the configuration.

    @param path: the file, or C{""} for none.
    @param key: the C{[section] key} that names it, for the error.
    @return: its text without the line end, or C{""} when C{path} is empty.
    @raise ServiceConfigError: the file cannot be read.
    """
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ServiceConfigError(f"{key}: cannot read {path}: {e}") from None


def buildRelay(config: Any, reactor: Any, runner: Any) -> Relay:
    """
    The outbound relay: MX lookups through the configured nameservers, or
    everything through the smarthost.

    @raise ServiceConfigError: when the smarthost password file cannot be read.
    """
    relay = config.relay
    password = readSecret(relay.smarthostPasswordFile, "[relay] smarthost_password_file") or None
    trustRoot = None
    if relay.tlsCa:
        try:
            with open(relay.tlsCa, "rb") as f:
                trustRoot = trustRootFromCertificates(
                    [Certificate(crypto.X509.from_cryptography(c)) for c in x509.load_pem_x509_certificates(f.read())])
        except (OSError, ValueError) as e:
            raise ServiceConfigError(f"[relay] tls_ca: cannot read CA certificates from {relay.tlsCa}: {e}") from None
    # Mail to a peer site goes over verified TLS only, as to a domain of
    # require_verified_tls (its QKD encryption does not depend on it; the
    # envelope does).
    verified = tuple(dict.fromkeys(relay.requireVerifiedTls + tuple(domain for domain, _ in config.qkd.peers)))
    resolver = MXResolver(runner, relay.nameservers)
    return Relay(
        reactor=reactor, resolver=resolver, hostname=config.server.hostname,
        mxPort=relay.mxPort, smarthost=smarthostAddress(relay.smarthost),
        username=relay.smarthostUsername or None, password=password,
        requireVerifiedTls=verified, trustRoot=trustRoot,
        routes={domain: (host, port) for domain, host, port in relay.routes},
        mtaSts=MTASTSPolicies(reactor, resolver, trustRoot, relay.mtaStsPort) if relay.mtaSts else None,
        tlsReports=TLSReportLog(reactor) if relay.mtaSts else None,
    )


# How many DNS answers the inbound checks keep (least recently used go).
INBOUND_DNS_CACHE_ENTRIES = 50_000
# How many whole SPF results (by client, HELO and sender domain) and DMARC
# policies (by From domain) they keep, and for at most how long, whatever
# the TTLs: an hour, as long as the longest TTL commonly published for SPF.
INBOUND_RESULTS_KEPT = 20_000
INBOUND_RESULTS_MAX_SECONDS = 3600.0


def buildInbound(config: Any, reactor: Any, parent: MultiService, metrics: Any = None) -> InboundChecks | None:
    """
    The SPF, DKIM and DMARC checks of mail from other servers, or C{None}
    when C{[inbound] checks} is off.  Their DNS lookups get a thread pool of
    their own, so that a silent DNS server cannot hold up the spool's disk
    work.
    """
    inbound = config.inbound
    if not inbound.checks:
        return None
    runner = BlockingRunner(reactor, minThreads=0, maxThreads=16, name="inbound-checks")
    runner.setServiceParent(parent)
    nameservers, timeout = config.relay.nameservers, inbound.dnsTimeoutSeconds
    # One cache for the checks' answers, kept for their TTLs (NXDOMAIN
    # too): mail from one domain asks DNS once, not three times a message.
    cache = ResolverCache(INBOUND_DNS_CACHE_ENTRIES)
    # And whole results on the reactor thread, so that mail from a sender
    # seen moments ago needs neither DNS nor a worker thread.
    spfResults = ExpiringCache(reactor, INBOUND_RESULTS_KEPT, INBOUND_RESULTS_MAX_SECONDS)
    dmarcPolicies = ExpiringCache(reactor, INBOUND_RESULTS_KEPT, INBOUND_RESULTS_MAX_SECONDS)
    return InboundChecks(
        hostname=config.server.hostname,
        spf=SPFChecker(nameservers, timeout, runner, cache, spfResults),
        dkim=DKIMVerifier(nameservers, timeout, config.smtp.maxMessageBytes, runner, cache),
        dmarc=DMARCEvaluator(nameservers, timeout, runner, cache=cache, policies=dmarcPolicies),
        spfFail=inbound.spfFail, dmarcReject=inbound.dmarcReject, metrics=metrics,
    )


def buildContent(config: Any, reactor: Any, runner: Any, parent: MultiService,
                 metrics: Any = None) -> ContentScanner | None:
    """
    The content scanners (rspamd, clamd) of C{[content]}, or C{None} when
    neither is set.  Their kept-alive connections close when C{parent}
    stops.

    @raise ServiceConfigError: the rspamd password file cannot be read.
    """
    content = config.content
    if not content.enabled:
        return None
    password = readSecret(content.rspamdPasswordFile, "[content] rspamd_password")
    scanner = ContentScanner(
        clock=reactor,
        rspamd=RspamdClient(reactor, runner, content.rspamdUrl, password) if content.rspamdUrl else None,
        clamd=ClamdClient(clamdEndpoint(reactor, content.clamdSocket), runner) if content.clamdSocket else None,
        maxScanBytes=content.maxScanBytes, onError=content.onError, timeoutSeconds=content.timeoutSeconds,
        scanSubmission=content.scanSubmission, metrics=metrics,
    )
    ClosingService("content-scanners", scanner.close).setServiceParent(parent)
    return scanner


class ClosingService(Service):
    """
    Owns a connection (Redis, the KME client's pool): closes it at stop.
    """

    def __init__(self, name: str, close: Any) -> None:
        """
        @param name: the service's name.
        @param close: closes the connection; may return a Deferred.
        """
        self.setName(name)
        self._close = close

    def stopService(self):
        """
        Close the connection.
        """
        Service.stopService(self)
        return self._close()
