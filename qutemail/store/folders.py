# -*- test-case-name: tests.store.test_folders -*-
"""
The Maildir++ folders of one account, named as IMAP4 names them.

IMAP names use C{/} as the hierarchy separator.  C{INBOX} (any case,
RFC 3501 §5.1) is the mailbox directory itself; any other name
C{a/b/c} is the Maildir++ folder directory C{.a.b.c} directly inside the
mailbox, each segment stored in IMAP modified UTF-7 (RFC 3501 §5.1.3), as
Courier and Dovecot store them, so other Maildir tools read the same
folders.

Names are validated before they touch the file system (L{validateMailboxName}
at the protocol edge, L{splitName} in every operation); L{InvalidFolderName}
says why one is refused (the rules are at L{splitName}).  A backslash is an
ordinary character: no path separator on POSIX, kept as is on disk.

The API works on names as text (C{str}, decoded); the IMAP protocol layer
converts at its edge with L{decodeMailboxName} and L{encodeMailboxName}.

Every function and method here blocks: callers run them through
L{qutemail.blocking.BlockingRunner.run}.
"""

import base64
import binascii
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from typing import NamedTuple

import attrs

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories, replaceFile, syncDirectory
from qutemail.store.dirlock import DirectoryLock

INBOX = "INBOX"
SEPARATOR = "/"
# RFC 6154 special-use folders, created on first use.
SPECIAL_FOLDERS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
SUBSCRIPTIONS_FILE = "subscriptions"
# A folder's IMAP keywords (Dovecot's file, see qutemail.access.keywords).
KEYWORDS_FILE = "dovecot-keywords"
FOLDER_MARKER = "maildirfolder"
# NAME_MAX of common file systems: the folder directory name (C{.a.b},
# encoded) must fit in one path component; the encoded name, one octet less.
MAX_DIRECTORY_NAME_BYTES = 255
MAX_NAME_BYTES = MAX_DIRECTORY_NAME_BYTES - 1
# Characters refused in names, and why: the LIST wildcards (RFC 3501 §6.3.8),
# the Maildir++ separator, NUL, a path separator other than C{/} (not POSIX).
_REFUSED_CHARACTERS = {"*": "the LIST wildcard '*'", "%": "the LIST wildcard '%'",
                       ".": "'.' (the Maildir++ separator)", "\x00": "a NUL character",
                       **{c: "a path separator" for c in (os.sep, os.altsep) if c and c != "/"}}
_REFUSED_CATEGORIES = {"Cc": "a control character", "Cs": "a lone surrogate"}
_MAILDIR_SUBDIRS = ("cur", "new", "tmp")
_BASE64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


class FolderError(Exception):
    """
    A folder operation was refused.  C{str()} is one line for the client.

    @ivar reason: why.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidFolderName(FolderError):
    """
    A name is not a valid folder name (or would map outside the mailbox).
    """


class FolderExists(FolderError):
    """
    The folder to create, or to rename to, exists already.
    """


class NoSuchFolder(FolderError):
    """
    The folder does not exist.
    """


class FolderHasChildren(FolderError):
    """
    The folder to delete has child folders (RFC 3501 §6.3.4).
    """


class FolderEntry(NamedTuple):
    """
    One folder, as L{MaildirFolders.listFolders} finds it.

    @ivar name: its IMAP name (text, C{/} separated).
    @ivar path: its directory.
    @ivar hasChildren: whether some folder is inside it (C{\\HasChildren},
        RFC 3348).
    @ivar specialUse: its RFC 6154 attribute (C{\\Sent} ...) or C{None}.
    """

    name: str
    path: str
    hasChildren: bool
    specialUse: str | None


def encodeMailboxName(name: str) -> str:
    """
    Encode a name in IMAP modified UTF-7 (RFC 3501 §5.1.3).

    @param name: the name as text (no lone surrogates).
    @return: its ASCII, wire form.
    @raise InvalidFolderName: C{name} holds a lone surrogate.
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            try:
                raw = "".join(pending).encode("utf-16-be")
            except UnicodeEncodeError:
                raise InvalidFolderName("the name holds a lone surrogate") from None
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decodeMailboxName(encoded: str) -> str:
    """
    Decode a name from IMAP modified UTF-7 (RFC 3501 §5.1.3).  Only the
    canonical encoding is accepted (the one L{encodeMailboxName} gives), so
    one folder has one spelling.

    @param encoded: the wire form.
    @return: the name as text.
    @raise InvalidFolderName: C{encoded} is not canonical modified UTF-7.
    """
    out: list[str] = []
    i = 0
    while i < len(encoded):
        ch = encoded[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise InvalidFolderName("the name is not modified UTF-7: it holds a non-ASCII or control character")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = encoded.find("-", i + 1)
        if end < 0:
            raise InvalidFolderName("the name is not modified UTF-7: an '&' run is not closed by '-'")
        chunk = encoded[i + 1:end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if not set(chunk) <= _BASE64_ALPHABET:
            raise InvalidFolderName("the name is not modified UTF-7: bad character in an '&' run")
        b64 = chunk.replace(",", "/")
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            out.append(raw.decode("utf-16-be"))
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidFolderName("the name is not modified UTF-7: bad UTF-16 in an '&' run") from None
    name = "".join(out)
    if encodeMailboxName(name) != encoded:
        raise InvalidFolderName("the name is not in canonical modified UTF-7")
    return name


def isInbox(name: str) -> bool:
    """
    @return: whether C{name} names the INBOX (case-insensitive, RFC 3501 §5.1).
    """
    return name.upper() == INBOX


def splitName(name: str) -> tuple[str, ...]:
    """
    Validate a folder name and split it into its segments.  Refused: a
    leading C{~} or C{/} (a home directory or path), an empty, C{.} or C{..}
    level or one with white space around it, a control character or one of
    L{_REFUSED_CHARACTERS}, C{INBOX/...}, over L{MAX_NAME_BYTES} encoded.

    @param name: an IMAP name as text (decoded from modified UTF-7).
    @return: its segments; C{()} for the INBOX.
    @raise InvalidFolderName: the name is refused; the reason says why.
    """
    if not isinstance(name, str):
        raise InvalidFolderName("a folder name must be text")
    if not name:
        raise InvalidFolderName("the folder name is empty")
    if isInbox(name):
        return ()
    if name.startswith(("~", SEPARATOR)):
        raise InvalidFolderName(f"the folder name starts with {name[0]!r} (it reads as a path)")
    segments = tuple(name.split(SEPARATOR))
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidFolderName(f"the folder name has a {segment!r} level" if segment
                                    else "the folder name has an empty level ('//' or a final '/')")
    for ch in name:
        reason = _REFUSED_CHARACTERS.get(ch) or _REFUSED_CATEGORIES.get(unicodedata.category(ch))
        if reason:
            raise InvalidFolderName(f"the folder name holds {reason}")
    if isInbox(segments[0]):
        raise InvalidFolderName("INBOX has no child folders")
    if any(segment != segment.strip() for segment in segments):
        raise InvalidFolderName("a level of the folder name starts or ends with white space")
    if len(directoryName(segments).encode("utf-8")) > MAX_DIRECTORY_NAME_BYTES:
        raise InvalidFolderName(f"the folder name is too long (over {MAX_NAME_BYTES} octets encoded)")
    return segments


def validateMailboxName(wire: bytes | str, trailingSeparator: bool = False) -> str:
    """
    Validate a mailbox name as the client sent it, in modified UTF-7
    (RFC 3501 §5.1.3), before any file-system call.

    @param wire: the name from the wire.
    @param trailingSeparator: allow (and drop) a trailing C{/} (CREATE).
    @return: the name as text, the INBOX spelt C{INBOX}.
    @raise InvalidFolderName: it is refused (see L{splitName}).
    """
    if isinstance(wire, bytes):
        wire = wire.decode("latin-1")  # 8-bit bytes are refused by decodeMailboxName
    if len(wire) > MAX_NAME_BYTES + trailingSeparator:
        raise InvalidFolderName(f"the folder name is too long (over {MAX_NAME_BYTES} octets encoded)")
    name = decodeMailboxName(wire)
    if trailingSeparator and name.endswith(SEPARATOR) and len(name) > 1:
        name = name[:-1]
    return canonicalName(name)


def directoryName(segments: tuple[str, ...]) -> str:
    """
    The Maildir++ directory name of a validated name's segments.

    @param segments: from L{splitName}; not empty.
    @return: C{.seg1.seg2}, each segment in modified UTF-7.
    """
    return "." + ".".join(encodeMailboxName(s) for s in segments)


def nameOfDirectory(directory: str) -> str | None:
    """
    The IMAP name of a Maildir++ folder directory name.

    @param directory: a base name such as C{.a.b}.
    @return: C{a/b}, or C{None} when C{directory} is not a valid folder
        directory (other files, and folders we could not have created).
    """
    if not directory.startswith(".") or directory in (".", ".."):
        return None
    try:
        name = SEPARATOR.join(decodeMailboxName(s) for s in directory[1:].split("."))
        if not splitName(name) or directoryName(splitName(name)) != directory:
            return None
    except InvalidFolderName:
        return None
    return name


def canonicalName(name: str) -> str:
    """
    @return: C{name} validated, with the INBOX spelt C{INBOX}.
    @raise InvalidFolderName: see L{splitName}.
    """
    return INBOX if not splitName(name) else name


def ensureMaildir(path: str, folder: bool = False) -> None:
    """
    Create C{cur/ new/ tmp/} in C{path} (and C{path}) where missing; for a
    Maildir++ folder, also its C{maildirfolder} marker.  Blocking.
    """
    for sub in _MAILDIR_SUBDIRS:
        makeDirectories(os.path.join(path, sub))
    if folder:
        os.close(os.open(os.path.join(path, FOLDER_MARKER), os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))


@attrs.frozen
class MaildirFolders:
    """
    The folders of one account's Maildir++ mailbox.  Blocking.

    @ivar root: the mailbox directory (see
        L{qutemail.store.mailbox.mailboxPath}).
    """

    root: str

    def pathOf(self, name: str) -> str:
        """
        The directory of a folder, whether or not it exists.

        @param name: an IMAP name as text.
        @return: the mailbox directory for the INBOX, else a directory
            directly inside it.
        @raise InvalidFolderName: the name is refused, or (a safety net)
            would map anywhere but directly inside the mailbox.
        """
        segments = splitName(name)
        if not segments:
            return self.root
        directory = directoryName(segments)
        path = os.path.join(self.root, directory)
        if (os.sep in directory or (os.altsep and os.altsep in directory) or directory in (".", "..")
                or os.path.dirname(os.path.normpath(path)) != os.path.normpath(self.root)):
            raise InvalidFolderName("the folder name maps outside the mailbox")
        return path

    def exists(self, name: str) -> bool:
        """
        @return: whether the folder exists (the INBOX always does).
        @raise InvalidFolderName: see L{pathOf}.
        """
        path = self.pathOf(name)
        return path == self.root or os.path.isdir(os.path.join(path, "cur"))

    def _folderDirectories(self) -> Iterator[tuple[str, str]]:
        """
        @return: C{(name, path)} of every valid folder directory.
        """
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                name = nameOfDirectory(entry.name)
                if name is not None and entry.is_dir(follow_symlinks=False):
                    yield name, entry.path

    def listFolders(self) -> list[FolderEntry]:
        """
        Every folder: the INBOX first, then the others by name.

        @return: the folders.
        """
        found = dict(self._folderDirectories())
        names = sorted(found)
        entries = [FolderEntry(INBOX, self.root, False, None)]
        for name in names:
            prefix = name + SEPARATOR
            hasChildren = any(other.startswith(prefix) for other in names)
            entries.append(FolderEntry(name, found[name], hasChildren, SPECIAL_FOLDERS.get(name)))
        return entries

    def _children(self, name: str) -> list[str]:
        """
        @return: the names of the folders inside C{name}, at any depth.
        """
        prefix = name + SEPARATOR
        return sorted(n for n, _ in self._folderDirectories() if n.startswith(prefix))

    def create(self, name: str) -> str:
        """
        Create a folder, and its missing parents (RFC 3501 §6.3.3), with
        C{cur/ new/ tmp/} and the C{maildirfolder} marker.

        @param name: an IMAP name as text.
        @return: the folder's directory.
        @raise InvalidFolderName: see L{pathOf}.
        @raise FolderExists: it exists (the INBOX always does).
        """
        segments = splitName(name)
        if not segments:
            raise FolderExists("INBOX exists already")
        ensureMaildir(self.root)
        path = self.pathOf(name)
        if self.exists(name):
            raise FolderExists(f"the folder {name!r} exists already")
        self._makeWithParents(segments)
        syncDirectory(self.root)
        return path

    def _makeWithParents(self, segments: list[str]) -> None:
        """
        Make a folder's directory and its missing parents' (not synced).
        """
        for depth in range(1, len(segments)):
            parent = SEPARATOR.join(segments[:depth])
            if not self.exists(parent):
                self._makeFolder(self.pathOf(parent))
        self._makeFolder(self.pathOf(SEPARATOR.join(segments)))

    def _makeFolder(self, path: str) -> None:
        """
        Make one folder directory (an interrupted earlier attempt is
        completed).
        """
        ensureMaildir(path, folder=True)

    def delete(self, name: str) -> None:
        """
        Delete a folder and its messages.  A folder with children is
        refused rather than turned C{\\Noselect} (RFC 3501 §6.3.4 allows
        either); the folder disappears at once (one rename), its files are
        removed after.

        @param name: an IMAP name as text.
        @raise InvalidFolderName: see L{pathOf}.
        @raise FolderError: it is the INBOX.
        @raise NoSuchFolder: it does not exist.
        @raise FolderHasChildren: it has child folders.
        """
        path = self.pathOf(name)
        if path == self.root:
            raise FolderError("INBOX cannot be deleted")
        if not self.exists(name):
            raise NoSuchFolder(f"no folder {name!r}")
        if self._children(name):
            raise FolderHasChildren(f"the folder {name!r} has child folders")
        ensureMaildir(self.root)
        doomed = tempfile.mkdtemp(prefix="deleted", dir=os.path.join(self.root, "tmp"))
        os.rename(path, os.path.join(doomed, "folder"))
        syncDirectory(self.root)
        shutil.rmtree(doomed)

    def rename(self, old: str, new: str) -> str:
        """
        Rename a folder and its children, creating missing parents of the
        new name (RFC 3501 §6.3.5).  Renaming the INBOX moves its messages
        into the new folder and leaves it empty, as that section says.
        Each directory is renamed atomically, but a folder and its children
        are renamed one after the other.  Subscriptions are not changed.

        @param old: the folder's IMAP name.
        @param new: its new IMAP name.
        @return: the new directory.
        @raise InvalidFolderName: see L{pathOf}, or C{new} is inside C{old}.
        @raise NoSuchFolder: C{old} does not exist.
        @raise FolderExists: C{new}, or a child's new name, exists.
        """
        oldPath, newPath = self.pathOf(old), self.pathOf(new)
        if newPath == self.root:
            raise FolderExists("INBOX exists already")
        if oldPath == self.root:
            return self._renameInbox(new)
        if not self.exists(old):
            raise NoSuchFolder(f"no folder {old!r}")
        if new == old:
            raise FolderExists(f"the folder {new!r} exists already")
        if new.startswith(old + SEPARATOR):
            raise InvalidFolderName("a folder cannot be moved inside itself")
        moves = [(old, new)] + [(child, new + child[len(old):]) for child in self._children(old)]
        targets = [(self.pathOf(o), self.pathOf(n), n) for o, n in moves]
        for _, target, targetName in targets:
            if os.path.lexists(target):
                raise FolderExists(f"the folder {targetName!r} exists already")
        newSegments = splitName(new)
        for depth in range(1, len(newSegments)):
            parent = SEPARATOR.join(newSegments[:depth])
            if not self.exists(parent):
                self._makeFolder(self.pathOf(parent))
        for source, target, _ in targets:
            os.rename(source, target)
        syncDirectory(self.root)
        return newPath

    def _renameInbox(self, new: str) -> str:
        """
        Move the INBOX's messages into a new folder (RFC 3501 §6.3.5), with
        a copy of the INBOX's C{dovecot-keywords} first: the messages'
        keyword letters mean what that file says.
        """
        path = self.create(new)
        try:
            with open(os.path.join(self.root, KEYWORDS_FILE), "rb") as f:
                replaceFile(os.path.join(path, KEYWORDS_FILE), f.read())
        except FileNotFoundError:
            pass
        for sub in ("new", "cur"):
            source = os.path.join(self.root, sub)
            try:
                names = os.listdir(source)
            except FileNotFoundError:
                continue
            for fileName in names:
                if not fileName.startswith("."):
                    os.rename(os.path.join(source, fileName), os.path.join(path, sub, fileName))
            syncDirectory(os.path.join(path, sub))
        return path

    def ensureSpecialFolders(self) -> list[str]:
        """
        Create the special-use folders (L{SPECIAL_FOLDERS}) that are missing,
        subscribed, and the INBOX's Maildir if missing.  Safe to call at
        every login.

        @return: the names of the folders created.
        """
        ensureMaildir(self.root)
        created = []
        for name in SPECIAL_FOLDERS:
            if not self.exists(name):
                self._makeWithParents(splitName(name))
                created.append(name)
        if created:
            # One sync of the mailbox directory for them all (a first
            # login's), by the subscriptions file's replacement below.
            with self._locked():
                subscribed = self.subscriptions()
                self._writeSubscriptions(subscribed + [n for n in created if n not in subscribed])
        return created

    def subscriptions(self) -> list[str]:
        """
        The subscribed names, in the order they were subscribed.  Lines that
        do not hold a valid name are ignored.

        @return: IMAP names as text.
        """
        try:
            with open(os.path.join(self.root, SUBSCRIPTIONS_FILE), "rb") as f:
                lines = f.read().decode("ascii", "replace").split("\n")
        except FileNotFoundError:
            return []
        names: list[str] = []
        for line in lines:
            try:
                name = canonicalName(decodeMailboxName(line))
            except InvalidFolderName:
                continue
            if name not in names:
                names.append(name)
        return names

    def subscribe(self, name: str) -> None:
        """
        Subscribe to a name (RFC 3501 §6.3.6 lets it not exist; the IMAP
        server refuses that, as Dovecot does).

        @param name: an IMAP name as text.
        @raise InvalidFolderName: see L{pathOf}.
        """
        name = canonicalName(name)
        with self._locked():
            names = self.subscriptions()
            if name not in names:
                self._writeSubscriptions(names + [name])

    def unsubscribe(self, name: str) -> None:
        """
        Unsubscribe from a name; a name not subscribed is ignored.

        @param name: an IMAP name as text.
        @raise InvalidFolderName: see L{pathOf}.
        """
        name = canonicalName(name)
        with self._locked():
            names = self.subscriptions()
            if name in names:
                self._writeSubscriptions([n for n in names if n != name])

    def _writeSubscriptions(self, names: list[str]) -> None:
        """
        Replace the subscriptions file atomically.
        """
        data = "".join(encodeMailboxName(n) + "\n" for n in names).encode("ascii")
        replaceFile(os.path.join(self.root, SUBSCRIPTIONS_FILE), data)

    def _locked(self) -> "DirectoryLock":
        """
        @return: a context manager holding an exclusive C{flock} on the
            mailbox directory, which serialises subscription changes
            between threads and processes.
        """
        ensureMaildir(self.root)
        return DirectoryLock(self.root)
