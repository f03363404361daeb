# -*- test-case-name: tests.store.test_encrypted -*-
"""
The encryption step of local delivery: internal mail is sealed with one QKD
key before it reaches any mailbox.

L{MessageEncryptor.seal} takes one message (a L{SpooledMessage}) and:

    1. takes ONE fresh key from the key source (C{encKey(peerSAE, 256)})
       and checks it (a safe key id, the asked length, an id the vault does
       not hold yet: a key id is used for one message only, and storing a
       reused id would replace the key of an older message);
    2. streams the body (inline bytes or the spilled file) through
       L{qutemail.qkd.cipher.encryptStream} into a new file of the work
       directory (C{data_dir/queue/sealed/}), mode 0600, fsynced;
    3. stores the key in the vault, so it is durable before anything is
       written to a mailbox;
    4. returns a L{SealResult}: the sealed L{SpooledMessage} (same queue id
       and envelope, C{path} the sealed file, C{size} its size), ready for
       L{qutemail.store.maildir.MaildirStore.deliver} to every local
       recipient (one key and one encryption for all of them), and the key
       id.

Once every recipient has its copy, L{MessageEncryptor.discard} removes the
sealed file.

Failures are always temporary replies, so the router defers the delivery
and retries (never stores plaintext, never drops):

    - the key source fails (KME down, HTTP 503, out of keys, garbage):
      L{ReplyError} with C{KEY_SOURCE_UNAVAILABLE} (451 4.3.0), its text
      naming the reason;
    - the vault fails: L{ReplyError} with C{LOCAL_ERROR} (451 4.3.0);
    - the sealed file cannot be written: C{STORAGE_FULL} (452 4.3.1) when the
      disk or quota is full, else C{LOCAL_ERROR}.

Nothing is left behind by a failed seal: no file in the work directory, and
the key reaches the vault only once the sealed file is complete.

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
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.logger import Logger

from qutemail.interfaces import IKeyVault, IQKDKeySource, KeyGone, KeySourceError
from qutemail.pipeline.spool import Envelope, SpooledMessage
from qutemail.qkd.cipher import MIN_KEY_BYTES, PLACEHOLDER_SUBJECT, SealedMessage, encryptStream
from qutemail.qkd.vault import InvalidKeyId, KeyVaultError, checkKeyId
from qutemail.replies import KEY_SOURCE_UNAVAILABLE, LOCAL_ERROR, STORAGE_FULL, Reply, ReplyError

SEALED_SUFFIX = ".sealed"
KEY_SIZE_BITS = 256
# Sealed files older than this at start-up are leftovers of a crash (a
# delivery in progress, even of 25 MB to many mailboxes, takes far less).
CLEANUP_AGE_SECONDS = 3600.0
_MAX_REASON_CHARS = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def isInternal(envelope: Envelope, domains: Iterable[str]) -> bool:
    """
    Whether a message is internal mail, which is stored encrypted: its
    sender authenticated (submission), and the sender's domain is one of
    ours.  The caller applies it to each local recipient.

    @param envelope: the message's envelope.
    @param domains: our mail domains (any case).
    @return: C{True} for internal mail; C{False} for mail from outside,
        unauthenticated mail and the null sender (bounces).
    """
    if not envelope.authenticated or "@" not in envelope.sender:
        return False
    domain = envelope.sender.rpartition("@")[2].lower().rstrip(".")
    return domain in {d.lower().rstrip(".") for d in domains}


def _oneLine(text: str) -> str:
    """
    @return: C{text} as one short line of printable ASCII, for a reply.
    """
    text = "".join(c if " " <= c <= "~" else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS - 3] + "..."


@attrs.frozen
class SealResult:
    """
    What L{MessageEncryptor.seal} made.

    @ivar message: the sealed message: the original's queue id and envelope,
        C{path} the sealed file in the work directory, C{size} its size.
        Deliver it, unchanged, to every local recipient.
    @ivar keyId: the key it is encrypted with, now in the vault.
    @ivar messageId: the original's Message-ID bound to the ciphertext, or
        C{""}.
    @ivar plaintextBytes: the original's size.
    """

    message: SpooledMessage
    keyId: str
    messageId: str
    plaintextBytes: int


class KeyRequests:
    """
    Takes keys for concurrent seals with as few C{enc_keys} requests as
    possible: while one request is out, the seals that ask wait together
    and the next request takes exactly as many keys as they need.  No key
    is taken ahead of a message, so none is left over, and each still
    encrypts one message only.
    """

    def __init__(self, source: Any, peerSAE: str, sizeBits: int, maxPerRequest: int = 64) -> None:
        """
        @param source: the L{IQKDKeySource}; its C{encKeys(peer, size,
            number)}, when it has one, takes several keys at once.
        @param maxPerRequest: the most keys asked for in one request.
        """
        self._source = source
        self._peer = peerSAE
        self._sizeBits = sizeBits
        self._batches = hasattr(source, "encKeys")
        self._max = maxPerRequest
        self._waiting: list[Deferred] = []
        self._busy = False

    def take(self) -> Deferred:
        """
        @return: a Deferred firing with one C{(keyId, key)}, or failing
            with the key source's L{KeySourceError}.
        """
        if not self._batches:
            return self._source.encKey(self._peer, self._sizeBits)
        d = Deferred()
        self._waiting.append(d)
        if not self._busy:
            self._next()
        return d

    def _next(self) -> None:
        """
        Send one request for the seals waiting now.
        """
        batch, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
        if not batch:
            return
        self._busy = True
        if len(batch) == 1:
            request = self._source.encKey(self._peer, self._sizeBits).addCallback(lambda key: [key])
        else:
            request = self._source.encKeys(self._peer, self._sizeBits, len(batch))

        def answered(keys: list) -> None:
            if len(keys) != len(batch):
                failed(Failure(KeySourceError(f"asked the KME for {len(batch)} keys, got {len(keys)}")))
                return
            for waiter, key in zip(batch, keys):
                waiter.callback(key)

        def failed(failure: Any) -> None:
            for waiter in batch:
                waiter.errback(failure)

        def done(_: Any) -> None:
            self._busy = False
            self._next()

        request.addCallbacks(answered, failed).addBoth(done)


def _writeSealed(message: SpooledMessage, path: str, keyId: str, key: bytes,
                 subject: str | None) -> SealedMessage:
    """
    Encrypt a message into a new file; on any failure the file is removed.
    Blocking.  Not fsynced: the file is transient, every Maildir copy made
    from it is fsynced by the store, and after a crash the delivery is
    sealed again from the spool.

    @return: what the cipher says about it.
    @raise OSError: the file cannot be created or written, or the body
        cannot be read.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb", closefd=False) as out, message.openBody() as source:
            sealed = encryptStream(source, out, keyId, key, subject)
            out.flush()
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return sealed


def _removeFile(path: str) -> None:
    """
    Unlink a file; a missing one is fine.  Blocking.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@attrs.define(eq=False)
class MessageEncryptor:
    """
    Seals internal mail with QKD keys; see the module docstring.

    @ivar keySource: where keys come from (the embedded KME or an ETSI GS
        QKD 014 client).
    @ivar vault: where the keys are kept for reading the mail later.
    @ivar runner: runs the file and CPU work (a
        L{qutemail.blocking.BlockingRunner}; an
        L{qutemail.blocking.InlineRunner} in tests).
    @ivar peerSAE: the SAE id keys are asked for (the slave SAE).
    @ivar workDirectory: where sealed files are written
        (C{data_dir/queue/sealed/}); created, mode 0700, when missing.
    @ivar subject: the outer Subject of sealed messages, or C{None} to show
        the original's (when it is sane; see L{qutemail.qkd.cipher}).
    @ivar keySizeBits: the key size asked for.
    """

    _log = Logger()

    keySource: Any = attrs.field(converter=IQKDKeySource)
    vault: Any = attrs.field(converter=IKeyVault)
    runner: Any
    peerSAE: str
    workDirectory: str
    subject: str | None = attrs.field(default=PLACEHOLDER_SUBJECT)
    keySizeBits: int = KEY_SIZE_BITS
    _requests: Any = attrs.field(default=None, init=False)

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

    async def _takeKey(self, message: SpooledMessage) -> tuple[str, bytes]:
        """
        Take one fresh key and check it.

        @return: C{(keyId, key)}.
        @raise ReplyError: C{KEY_SOURCE_UNAVAILABLE} when the key source
            fails or gives an unusable key; C{LOCAL_ERROR} when the vault
            cannot say whether the key id is new.
        """
        if self._requests is None:
            self._requests = KeyRequests(self.keySource, self.peerSAE, self.keySizeBits)
        try:
            keyId, key = await self._requests.take()
        except KeySourceError as e:
            raise self._keySourceFailed(message, str(e)) from None
        try:
            checkKeyId(keyId)
        except InvalidKeyId:
            raise self._keySourceFailed(message, "it gave an invalid key id") from None
        if not isinstance(key, bytes) or len(key) != self.keySizeBits // 8 or len(key) < MIN_KEY_BYTES:
            raise self._keySourceFailed(message, f"it gave a key of the wrong size for {keyId}")
        try:
            await self.vault.fetch(keyId)
        except KeyGone:
            return keyId, key
        except (KeyVaultError, OSError) as e:
            raise self._vaultFailed(message, keyId, e) from None
        raise self._keySourceFailed(message, f"it gave key id {keyId} again (already in the vault)")

    def _keySourceFailed(self, message: SpooledMessage, reason: str) -> ReplyError:
        """
        Log a key source failure.

        @return: the error to raise.
        """
        reason = _oneLine(reason)
        self._log.warn("cannot seal {queueId}: no key from the QKD key source: {reason}",
                       queueId=message.queueId, reason=reason)
        return ReplyError(KEY_SOURCE_UNAVAILABLE.withText(f"{KEY_SOURCE_UNAVAILABLE.text}: {reason}"))

    def _vaultFailed(self, message: SpooledMessage, keyId: str, error: Exception) -> ReplyError:
        """
        Log a vault failure.

        @return: the error to raise.
        """
        reason = _oneLine(error.strerror if isinstance(error, OSError) and error.strerror
                          else str(error) or type(error).__name__)
        self._log.warn("cannot seal {queueId}: the key vault failed for key {keyId}: {reason}",
                       queueId=message.queueId, keyId=keyId, reason=reason)
        return ReplyError(LOCAL_ERROR.withText(f"Key vault unavailable, will retry: {reason}"))

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
        keyId, key = await self._takeKey(message)
        path = self.sealedPath(message)
        try:
            sealed = await self.runner.run(_writeSealed, message, path, keyId, key, self.subject)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            reply: Reply = STORAGE_FULL if full else LOCAL_ERROR
            self._log.warn("cannot seal {queueId}: writing {path} failed: {reason}",
                           queueId=message.queueId, path=path, reason=_oneLine(str(e)))
            raise ReplyError(reply) from None
        try:
            await self.vault.store(keyId, key)
        except (KeyVaultError, OSError) as e:
            await self.runner.run(_removeFile, path)
            raise self._vaultFailed(message, keyId, e) from None
        except BaseException:
            await self.runner.run(_removeFile, path)
            raise
        result = attrs.evolve(message, size=sealed.storedBytes, inline=None, path=path)
        return SealResult(result, keyId, sealed.messageId, sealed.plaintextBytes)

    async def discard(self, sealed: SealResult | SpooledMessage) -> None:
        """
        Remove a sealed file once every recipient has its copy (or the
        delivery is given up); removing it twice is fine.  The key stays in
        the vault: the copies need it.

        @param sealed: what L{seal} returned, or its C{message}.
        @raise ValueError: the message's file is not a sealed file of the
            work directory (such as an original's spill file).
        """
        message = sealed.message if isinstance(sealed, SealResult) else sealed
        path = message.path
        if path is None or not path.endswith(SEALED_SUFFIX) or \
                os.path.dirname(os.path.abspath(path)) != os.path.abspath(self.workDirectory):
            raise ValueError(f"{path!r} is not a sealed file of {self.workDirectory}")
        await self.runner.run(_removeFile, path)

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
        removed = 0
        try:
            entries = os.scandir(self.workDirectory)
        except FileNotFoundError:
            return 0
        with entries:
            for entry in entries:
                if not entry.name.endswith(SEALED_SUFFIX):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mtime > now - maxAgeSeconds:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
        if removed:
            self._log.info("removed {count} leftover sealed files from {directory}",
                           count=removed, directory=self.workDirectory)
        return removed
