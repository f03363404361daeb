# -*- test-case-name: tests.pipeline.test_transitin -*-
"""
The receiving half of inter-site mail: a message a peer site sent in the
QKD transit form (L{qutemail.qkd.transit}) is opened in the intake, after
DATA and before the 250.

For a message in the transit form (and only mail from outside is looked
at), in order:

  1. the control part is read; its slave SAE must be ours, and its master
     SAE must be the one C{[qkd] peers} gives for the envelope sender's
     domain (for the null sender: some peer's).  Otherwise C{550 5.7.1},
     nothing stored;
  2. the key: from our key vault if this key id was fetched before (a
     resend after a lost 250), else from our KME with C{dec_keys} naming
     the master SAE, then written to the vault durably before anything
     else.  A KME that is down, slow or out of order gives C{451 4.3.0}
     (the sender retries); one that says no (unknown key, not ours) gives
     C{554 5.7.1};
  3. the message is decrypted (a worker thread, streamed to a new spool
     file, synced): a failed tag check gives C{554 5.7.1} and nothing is
     stored.

What comes out is the original message, marked with the transit key id
(L{qutemail.message.Envelope.transitKeyId}), so that local delivery
stores it encrypted at rest under a key of our own, as internal mail.

Transit keys live in the vault under C{transit-<key id>}, apart from the
keys of mail at rest.
"""

import io
import os
import uuid
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from qutemail.address import domainOf
from qutemail.interfaces import KeyGone, KeySourceError
from qutemail.message import SpooledMessage
from qutemail.qkd.cipher import decryptBytes
from qutemail.qkd.transit import TRANSIT, DecryptionError, isTransit, openTransit, readTransitEnvelope
from qutemail.replies import (
    TRANSIT_DAMAGED, TRANSIT_KEY_UNAVAILABLE, TRANSIT_NOT_A_PEER as NOT_A_PEER, TRANSIT_REFUSED, ReplyError,
    oneLine,
)
from qutemail.serial import Batcher, SerialQueue

# Enough of a message to find its header block.
_HEAD_BYTES = 65536
VAULT_PREFIX = "transit-"
# The most keys one dec_keys request asks for.
MAX_KEYS_PER_REQUEST = 16


class TransitReceiver:
    """
    Opens transit messages from peer sites (see the module docstring).
    """

    _log = Logger()

    def __init__(self, *, peers: dict[str, str], saeId: str, keySource: Any, vault: Any, runner: Any,
                 charge: Any = None, keyLog: Any = None) -> None:
        """
        @param peers: peer domain (lower case) to its SAE id.
        @param saeId: our SAE id.
        @param keySource: our KME (L{qutemail.interfaces.IQKDKeySource}).
        @param vault: the L{qutemail.interfaces.IKeyVault}.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param charge: C{charge(clientIP)}, an async callable counting a
            message against the client's rate limit (raising a
            L{ReplyError} past it), for mail from a peer domain that is not
            a transit message (the MTA policy's
            L{qutemail.policy.session.SessionPolicy.chargeMessage}, which
            did not count it at C{MAIL}); C{None}: nothing counted.
        @param keyLog: the L{qutemail.pipeline.transitkeys.TransitKeyLog}
            that notes each key kept, for its erasure once no resend can
            come; C{None}: kept for good.
        """
        self.keyLog = keyLog
        self.charge = charge
        self.peers = {domain.lower(): sae for domain, sae in peers.items()}
        self.saeId = saeId
        self.keySource = keySource
        self.vault = vault
        self.runner = runner
        self._locks: dict[str, SerialQueue] = {}
        self._keys = Batcher(self._decKeys, MAX_KEYS_PER_REQUEST)

    def open(self, message: SpooledMessage, traceBytes: int = 0) -> Deferred:
        """
        Open a message if it is in the transit form.

        @param traceBytes: how many first bytes are our own trace fields,
            added on receipt outside the transit form; they stay on top of
            the decrypted original.

        @return: a Deferred firing with the message to take in: C{message}
            itself when it is not a transit message, else its decrypted
            original (the transit spill file, if any, removed).
        @raise ReplyError: (in the Deferred) the message is refused, for
            now or for good; nothing of it is kept.
        """
        return Deferred.fromCoroutine(self._open(message, traceBytes))

    async def _open(self, message: SpooledMessage, traceBytes: int) -> SpooledMessage:
        """
        See L{open}.
        """
        head = message.inline[:traceBytes + _HEAD_BYTES] if message.inline is not None else \
            await self.runner.run(_readHead, message.path, traceBytes)
        trace, head = head[:traceBytes], head[traceBytes:]
        if not isTransit(head):
            await self._chargeIfPeerSender(message)
            return message
        try:
            return await self._openTransit(message, traceBytes, trace, head)
        except ReplyError:
            # A refused transit message counts as any message would: a
            # forger gains nothing by naming a peer.
            try:
                await self._chargeIfPeerSender(message)
            except ReplyError:
                pass
            raise

    async def _chargeIfPeerSender(self, message: SpooledMessage) -> None:
        """
        Count a message whose sender names a peer domain against the
        client's rate limit (the policy did not at C{MAIL}).

        @raise ReplyError: the limit is used up.
        """
        sender = message.envelope.sender
        if self.charge is not None and sender and domainOf(sender) in self.peers:
            await self.charge(message.envelope.peer)

    async def _openTransit(self, message: SpooledMessage, traceBytes: int, trace: bytes,
                           head: bytes) -> SpooledMessage:
        """
        Open a message in the transit form.

        @param trace: our own trace fields, kept on top.
        @param head: the start of the message after them, already read.
        @raise ReplyError: it is refused.
        """
        try:
            envelope = await self.runner.run(_readEnvelope, message, traceBytes, head)
        except DecryptionError as e:
            raise ReplyError(TRANSIT_DAMAGED.withText(f"{TRANSIT_DAMAGED.text}: {oneLine(str(e))}"))
        try:
            uuid.UUID(envelope.keyId)
        except ValueError:
            # ETSI GS QKD 014 key ids are UUIDs (and ours are kept as
            # "transit-<id>", which a longer id would not fit).
            raise ReplyError(TRANSIT_DAMAGED.withText(f"{TRANSIT_DAMAGED.text}: the Key-Id is not a UUID"))
        master, slave = envelope.parties
        self._checkParties(message, master, slave)
        key = await self._key(master, envelope.keyId)
        try:
            if message.inline is not None:
                plain = trace + await self.runner.run(decryptBytes, message.inline[traceBytes:], key, TRANSIT)
                opened = attrs.evolve(message, inline=plain, size=len(plain))
            else:
                path = message.path + ".plain"
                size = await self.runner.run(openTransit, message.path, path, key, traceBytes)
                await self.runner.run(os.unlink, message.path)
                opened = attrs.evolve(message, path=path, size=size)
        except DecryptionError as e:
            self._log.warn("refused transit message {queueId} from SAE {master}: {problem}",
                           queueId=message.queueId, master=master, problem=str(e))
            raise ReplyError(TRANSIT_REFUSED.withText(f"{TRANSIT_REFUSED.text}: it fails authentication"))
        self._log.info("{queueId}: opened QKD transit message from SAE {master} (key {keyId})",
                       queueId=message.queueId, master=master, keyId=envelope.keyId)
        return attrs.evolve(opened, envelope=attrs.evolve(message.envelope, transitKeyId=envelope.keyId))

    def _checkParties(self, message: SpooledMessage, master: str, slave: str) -> None:
        """
        The message must be for us and from the peer its sender names.

        @raise ReplyError: it is not.
        """
        sender = message.envelope.sender
        if sender:
            expected = self.peers.get(domainOf(sender))
            allowed = expected is not None and master == expected
        else:
            allowed = master in self.peers.values()
        if not allowed or slave != self.saeId:
            self._log.warn("refused transit message {queueId} from <{sender}> [{peer}]: master SAE {master}, "
                           "slave SAE {slave}, not a configured peer of ours", queueId=message.queueId,
                           sender=sender, peer=message.envelope.peer, master=master, slave=slave)
            raise ReplyError(NOT_A_PEER)

    async def _key(self, master: str, keyId: str) -> bytes:
        """
        The transit key: from the vault, else from the KME, kept in the
        vault before it is used.  One at a time per key id, so a resend
        racing the first copy finds the key in the vault.
        """
        queue = self._locks.setdefault(keyId, SerialQueue())
        try:
            return await queue.run(lambda: Deferred.fromCoroutine(self._keptOrFetched(master, keyId)))
        finally:
            if not queue.busy:
                self._locks.pop(keyId, None)

    async def _keptOrFetched(self, master: str, keyId: str) -> bytes:
        """
        See L{_key}.
        """
        vaultId = VAULT_PREFIX + keyId
        try:
            return await self.vault.fetch(vaultId)
        except KeyGone:
            pass
        except Exception as e:
            raise ReplyError(TRANSIT_KEY_UNAVAILABLE.withText(
                f"Key vault unavailable, try again later ({type(e).__name__})"))
        return await self._fetchAndKeep(master, keyId, vaultId)

    def _decKey(self, master: str, keyId: str) -> Deferred:
        """
        One key from our KME.  Keys from one master wanted at the same time
        share a C{dec_keys} request (up to L{MAX_KEYS_PER_REQUEST}), one
        request per master at a time; when the KME refuses such a request
        for good (it hands out all or none, and one key may be unknown),
        each key is asked for alone, so one bad message cannot cost the
        others their keys.

        @return: a Deferred firing with the key.
        """
        if not hasattr(self.keySource, "decKeys"):
            return self.keySource.decKey(master, keyId)
        return self._keys.add(master, keyId)

    async def _decKeys(self, master: str, keyIds: list[str]) -> list:
        """
        One C{dec_keys} request for the keys waiting (see L{Batcher}); if
        the KME refuses it for good, one request per key.

        @return: a key, or a failure, per key id.
        """
        try:
            return list(await self.keySource.decKeys(master, keyIds))
        except KeySourceError as e:
            if len(keyIds) == 1 or e.temporary:
                raise
        singles = await DeferredList([maybeDeferred(self.keySource.decKey, master, k) for k in keyIds],
                                     consumeErrors=True)
        return [result for _, result in singles]

    async def _fetchAndKeep(self, master: str, keyId: str, vaultId: str) -> bytes:
        """
        Ask the KME, then store the key durably.
        """
        try:
            key = await self._decKey(master, keyId)
        except KeySourceError as e:
            self._log.warn("dec_keys for transit key {keyId} from SAE {master} failed: {problem}",
                           keyId=keyId, master=master, problem=str(e))
            if e.temporary:
                raise ReplyError(TRANSIT_KEY_UNAVAILABLE)
            raise ReplyError(TRANSIT_REFUSED.withText(f"{TRANSIT_REFUSED.text}: our KME does not hold its key"))
        try:
            await self.vault.store(vaultId, key)
        except Exception as e:
            # The KME hands a key out once: without it in the vault, a
            # resend could never be read.  Nothing was stored, so the
            # sender may try again; the log says what was lost.
            self._log.error("transit key {keyId} could not be kept ({problem}); its message is refused for now",
                            keyId=keyId, problem=f"{type(e).__name__}: {e}")
            raise ReplyError(TRANSIT_KEY_UNAVAILABLE.withText("Key vault unavailable, try again later"))
        if self.keyLog is not None:
            try:
                await self.keyLog.note(vaultId)
            except Exception as e:
                # The key is kept all the same; it only will not be erased.
                self._log.warn("transit key {keyId} kept but not logged for erasure: {problem}", keyId=keyId,
                               problem=f"{type(e).__name__}: {e}")
        return key


def _readHead(path: str, traceBytes: int) -> bytes:
    """
    @return: the first bytes of a spill file.  Blocking.
    """
    with open(path, "rb") as f:
        return f.read(traceBytes + _HEAD_BYTES)


def _readEnvelope(message: SpooledMessage, traceBytes: int, head: bytes) -> Any:
    """
    @return: the transit control part of a spooled message, from C{head}
        (what was read of it already) when the part lies within it, else
        from the file.  Blocking.
    """
    try:
        return readTransitEnvelope(io.BytesIO(head))
    except DecryptionError:
        if len(head) < _HEAD_BYTES:
            raise  # the whole message was in hand
    with message.openBody() as f:
        f.seek(traceBytes)
        return readTransitEnvelope(f)
