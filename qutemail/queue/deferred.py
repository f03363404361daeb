# -*- test-case-name: tests.queue.test_deferred -*-
"""
The deferred queue: messages some of whose recipients could not be dealt
with at once (mailbox over quota, a store failure, a remote recipient
waiting for the relay), kept apart from fresh mail in the journal so that a
backlog never slows new deliveries.

Each entry is two files under C{queue/deferred/}: C{<queueId>.msg} (the body,
written once) and C{<queueId>.json} (the envelope and the state of every
recipient), both replaced atomically and durably.

The body of internal mail (whatever made it wait: no QKD key, a full
mailbox, a remote recipient) is sealed under the local queue key (see
L{qutemail.queue.sealedbody}) as it is written, and the C{.json} says so
(C{"sealedBody": 1}); the entry's message then opens its plaintext
(L{SpooledMessage.openBody}) only in the reader's memory, a chunk at a
time.  Entries with C{"sealedBody"} missing or 0 are read as they are.

Recipient states: C{pending} (never tried: a remote recipient waiting for
its first relay attempt), C{deferred} (retry at C{nextAttempt}), C{sent}
(delivered, locally or to the remote server) and C{bounced}.  Entries
written by earlier versions (C{relay}, C{delivered}) are read as C{pending}
and C{sent}.
"""

import json
import os
import shutil
from collections import OrderedDict
from functools import partial
from typing import Any, BinaryIO, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories, removeFile, replaceFile, syncDirectory
from qutemail.interfaces import IRelayQueue
from qutemail.message import LEGACY_STATES, dueEntries, Envelope, QueueEntry, RecipientState, SpooledMessage
from qutemail.qkd.vault import MasterKeyError
from qutemail.queue.sealedbody import VERSION as SEALED_VERSION, openSealedBody, sealStream

# The chunk size of a copy of a large body into the queue.
_COPY_BYTES = 1024 * 1024
# How many removed queue ids are remembered (see DeferredQueue._removed):
# far more than can be removed while one refresh lists the directory.
_REMEMBER_REMOVED = 10000


def copyPrivately(source: BinaryIO, destination: str, queueKey: bytes | None = None) -> None:
    """
    Copy a body into a new file, mode 0600 (C{shutil.copyfile} would make it
    0644 under the usual umask: it may hold a message in plaintext), sealed
    under C{queueKey} when one is given, and fsync it.  Blocking.

    @param source: the body, read to its end.
    """
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with open(fd, "wb") as out:
        if queueKey is None:
            shutil.copyfileobj(source, out, _COPY_BYTES)
        else:
            sealStream(source, out, queueKey)
        out.flush()
        os.fsync(out.fileno())


@implementer(IRelayQueue)
class DeferredQueue:
    """
    The on-disk deferred queue, with an in-memory index of its entries.
    """

    _log = Logger()

    def __init__(self, directory: str, runner: Any, *, queueKey: Callable[[bool], bytes] | None = None,
                 sealIf: Callable[[Envelope], bool] | None = None) -> None:
        """
        @param directory: C{queue/deferred/}.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param queueKey: C{queueKey(create)} reads the queue key (blocking;
            see L{qutemail.qkd.vault.loadQueueKey}, C{create} whether a
            missing master key may be made); C{None}: no key, nothing
            sealed, and a sealed entry cannot be opened.
        @param sealIf: whether a message's body is sealed in the queue
            (internal mail), or C{None} to seal nothing.
        """
        self._directory = directory
        self._runner = runner
        self.queueKey = queueKey
        self.sealIf = sealIf
        self._key: bytes | None = None
        self._keyMissingLogged = False
        self.entries: dict[str, QueueEntry] = {}
        self._subscribers: list[Callable[[QueueEntry], Any]] = []
        # Entries this process is writing or has just removed: a refresh
        # running meanwhile may still see their files, and must not take
        # them for entries another process added (a sent message would be
        # sent again).
        self._adding: set[str] = set()
        self._removed: OrderedDict[str, None] = OrderedDict()

    def subscribe(self, callback: Callable[[QueueEntry], Any]) -> None:
        """
        See L{IRelayQueue.subscribe}.
        """
        self._subscribers.append(callback)

    def get(self, queueId: str) -> Deferred:
        """
        See L{IRelayQueue.get}.
        """
        return succeed(self.entries.get(queueId))

    def waiting(self) -> Deferred:
        """
        See L{IRelayQueue.waiting}.
        """
        return succeed([e for e in self.entries.values() if e.pending()])

    def _paths(self, queueId: str) -> tuple[str, str]:
        """
        @return: the C{.msg} and C{.json} paths of an entry.
        """
        base = os.path.join(self._directory, queueId)
        return base + ".msg", base + ".json"

    def load(self) -> list[QueueEntry]:
        """
        Read every entry from disk.  Blocking: call before the reactor runs
        or in a worker thread.

        @return: the entries.
        """
        makeDirectories(self._directory)
        for name in sorted(os.listdir(self._directory)):
            if not name.endswith(".json"):
                continue
            bodyPath, metaPath = self._paths(name[: -len(".json")])
            if not os.path.exists(bodyPath):
                self._log.error("deferred entry {path} has no body; left in place", path=metaPath)
                continue
            entry = self._readEntry(name[: -len(".json")])
            self.entries[entry.queueId] = entry
        self._warmKey(self.entries.values())
        # Bodies whose metadata never got written were never acknowledged
        # as queued: the journal still holds those messages.
        for name in os.listdir(self._directory):
            if name.endswith(".msg") and name[:-4] not in self.entries:
                os.unlink(os.path.join(self._directory, name))
        return list(self.entries.values())

    def refresh(self) -> Deferred:
        """
        Pick up entries other processes (extra SMTP workers) added since
        the last look.

        @return: a Deferred firing with the number of new entries.
        """
        known = set(self.entries) | self._adding | set(self._removed)
        return self._runner.run(self._readNew, known).addCallback(self._addLoaded)

    def _readNew(self, known: set[str]) -> list[QueueEntry]:
        """
        Read the entries not in C{known} (worker thread).  An entry appears
        only once its metadata is renamed into place, after its body.
        """
        found = []
        try:
            names = os.listdir(self._directory)
        except FileNotFoundError:
            return found
        for name in names:
            queueId = name[: -len(".json")]
            if name.endswith(".json") and queueId not in known:
                try:
                    found.append(self._readEntry(queueId))
                except FileNotFoundError:
                    continue
        self._warmKey(found)
        return found

    def _addLoaded(self, loaded: list[QueueEntry]) -> int:
        """
        Index entries read by L{_readNew}.
        """
        added = 0
        for entry in loaded:
            if entry.queueId in self._adding or entry.queueId in self._removed:
                continue
            added += entry.queueId not in self.entries
            self.entries.setdefault(entry.queueId, entry)
        return added

    def _loadKey(self, create: bool) -> bytes:
        """
        The queue key, read once (blocking: a worker thread, or the first
        open of a sealed body).

        @raise qutemail.qkd.vault.MasterKeyError: it cannot be had.
        @raise LookupError: this queue has no key.
        """
        if self._key is None:
            if self.queueKey is None:
                raise LookupError("no queue key: cannot open a sealed queue body")
            self._key = self.queueKey(create)
        return self._key

    def _warmKey(self, entries: Iterable[QueueEntry]) -> None:
        """
        Read the queue key now (start-up or a worker thread) when a sealed
        entry is found, so that a later open (the relay opens its body on
        the reactor thread) reads no file.  A key that cannot be had is
        logged once; each open then fails with the reason.
        """
        if self._key is not None or self.queueKey is None or not any(e.sealedBody for e in entries):
            return
        try:
            self._loadKey(False)
        except MasterKeyError as e:
            if not self._keyMissingLogged:
                self._keyMissingLogged = True
                self._log.error("sealed queue entries cannot be opened: {reason}", reason=str(e))

    def openSealed(self, path: str) -> BinaryIO:
        """
        Open the plaintext of a sealed body (blocking); the one way a
        sealed C{.msg} is read, through L{SpooledMessage.openBody}.

        @raise qutemail.queue.sealedbody.SealedBodyError: it is damaged or
            was sealed under another key.
        """
        return openSealedBody(path, self._loadKey(False))

    def _message(self, message: SpooledMessage, bodyPath: str, sealed: int) -> SpooledMessage:
        """
        @return: C{message} with its body in the queue's C{.msg}, opened
            through L{openSealed} when it is sealed.
        """
        opener = partial(self.openSealed, bodyPath) if sealed else None
        return attrs.evolve(message, inline=None, path=bodyPath, opener=opener)

    def _readEntry(self, queueId: str) -> QueueEntry:
        """
        Read one entry's metadata (blocking).
        """
        bodyPath, metaPath = self._paths(queueId)
        with open(metaPath, "rb") as f:
            meta = json.load(f)
        sealed = meta.get("sealedBody", 0)
        message = self._message(
            SpooledMessage(meta["queueId"], Envelope.fromJSON(meta["envelope"]), meta["size"]), bodyPath, sealed)
        recipients = [RecipientState(**(r | {"state": LEGACY_STATES.get(r["state"], r["state"])}))
                      for r in meta["recipients"]]
        return QueueEntry(message, recipients, meta.get("dkimHeader", ""), sealed,
                          bool(meta.get("delayWarned", False)), dict(meta.get("transit", {})),
                          bool(meta.get("transitWarned", False)))

    def snapshot(self) -> list[QueueEntry]:
        """
        Read every entry without changing anything on disk, for the
        command line (a running server may be writing).  Blocking.

        @return: the entries, by queue id.
        """
        return sorted(self._readNew(set()), key=lambda e: e.queueId)

    def add(self, message: SpooledMessage, recipients: list[RecipientState], dkimHeader: str = "") -> Deferred:
        """
        Queue a message for some of its recipients, durably.

        @param message: the message (inline or spilled).
        @param recipients: their initial states.
        @param dkimHeader: the message's DKIM-Signature field, if signed.
        @return: a Deferred firing with the L{QueueEntry} once both files
            are on disk.
        """
        bodyPath, _ = self._paths(message.queueId)
        sealed = SEALED_VERSION if self.sealIf is not None and self.sealIf(message.envelope) else 0
        entry = QueueEntry(self._message(message, bodyPath, sealed), recipients, dkimHeader, sealed)
        self._adding.add(entry.queueId)
        d = self._runner.run(self._writeNew, message, entry)
        d.addBoth(lambda result: (self._adding.discard(entry.queueId), result)[1])

        def added(written: bool) -> QueueEntry:
            if not written:
                # Queued before a crash, and routed again from the journal
                # on recovery: the entry on disk (maybe half relayed) wins.
                queued = self.entries.setdefault(entry.queueId, self._readEntry(entry.queueId))
            else:
                queued = self.entries[entry.queueId] = entry
            for callback in self._subscribers:
                callback(queued)
            return queued

        return d.addCallback(added)

    def _writeNew(self, message: SpooledMessage, entry: QueueEntry) -> bool:
        """
        Write the body, then the metadata (worker thread), unless the entry
        is already there.

        @return: whether it was written.
        """
        makeDirectories(self._directory)
        bodyPath, metaPath = self._paths(entry.queueId)
        if os.path.exists(metaPath):
            return False
        if message.inline is not None and not entry.sealedBody:
            replaceFile(bodyPath, message.inline)
        else:
            # The key first: a master key that cannot be had fails the add
            # before any file is written (the journal keeps the message).
            key = self._loadKey(True) if entry.sealedBody else None
            with message.openBody() as source:
                copyPrivately(source, bodyPath + ".tmp", key)
            os.rename(bodyPath + ".tmp", bodyPath)
            syncDirectory(self._directory)
        replaceFile(metaPath, entry.toJSON())
        return True

    def update(self, entry: QueueEntry) -> Deferred:
        """
        Write an entry's new state; remove it when nothing is pending.

        @param entry: the entry, changed in place by the caller.
        @return: a Deferred firing when the change is durable.  An entry
            removed meanwhile (C{queue delete}) is left removed.
        """
        if self.entries.get(entry.queueId) is not entry:
            return succeed(None)
        if entry.pending():
            return self._runner.run(replaceFile, self._paths(entry.queueId)[1], entry.toJSON())
        self.entries.pop(entry.queueId, None)
        self._forget(entry.queueId)
        return self._runner.run(self._remove, entry.queueId)

    def remove(self, queueId: str) -> Deferred:
        """
        See L{IRelayQueue.remove}.
        """
        found = self.entries.pop(queueId, None) is not None
        self._forget(queueId)
        return self._runner.run(self._remove, queueId).addCallback(lambda _: found)

    def _forget(self, queueId: str) -> None:
        """
        Remember for a while that this process removed an entry.
        """
        self._removed[queueId] = None
        while len(self._removed) > _REMEMBER_REMOVED:
            self._removed.popitem(last=False)

    def _remove(self, queueId: str) -> None:
        """
        Delete an entry's files, metadata first (worker thread).
        """
        bodyPath, metaPath = self._paths(queueId)
        for path in (metaPath, bodyPath):
            removeFile(path)

    def due(self, now: float, limit: int, busy: Any = ()) -> Deferred:
        """
        See L{IRelayQueue.due}: never-tried entries come first, so fresh
        mail does not wait behind a backlog.
        """
        return succeed(dueEntries(self.entries.values(), now, limit, busy))
