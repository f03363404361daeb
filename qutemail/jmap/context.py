# -*- test-case-name: tests.jmap.test_api -*-
"""
One API request's view of one account: the logged-in IMAP avatar (the
same folders, runner, vault and quota IMAP uses), its snapshot (see
L{qutemail.jmap.state}), the messages read so far, and whether the request
changed anything (other sessions are then told, through the mailbox
notifier IMAP IDLE listens to).

Messages are read for their owner exactly as IMAP reads them:
L{qutemail.store.reader.readMessage} decrypts internal mail, and one whose
key is gone or that fails authentication is shown as the same short
notice (L{qutemail.access.maildrop.notice}).
"""

import hashlib
import os
from collections import OrderedDict
from typing import Any, BinaryIO

import attrs
from twisted.logger import Logger

from qutemail.access.imapmessage import readPlainFiles
from qutemail.access.imapstore import locate
from qutemail.access.maildrop import notice
from qutemail.address import domainOf
from qutemail.jmap import ids
from qutemail.jmap.errors import MethodError
from qutemail.jmap.parse import ParsedEmail, breakDown
from qutemail.jmap.state import EmailEntry, Snapshot, takeSnapshot
from qutemail.store.reader import MessageUnreadable, openStored, readMessage

_log = Logger()

# At most how many bytes of plain messages one prefetch reads.
PREFETCH_BYTES = 8 * 1024 * 1024


@attrs.define(eq=False)
class Services:
    """
    What every request needs besides the account.

    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    @ivar clock: an C{IReactorTime}.
    @ivar stateDirectory: C{data_dir/jmap}: kept states and uploads.
    @ivar limits: the L{qutemail.jmap.dispatch.Limits}.
    @ivar notifier: the L{qutemail.interfaces.IMailboxNotifier}, or C{None}.
    @ivar submitter: the L{qutemail.jmap.submission.Submitter}, or C{None}
        (no sending).
    @ivar peerDomains: the domains of C{[qkd] peers}: encrypted mail from
        them came over the inter-site QKD link.
    @ivar hostname: this server's name.
    @ivar maxCachedAccounts: how many accounts' folder readings are kept.
    """

    runner: Any
    clock: Any
    stateDirectory: str
    limits: Any
    notifier: Any = None
    submitter: Any = None
    peerDomains: frozenset = frozenset()
    hostname: str = "localhost"
    maxCachedAccounts: int = 64
    _folderCaches: OrderedDict = attrs.field(factory=OrderedDict)

    def folderCache(self, root: str) -> dict:
        """
        @return: the kept folder readings of an account (see
            L{qutemail.jmap.state.takeSnapshot}), for the most recently
            used L{maxCachedAccounts} accounts.
        """
        cache = self._folderCaches.pop(root, None)
        if cache is None:
            cache = {}
        self._folderCaches[root] = cache
        while len(self._folderCaches) > self.maxCachedAccounts:
            self._folderCaches.popitem(last=False)
        return cache


def _readAll(f: BinaryIO, maxBytes: int) -> bytes:
    """
    Read and close a message file.  Blocking.
    """
    with f:
        return f.read(maxBytes + 1)


def _keyIdOf(path: str) -> str | None:
    """
    @return: the key id a stored file names, or C{None}.  Blocking.
    """
    try:
        f, envelope, _, _ = openStored(path)
    except (OSError, MessageUnreadable):
        return None
    f.close()
    return envelope.keyId if envelope is not None else None



@attrs.define(eq=False)
class AccountContext:
    """
    One request, one account.

    @ivar account: the L{qutemail.access.imapaccount.IMAPAccount}.
    @ivar services: the L{Services}.
    @ivar peer: the client's IP address.
    @ivar createdIds: creation ids to ids, for this request.
    @ivar changed: whether this request changed the account.
    """

    account: Any
    services: Services
    peer: str = ""
    createdIds: dict = attrs.field(factory=dict)
    changed: bool = False
    _snapshot: Snapshot | None = None
    _read: dict = attrs.field(factory=dict)

    @property
    def address(self) -> str:
        """
        @return: the account's address.
        """
        return self.account.address

    @property
    def accountId(self) -> str:
        """
        @return: the account's JMAP id.
        """
        return ids.accountId(self.account.address)

    @property
    def runner(self) -> Any:
        """
        @return: the runner.
        """
        return self.services.runner

    @property
    def limits(self) -> Any:
        """
        @return: the limits.
        """
        return self.services.limits

    @property
    def sessionState(self) -> str:
        """
        @return: the Session object's state (it changes with nothing but
            the account).
        """
        return "s" + hashlib.sha256(self.accountId.encode()).hexdigest()[:12]

    @property
    def stateDirectory(self) -> str:
        """
        @return: where this account's states are kept.
        """
        return os.path.join(self.services.stateDirectory, self.accountId)

    def now(self) -> float:
        """
        @return: the time.
        """
        return self.services.clock.seconds()

    async def snapshot(self) -> Snapshot:
        """
        @return: the account as it is now (taken once per request, again
            after a change).
        """
        if self._snapshot is None:
            root = self.account.root
            self._snapshot = await self.runner.run(takeSnapshot, root, self.now(), self.stateDirectory,
                                                   self.services.folderCache(root))
        return self._snapshot

    def modified(self) -> None:
        """
        The request changed the account: take a new snapshot next time and
        tell the other sessions when the request ends.
        """
        self._snapshot = None
        self.changed = True

    def resolveId(self, value: Any) -> Any:
        """
        @return: an id, or the id a C{#creationId} of this request stands for.
        """
        if isinstance(value, str) and value.startswith("#"):
            created = self.createdIds.get(value[1:])
            if created is None:
                raise MethodError("invalidArguments", f"{value} was not created in this request")
            return created
        return value

    async def rawMessage(self, entry: EmailEntry) -> tuple[bytes, dict | None]:
        """
        A message as its owner reads it.

        @return: its bytes, and its C{qutemailQkd} value.
        @raise MethodError: C{serverUnavailable} when its key cannot be had
            now.
        @raise FileNotFoundError: it is gone.
        """
        path = entry.path
        for attempt in (0, 1):
            try:
                f, info = await readMessage(path, self.account.vault, self.runner, self.account.tempDirectory)
                break
            except MessageUnreadable as e:
                if e.temporary:
                    raise MethodError("serverUnavailable", "a message key cannot be read now; try again") from None
                _log.warn("JMAP: message {messageId} of {address} unreadable, shown as a notice: {reason}",
                          messageId=entry.baseName, address=self.address, reason=str(e))
                keyId = await self.runner.run(_keyIdOf, path)
                return notice(entry.baseName, str(e)), self._qkd(keyId, None)
            except FileNotFoundError:
                moved = await self.runner.run(locate, entry.folderPath, entry.baseName) if attempt == 0 else None
                if moved is None:
                    raise
                path = moved
        data = await self.runner.run(_readAll, f, self.limits.maxSizeUpload * 2)
        return data, self._qkd(info.keyId, info.returnPathLine) if info.encrypted else None

    def _qkd(self, keyId: str | None, returnPath: bytes | None) -> dict | None:
        """
        @return: the C{qutemailQkd} value of an encrypted message.
        """
        if keyId is None:
            return None
        sender = (returnPath or b"").decode("utf-8", "replace").partition(":")[2].strip().strip("<>")
        interSite = bool(sender) and domainOf(sender) in self.services.peerDomains
        return {"keyId": keyId, "mode": "inter-site" if interSite else "at-rest"}

    async def parsed(self, entry: EmailEntry) -> tuple[ParsedEmail, dict | None, bytes]:
        """
        @return: a message broken down (once per request), its
            C{qutemailQkd}, and its bytes.
        """
        found = self._read.get(entry.id)
        if found is None:
            data, qkd = await self.rawMessage(entry)
            parsed = await self.runner.run(breakDown, data)
            found = self._read[entry.id] = (parsed, qkd, data)
        return found

    async def prefetch(self, entries: list[EmailEntry]) -> None:
        """
        Read the plain messages among C{entries} in one worker-thread call
        (up to L{PREFETCH_BYTES}), rather than in several thread round trips
        each, as IMAP's FETCH does; encrypted ones are left to L{parsed}.
        """
        missing = [e for e in entries if e.id not in self._read]
        if not missing:
            return
        found = await self.runner.run(readPlainFiles, [e.path for e in missing], PREFETCH_BYTES, breakDown)
        for entry, read in zip(missing, found):
            if read is not None:
                self._read[entry.id] = (read[1], None, read[0])

    def notify(self) -> None:
        """
        Tell the other sessions (IMAP IDLE, EventSource) when this request
        changed the account.
        """
        notifier = self.services.notifier
        if self.changed and notifier is not None:
            d = notifier.publish(self.address)
            if d is not None:
                d.addErrback(lambda f: _log.failure("JMAP change notice for {address}", f, address=self.address))
