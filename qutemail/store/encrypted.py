# -*- test-case-name: tests.store.test_encrypted -*-
"""
The encryption step of local delivery: internal mail is sealed with one QKD
key before it reaches any mailbox.

L{MessageEncryptor.seal} takes one message (a L{SpooledMessage}) and:

    1. takes ONE fresh key from the key source (C{encKey(peerSAE, 256)},
       or its share of one C{encKeys} request, see below) and checks it (a
       safe key id, the asked length);
    2. encrypts the body through L{qutemail.qkd.cipher.encryptStream}: a
       message held inline (small, see L{qutemail.pipeline.spool}) into
       memory, a spilled one streamed from its file into a new file of the
       work directory (C{data_dir/queue/sealed/}), mode 0600;
    3. stores the key in the vault as a new id (C{addKeys} where the vault
       has it, L{qutemail.qkd.vault.FileKeyVault}: created with C{O_EXCL},
       so an id the vault already holds is refused atomically; otherwise
       C{fetch}, which must find nothing, then C{store}): a key id is used
       for one message only, and storing a reused id would replace the key
       of an older message.  The key is durable before C{seal} returns, so
       before anything is written to a mailbox;
    4. returns a L{SealResult}: the sealed L{SpooledMessage} (same queue id
       and envelope; inline, or C{path} the sealed file; C{size} its size),
       ready for L{qutemail.store.maildir.MaildirStore.deliver} to every
       local recipient (one key and one encryption for all of them), and
       the key id.

Once every recipient has its copy, L{MessageEncryptor.discard} removes the
sealed file (nothing to do for one sealed in memory).

Batches.  Seals share the work of their neighbours (and no key is taken
ahead of a message, so the KME's pool shrinks by exactly one key per
message sealed): one batch is under way at a time, from its C{enc_keys}
request until its keys are durable in the vault, and the seals that ask
meanwhile wait together; the next request takes exactly as many keys as
they need (at most C{maxKeysPerRequest}), like Nagle's algorithm waiting
for an acknowledgement.  While seals keep coming, requests are also paced:
the next one starts no sooner than C{requestInterval} (50 ms) after the
start of the one before, unless it would take C{maxKeysPerRequest} keys.
A seal after a quiet spell asks at once; under load a seal waits at most
that long, and the batches grow with the load: on issue 14's benchmark
(about 350-400 internal messages a second) from 3.5 keys a request to
about 18.  The busier the server, the bigger the batches, which is what
makes encryption cheap under load: one HTTPS exchange, one job encrypting
all the batch's inline messages (in the delivery process where the server
has one, on its own core, else in a worker thread), and one vault call (one
directory fsync for the file vault) for many messages.  A spilled
message is sealed and its key stored on its own (its own worker job), so
that a large message does not hold up the next batch.  Every message still
has its own key.

Failures are always temporary replies, so the router defers the delivery
and retries (never stores plaintext, never drops):

    - the key source fails (KME down, HTTP 503, out of keys, garbage, an
      id the vault already holds): L{ReplyError} with
      C{KEY_SOURCE_UNAVAILABLE} (451 4.3.0), its text naming the reason;
    - the vault fails: L{ReplyError} with C{LOCAL_ERROR} (451 4.3.0);
    - the sealed file cannot be written: C{STORAGE_FULL} (452 4.3.1) when the
      disk or quota is full, else C{LOCAL_ERROR}.

Nothing is left behind by a failed seal: no file in the work directory, and
the key reaches the vault only once the sealed message is complete.

Recovery.  A delivery retried after a crash seals the message again, with a
second key; the first key stays in the vault, unused (harmless, a few dozen
bytes).  The sealed size depends only on the original's size and the key
id's length (ETSI GS QKD 014 key ids are UUIDs, all 36 characters), so the
Maildir file name of a copy, which carries that size, is the same for both
seals and C{deliver(..., checkExisting=True)} finds a copy stored before the
crash instead of storing a second one.  A sealed file left by a crash is
ciphertext whose key may not even be in the vault: harmless;
L{MessageEncryptor.cleanup} removes such files at start-up.

Which mail is sealed is the caller's choice; L{isInternal} says whether a
message is internal mail (an authenticated sender of one of our domains).
"""

import errno
import os
import re
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.logger import Logger

from qutemail.address import isInternalSender
from qutemail.durable import removeFile
from qutemail.interfaces import IKeyVault, IQKDKeySource, KeyGone, KeySourceError
from qutemail.message import Envelope, SpooledMessage
from qutemail.qkd.cipher import MIN_KEY_BYTES, PLACEHOLDER_SUBJECT
from qutemail.qkd.keyfiles import KeyExists
from qutemail.qkd.vault import InvalidKeyId, KeyVaultError, checkKeyId
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, LOCAL_ERROR, STORAGE_FULL, Reply, ReplyError, oneLine
from qutemail.store.sealwork import SEALED_SUFFIX, removeLeftovers, sealBodies, writeSealed

KEY_SIZE_BITS = 256
# The most keys one enc_keys request asks for (the embedded KME allows 128).
MAX_KEYS_PER_REQUEST = 64
# The least time from the start of one enc_keys request to the start of the
# next while seals keep coming (see "Batches" above).  Each request costs
# an HTTPS exchange on both ends, a worker job and a vault write, whatever
# its number of keys: on issue 14's benchmark, pacing them at 50 ms cut
# the requests for 1,000 messages from 224-286 to 37-62.
KEY_REQUEST_INTERVAL_SECONDS = 0.05
# Sealed files older than this at start-up are leftovers of a crash (a
# delivery in progress, even of 25 MB to many mailboxes, takes far less).
CLEANUP_AGE_SECONDS = 3600.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def isInternal(envelope: Envelope, domains: Iterable[str]) -> bool:
    """
    Whether a message is internal mail, which is stored encrypted: its
    sender authenticated (submission), and the sender's domain is one of
    ours; or it came from a peer site under QKD transit encryption.  The
    caller applies it to each local recipient.

    @param envelope: the message's envelope.
    @param domains: our mail domains (any case).
    @return: C{True} for internal mail; C{False} for mail from outside,
        unauthenticated mail and the null sender (bounces).
    """
    return bool(envelope.transitKeyId) or isInternalSender(envelope.authenticated, envelope.sender, domains)


@attrs.frozen
class SealResult:
    """
    What L{MessageEncryptor.seal} made.

    @ivar message: the sealed message: the original's queue id and envelope,
        the ciphertext inline (when the original was) or C{path} the sealed
        file in the work directory, C{size} its size.  Deliver it,
        unchanged, to every local recipient.
    @ivar keyId: the key it is encrypted with, now in the vault.
    @ivar messageId: the original's Message-ID bound to the ciphertext, or
        C{""}.
    @ivar plaintextBytes: the original's size.
    """

    message: SpooledMessage
    keyId: str
    messageId: str
    plaintextBytes: int


@attrs.frozen(eq=False)
class _Waiting:
    """
    A seal waiting for its key (equal only to itself).

    @ivar message: the message to seal.
    @ivar done: fires with its L{SealResult}, or fails.
    """

    message: SpooledMessage
    done: Deferred


@attrs.frozen(eq=False)
class _Keyed:
    """
    A seal with its key, checked (equal only to itself).

    @ivar waiting: the seal.
    @ivar keyId: the key's id.
    @ivar key: the key.
    """

    waiting: _Waiting
    keyId: str
    key: bytes


@attrs.define(eq=False)
class MessageEncryptor:
    """
    Seals internal mail with QKD keys; see the module docstring.

    @ivar keySource: where keys come from (the embedded KME or an ETSI GS
        QKD 014 client); its C{encKeys(peer, size, number)}, when it has
        one, takes the keys of a batch in one request.
    @ivar vault: where the keys are kept for reading the mail later; its
        C{addKeys(pairs)}, when it has one, stores the keys of a batch at
        once (see L{qutemail.qkd.vault.FileKeyVault.addKeys}).
    @ivar runner: runs the file and CPU work (a
        L{qutemail.blocking.BlockingRunner}; an
        L{qutemail.blocking.InlineRunner} in tests).
    @ivar peerSAE: the SAE id keys are asked for (the slave SAE).
    @ivar workDirectory: where sealed files of spilled messages are written
        (C{data_dir/queue/sealed/}); created, mode 0700, when missing.
    @ivar subject: the outer Subject of sealed messages, or C{None} to show
        the original's (when it is sane; see L{qutemail.qkd.cipher}).
    @ivar keySizeBits: the key size asked for.
    @ivar maxKeysPerRequest: the most keys one C{enc_keys} request takes.
    @ivar sealer: what encrypts inline messages in another process (the
        delivery process, L{qutemail.store.deliveryprocess.DeliveryProcess}:
        its C{sealInline(subject, items)}), or C{None} for a worker thread.
    @ivar clock: the reactor's time (L{IReactorTime}) that paces requests,
        or C{None} not to pace them.
    @ivar requestInterval: the least seconds from the start of one request
        to the start of the next, unless it takes C{maxKeysPerRequest}
        keys.
    """

    _log = Logger()

    keySource: Any = attrs.field(converter=IQKDKeySource)
    vault: Any = attrs.field(converter=IKeyVault)
    runner: Any
    peerSAE: str
    workDirectory: str
    subject: str | None = attrs.field(default=PLACEHOLDER_SUBJECT)
    keySizeBits: int = KEY_SIZE_BITS
    maxKeysPerRequest: int = MAX_KEYS_PER_REQUEST
    sealer: Any = None
    clock: Any = None
    requestInterval: float = KEY_REQUEST_INTERVAL_SECONDS
    _waiting: list[_Waiting] = attrs.field(factory=list, init=False)
    _asking: bool = attrs.field(default=False, init=False)
    # When the last request started, and the call that starts the next one
    # once the interval is over.
    _lastAsked: float = attrs.field(default=float("-inf"), init=False)
    _paced: Any = attrs.field(default=None, init=False)

    @subject.validator
    def _checkSubject(self, attribute: Any, value: str | None) -> None:
        """
        The placeholder is what the cipher accepts: one line of printable
        US-ASCII, at most 900 characters.
        """
        if value is not None and not (len(value) <= 900 and re.fullmatch(r"[\x20-\x7e]*", value)):
            raise ValueError("the placeholder subject must be printable US-ASCII, at most 900 characters")

    def sealedPath(self, message: SpooledMessage) -> str:
        """
        @return: a new, unique path for a message's sealed file.
        """
        stem = _UNSAFE.sub("_", message.queueId)[:64]
        return os.path.join(self.workDirectory, f"{stem}.{os.urandom(8).hex()}{SEALED_SUFFIX}")

    async def seal(self, message: SpooledMessage) -> SealResult:
        """
        Encrypt a message with one fresh QKD key, keeping the key in the
        vault.

        @param message: the spooled message (inline or spilled; it is only
            read).
        @return: a L{SealResult}; deliver C{result.message} to every local
            recipient, then L{discard} it.
        @raise ReplyError: always temporary: C{KEY_SOURCE_UNAVAILABLE} when
            no usable key can be had, C{LOCAL_ERROR} when the vault fails or
            the sealed file cannot be written, C{STORAGE_FULL} when the disk
            is full.  Nothing is left in the work directory then, and the
            key is stored only if the seal succeeds.
        """
        done: Deferred = Deferred()
        self._waiting.append(_Waiting(message, done))
        self._askForKeys()
        return await done

    def _askForKeys(self) -> None:
        """
        Start the next batch, for the seals waiting now (at most
        C{maxKeysPerRequest}), unless one is still under way (they wait for
        it, see L{_sealBatch}) or the last request started less than
        C{requestInterval} ago and they do not fill a request (they wait
        for the interval to be over).
        """
        if self._asking or not self._waiting:
            return
        clock = self.clock
        if clock is not None:
            wait = self._lastAsked + self.requestInterval - clock.seconds()
            if wait > 0 and len(self._waiting) < self.maxKeysPerRequest:
                if self._paced is None:
                    self._paced = clock.callLater(wait, self._intervalOver)
                return
            if self._paced is not None:
                self._paced.cancel()
                self._paced = None
            self._lastAsked = clock.seconds()
        batch = self._waiting[:self.maxKeysPerRequest]
        del self._waiting[:self.maxKeysPerRequest]
        self._asking = True
        Deferred.fromCoroutine(self._sealBatch(batch)).addErrback(self._batchFailed, batch)

    def _intervalOver(self) -> None:
        """
        The pacing interval is over: start the batch that waited for it.
        """
        self._paced = None
        self._askForKeys()

    def _batchFailed(self, failure: Failure, batch: list[_Waiting]) -> None:
        """
        Something unexpected broke a batch (a bug, not a failure of the key
        source, the vault or the disk): every seal of it still waiting fails
        with it, so that its delivery is retried (and its caller logs it).
        With none left waiting, it is logged here.

        @param batch: the seals the failed work was responsible for.
        """
        waiting = [w for w in batch if not w.done.called]
        for w in waiting:
            w.done.errback(failure)
        if not waiting:
            self._log.failure("sealing a batch of {count} messages failed", failure, count=len(batch))

    async def _sealBatch(self, batch: list[_Waiting]) -> None:
        """
        Seal a batch: take its keys in one request, then seal its inline
        messages and store their keys together.  Only then may the next
        batch start, so the seals that arrive meanwhile (while a request,
        a worker job or a vault write is under way, or the pacing interval
        runs, see L{_askForKeys}) gather into it: the busier the server,
        the bigger the batches.  Each spilled message goes on on its own,
        so that a large one does not hold up the others.

        @param batch: the seals; one handed off on its own is removed from
            it (L{_batchFailed} is for the rest).
        """
        try:
            answers = await self._takeKeys(len(batch))
            keyed: list[_Keyed] = []
            seen: set[str] = set()
            for waiting, answer in zip(batch, answers):
                problem = str(answer) if isinstance(answer, KeySourceError) else self._keyProblem(answer, seen)
                if problem is not None:
                    waiting.done.errback(self._keySourceFailed(waiting.message, problem))
                    continue
                keyId, key = answer
                seen.add(keyId)
                keyed.append(_Keyed(waiting, keyId, key))
            for item in keyed:
                if item.waiting.message.inline is None:
                    batch.remove(item.waiting)
                    Deferred.fromCoroutine(self._finish([item])).addErrback(self._batchFailed, [item.waiting])
            inline = [item for item in keyed if item.waiting.message.inline is not None]
            if inline:
                await self._finish(inline)
        finally:
            self._asking = False
            self._askForKeys()

    async def _finish(self, keyed: list[_Keyed]) -> None:
        """
        Encrypt messages whose keys are in hand (inline ones, or one
        spilled one), store their keys, and fire each seal's Deferred.
        Anything unexpected is raised (see L{_batchFailed}).
        """
        sealed = await self._encrypt(keyed)
        ready = [(item, result) for item, result in zip(keyed, sealed) if isinstance(result, SealResult)]
        kept = await self._keepKeys([(item.keyId, item.key) for item, _ in ready])
        failed: list[tuple[_Keyed, ReplyError]] = [
            (item, result) for item, result in zip(keyed, sealed) if not isinstance(result, SealResult)]
        for (item, result), problem in zip(ready, kept):
            if problem is None:
                item.waiting.done.callback(result)
                continue
            failed.append((item, self._keepFailed(item, problem)))
            if result.message.path is not None:
                try:
                    await self.runner.run(removeFile, result.message.path)
                except OSError:
                    # Harmless ciphertext; cleanup() removes it at start-up.
                    self._log.failure("cannot remove {path}", path=result.message.path)
        for item, error in failed:
            item.waiting.done.errback(error)

    async def _takeKeys(self, number: int) -> list:
        """
        Take C{number} keys: one C{enc_keys} request when the key source
        can take several at once, else one C{encKey} each.

        @return: per seal, C{(keyId, key)} or the L{KeySourceError} it
            failed with.
        """
        encKeys = getattr(self.keySource, "encKeys", None)
        if number > 1 and encKeys is not None:
            try:
                keys = await encKeys(self.peerSAE, self.keySizeBits, number)
            except KeySourceError as e:
                return [e] * number
            if len(keys) != number:
                return [KeySourceError(f"asked the KME for {number} keys, got {len(keys)}")] * number
            return list(keys)
        answers: list = []
        for _ in range(number):
            try:
                answers.append(await self.keySource.encKey(self.peerSAE, self.keySizeBits))
            except KeySourceError as e:
                answers.append(e)
        return answers

    def _keyProblem(self, answer: Any, seen: set[str]) -> str | None:
        """
        @param answer: what the key source gave for one seal.
        @param seen: the key ids already given in the same batch.
        @return: why the key cannot be used, or C{None}.
        """
        keyId, key = answer
        try:
            checkKeyId(keyId)
        except InvalidKeyId:
            return "it gave an invalid key id"
        if not isinstance(key, bytes) or len(key) != self.keySizeBits // 8 or len(key) < MIN_KEY_BYTES:
            return f"it gave a key of the wrong size for {keyId}"
        if keyId in seen:
            return f"it gave key id {keyId} twice"
        return None

    async def _encrypt(self, keyed: list[_Keyed]) -> list[SealResult | ReplyError]:
        """
        Encrypt inline messages together, in memory, by one worker job; or
        one spilled message into its own sealed file.

        @return: per item, its L{SealResult}, or the L{ReplyError} its
            seal fails with (its sealed file could not be written).
        """
        first = keyed[0].waiting.message
        if first.inline is not None:
            sealed = await self._sealInline(keyed)
            return [SealResult(attrs.evolve(item.waiting.message, size=len(data), inline=data, path=None, opener=None),
                               item.keyId, messageId, plaintextBytes)
                    for item, (data, messageId, plaintextBytes) in zip(keyed, sealed)]
        [item] = keyed
        path = self.sealedPath(first)
        try:
            info = await self.runner.run(writeSealed, first, path, item.keyId, item.key, self.subject)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            reply: Reply = STORAGE_FULL if full else LOCAL_ERROR
            self._log.warn("cannot seal {queueId}: writing {path} failed: {reason}",
                           queueId=first.queueId, path=path, reason=oneLine(str(e)))
            return [ReplyError(reply)]
        # Not the queue's opener: the sealed file is read as it is.
        message = attrs.evolve(first, size=info.storedBytes, inline=None, path=path, opener=None)
        return [SealResult(message, item.keyId, info.messageId, info.plaintextBytes)]

    async def _sealInline(self, keyed: list[_Keyed]) -> list[tuple[bytes, str, int]]:
        """
        Encrypt inline messages in memory: by the C{sealer} where there is
        one (and it answers), else by one worker job.

        @return: per item, its stored form, its Message-ID and its
            original's size.
        """
        items = [(item.waiting.message.inline, item.keyId, item.key) for item in keyed]
        answers = None
        if self.sealer is not None:
            try:
                answers = await self.sealer.sealInline(self.subject, items)
            except OSError:
                # The delivery process failed or ended (it logged why):
                # seal here, and it restarts at its next request.
                pass
        if answers is None:
            answers = await self.runner.run(sealBodies, self.subject, items)
        return [(data, messageId, plaintextBytes) for data, _, messageId, plaintextBytes, _ in answers]

    async def _keepKeys(self, keys: list[tuple[str, bytes]]) -> list[BaseException | None]:
        """
        Store the keys of a batch in the vault, each as a new id.

        @return: per key, C{None} once it is durable, else the exception
            that kept it out: L{KeyExists} for an id the vault already
            holds, a L{KeyVaultError} or C{OSError} when the vault fails.
        """
        if not keys:
            return []
        addKeys = getattr(self.vault, "addKeys", None)
        if addKeys is not None:
            try:
                return list(await addKeys(keys))
            except (KeyVaultError, OSError) as e:
                return [e] * len(keys)
        results = await DeferredList([Deferred.fromCoroutine(self._keepKey(keyId, key)) for keyId, key in keys],
                                     consumeErrors=True)
        for ok, value in results:
            if not ok:
                value.raiseException()
        return [value for _, value in results]

    async def _keepKey(self, keyId: str, key: bytes) -> BaseException | None:
        """
        Store one key in a vault without C{addKeys}: C{fetch} must find
        nothing, then C{store}.

        @return: C{None} once stored, else the exception that kept it out.
        """
        try:
            await self.vault.fetch(keyId)
        except KeyGone:
            pass
        except (KeyVaultError, OSError) as e:
            return e
        else:
            return KeyExists(f"the key vault already holds key {keyId}")
        try:
            await self.vault.store(keyId, key)
        except (KeyVaultError, OSError) as e:
            return e
        return None

    def _keepFailed(self, item: _Keyed, problem: BaseException) -> ReplyError:
        """
        Log a key the vault did not take.

        @return: what its seal fails with.
        """
        message = item.waiting.message
        if isinstance(problem, KeyExists):
            return self._keySourceFailed(message, f"it gave key id {item.keyId} again (already in the vault)")
        return self._vaultFailed(message, item.keyId, problem)

    def _keySourceFailed(self, message: SpooledMessage, reason: str) -> ReplyError:
        """
        Log a key source failure.

        @return: the error to raise.
        """
        reason = oneLine(reason)
        self._log.warn("cannot seal {queueId}: no key from the QKD key source: {reason}",
                       queueId=message.queueId, reason=reason)
        return ReplyError(KEY_SOURCE_UNAVAILABLE.withText(f"{KEY_SOURCE_UNAVAILABLE.text}: {reason}"))

    def _vaultFailed(self, message: SpooledMessage, keyId: str, error: Exception) -> ReplyError:
        """
        Log a vault failure.

        @return: the error to raise.
        """
        reason = oneLine(error.strerror if isinstance(error, OSError) and error.strerror
                          else str(error) or type(error).__name__)
        self._log.warn("cannot seal {queueId}: the key vault failed for key {keyId}: {reason}",
                       queueId=message.queueId, keyId=keyId, reason=reason)
        return ReplyError(LOCAL_ERROR.withText(f"Key vault unavailable, will retry: {reason}"))

    async def discard(self, sealed: SealResult | SpooledMessage) -> None:
        """
        Remove a sealed file once every recipient has its copy (or the
        delivery is given up); removing it twice is fine, and a message
        sealed in memory has nothing to remove.  The key stays in the
        vault: the copies need it.

        @param sealed: what L{seal} returned, or its C{message}.
        @raise ValueError: the message's file is not a sealed file of the
            work directory (such as an original's spill file).
        """
        message = sealed.message if isinstance(sealed, SealResult) else sealed
        path = message.path
        if path is None and message.inline is not None:
            return
        if path is None or not path.endswith(SEALED_SUFFIX) or \
                os.path.dirname(os.path.abspath(path)) != os.path.abspath(self.workDirectory):
            raise ValueError(f"{path!r} is not a sealed file of {self.workDirectory}")
        await self.runner.run(removeFile, path)

    def cleanup(self, now: float, maxAgeSeconds: float = CLEANUP_AGE_SECONDS) -> int:
        """
        Remove sealed files left by a crash.  Blocking: call it at start-up,
        before the reactor runs or through the runner.  Files younger than
        C{maxAgeSeconds} are kept: another process sharing the data
        directory may be delivering them.

        @param now: the current POSIX time.
        @param maxAgeSeconds: the age (by modification time) past which a
            sealed file is a leftover.
        @return: how many files were removed.
        @raise OSError: the work directory exists but cannot be read.
        """
        removed = removeLeftovers(self.workDirectory, now - maxAgeSeconds)
        if removed:
            self._log.info("removed {count} leftover sealed files from {directory}",
                           count=removed, directory=self.workDirectory)
        return removed
