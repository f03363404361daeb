# -*- test-case-name: tests.access.test_uids -*-
"""
Persistent IMAP UIDs (RFC 3501 §2.3.1.1) for the messages of one Maildir++
folder, and the Maildir flags in file names.

Each folder directory holds a C{uidlist} file: a first line
C{<UIDVALIDITY> <UIDNEXT>}, then one C{<uid> <base name>} line per message,
UIDs ascending.  A message is known by its base name, the part of its file
name before C{:}, which stays the same while it moves from C{new/} to
C{cur/} and its flags change, so it keeps its UID.

L{sync} brings the file up to date with the folder: messages delivered
since (while nobody was logged in, too) get the next UIDs in delivery order
(by name: a Maildir file's name begins with the second it was delivered,
and ours then the microsecond, zero-padded), vanished ones are dropped.
It holds an exclusive C{flock} on the folder directory while it reads and
rewrites the file (atomically, with L{qutemail.durable.replaceFile}), so
two sessions or processes never hand out one UID twice.

UIDVALIDITY is chosen when the file is created: the current time in
seconds.  It changes only when the file is lost or corrupt; the file is
then rebuilt (and the rebuild logged), with a UIDVALIDITY greater than the
corrupt file's when that one can still be read.  A lost file gets the
current time, which is greater as long as the clock has moved on since the
file was created.

Keywords are kept as Dovecot keeps them, in the folder's
C{dovecot-keywords} and lower-case info letters (see
L{qutemail.access.keywords}).

Every function here blocks: callers run them through
L{qutemail.blocking.BlockingRunner.run}.
"""

import operator
import os
import re
from collections.abc import Iterable

import attrs
from twisted.logger import Logger

from qutemail.access.keywords import EMPTY, KeywordMap, ensureKeywords, readKeywords
from qutemail.access.listingcache import ListingCache, TimeCache, folderStamps
from qutemail.store.dirlock import DirectoryLock
from qutemail.durable import replaceFile
from qutemail.store.folders import KEYWORDS_FILE
from qutemail.store.mailbox import subdirectoryEntries
from qutemail.store.reader import splitStoredNames, storedId

_log = Logger()

# Bulk accessors for a listing's entries and their split names.
_NAME = operator.attrgetter("name")
_PATH = operator.attrgetter("path")
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_LAST = operator.itemgetter(2)

UIDLIST_FILE = "uidlist"
# UIDs and UIDVALIDITY are non-zero 32-bit numbers (RFC 3501 §9, nz-number).
MAX_UID = 2**32 - 1
# Maildir flag letters (https://cr.yp.to/proto/maildir.html) and the IMAP
# flags they stand for; Passed has no system flag, so the common
# C{$Forwarded} keyword is used.
LETTER_TO_FLAG = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
FLAG_TO_LETTER = {flag.lower(): letter for letter, flag in LETTER_TO_FLAG.items()}
INFO_PREFIX = ":2,"
# A uidlist's message lines: "<uid> <base name>".
_ENTRY = re.compile(r"([0-9]+) ([^\n]+)\n")
_ENTRY_LINES = re.compile(r"(?:[0-9]+ [^\n]+\n)*")
# The files a folder's state is read from (see L{listingcache}); the
# uidlist is the third.
_STATE_FILES = ("new", "cur", UIDLIST_FILE, KEYWORDS_FILE)
# Every process's memory of its folders' last states.
LISTINGS = ListingCache()
# The times withTimes has found, for every session of the process.
TIMES = TimeCache()


class CorruptUidList(Exception):
    """
    A C{uidlist} file cannot be read as one.

    @ivar uidValidity: its UIDVALIDITY when its first line could be read,
        else C{None}.
    """

    def __init__(self, reason: str, uidValidity: int | None = None) -> None:
        super().__init__(reason)
        self.uidValidity = uidValidity


# Not frozen, though never changed in place (a change makes a new one,
# attrs.evolve): a frozen attrs class sets each field through
# object.__setattr__, and made 10,000 in 6-7 ms where this takes 2.5-3, a
# quarter of a first SELECT of a 10,000-message folder (issue 14).
@attrs.define(unsafe_hash=True)
class FolderMessage:
    """
    One message of a folder, with its UID.  Treated as immutable.

    @ivar uid: its UID.
    @ivar baseName: its file name up to the info (C{:2,} and flags).
    @ivar path: its file.
    @ivar flags: its IMAP flags (see L{LETTER_TO_FLAG}).
    @ivar mtime: its file's modification time (its IMAP INTERNALDATE), or
        C{None} when nobody has looked yet: L{sync} lists the folder without
        a C{stat} of each file (on a 10,000-message INBOX the C{stat}s were
        half of a first SELECT, issue 14; Dovecot's first SELECT reads the
        directories only too).  L{withTimes} looks.
    """

    uid: int
    baseName: str
    path: str
    flags: frozenset[str]
    mtime: float | None = None


@attrs.frozen
class FolderState:
    """
    A folder's messages and UIDs, as L{sync} left them.

    @ivar uidValidity: the folder's UIDVALIDITY.
    @ivar uidNext: the UID the next new message will get.
    @ivar messages: the messages, by ascending UID.
    @ivar keywords: the folder's keywords (read after its messages, so
        every keyword letter they carry is in it).
    @ivar inNew: the base names of the messages whose file is in C{new/}
        (known from the listing, so that a session need not look at each
        message's path to find them).
    """

    uidValidity: int
    uidNext: int
    messages: tuple[FolderMessage, ...]
    keywords: KeywordMap = EMPTY
    inNew: frozenset[str] = frozenset()


def infoLetters(fileName: str) -> str:
    """
    @param fileName: a Maildir file's base name.
    @return: the flag letters of its C{:2,} info (C{""}: none).
    """
    _, marker, letters = fileName.partition(INFO_PREFIX)
    return letters if marker else ""


def flagsOfLetters(letters: str, keywords: KeywordMap = EMPTY) -> frozenset[str]:
    """
    @param letters: Maildir flag letters.
    @param keywords: the folder's keywords, for the lower-case letters.
    @return: the IMAP flags they stand for; unknown letters are left out.
    """
    flags = {LETTER_TO_FLAG[c] for c in letters if c in LETTER_TO_FLAG}
    flags.update(n for n in (keywords.nameOf(c) for c in letters if "a" <= c <= "z") if n is not None)
    return frozenset(flags)


def keywordsIn(flags: Iterable[str]) -> list[str]:
    """
    @return: the keywords among IMAP flags: those that are not system
        flags and have no letter of their own (C{$Forwarded} has C{P}).
    """
    return [f for f in flags if not f.startswith("\\") and f.lower() not in FLAG_TO_LETTER]


def lettersOfFlags(flags: Iterable[str], keep: str = "", keywords: KeywordMap = EMPTY) -> str:
    """
    The Maildir flag letters of IMAP flags, in ASCII order as the Maildir
    spec asks (system letters, then keyword letters).  Flags without a
    letter (C{\\Recent}, keywords C{keywords} lacks) are not stored.

    @param flags: IMAP flags (case-insensitive).
    @param keep: letters to keep whatever C{flags} say: those that stand
        for no flag we know (other tools' letters, keyword letters whose
        line in C{dovecot-keywords} we cannot use).
    @param keywords: the folder's keywords.
    @return: the letters.
    """
    letters = {FLAG_TO_LETTER[f.lower()] for f in flags if f.lower() in FLAG_TO_LETTER}
    letters.update(c for c in (keywords.letterOf(k) for k in keywordsIn(flags)) if c is not None)
    letters.update(c for c in keep if c not in LETTER_TO_FLAG and not ("a" <= c <= "z" and keywords.nameOf(c)))
    return "".join(sorted(letters))


def lettersIn(folderPath: str, flags: Iterable[str], keep: str = "", keywords: KeywordMap | None = None) -> str:
    """
    L{lettersOfFlags}, first giving letters to the keywords the folder
    lacks (see L{qutemail.access.keywords.ensureKeywords}).  Blocking.

    @param keywords: the folder's keywords if known (read if C{None}).
    @raise qutemail.access.keywords.KeywordLimit: no letter is left for a
        new keyword.
    """
    flags = list(flags)
    names = keywordsIn(flags)
    if keywords is None or any(keywords.letterOf(n) is None for n in names):
        keywords = ensureKeywords(folderPath, names)
    return lettersOfFlags(flags, keep, keywords)


def setFlags(path: str, flags: Iterable[str], keywords: KeywordMap | None = None) -> str:
    """
    Set a message's flags by renaming its file (atomically) into the
    folder's C{cur/} with the matching C{:2,} info.  Letters other tools
    set and we do not know are kept.

    @param path: the message file, in C{new/} or C{cur/}.
    @param flags: its IMAP flags from now on, keywords included.
    @param keywords: the folder's keywords, if known.
    @return: its new path (C{path} when nothing changed).
    @raise FileNotFoundError: the file is gone (expunged, or renamed by
        another session meanwhile; L{sync} finds it again).
    @raise qutemail.access.keywords.KeywordLimit: see L{lettersIn}.
    """
    directory, fileName = os.path.split(path)
    folder = os.path.dirname(directory)
    letters = lettersIn(folder, flags, infoLetters(fileName), keywords)
    newPath = os.path.join(folder, "cur", storedId(fileName) + INFO_PREFIX + letters)
    if newPath != path:
        os.rename(path, newPath)
    return newPath


def parseUidList(data: bytes) -> tuple[int, int, list[tuple[int, str]]]:
    """
    Read a C{uidlist} file's contents.

    @param data: the contents.
    @return: C{(uidValidity, uidNext, [(uid, baseName), ...])}.
    @raise CorruptUidList: it is not a valid C{uidlist}.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptUidList("not UTF-8") from None
    if not text.endswith("\n"):
        raise CorruptUidList("truncated")
    first, _, body = text.partition("\n")
    header = first.split(" ")
    if len(header) != 2 or not all(f.isdigit() and f.isascii() for f in header):
        raise CorruptUidList("bad first line")
    uidValidity, uidNext = int(header[0]), int(header[1])
    if not 0 < uidValidity <= MAX_UID or not 0 < uidNext <= MAX_UID + 1:
        raise CorruptUidList("UIDVALIDITY or UIDNEXT out of range", uidValidity if 0 < uidValidity <= MAX_UID else None)
    # Checked and split by the regular expression engine, then compared in
    # bulk: a 10,000-line file was 20 ms of line-by-line Python.
    if _ENTRY_LINES.fullmatch(body) is None:
        raise CorruptUidList("bad message line", uidValidity)
    found = _ENTRY.findall(body)
    uids = list(map(int, (uid for uid, _ in found)))
    names = [name for _, name in found]
    if len(set(names)) != len(names):
        raise CorruptUidList("bad message line", uidValidity)
    if uids and (uids[0] < 1 or uids[-1] >= uidNext or not all(map(operator.lt, uids, uids[1:]))):
        raise CorruptUidList("UIDs out of order or past UIDNEXT", uidValidity)
    return uidValidity, uidNext, list(zip(uids, names))


def formatUidList(uidValidity: int, uidNext: int, entries: Iterable[tuple[int, str]]) -> bytes:
    """
    @return: the contents of a C{uidlist} file (see L{parseUidList}).
    """
    lines = [f"{uidValidity} {uidNext}\n"] + [f"{uid} {name}\n" for uid, name in entries]
    return "".join(lines).encode("utf-8")


def _scan(folderPath: str) -> dict[str, str]:
    """
    The message files of a folder by base name: C{new/} then C{cur/} (a
    message moving meanwhile is seen at least once; the C{cur/} entry
    wins).  Dot files, non-files and names that cannot be listed in a
    C{uidlist} (holding a newline or not UTF-8) are skipped.  Each
    directory is read in a few bulk steps rather than entry by entry: a
    first look at a large folder lists thousands of files.

    @return: C{{baseName: path}}.
    """
    return _scanBoth(folderPath)[0]


def _scanBoth(folderPath: str) -> tuple[dict[str, str], dict[str, str], frozenset[str]]:
    """
    L{_scan}, with each message's info (what follows the first colon of
    its file name: C{2,} and the flag letters, or C{""}) and the base
    names of the files found in C{new/} only.  Names are split once, in
    C (L{splitStoredNames}), and only the C{new/} listing is gone through
    again: a first look at a large folder lists thousands.

    @return: C{(paths, infos, inNew)}, the first two by base name.
    """
    paths: dict[str, str] = {}
    infos: dict[str, str] = {}
    newPaths: dict[str, str] = {}
    for sub in ("new", "cur"):
        entries = _messageFiles(os.path.join(folderPath, sub))
        parts = splitStoredNames(map(_NAME, entries))
        baseNames = list(map(_FIRST, parts))
        listed = dict(zip(baseNames, map(_PATH, entries)))
        paths.update(listed)
        infos.update(zip(baseNames, map(_LAST, parts)))
        if sub == "new":
            newPaths = listed
    # A name in both keeps its cur/ path (the same string object as listed
    # there), so the new/ ones are those still holding their new/ path.
    return paths, infos, frozenset([name for name, path in newPaths.items() if paths[name] is path])


def _messageFiles(directory: str) -> list[os.DirEntry]:
    """
    The entries of a Maildir subdirectory that L{_scan} lists: those of
    L{subdirectoryEntries} that are files and whose names are printable (so
    no newline; a name that is not UTF-8 reads with surrogate escapes,
    which are not printable either).
    """
    entries = subdirectoryEntries(directory)
    try:
        # The type comes with the listing on most file systems, no stat.
        return [e for e in entries if e.name.isprintable() and e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return [e for e in entries if e.name.isprintable() and _stillFile(e)]


def _stillFile(entry: os.DirEntry) -> bool:
    """
    @return: whether an entry is a file; C{False} when it is gone.
    """
    try:
        return entry.is_file(follow_symlinks=False)
    except FileNotFoundError:
        return False


def withTimes(folderPath: str, messages: list[FolderMessage],
              times: TimeCache = TIMES) -> list[FolderMessage | None]:
    """
    The messages with their modification times (see L{FolderMessage}):
    those already looked at as they are, those whose times C{times} knows
    with those, the others C{stat}ed (and their times added to C{times}).
    A file not at its path any more has been renamed by a flag change
    elsewhere, and is looked for by its base name in C{cur/}.  Blocking.

    @param folderPath: the folder's directory.
    @return: each message with its time and, if it was found elsewhere,
        its path there; C{None} for one that is gone (expunged).
    """
    timed: list[FolderMessage | None] = []
    known = times.known(folderPath)
    found: dict[str, float] = {}
    moved: dict[str, str] | None = None
    for message in messages:
        if message.mtime is not None:
            timed.append(message)
            continue
        path = message.path
        mtime = known.get(message.baseName)
        if mtime is None:
            try:
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:
                if moved is None:
                    moved = _scan(folderPath)
                path = moved.get(message.baseName, path)
                try:
                    mtime = os.stat(path).st_mtime
                except FileNotFoundError:
                    timed.append(None)
                    continue
            found[message.baseName] = mtime
        # The message's own class (a session's RecentMessage stays one).
        timed.append(type(message)(message.uid, message.baseName, path, message.flags, mtime))
    times.add(folderPath, found)
    return timed


def _readUidList(listPath: str, now: float) -> tuple[int, int, list[tuple[int, str]], bool]:
    """
    Read a folder's C{uidlist}, or start a new one when it is missing or
    corrupt (logged).

    @return: C{(uidValidity, uidNext, entries, fresh)}.
    """
    try:
        with open(listPath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return _newValidity(now, None), 1, [], True
    try:
        uidValidity, uidNext, entries = parseUidList(data)
    except CorruptUidList as e:
        uidValidity = _newValidity(now, e.uidValidity)
        _log.warn("rebuilding the corrupt {path} ({reason}) with UIDVALIDITY {uidValidity}",
                  path=listPath, reason=str(e), uidValidity=uidValidity)
        return uidValidity, 1, [], True
    return uidValidity, uidNext, entries, False


def _newValidity(now: float, previous: int | None) -> int:
    """
    @return: a UIDVALIDITY for a new C{uidlist}: C{now} in seconds, and
        greater than C{previous} when that is known.
    """
    uidValidity = max(int(now), 1)
    if previous is not None:
        uidValidity = max(uidValidity, previous + 1)
    return min(uidValidity, MAX_UID)


def sync(folderPath: str, now: float, listings: ListingCache = LISTINGS) -> FolderState:
    """
    Bring a folder's C{uidlist} up to date and return its messages with
    their UIDs.  Blocking.

    @param folderPath: the folder's directory (with C{cur/ new/ tmp/}).
    @param now: the current time in seconds (C{clock.seconds()}), used for
        a new UIDVALIDITY.
    @param listings: where the folder's last state is remembered, reused
        while none of its files has changed (see L{listingcache}).
    @return: the folder's state.
    @raise FileNotFoundError: the folder does not exist.
    @raise OverflowError: the folder ran out of UIDs (more than 2**32 - 1
        deliveries under one UIDVALIDITY).
    """
    listPath = os.path.join(folderPath, UIDLIST_FILE)
    with DirectoryLock(folderPath):
        stamps = folderStamps(folderPath, _STATE_FILES)
        remembered = listings.get(folderPath, stamps)
        if remembered is not None:
            return remembered
        uidValidity, uidNext, entries, changed = _readUidList(listPath, now)
        files, infos, inNew = _scanBoth(folderPath)
        kept = [(uid, name) for uid, name in entries if name in files]
        changed = changed or len(kept) != len(entries)
        known = {name for _, name in kept}
        arrived = sorted(n for n in files if n not in known)
        if uidNext + len(arrived) > MAX_UID + 1:
            raise OverflowError(f"{folderPath} has run out of UIDs")
        kept += zip(range(uidNext, uidNext + len(arrived)), arrived)
        uidNext += len(arrived)
        if changed or arrived:
            status = replaceFile(listPath, formatUidList(uidValidity, uidNext, kept))
            stamps = stamps[:2] + ((status.st_ino, status.st_mtime_ns, status.st_size),) + stamps[3:]
        # After the scan: a keyword letter on a file was given before it
        # was set.
        keywords = readKeywords(folderPath)
        state = FolderState(uidValidity, uidNext, _messages(kept, files, infos, keywords), keywords, inNew)
        listings.put(folderPath, stamps, state, len(kept), now, written=(2,))
    return state


def _messages(kept: list[tuple[int, str]], files: dict[str, str], infos: dict[str, str],
              keywords: KeywordMap) -> tuple[FolderMessage, ...]:
    """
    @param files: the paths L{_scanBoth} found, by base name.
    @param infos: the infos it found, by base name.
    @return: the messages of a folder's C{uidlist} entries, with their
        paths and the flags of their names (their times not looked at
        yet).  Made list by list rather than message by message, and the
        flags once for each distinct info: a first look at a large folder
        makes thousands.
    """
    names = list(map(_SECOND, kept))
    messageInfos = list(map(infos.__getitem__, names))
    # The file name is the base name, a colon and the info, and a base name
    # holds no colon: its flag letters are the info's after a colon.
    flagsOf = {info: flagsOfLetters(infoLetters(":" + info), keywords) for info in set(messageInfos)}
    return tuple(map(FolderMessage, map(_FIRST, kept), names, map(files.__getitem__, names),
                     map(flagsOf.__getitem__, messageInfos)))
