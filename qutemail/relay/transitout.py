# -*- test-case-name: tests.relay.test_transitout -*-
"""
The sending half of inter-site mail: before the relay sends a queued
message to a domain of C{[qkd] peers}, the message is sealed in the QKD
transit form (L{qutemail.qkd.transit}) with a fresh key from our KME's
C{enc_keys} naming that site's SAE.

One key per peer site and message, however many of its domains and
recipients: the transit copy is written once to C{queue/transit/}, synced,
and recorded in the queue entry (key id, size, DKIM-Signature) before it
is first sent, so every retry sends the same bytes and no key is taken
twice.  The copy is DKIM-signed like any outbound mail, over the transit
form, since that is what the peer receives.

No key (the KME is down, slow, empty or refuses):
  - under C{peer_policy = require} the recipients are deferred with the
    reason (C{queue list} shows it) and tried again on the schedule;
    nothing leaves in clear;
  - under C{prefer} the message is sent as it is (over TLS where the peer
    offers it), and a warning is logged once per message.

The copies of a message are removed once none of its recipients waits.
"""

import hashlib
import os
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.durable import makeDirectories, removeFile
from qutemail.interfaces import KeySourceError
from qutemail.message import QueueEntry, SpooledMessage
from qutemail.qkd.transit import sealTransit
from qutemail.replies import TRANSIT_SEAL_KEY_UNAVAILABLE as TRANSIT_KEY_UNAVAILABLE, ReplyError, oneLine
from qutemail.serial import Batcher, SerialQueue
# The most keys one enc_keys request asks for.
MAX_KEYS_PER_REQUEST = 64
# How long a key taken ahead (prefetchKeys) may wait for a message.
SPARE_SECONDS = 60.0
# What the server asks for ahead, per request.
PREFETCH_KEYS = 16


def _sizeOf(path: str) -> int | None:
    """
    @return: a file's size, or C{None} when it is missing.  Blocking.
    """
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


@attrs.frozen
class Outgoing:
    """
    What the relay sends to a peer: the transit copy.

    @ivar body: opens it for reading.
    @ivar size: its size.
    @ivar prefix: its DKIM-Signature field, or C{b""}.
    """

    body: Any
    size: int
    prefix: bytes


class TransitSealer:
    """
    Makes and keeps the transit copies of queued messages (see the module
    docstring).
    """

    _log = Logger()

    def __init__(self, *, peers: dict[str, str], saeId: str, policy: str, keySource: Any, runner: Any,
                 directory: str, signer: Any = None, keySizeBits: int = 256, save: Any = None,
                 prefetchKeys: int = 0, clock: Any = None) -> None:
        """
        @param peers: peer domain (lower case) to its SAE id.
        @param saeId: our SAE id (the master).
        @param policy: C{require} or C{prefer}.
        @param keySource: our KME (L{qutemail.interfaces.IQKDKeySource}).
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param directory: where transit copies live (C{queue/transit/}).
        @param signer: DKIM-signs the copies
            (L{qutemail.pipeline.signing.OutboundSigner}), or C{None}.
        @param keySizeBits: the key size to ask for.
        @param save: C{save(entry)}, an async callable writing a queue
            entry durably (the scheduler sets it).
        @param prefetchKeys: how many keys one C{enc_keys} asks for at
            least; the ones no seal is waiting for are kept, in memory
            only, for the next seals of that site, at most
            L{SPARE_SECONDS} (0: none kept).  A key kept and never used (a
            restart) is one the peer's KME holds for nobody: no harm.
        @param clock: an C{IReactorTime} that ages kept keys (C{None}:
            they never age; tests).
        """
        self.peers = {domain.lower(): sae for domain, sae in peers.items()}
        self.saeId = saeId
        self.policy = policy
        self.keySource = keySource
        self.runner = runner
        self.directory = directory
        self.signer = signer
        self.keySizeBits = keySizeBits
        self.save = save
        self._locks: dict[tuple[str, str], SerialQueue] = {}
        self._keys = Batcher(self._encKeys, MAX_KEYS_PER_REQUEST)
        self.prefetchKeys = prefetchKeys
        self.clock = clock
        self._spare: dict[str, list[tuple[float, tuple[str, bytes]]]] = {}
        self._madeDirectory = False

    @property
    def sealedDomains(self) -> frozenset[str]:
        """
        The domains whose mail always leaves in the transit form (under
        C{require}; under C{prefer} it may leave as it is).
        """
        return frozenset(self.peers) if self.policy == "require" else frozenset()

    def peerOf(self, domain: str) -> str | None:
        """
        @return: the SAE id of the peer site C{domain} belongs to, or C{None}.
        """
        return self.peers.get(domain.lower())

    def pathFor(self, queueId: str, sae: str) -> str:
        """
        @return: the transit copy's file for one message and peer site.
        """
        return os.path.join(self.directory, f"{queueId}-{hashlib.sha256(sae.encode()).hexdigest()[:16]}.msg")

    def prepare(self, entry: QueueEntry, domain: str) -> Deferred:
        """
        What to send to C{domain} for this entry.

        @return: a Deferred firing with an L{Outgoing}, or C{None} to send
            the message as it is (not a peer domain, or C{prefer} without a
            key).
        @raise ReplyError: (in the Deferred) no key under C{require}: a
            temporary reply to record for the recipients.
        """
        return Deferred.fromCoroutine(self._prepare(entry, domain))

    async def _prepare(self, entry: QueueEntry, domain: str) -> Outgoing | None:
        """
        See L{prepare}.
        """
        sae = self.peerOf(domain)
        if sae is None:
            return None
        # Two domains of one site in one retry share one copy and one key.
        key = (entry.queueId, sae)
        copying = self._locks.setdefault(key, SerialQueue())
        try:
            return await copying.run(lambda: Deferred.fromCoroutine(self._copyFor(entry, sae)))
        finally:
            if not copying.busy:
                self._locks.pop(key, None)

    async def _copyFor(self, entry: QueueEntry, sae: str) -> Outgoing | None:
        """
        The existing copy for C{sae}, or a new one.
        """
        path = self.pathFor(entry.queueId, sae)
        made = entry.transit.get(sae)
        if made is not None and await self.runner.run(_sizeOf, path) == made["size"]:
            return Outgoing(lambda: open(path, "rb"), made["size"], made["dkimHeader"].encode("ascii", "replace"))
        try:
            keyId, key = await self._takeKey(sae)
        except KeySourceError as e:
            return await self._noKey(entry, sae, str(e))
        message = entry.message
        if not self._madeDirectory:
            await self.runner.run(makeDirectories, self.directory)
            self._madeDirectory = True
        sealed = await self.runner.run(sealTransit, message.openBody, path, keyId, key, self.saeId, sae)
        dkimHeader = ""
        if self.signer is not None:
            dkimHeader = await self.signer.headerFor(
                SpooledMessage(message.queueId, message.envelope, sealed.storedBytes, path=path))
        # Saved with the outcome of the attempt that follows: a crash before
        # that costs one key (the next attempt seals again, over the copy;
        # a copy of a message no longer queued is swept at start-up),
        # never mail.
        entry.transit[sae] = {"keyId": keyId, "size": sealed.storedBytes, "dkimHeader": dkimHeader}
        self._log.info("{queueId}: sealed for peer SAE {sae} with QKD key {keyId} ({size} bytes in transit)",
                       queueId=entry.queueId, sae=sae, keyId=keyId, size=sealed.storedBytes)
        return Outgoing(lambda: open(path, "rb"), sealed.storedBytes, dkimHeader.encode("ascii", "replace"))

    async def _noKey(self, entry: QueueEntry, sae: str, problem: str) -> None:
        """
        No key for C{sae}: defer (C{require}) or send as it is (C{prefer}).

        @raise ReplyError: under C{require}.
        """
        if self.policy != "prefer":
            self._log.info("{queueId}: no QKD key for peer SAE {sae}, deferred: {problem}",
                           queueId=entry.queueId, sae=sae, problem=problem)
            raise ReplyError(TRANSIT_KEY_UNAVAILABLE.withText(
                f"{TRANSIT_KEY_UNAVAILABLE.text} for peer SAE {oneLine(sae, 64)}: {oneLine(problem)}"))
        if not entry.transitWarned:
            entry.transitWarned = True
            if self.save is not None:
                await self.save(entry)
            self._log.warn("{queueId}: no QKD key for peer SAE {sae} ({problem}); sent without transit "
                           "encryption ([qkd] peer_policy = prefer)", queueId=entry.queueId, sae=sae,
                           problem=problem)
        return None

    def _takeKey(self, sae: str) -> Deferred:
        """
        One fresh key for C{sae}.  Seals waiting at the same time share one
        C{enc_keys} request (up to L{MAX_KEYS_PER_REQUEST} keys; the client
        splits it further when the KME allows fewer), one request per SAE
        at a time.

        @return: a Deferred firing with C{(keyId, key)}.
        @raise KeySourceError: (in the Deferred) no key.
        """
        spare = self._spare.get(sae)
        now = self.clock.seconds() if self.clock is not None else 0.0
        while spare:
            takenAt, key = spare.pop(0)
            if now - takenAt <= SPARE_SECONDS:
                return succeed(key)
        return self._keys.add(sae, None)

    async def _encKeys(self, sae: str, waiting: list) -> list:
        """
        One C{enc_keys} request for the seals waiting (see L{Batcher}),
        taking L{prefetchKeys} at least and keeping the extra ones.

        @return: a key, or a failure, per seal.
        """
        number = min(MAX_KEYS_PER_REQUEST, max(len(waiting), self.prefetchKeys))
        keys = [tuple(k) for k in await self.keySource.encKeys(sae, self.keySizeBits, number)]
        if len(keys) > len(waiting):
            takenAt = self.clock.seconds() if self.clock is not None else 0.0
            self._spare.setdefault(sae, []).extend((takenAt, k) for k in keys[len(waiting):])
        short = Failure(KeySourceError(f"KME enc_keys for SAE {sae}: {len(keys)} keys for {len(waiting)}"))
        return keys[:len(waiting)] + [short] * (len(waiting) - len(keys))

    def discard(self, entry: QueueEntry) -> Deferred:
        """
        Remove the transit copies of an entry none of whose recipients
        waits any more.
        """
        paths = [self.pathFor(entry.queueId, sae) for sae in entry.transit]
        return self.runner.run(lambda: [removeFile(p) for p in paths])

    def sweep(self, live: set[str]) -> Deferred:
        """
        Remove copies whose message is no longer queued (left by a crash).

        @param live: the queue ids in the queue.
        @return: a Deferred firing with how many were removed.
        """
        return self.runner.run(self._sweep, live)

    def _sweep(self, live: set[str]) -> int:
        """
        See L{sweep}.  Blocking.
        """
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        removed = 0
        for name in names:
            if name.rpartition("-")[0] not in live:
                removeFile(os.path.join(self.directory, name))
                removed += 1
        return removed

