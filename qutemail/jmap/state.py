# -*- test-case-name: tests.jmap.test_state -*-
"""
What JMAP sees of an account, read from its Maildir++ folders (the truth):
a L{Snapshot} of its mailboxes and emails, and the state strings of both.

A snapshot is taken by L{takeSnapshot} in a worker thread: every folder is
brought up to date with L{qutemail.access.uids.sync}, as an IMAP session
does, without claiming C{new/} messages (they stay C{\\Recent} for IMAP).

State strings are digests of what a snapshot holds (RFC 8620 §1.2: they
change whenever the data changes).  To answer C{Email/changes} and
C{Mailbox/changes}, each state seen is kept as a small file under
C{data_dir/jmap/<accountId>/} (id to a signature of what matters); a later
snapshot is compared with it.  Those files are derived from the Maildir
and only the last L{KEEP_STATES} of each kind are kept: a state older than
that, or whose file is gone, gives C{cannotCalculateChanges} and the client
starts over, which RFC 8620 §5.2 allows.  Restarting the server loses
nothing, since both sides come from the disk.

Every function here blocks: callers run them through the runner.
"""

import hashlib
import json
import os
import secrets

import attrs

from qutemail.access.imapstore import storedSize
from qutemail.access.listingcache import folderStamps, settled
from qutemail.access.uids import sync, withTimes
from qutemail.durable import PRIVATE_FILE_MODE
from qutemail.jmap import ids
from qutemail.store.folders import INBOX, KEYWORDS_FILE, SEPARATOR, SPECIAL_FOLDERS, MaildirFolders

# How many states of each kind are kept on disk for */changes.
KEEP_STATES = 64
# JMAP keywords (RFC 8621 §4.1.1) of the IMAP system flags.
FLAG_TO_KEYWORD = {
    "\\seen": "$seen", "\\flagged": "$flagged", "\\answered": "$answered", "\\draft": "$draft",
    "$forwarded": "$forwarded",
}
KEYWORD_TO_FLAG = {"$seen": "\\Seen", "$flagged": "\\Flagged", "$answered": "\\Answered", "$draft": "\\Draft",
                   "$forwarded": "$Forwarded"}
# JMAP mailbox roles (RFC 8621 §2, the IANA registry) of our special folders.
ROLES = {INBOX: "inbox", **{name: use[1:].lower() for name, use in SPECIAL_FOLDERS.items()}}


class CannotCalculateChanges(Exception):
    """
    The old state is unknown (never seen, or no longer kept).
    """


def keywordsOf(flags: frozenset[str]) -> dict[str, bool]:
    """
    @return: the JMAP keywords of IMAP flags (C{\\Deleted} and
        C{\\Recent} have none).
    """
    out = {}
    for flag in flags:
        lower = flag.lower()
        if lower in FLAG_TO_KEYWORD:
            out[FLAG_TO_KEYWORD[lower]] = True
        elif not flag.startswith("\\"):
            out[lower] = True
    return out


def flagsOf(keywords: dict[str, bool], keep: frozenset[str]) -> frozenset[str]:
    """
    @param keywords: JMAP keywords (lower case).
    @param keep: the message's IMAP flags JMAP cannot see (C{\\Deleted}).
    @return: the IMAP flags.
    """
    flags = set(keep)
    for keyword, value in keywords.items():
        if value:
            flags.add(KEYWORD_TO_FLAG.get(keyword, keyword))
    return frozenset(flags)


@attrs.frozen
class EmailEntry:
    """
    One message as a snapshot found it.

    @ivar id: its email id.
    @ivar mailboxId: the id of its folder.
    @ivar folderPath: its folder's directory.
    @ivar baseName: its Maildir unique name.
    @ivar path: its file.
    @ivar flags: its IMAP flags.
    @ivar receivedAt: its delivery time (the file's modification time,
        IMAP's INTERNALDATE).
    @ivar size: its stored size.
    @ivar uid: its IMAP UID.
    """

    id: str
    mailboxId: str
    folderPath: str
    baseName: str
    path: str
    flags: frozenset
    receivedAt: float
    size: int
    uid: int

    @property
    def keywords(self) -> dict[str, bool]:
        """
        @return: its JMAP keywords.
        """
        return keywordsOf(self.flags)

    def signature(self) -> str:
        """
        @return: what an update changes (for C{Email/changes}).
        """
        return self.mailboxId + " " + " ".join(sorted(self.keywords))


@attrs.frozen
class MailboxEntry:
    """
    One folder as a snapshot found it.

    @ivar id: its mailbox id.
    @ivar name: its IMAP name.
    @ivar path: its directory.
    @ivar parentId: the id of the folder it is in, or C{None}.
    @ivar role: its JMAP role, or C{None}.
    @ivar total: its messages.
    @ivar unread: those without C{$seen}.
    """

    id: str
    name: str
    path: str
    parentId: str | None
    role: str | None
    total: int
    unread: int

    def signature(self) -> str:
        """
        @return: what an update changes (the counts after a C{|}).
        """
        return f"{self.name}\0{self.parentId}\0{self.role}|{self.total} {self.unread}"


@attrs.frozen
class Snapshot:
    """
    An account's mailboxes and emails at one moment.
    """

    mailboxes: tuple
    emails: tuple
    mailboxState: str
    emailState: str

    def mailbox(self, mailboxId: str) -> MailboxEntry | None:
        """
        @return: a mailbox by id.
        """
        return next((m for m in self.mailboxes if m.id == mailboxId), None)

    def emailsById(self) -> dict[str, EmailEntry]:
        """
        @return: the emails by id.
        """
        return {e.id: e for e in self.emails}


def _digest(signatures: dict[str, str]) -> str:
    """
    @return: a state string for signatures by id.
    """
    h = hashlib.sha256()
    for key in sorted(signatures):
        h.update(key.encode() + b"\0" + signatures[key].encode("utf-8", "surrogatepass") + b"\n")
    return "s" + h.hexdigest()[:20]


def _stamp(path: str, now: float) -> tuple | None:
    """
    @return: what changes whenever a folder's messages, flags or keywords
        change (the stamps of C{new/}, C{cur/} and its keywords file), or
        C{None} when one is too recent to rely on: a change made within
        the file system's timestamp granularity of a reading could leave
        them unchanged (the rule of L{qutemail.access.listingcache}).
    """
    stamps = folderStamps(path, ("new", "cur", KEYWORDS_FILE))
    return stamps if settled(stamps, now) else None


def _readFolder(path: str, boxId: str, now: float) -> tuple[list[EmailEntry], int, int]:
    """
    Sync a folder and list its emails.  Their delivery times come from
    L{withTimes}, which C{stat}s only the messages no reading of the
    process has seen before.

    @return: its emails, its message count, its unread count.
    @raise FileNotFoundError: it is gone.
    """
    state = sync(path, now)
    emails, unread = [], 0
    for listed, message in zip(state.messages, withTimes(path, list(state.messages))):
        if "\\Seen" not in listed.flags:
            unread += 1
        if message is None:
            continue
        try:
            size = storedSize(message.path)
        except FileNotFoundError:
            continue
        emails.append(EmailEntry(ids.emailId(message.baseName), boxId, path, message.baseName,
                                 message.path, message.flags, message.mtime, size, message.uid))
    return emails, len(state.messages), unread


def takeSnapshot(root: str, now: float, stateDirectory: str, cache: dict | None = None) -> Snapshot:
    """
    Read an account's folders (see the module docstring) and keep its
    states for */changes.  Blocking.

    @param root: the account's mailbox directory.
    @param now: the time, for a new UIDVALIDITY.
    @param stateDirectory: the account's directory of kept states.
    @param cache: readings of folders by path, kept between calls: a folder
        whose L{_stamp} is unchanged is not read again.
    @return: the snapshot.
    """
    cache = {} if cache is None else cache
    folders = MaildirFolders(root)
    folders.ensureSpecialFolders()
    entries = folders.listFolders()
    names = {e.name for e in entries}
    mailboxes, emails = [], []
    for entry in entries:
        boxId = ids.mailboxId(entry.name)
        stamp = _stamp(entry.path, now)
        cached = cache.get(entry.path)
        if stamp is not None and cached is not None and cached[0] == (stamp, boxId):
            found, total, unread = cached[1]
        else:
            try:
                found, total, unread = _readFolder(entry.path, boxId, now)
            except FileNotFoundError:
                cache.pop(entry.path, None)
                continue
            if stamp is not None:
                cache[entry.path] = ((stamp, boxId), (found, total, unread))
        emails.extend(found)
        parent, _, _ = entry.name.rpartition(SEPARATOR)
        mailboxes.append(MailboxEntry(boxId, entry.name, entry.path,
                                      ids.mailboxId(parent) if parent in names else None,
                                      ROLES.get(entry.name), total, unread))
    emailSigs = {e.id: e.signature() for e in emails}
    boxSigs = {m.id: m.signature() for m in mailboxes}
    snapshot = Snapshot(tuple(mailboxes), tuple(emails), _digest(boxSigs), _digest(emailSigs))
    _keep(stateDirectory, "mailbox", snapshot.mailboxState, boxSigs)
    _keep(stateDirectory, "email", snapshot.emailState, emailSigs)
    return snapshot


def _keep(directory: str, kind: str, state: str, signatures: dict[str, str]) -> None:
    """
    Keep a state's signatures (once), dropping the oldest past
    L{KEEP_STATES}.
    """
    path = os.path.join(directory, f"{kind}-{state}.json")
    if os.path.exists(path):
        return
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # Two requests may keep the same state at once: each its own file.
    temp = f"{path}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with open(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
        json.dump(signatures, f, separators=(",", ":"))
    os.replace(temp, path)
    kept = []
    for name in os.listdir(directory):
        if name.startswith(kind + "-") and name.endswith(".json"):
            try:
                kept.append((os.stat(os.path.join(directory, name)).st_mtime, name))
            except FileNotFoundError:
                pass
    kept.sort()
    for _, name in kept[:-KEEP_STATES]:
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass


def changesSince(directory: str, kind: str, oldState: str, current: dict[str, str]
                 ) -> tuple[list[str], list[str], list[str], bool]:
    """
    Compare a kept state with the current signatures.  Blocking.

    @return: C{(created, updated, destroyed, countsOnly)}: C{countsOnly}
        says every update only changed a mailbox's counts.
    @raise CannotCalculateChanges: the old state is not kept.
    """
    if not ids.isId(oldState):
        raise CannotCalculateChanges(oldState)
    try:
        with open(os.path.join(directory, f"{kind}-{oldState}.json"), encoding="utf-8",
                  errors="surrogatepass") as f:
            old = json.load(f)
    except (FileNotFoundError, ValueError):
        raise CannotCalculateChanges(oldState) from None
    created = sorted(k for k in current if k not in old)
    destroyed = sorted(k for k in old if k not in current)
    updated = sorted(k for k in current if k in old and old[k] != current[k])
    countsOnly = all(old[k].partition("|")[0] == current[k].partition("|")[0] for k in updated)
    return created, updated, destroyed, countsOnly
