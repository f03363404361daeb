# -*- test-case-name: tests.test_service -*-
"""
The QKD layer of a server, built at start-up: the key source (the embedded
KME, or the configured one), the encryptor of internal mail at rest, and
the two halves of inter-site mail with the sites of C{[qkd] peers}.
"""

import datetime
import os
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from qutemail.assembly import ClosingService, ServiceConfigError
from qutemail.durable import makeDirectories, replaceFile
from qutemail.pipeline.transitin import TransitReceiver
from qutemail.pipeline.transitkeys import TransitKeyLog
from qutemail.qkd.certs import ensurePKI
from qutemail.qkd.cipher import PLACEHOLDER_SUBJECT
from qutemail.qkd.etsi014 import ETSI014KeySource
from qutemail.qkd.kme import EmbeddedKeySource, EmbeddedKMEService
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from qutemail.policy.keypool import KeyPoolWatch
from qutemail.relay.transitout import PREFETCH_KEYS, TransitSealer
from qutemail.replies import KEY_POOL_LOW
from qutemail.store.encrypted import MessageEncryptor

_log = Logger()


def buildEncryptor(config: Any, reactor: Any, runner: Any, parent: MultiService, vault: Any,
                   metrics: Any = None, sealer: Any = None) -> MessageEncryptor:
    """
    The QKD layer: the key source (the embedded KME on loopback when
    C{[qkd] kme_url} is empty, else the configured KME), the key vault and
    the encryptor that seals internal mail.  Blocking (certificates and
    files): call before the reactor runs.

    @param parent: gets the embedded KME and the client's service.
    @param metrics: counts the client's requests to the KME, or C{None}.
    @param sealer: encrypts inline messages in another process (the
        delivery process), or C{None} for the runner's threads.
    """
    dataDir = config.server.dataDir
    qkd = config.qkd
    saeId = qkd.saeId or config.server.hostname
    now = datetime.datetime.fromtimestamp(reactor.seconds(), datetime.timezone.utc)
    if qkd.kmeUrl:
        if not (qkd.clientCert and qkd.clientKey and qkd.caCert):
            raise ServiceConfigError("[qkd] kme_url needs client_cert, client_key and ca_cert")
        try:
            source = ETSI014KeySource.fromFiles(reactor, qkd.kmeUrl, qkd.clientCert, qkd.clientKey, qkd.caCert,
                                                kmeId=qkd.kmeId or None, metrics=metrics)
        except (OSError, ValueError) as e:
            raise ServiceConfigError(f"[qkd] cannot load the KME client credentials: {e}") from None
    else:
        pki = ensurePKI(makeDirectories(os.path.join(dataDir, "keys", "qkd")), [saeId], now)  # keys/ 0700 too
        settings = PoolSettings(maxKeyCount=qkd.poolKeys, refillKeysPerSecond=float(qkd.refillKeysPerSecond))
        kme = EmbeddedKMEService(reactor, KME(f"qutemail-kme-{saeId}", [saeId], QKDLink(settings)), pki)
        kme.setServiceParent(parent)
        urlFile = os.path.join(dataDir, "keys", "qkd", "kme-url")
        # For 'qutemail qkd status': where the embedded KME listens this time.
        kme.whenListening().addCallbacks(
            lambda url: runner.run(replaceFile, urlFile, url.encode("ascii")),
            lambda failure: _log.debug("no KME URL to record: the KME did not listen"))
        source = EmbeddedKeySource.forSAE(kme, saeId, timeoutSeconds=10, metrics=metrics)
    ClosingService("qkd-client", source.close).setServiceParent(parent)
    sealed = os.path.join(dataDir, "queue", "sealed")
    # The slave SAE of keys at rest: ourselves by default (the embedded
    # KME allows it); a vendor KME pair wants another SAE ([qkd] rest_sae).
    encryptor = MessageEncryptor(source, vault, runner, qkd.restSae or saeId, sealed,
                                 subject=None if qkd.keepSubject else PLACEHOLDER_SUBJECT,
                                 keySizeBits=qkd.keySizeBits, sealer=sealer, clock=reactor)
    makeDirectories(sealed)
    encryptor.cleanup(reactor.seconds())
    return encryptor


def buildKeyPools(config: Any, encryptor: MessageEncryptor, clock: Any,
                  parent: MultiService, metrics: Any = None) -> tuple[KeyPoolWatch, dict[str, KeyPoolWatch]]:
    """
    Admission by key pool (C{[qkd] min_pool_keys}): one watch for the link
    of keys at rest, and one per peer site's link.  With C{min_pool_keys =
    0} they only feed the metrics and the health check.

    @param parent: gets the watches.
    @param metrics: gets each link's stored key count, or C{None}.
    @return: the rest link's watch, and the watch of each peer domain.
    """
    minKeys = config.qkd.minPoolKeys
    rest = KeyPoolWatch(encryptor.keySource, encryptor.peerSAE, minKeys, clock, metrics=metrics)
    rest.setServiceParent(parent)
    watches = {encryptor.peerSAE: rest}
    for _, sae in config.qkd.peers:
        if sae not in watches:
            watches[sae] = KeyPoolWatch(
                encryptor.keySource, sae, minKeys, clock, what=f"mail to peer site {sae}", metrics=metrics,
                reply=KEY_POOL_LOW.withText(f"QKD key pool for peer site {sae} low: "
                                            f"mail to it is not accepted now, try again later"))
            watches[sae].setServiceParent(parent)
    return rest, {domain: watches[sae] for domain, sae in config.qkd.peers}


def buildTransit(config: Any, encryptor: MessageEncryptor, vault: Any, runner: Any,
                 signer: Any, clock: Any) -> tuple[TransitReceiver, TransitSealer]:
    """
    Inter-site mail with the sites of C{[qkd] peers}: what opens mail they
    send us, and what seals mail we send them.
    """
    qkd = config.qkd
    peers = dict(qkd.peers)
    saeId = qkd.saeId or config.server.hostname
    keyLog = TransitKeyLog(os.path.join(config.server.dataDir, "keys", "transit-keys"), runner, clock)
    receiver = TransitReceiver(peers=peers, saeId=saeId, keySource=encryptor.keySource, vault=vault, runner=runner,
                               keyLog=keyLog)
    sealer = TransitSealer(peers=peers, saeId=saeId, policy=qkd.peerPolicy, keySource=encryptor.keySource,
                           runner=runner, directory=os.path.join(config.server.dataDir, "queue", "transit"),
                           signer=signer, keySizeBits=qkd.keySizeBits, prefetchKeys=PREFETCH_KEYS,
                           clock=clock)
    return receiver, sealer
