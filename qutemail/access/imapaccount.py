# -*- test-case-name: tests.access.test_imapserver -*-
"""
The IMAP avatar: one logged-in account's Maildir++ folders (see
L{qutemail.store.folders}), and the realm and portal that give it.

The realm builds every path from the authenticated address alone
(L{qutemail.store.mailbox.mailboxPath}); folder names from the client go
through L{qutemail.store.folders} validation, and a refused one is
logged with the account, the name tried and the reason.  The special
folders (Sent, Drafts, Trash, Junk) are created at login.

Wiring (the lead's C{service.py})::

    portal = imapPortal(directory, dataDir, vault, runner)
    plain = IMAPFactory(portal, runner, reactor, throttle, tlsContext,
                        defaultQuotaBytes=config.mailbox.defaultQuotaBytes)
"""

import re
from typing import Any

import attrs
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail.imap4 import IAccount, INamespacePresenter
from zope.interface import implementer

from qutemail.store.folders import (
    SEPARATOR, FolderEntry, InvalidFolderName, MaildirFolders, NoSuchFolder, canonicalName,
    decodeMailboxName, isInbox, validateMailboxName,
)
from qutemail.access.fetchindex import SharedIndexes
from qutemail.access.imapmailbox import FolderGone, FolderView
from qutemail.access.imapmessage import MessageCache
from qutemail.access.imapstore import deleteFolder, syncFolder, usage
from qutemail.cred import UserDirectoryChecker
from qutemail.store.mailbox import mailboxPath


@attrs.frozen
class LoginContext:
    """
    What a session passes to the realm as the login's C{mind}.

    @ivar clock: the session's clock.
    @ivar defaultQuotaBytes: the quota of accounts without their own.
    @ivar hostname: for the names of messages the session stores.
    """

    clock: Any
    defaultQuotaBytes: int
    hostname: str = "localhost"


def patternRegex(pattern: str) -> "re.Pattern[str]":
    """
    @param pattern: a LIST pattern as text (RFC 3501 §6.3.8): C{*} matches
        anything, C{%} anything but the hierarchy separator.
    @return: a regular expression matching the whole name.
    """
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _matches(regex: "re.Pattern[str]", name: str) -> bool:
    """
    @return: whether a folder name matches (INBOX in any case).
    """
    if isInbox(name):
        return bool(regex.fullmatch(name) or re.compile(regex.pattern, re.IGNORECASE).fullmatch(name))
    return bool(regex.fullmatch(name))


@implementer(IAccount, INamespacePresenter)
@attrs.define(eq=False)
class IMAPAccount:
    """
    One session's avatar.  Its Twisted L{IAccount} methods return
    Deferreds; C{select} gives a L{FolderView} (the server works with
    those, not with Twisted's C{IMailbox}).

    @ivar address: the account's normalised address.
    @ivar root: its mailbox directory.
    @ivar runner: runs every file operation.
    @ivar vault: the key vault, for decrypting.
    @ivar clock: gives the time for new UIDVALIDITY values and names.
    @ivar quotaBytes: the account's quota (0: unlimited).
    @ivar hostname: for the names of messages stored here.
    @ivar tempDirectory: where decrypted copies live.
    @ivar sealer: an L{qutemail.access.imapseal.AppendSealer} that APPEND
        stores messages encrypted with, or C{None} to store them as sent.
    @ivar indexes: the server's L{SharedIndexes}, or C{None}: the
        session's own.
    """

    _log = Logger()

    address: str
    root: str
    runner: Any
    vault: Any
    clock: Any
    quotaBytes: int
    hostname: str = "localhost"
    tempDirectory: str | None = None
    sealer: Any = None
    indexes: SharedIndexes | None = None
    folders: MaildirFolders = attrs.field(init=False)
    cache: MessageCache = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        """
        The folders and the message cache of this session.
        """
        self.folders = MaildirFolders(self.root)
        self.cache = MessageCache(self.address, self.runner, self.vault, self.tempDirectory, indexes=self.indexes)

    def now(self) -> float:
        """
        @return: the current time.
        """
        return self.clock.seconds()

    def refused(self, attempted: bytes | str, reason: str) -> None:
        """
        Log a refused folder name.
        """
        if isinstance(attempted, bytes):
            attempted = attempted.decode("ascii", "backslashreplace")
        self._log.warn("IMAP refused folder name {attemptedName!r} for {account}: {reason}",
                       account=self.address, attemptedName=attempted, reason=reason)

    def folderName(self, raw: bytes, trailingSeparator: bool = False) -> str:
        """
        A folder name from the wire, validated.

        @param raw: the name in modified UTF-7.
        @param trailingSeparator: allow (and drop) a trailing C{/} (CREATE,
            RFC 3501 §6.3.3).
        @return: the name as text, C{INBOX} canonical.
        @raise InvalidFolderName: it is refused (and logged).
        """
        try:
            name = validateMailboxName(raw, trailingSeparator)
            self.folders.pathOf(name)  # the safety net; no file-system call
            return name
        except InvalidFolderName as e:
            self.refused(raw, e.reason)
            raise

    async def openFolder(self, name: str, writable: bool) -> FolderView:
        """
        SELECT or EXAMINE a folder.

        @param name: a validated name.
        @raise NoSuchFolder: it does not exist.
        """
        if not await self.runner.run(self.folders.exists, name):
            raise NoSuchFolder(f"no folder {name!r}")
        path = self.folders.pathOf(name)
        try:
            state, recent = await self.runner.run(syncFolder, path, self.now(), writable)
        except FileNotFoundError:
            raise NoSuchFolder(f"no folder {name!r}") from None
        return FolderView.fromState(name, path, writable, state, recent)

    async def refresh(self, view: FolderView) -> list[bytes]:
        """
        Bring a view up to date with its folder.

        @return: the untagged responses for the client.
        @raise FolderGone: the folder is gone.
        @raise UIDValidityChanged: see L{FolderView.update}.
        """
        try:
            state, recent = await self.runner.run(syncFolder, view.path, self.now(), view.writable)
        except FileNotFoundError:
            raise FolderGone(view.name) from None
        return view.update(state, recent)

    async def folderPath(self, name: str) -> str:
        """
        @return: the directory of an existing folder.
        @raise NoSuchFolder: it does not exist.
        """
        if not await self.runner.run(self.folders.exists, name):
            raise NoSuchFolder(f"no folder {name!r}")
        return self.folders.pathOf(name)

    async def status(self, name: str) -> dict[str, int]:
        """
        STATUS of a folder (RFC 3501 §6.3.10).

        @return: every item's value.
        @raise NoSuchFolder: it does not exist.
        """
        path = await self.folderPath(name)
        state, recent = await self.runner.run(syncFolder, path, self.now(), False)
        return {
            "MESSAGES": len(state.messages), "RECENT": len(recent), "UIDNEXT": state.uidNext,
            "UIDVALIDITY": state.uidValidity,
            "UNSEEN": sum(1 for m in state.messages if "\\Seen" not in m.flags),
        }

    async def usage(self) -> tuple[int, int]:
        """
        @return: the account's C{(bytes, messages)}.
        """
        return await self.runner.run(usage, self.root)

    async def listFolders(self, reference: bytes, pattern: bytes, subscribedOnly: bool = False,
                          specialOnly: bool = False) -> list[tuple[str, list[str]]]:
        """
        LIST or LSUB (RFC 3501 §6.3.8-9; RFC 3348 child attributes,
        RFC 6154 special-use attributes).

        @return: C{(name, attributes)} of every match.
        """
        try:
            regex = patternRegex(decodeMailboxName(reference.decode("ascii"))
                                 + decodeMailboxName(pattern.decode("ascii")))
        except (UnicodeDecodeError, InvalidFolderName):
            return []
        entries: list[FolderEntry] = await self.runner.run(self.folders.listFolders)
        if subscribedOnly:
            existing = {e.name: e for e in entries}
            names = await self.runner.run(self.folders.subscriptions)
            return [(n, [] if n in existing else ["\\Noselect"]) for n in names if _matches(regex, n)]
        result = []
        for entry in entries:
            if not _matches(regex, entry.name) or (specialOnly and entry.specialUse is None):
                continue
            attributes = ["\\HasChildren" if entry.hasChildren else "\\HasNoChildren"]
            if entry.specialUse is not None:
                attributes.append(entry.specialUse)
            result.append((entry.name, attributes))
        return result

    async def logoutAsync(self) -> None:
        """
        The session ended: close the messages it had open.
        """
        await self.cache.close()

    def logout(self) -> None:
        """
        The portal's logout callback.
        """
        Deferred.fromCoroutine(self.logoutAsync()).addErrback(
            lambda f: self._log.failure("closing the messages of {address}", f, address=self.address))

    # Twisted's IAccount and INamespacePresenter.

    def addMailbox(self, name: str, mbox: Any = None) -> Deferred:
        """
        See L{IAccount.addMailbox}: create a folder (C{mbox} is ignored).
        """
        return self.create(name)

    def create(self, pathspec: str) -> Deferred:
        """
        See L{IAccount.create}.

        @return: a Deferred firing with C{True}, or failing with
            L{qutemail.store.folders.FolderError}.
        """
        return self.runner.run(self.folders.create, pathspec).addCallback(lambda _: True)

    def select(self, name: str, rw: bool = True) -> Deferred:
        """
        See L{IAccount.select}.

        @return: a Deferred firing with a L{FolderView}.
        """
        return Deferred.fromCoroutine(self.openFolder(canonicalName(name), rw))

    def delete(self, name: str) -> Deferred:
        """
        See L{IAccount.delete}.
        """
        return self.runner.run(deleteFolder, self.root, name, self.quotaBytes).addCallback(lambda _: True)

    def rename(self, oldname: str, newname: str) -> Deferred:
        """
        See L{IAccount.rename}.
        """
        return self.runner.run(self.folders.rename, oldname, newname).addCallback(lambda _: True)

    def isSubscribed(self, name: str) -> Deferred:
        """
        See L{IAccount.isSubscribed}.
        """
        return self.runner.run(self.folders.subscriptions).addCallback(lambda names: canonicalName(name) in names)

    def subscribe(self, name: str) -> Deferred:
        """
        See L{IAccount.subscribe}.
        """
        return self.runner.run(self.folders.subscribe, name).addCallback(lambda _: True)

    def unsubscribe(self, name: str) -> Deferred:
        """
        See L{IAccount.unsubscribe}.
        """
        return self.runner.run(self.folders.unsubscribe, name).addCallback(lambda _: True)

    def listMailboxes(self, ref: str, wildcard: str) -> Deferred:
        """
        See L{IAccount.listMailboxes}.

        @return: a Deferred firing with C{[(name, attributes)]}.
        """
        return Deferred.fromCoroutine(self.listFolders(ref.encode("ascii"), wildcard.encode("ascii")))

    def getPersonalNamespaces(self) -> list:
        """
        One personal namespace, C{""} with C{/} (RFC 2342).
        """
        return [["", SEPARATOR]]

    def getSharedNamespaces(self) -> None:
        """
        No shared folders.
        """
        return None

    def getUserNamespaces(self) -> None:
        """
        No other users' folders.
        """
        return None


@implementer(IRealm)
@attrs.define
class IMAPRealm:
    """
    Gives a logged-in address its L{IMAPAccount}.

    @ivar directory: the user directory (for the account's quota).
    @ivar dataDir: the server's C{data_dir}.
    @ivar vault: the key vault.
    @ivar runner: runs the file work.
    @ivar tempDirectory: where decrypted copies live.
    @ivar clock: the clock for folder state; C{None}: the session's (from
        the L{LoginContext}).
    @ivar sealer: see L{IMAPAccount.sealer}.
    @ivar indexer: see L{SharedIndexes}.
    """

    _log = Logger()

    directory: Any
    dataDir: str
    vault: Any
    runner: Any
    tempDirectory: str | None = None
    clock: Any = None
    sealer: Any = None
    indexer: Any = None
    indexes: SharedIndexes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        """
        The fetch indexes the realm's sessions share.
        """
        self.indexes = SharedIndexes(self.runner, indexer=self.indexer)

    def requestAvatar(self, avatarId: str, mind: Any, *interfaces: Any) -> Deferred:
        """
        See L{IRealm.requestAvatar}.

        @param mind: a L{LoginContext} (or C{None}: no default quota).
        @return: a Deferred firing with C{(IAccount, account, logout)}.
        @raise NotImplementedError: L{IAccount} was not asked for.
        """
        if IAccount not in interfaces:
            raise NotImplementedError("IMAPRealm only gives IAccount")
        return Deferred.fromCoroutine(self._open(avatarId, mind))

    async def _open(self, address: str, mind: LoginContext | None) -> tuple:
        """
        See L{requestAvatar}.
        """
        account = await self.directory.getAccount(address)
        if account is None:
            raise UnauthorizedLogin("the account is gone")
        clock = self.clock if self.clock is not None else mind.clock
        quota = account.quotaBytes if account.quotaBytes is not None else (mind.defaultQuotaBytes if mind else 0)
        root = mailboxPath(self.dataDir, account.address)
        created = await self.runner.run(MaildirFolders(root).ensureSpecialFolders)
        if created:
            self._log.info("created folders {folders} for {address}", folders=", ".join(created),
                           address=account.address)
        avatar = IMAPAccount(account.address, root, self.runner, self.vault, clock, quota or 0,
                             mind.hostname if mind else "localhost", self.tempDirectory, self.sealer,
                             self.indexes)
        return IAccount, avatar, avatar.logout


def imapPortal(directory: Any, dataDir: str, vault: Any, runner: Any, tempDirectory: str | None = None, *,
               clock: Any = None, sealer: Any = None, indexer: Any = None) -> Portal:
    """
    The portal of the IMAP listeners.

    @param directory: the L{qutemail.interfaces.IUserDirectory}.
    @param dataDir: the server's C{data_dir}.
    @param vault: the L{qutemail.interfaces.IKeyVault}.
    @param runner: the L{qutemail.blocking.BlockingRunner}.
    @param tempDirectory: where decrypted copies live (default: the
        system's temporary directory).
    @param clock: the clock for folder state (default: each session's,
        the factory's reactor).
    @param sealer: see L{IMAPAccount.sealer}.
    @param indexer: see L{SharedIndexes}.
    """
    return Portal(IMAPRealm(directory, dataDir, vault, runner, tempDirectory, clock, sealer, indexer),
                  [UserDirectoryChecker(directory)])
