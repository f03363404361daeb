# -*- test-case-name: tests.access.test_imapserver -*-
"""
The IMAP commands of the authenticated state (RFC 3501 §6.3): folders,
LIST, STATUS, APPEND, and QUOTA (RFC 9208), as a mixin of
L{qutemail.access.imapserver.IMAPServer}.

APPEND refuses before the message is sent when it is too large, its
folder is missing (C{[TRYCREATE]}) or it would exceed the quota
(C{[OVERQUOTA]}); otherwise the literal is written, as it arrives, into
the folder's C{tmp/} (in worker threads, reading from the client paused
while writes are behind), then made part of the folder (see
L{qutemail.access.imapstore.finishAppend}).  Appended messages are stored
as the client sent them, not encrypted.  A keyword new to the folder gets
its letter before the message is asked for, so a folder out of keyword
letters refuses the APPEND (C{NO [LIMIT]}) before the client sends it.

SUBSCRIBE names an existing folder (C{NO [NONEXISTENT]} otherwise, as
Dovecot answers); UNSUBSCRIBE takes any name, so a stale subscription
can be dropped.
"""

from typing import Any

from twisted.internet.defer import Deferred, succeed

from qutemail.store.folders import NoSuchFolder, encodeMailboxName, isInbox
from qutemail.access.keywords import ensureKeywords, isKeyword
from qutemail.access.imapseal import SealUnavailable
from qutemail.access.imapstore import (
    abortAppend, adoptAppend, beginAppend, checkQuota, closeAppend, deleteFolder, finishAppend, writeAppend,
)
from qutemail.access.imapwire import (
    Atom, ParseError, astring, bad, formatValue, no, parseDateTime,
)
from qutemail.access.uids import FLAG_TO_LETTER, LETTER_TO_FLAG, keywordsIn

_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
# APPEND: write to disk once this much of the literal is buffered, and
# stop reading from the client while this much waits to be written.
APPEND_FLUSH_BYTES = 256 * 1024
APPEND_PAUSE_BYTES = 1024 * 1024


def mailboxName(name: str) -> bytes:
    """
    @return: a folder name as the wire shows it (modified UTF-7, quoted).
    """
    return formatValue(encodeMailboxName(name).encode("ascii"))


def parseFlags(tokens: list) -> frozenset[str]:
    """
    Flags from a STORE or APPEND flag list: system flags and
    C{$Forwarded} (any case) in their canonical spelling, keywords (see
    L{qutemail.access.keywords.isKeyword}) as given; C{\\Recent} cannot be
    set and is ignored.

    @raise ParseError: a token is not a flag (C{\\*} included).
    """
    flags = set()
    for token in tokens:
        if not isinstance(token, Atom) or not token:
            raise ParseError("bad flag")
        text = token.decode("ascii", "replace")
        lower = text.lower()
        if lower == "\\recent":
            continue
        if lower in FLAG_TO_LETTER:
            flags.add(LETTER_TO_FLAG[FLAG_TO_LETTER[lower]])
        elif text.startswith("\\"):
            raise ParseError("unknown system flag")
        elif isKeyword(text):
            flags.add(text)
        else:
            raise ParseError("bad keyword")
    return frozenset(flags)


def quotaLine(used: int, quotaBytes: int) -> bytes:
    """
    @return: the untagged QUOTA response of the root C{""} (RFC 9208
        §5.1: STORAGE in units of 1024 octets).
    """
    if not quotaBytes:
        return b'QUOTA "" ()'
    return b'QUOTA "" (STORAGE %d %d)' % ((used + 1023) // 1024, quotaBytes // 1024)


class _MessageLiteral:
    """
    Receives APPEND's message literal (as Twisted's C{LiteralFile} would)
    and writes it to its file through the runner.

    @ivar done: fires with the rest of the command line once everything
        is written, or fails with the first write error.
    """

    def __init__(self, size: int, append: Any, runner: Any, transport: Any) -> None:
        """
        @param append: the L{qutemail.access.imapstore.AppendFile}.
        """
        self._remaining = size
        self._append = append
        self._runner = runner
        self._transport = transport
        self._buffer = bytearray()
        self._writing: Deferred = succeed(None)
        self._unwritten = 0
        self._paused = False
        self._error: Any = None
        self.done = Deferred()

    def write(self, data: bytes) -> bytes | None:
        """
        Take a piece of the literal.

        @return: what follows the literal (once it is complete), else
            C{None}.
        """
        take = data[:self._remaining]
        self._remaining -= len(take)
        self._buffer += take
        if len(self._buffer) >= APPEND_FLUSH_BYTES or self._remaining == 0:
            self._flush()
        return data[len(take):] if self._remaining == 0 else None

    def _flush(self) -> None:
        """
        Queue the buffered bytes for writing.
        """
        if not self._buffer:
            return
        chunk = bytes(self._buffer)
        self._buffer.clear()
        self._unwritten += len(chunk)
        if self._unwritten > APPEND_PAUSE_BYTES and not self._paused:
            self._paused = True
            self._transport.pauseProducing()

        def write(_: Any) -> Any:
            """
            Write the chunk (unless a write failed already).
            """
            if self._error is None:
                return self._runner.run(writeAppend, self._append, chunk)
            return None

        def written(_: Any) -> None:
            """
            One chunk less waits to be written.
            """
            self._unwritten -= len(chunk)
            self._resume()

        def failed(failure: Any) -> None:
            """
            Remember the first write error; later chunks are dropped.
            """
            if self._error is None:
                self._error = failure
            written(None)

        self._writing.addCallback(write).addCallbacks(written, failed)

    def _resume(self) -> None:
        """
        Read from the client again once writes have caught up.
        """
        if self._paused and (self._unwritten <= APPEND_FLUSH_BYTES or self._error is not None):
            self._paused = False
            self._transport.resumeProducing()

    def callback(self, line: bytes) -> None:
        """
        The literal is complete; C{line} is the rest of the command line.
        """
        self._flush()

        def finished(_: Any) -> None:
            """
            Every chunk is written: hand over the rest of the line.
            """
            if self.done.called:
                return
            if self._error is not None:
                self.done.errback(self._error)
            else:
                self.done.callback(line)

        self._writing.addCallback(finished)


class FolderCommands:
    """
    The authenticated-state commands (a mixin of the server).
    """

    def _deselect(self) -> None:
        """
        Leave the selected state.
        """
        self.view = None
        self.state = "auth"

    async def _oneName(self, rest: bytes, trailingSeparator: bool = False) -> str:
        """
        @return: the single folder name argument, validated.
        """
        tokens, _ = await self._arguments(rest)
        if len(tokens) != 1:
            raise bad(b"Expected one mailbox name")
        return self.account.folderName(astring(tokens[0], "mailbox name"), trailingSeparator)

    async def _select(self, tag: bytes, rest: bytes, writable: bool) -> None:
        """
        SELECT or EXAMINE (RFC 3501 §6.3.1-2).
        """
        name = await self._oneName(rest)
        if self.view is not None:
            self._deselect()
        view = await self.account.openFolder(name, writable)
        for line in view.flagResponses():
            self._untagged(line)
        self._untagged(b"%d EXISTS" % (len(view.slots),))
        self._untagged(b"%d RECENT" % (view.recentCount(),))
        unseen = view.firstUnseen()
        if unseen is not None:
            self._untagged(b"OK [UNSEEN %d] First unseen" % (unseen,))
        self._untagged(b"OK [UIDVALIDITY %d] UIDs valid" % (view.uidValidity,))
        self._untagged(b"OK [UIDNEXT %d] Predicted next UID" % (view.uidNext,))
        self.view = view
        self.state = "select"
        mode = b"READ-WRITE" if writable else b"READ-ONLY"
        self._tagged(tag, b"OK", b"[%b] %b completed" % (mode, b"SELECT" if writable else b"EXAMINE"))

    async def imap_SELECT(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        SELECT mailbox.
        """
        await self._select(tag, rest, True)

    async def imap_EXAMINE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        EXAMINE mailbox.
        """
        await self._select(tag, rest, False)

    async def imap_CREATE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        CREATE mailbox (missing parents are created too).
        """
        name = await self._oneName(rest, trailingSeparator=True)
        if isInbox(name):
            raise no(b"[ALREADYEXISTS] INBOX exists already")
        await self.account.runner.run(self.account.folders.create, name)
        self._tagged(tag, b"OK", b"CREATE completed")

    async def imap_DELETE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        DELETE mailbox; deleting the selected one deselects it.
        """
        name = await self._oneName(rest)
        if isInbox(name):
            raise no(b"[CANNOT] INBOX cannot be deleted")
        account = self.account
        await account.runner.run(deleteFolder, account.root, name, account.quotaBytes)
        if self.view is not None and self.view.name == name:
            self._deselect()
            self._untagged(b"OK [CLOSED] Selected mailbox deleted")
        self._tagged(tag, b"OK", b"DELETE completed")

    async def imap_RENAME(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        RENAME old new; the selected folder (or its parent) keeps being
        selected under its new name.
        """
        tokens, _ = await self._arguments(rest)
        if len(tokens) != 2:
            raise bad(b"RENAME needs two mailbox names")
        account = self.account
        old = account.folderName(astring(tokens[0], "mailbox name"))
        new = account.folderName(astring(tokens[1], "mailbox name"))
        await account.runner.run(account.folders.rename, old, new)
        view = self.view
        if view is not None and not isInbox(old) and (view.name == old or view.name.startswith(old + "/")):
            view.name = new + view.name[len(old):]
            view.path = account.folders.pathOf(view.name)
        self._tagged(tag, b"OK", b"RENAME completed")

    async def imap_SUBSCRIBE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        SUBSCRIBE mailbox, which must exist (RFC 3501 §6.3.6 allows either).
        """
        name = await self._oneName(rest)
        await self.account.folderPath(name)
        await self.account.runner.run(self.account.folders.subscribe, name)
        self._tagged(tag, b"OK", b"SUBSCRIBE completed")

    async def imap_UNSUBSCRIBE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        UNSUBSCRIBE mailbox.
        """
        name = await self._oneName(rest)
        await self.account.runner.run(self.account.folders.unsubscribe, name)
        self._tagged(tag, b"OK", b"UNSUBSCRIBE completed")

    async def _list(self, tag: bytes, rest: bytes, command: bytes) -> None:
        """
        LIST or LSUB; LIST takes the RFC 5258 selection options
        C{SPECIAL-USE} and C{SUBSCRIBED} and ignores RETURN options.
        """
        tokens, _ = await self._arguments(rest)
        selection: list[bytes] = []
        if command == b"LIST" and tokens and isinstance(tokens[0], list):
            selection = [bytes(t).upper() for t in tokens.pop(0) if isinstance(t, bytes)]
        if len(tokens) >= 3 and isinstance(tokens[2], Atom) and tokens[2].upper() == b"RETURN":
            tokens = tokens[:2]
        if len(tokens) != 2:
            raise bad(b"Expected a reference and a mailbox pattern")
        reference = astring(tokens[0], "reference")
        patterns = tokens[1] if isinstance(tokens[1], list) else [tokens[1]]
        subscribed = command == b"LSUB" or b"SUBSCRIBED" in selection
        seen = set()
        for pattern in patterns:
            pattern = astring(pattern, "mailbox pattern")
            if not pattern and command == b"LIST":
                self._untagged(b'LIST (\\Noselect) "/" ""')
                continue
            found = await self.account.listFolders(reference, pattern, subscribed, b"SPECIAL-USE" in selection)
            for name, attributes in found:
                if name not in seen:
                    seen.add(name)
                    self._untagged(b'%b (%b) "/" %b' % (command, " ".join(attributes).encode("ascii"),
                                                        mailboxName(name)))
        self._tagged(tag, b"OK", command + b" completed")

    async def imap_LIST(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        LIST reference pattern.
        """
        await self._list(tag, rest, b"LIST")

    async def imap_LSUB(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        LSUB reference pattern.
        """
        await self._list(tag, rest, b"LSUB")

    async def imap_STATUS(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        STATUS mailbox (items) (RFC 3501 §6.3.10).
        """
        tokens, _ = await self._arguments(rest)
        if len(tokens) != 2 or not isinstance(tokens[1], list) or not tokens[1]:
            raise bad(b"STATUS needs a mailbox and a list of items")
        items = [bytes(t).upper().decode("ascii", "replace") if isinstance(t, Atom) else "" for t in tokens[1]]
        if not all(i in _STATUS_ITEMS for i in items):
            raise bad(b"Unknown STATUS item")
        name = self.account.folderName(astring(tokens[0], "mailbox name"))
        status = await self.account.status(name)
        values = b" ".join(b"%s %d" % (i.encode("ascii"), status[i]) for i in items)
        self._untagged(b"STATUS %b (%b)" % (mailboxName(name), values))
        self._tagged(tag, b"OK", b"STATUS completed")

    async def imap_NAMESPACE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        NAMESPACE (RFC 2342): one personal namespace.
        """
        self._untagged(b'NAMESPACE (("" "/")) NIL NIL')
        self._tagged(tag, b"OK", b"NAMESPACE completed")

    async def imap_GETQUOTAROOT(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        GETQUOTAROOT mailbox: every folder is under the root C{""}.
        """
        name = await self._oneName(rest)
        await self.account.folderPath(name)
        used, _ = await self.account.usage()
        self._untagged(b'QUOTAROOT %b ""' % (mailboxName(name),))
        self._untagged(quotaLine(used, self.account.quotaBytes))
        self._tagged(tag, b"OK", b"GETQUOTAROOT completed")

    async def imap_GETQUOTA(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        GETQUOTA root: only C{""} exists.
        """
        tokens, _ = await self._arguments(rest)
        if len(tokens) != 1:
            raise bad(b"GETQUOTA needs a quota root")
        if astring(tokens[0], "quota root") != b"":
            raise no(b"[NONEXISTENT] No such quota root")
        used, _ = await self.account.usage()
        self._untagged(quotaLine(used, self.account.quotaBytes))
        self._tagged(tag, b"OK", b"GETQUOTA completed")

    async def imap_SETQUOTA(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        SETQUOTA: quotas are set by the administrator.
        """
        raise no(b"[NOPERM] Quotas cannot be changed over IMAP")

    async def _sealAppend(self, append: Any, path: str) -> Any:
        """
        Seal an appended message (see L{qutemail.access.imapseal}) and move
        the ciphertext into the folder.

        @return: the folder's L{qutemail.access.imapstore.AppendFile}.
        """
        account = self.account
        await account.runner.run(closeAppend, append)
        try:
            sealed = await account.sealer.seal(append.tempPath, append.size, account.address)
        except SealUnavailable as e:
            self._log.warn("APPEND for {account} refused: cannot encrypt it now: {reason}",
                           account=account.address, reason=str(e))
            raise no(b"[UNAVAILABLE] The message cannot be stored encrypted now, try again later") from None
        try:
            return await account.runner.run(adoptAppend, path, account.now(), account.hostname, sealed)
        except FileNotFoundError:
            raise no(b"[TRYCREATE] No such mailbox") from None

    async def imap_APPEND(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        APPEND mailbox [(flags)] [date-time] literal (RFC 3501 §6.3.11),
        answered with APPENDUID (RFC 4315).
        """
        tokens, size = await self._arguments(rest, messageLiteral=True)
        if size is None or not 1 <= len(tokens) <= 3:
            raise bad(b"APPEND needs a mailbox and a message literal")
        account, factory = self.account, self.factory
        name = account.folderName(astring(tokens[0], "mailbox name"))
        flags: frozenset[str] = frozenset()
        mtime = account.now()
        for token in tokens[1:]:
            if isinstance(token, list):
                flags = parseFlags(token)
            elif isinstance(token, bytes) and not isinstance(token, Atom):
                mtime = parseDateTime(token)
            else:
                raise bad(b"Bad APPEND argument")
        if size > factory.maxAppendBytes:
            raise no(b"[TOOBIG] Message too large")
        try:
            path = await account.folderPath(name)
        except NoSuchFolder:
            raise no(b"[TRYCREATE] No such mailbox") from None
        await account.runner.run(checkQuota, account.root, account.quotaBytes, size)
        await account.runner.run(ensureKeywords, path, keywordsIn(flags))
        sealer = account.sealer
        # with a sealer the literal waits in the spool area, never in the folder
        target = sealer.directory if sealer is not None else path
        append = await account.runner.run(beginAppend, target, account.now(), account.hostname, size)
        literal = _MessageLiteral(size, append, account.runner, self.transport)
        try:
            self._pendingLiteral = literal
            self.parseState = "pending"
            self.sendLine(b"+ Ready for literal data")
            self.setRawMode()
            after = await literal.done
        except BaseException:
            await account.runner.run(abortAppend, append)
            raise
        if after.strip():
            await account.runner.run(abortAppend, append)
            raise bad(b"Only one message per APPEND")
        if sealer is not None:
            append = await self._sealAppend(append, path)
        uidValidity, newUid = await account.runner.run(finishAppend, append, path, flags, mtime, account.root,
                                                       account.quotaBytes, account.now())
        self._announce()
        if self.view is not None and self.view.name == name:
            await self._refresh()
        self._tagged(tag, b"OK", b"[APPENDUID %d %d] APPEND completed" % (uidValidity, newUid))
