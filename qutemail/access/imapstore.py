# -*- test-case-name: tests.access.test_imapstore -*-
"""
The Maildir++ file work of IMAP sessions: taking new mail into C{cur/},
APPEND, COPY, MOVE, EXPUNGE, folder deletion, and keeping the account's
C{maildirsize} up to date as L{qutemail.store.maildir} does (one
C{<bytes> <count>} line per change, negative for removals, under
C{flock}).

Each message a session writes is named as Maildir++ asks,
C{<secs>.M<usecs>P<pid>R<random>.<host>,S=<bytes>}, written in the
folder's C{tmp/}, fsynced, and renamed into C{new/} (with its flags in
the C{:2,} info when it has some, which Dovecot and mutt read there too),
so that it is C{\\Recent} for the first session to see it, as a delivery
is (RFC 3501 §6.3.11, §6.4.7); the directory is fsynced before the
command is answered.  A copy is a hard link when the file system allows
(messages never change), so it costs no space on disk but counts in the
quota, as Maildir++ counts names.  Keyword letters are per folder (see
L{qutemail.access.keywords}): a copy gets the target folder's letters.

Every function here blocks: callers run them through the runner.
"""

import os
import shutil

import attrs

from qutemail.store.folders import MaildirFolders
from qutemail.access.keywords import ensureKeywords, readKeywords
from qutemail.access.uids import (
    INFO_PREFIX, FolderMessage, FolderState, flagsOfLetters, infoLetters, keywordsIn, lettersIn, lettersOfFlags,
    setFlags, sync,
)
from qutemail.durable import syncDirectory, writeAll
from qutemail.store.mailbox import countMailbox, messageEntries, readUsage, recordUsage
from qutemail.store.reader import storedId


class OverQuota(Exception):
    """
    The change would take the account past its quota.
    """


def locate(folderPath: str, baseName: str) -> str | None:
    """
    Find a message by base name in C{new/} or C{cur/} (after another
    session renamed it).

    @return: its path, or C{None} when it is gone.
    """
    found = None
    for entry in messageEntries(folderPath):
        if storedId(entry.name) == baseName:
            found = entry.path
    return found


def storedSize(path: str) -> int:
    """
    @return: a message's size as the quota counts it: its Maildir++
        C{,S=} size, else its file's size.
    @raise FileNotFoundError: no C{,S=} and the file is gone.
    """
    _, marker, rest = os.path.basename(path).partition(",S=")
    digits = rest.split(":")[0].split(",")[0]
    if marker and digits.isdigit():
        return int(digits)
    return os.stat(path).st_size


def uniqueName(now: float, hostname: str, size: int, order: int = 0) -> str:
    """
    @param order: where the message comes among those one command writes
        at the same C{now}: the random part starts with it, so that their
        names sort (and a folder gives them UIDs, see
        L{qutemail.access.uids}) in that order.
    @return: a new message base name (see the module docstring).
    """
    secs = int(now)
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{secs}.M{int((now - secs) * 1_000_000):06d}P{os.getpid()}R{order:08x}{os.urandom(8).hex()}.{host},S={size}"


def usage(root: str) -> tuple[int, int]:
    """
    @return: the account's C{(bytes, messages)}, every folder included:
        from C{maildirsize}, or counted when that file is missing.
    """
    return readUsage(root)


def checkQuota(root: str, quotaBytes: int, extraBytes: int) -> None:
    """
    @raise OverQuota: C{extraBytes} more would exceed the quota (0:
        unlimited).
    """
    if quotaBytes and usage(root)[0] + extraBytes > quotaBytes:
        raise OverQuota(f"{extraBytes} more bytes would exceed the quota of {quotaBytes}")


def syncFolder(folderPath: str, now: float, claim: bool) -> tuple[FolderState, frozenset[str]]:
    """
    L{sync} a folder and find the messages still in C{new/}: they are
    C{\\Recent} for the session that sees them first, which (when
    C{claim}) moves them into C{cur/}.

    @return: the state (with the new paths) and the recent base names.
    @raise FileNotFoundError: the folder is gone.
    """
    state = sync(folderPath, now)
    recent = state.inNew
    if not (claim and recent):
        return state, recent
    messages = []
    for message in state.messages:
        if message.baseName in recent:
            try:
                message = attrs.evolve(message, path=setFlags(message.path, message.flags, state.keywords))
            except FileNotFoundError:
                message = attrs.evolve(message, path=locate(folderPath, message.baseName) or message.path)
        messages.append(message)
    return attrs.evolve(state, messages=tuple(messages), inNew=frozenset()), recent


def storeFlags(folderPath: str, baseName: str, path: str, flags: frozenset[str]) -> str:
    """
    L{setFlags}, following the file if another session renamed it.

    @return: its new path.
    @raise FileNotFoundError: it is gone.
    @raise qutemail.access.keywords.KeywordLimit: no letter is left for a
        new keyword.
    """
    keywords = ensureKeywords(folderPath, keywordsIn(flags))
    try:
        return setFlags(path, flags, keywords)
    except FileNotFoundError:
        moved = locate(folderPath, baseName)
        if moved is None:
            raise
        return setFlags(moved, flags, keywords)


@attrs.define
class AppendFile:
    """
    A message being appended: open in its folder's C{tmp/}.

    @ivar fd: the open file.
    @ivar tempPath: its path.
    @ivar baseName: its base name.
    @ivar size: its announced size.
    """

    fd: int
    tempPath: str
    baseName: str
    size: int


def beginAppend(folderPath: str, now: float, hostname: str, size: int) -> AppendFile:
    """
    Open a new file for an APPEND.

    @raise FileNotFoundError: the folder is gone.
    """
    baseName = uniqueName(now, hostname, size)
    tempPath = os.path.join(folderPath, "tmp", baseName)
    fd = os.open(tempPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return AppendFile(fd, tempPath, baseName, size)


def adoptAppend(folderPath: str, now: float, hostname: str, sourcePath: str) -> AppendFile:
    """
    Make a finished file (a sealed APPEND, on the same file system) the
    file of an APPEND into a folder: renamed into its C{tmp/} under a new
    unique name and opened, for L{finishAppend}.

    @raise FileNotFoundError: the folder is gone (the source is removed).
    """
    size = os.path.getsize(sourcePath)
    baseName = uniqueName(now, hostname, size)
    tempPath = os.path.join(folderPath, "tmp", baseName)
    try:
        os.rename(sourcePath, tempPath)
    except FileNotFoundError:
        try:
            os.unlink(sourcePath)
        except FileNotFoundError:
            pass
        raise
    return AppendFile(os.open(tempPath, os.O_RDONLY), tempPath, baseName, size)


def closeAppend(append: AppendFile) -> None:
    """
    Close an APPEND's file without making it part of a folder (its name
    stays, for whoever takes it next).
    """
    os.close(append.fd)


def writeAppend(append: AppendFile, data: bytes) -> None:
    """
    Write a piece of the message.
    """
    writeAll(append.fd, data)


def abortAppend(append: AppendFile) -> None:
    """
    Give up an APPEND: close and remove the file.
    """
    try:
        os.close(append.fd)
    except OSError:
        pass
    try:
        os.unlink(append.tempPath)
    except FileNotFoundError:
        pass


def finishAppend(append: AppendFile, folderPath: str, flags: frozenset[str], mtime: float, root: str,
                 quotaBytes: int, now: float) -> tuple[int, int]:
    """
    Make an appended message part of its folder: fsync, check the quota
    again, rename into C{new/} with its flags and INTERNALDATE, sync the
    directory, count it in C{maildirsize} and give it a UID.

    @return: C{(uidValidity, uid)}.
    @raise OverQuota: the quota is exceeded (the file is removed).
    @raise qutemail.access.keywords.KeywordLimit: no letter is left for a
        new keyword (the file is removed).
    """
    try:
        os.fsync(append.fd)
        checkQuota(root, quotaBytes, append.size)
        letters = lettersIn(folderPath, flags)
    except BaseException:
        abortAppend(append)
        raise
    os.close(append.fd)
    final = os.path.join(folderPath, "new", append.baseName + (INFO_PREFIX + letters if letters else ""))
    os.utime(append.tempPath, (mtime, mtime))
    os.rename(append.tempPath, final)
    syncDirectory(os.path.dirname(final))
    recordUsage(root, quotaBytes, append.size, 1)
    state = sync(folderPath, now)
    return state.uidValidity, _uidsOf(state, [append.baseName])[0]


def _uidsOf(state: FolderState, baseNames: list[str]) -> list[int]:
    """
    @return: the UIDs of messages by base name (0 for one not found).
    """
    uids = {m.baseName: m.uid for m in state.messages}
    return [uids.get(name, 0) for name in baseNames]


def transfer(sources: list[FolderMessage], sourceFolder: str, targetFolder: str, move: bool, root: str,
             quotaBytes: int, now: float, hostname: str) -> tuple[int, list[int], list[str]]:
    """
    COPY or MOVE messages (RFC 3501 §6.4.7, RFC 6851) into a folder of
    the same account, keeping their flags and INTERNALDATE; each gets a
    new base name and the next UID of the target.

    @param sources: the messages, as the session knows them.
    @return: C{(uidValidity, uids, movedBaseNames)}: the target's
        UIDVALIDITY, the new UIDs (0 where a message had vanished), and
        the base names that were moved away.
    @raise OverQuota: COPY would exceed the quota (nothing is copied).
    """
    paths = []
    total = 0
    for message in sources:
        path = message.path if os.path.exists(message.path) else locate(sourceFolder, message.baseName)
        paths.append(path)
        if path is not None and not move:
            total += storedSize(path)
    if not move:
        checkQuota(root, quotaBytes, total)
    sourceKeywords = readKeywords(sourceFolder)
    flags = [flagsOfLetters(infoLetters(os.path.basename(p)), sourceKeywords) if p else frozenset() for p in paths]
    # Every keyword gets its letter in the target before anything moves.
    targetKeywords = ensureKeywords(targetFolder, {k for f in flags for k in keywordsIn(f)})
    names, moved, copied = [], [], 0
    for order, (message, path, messageFlags) in enumerate(zip(sources, paths, flags)):
        if path is None:
            names.append(None)
            continue
        size = storedSize(path)
        baseName = uniqueName(now, hostname, size, order)
        # The flags as the file has them now; other tools' letters are
        # kept, keyword letters are the target's.
        keep = "".join(c for c in infoLetters(os.path.basename(path)) if not "a" <= c <= "z")
        letters = lettersOfFlags(messageFlags, keep, targetKeywords)
        target = os.path.join(targetFolder, "new", baseName + (INFO_PREFIX + letters if letters else ""))
        if move:
            os.rename(path, target)
            moved.append(message.baseName)
        else:
            _copyFile(path, target)
            copied += size
        names.append(baseName)
    syncDirectory(os.path.join(targetFolder, "new"))
    if move:
        for sub in ("new", "cur"):
            syncDirectory(os.path.join(sourceFolder, sub))
    elif copied:
        recordUsage(root, quotaBytes, copied, sum(1 for n in names if n))
    state = sync(targetFolder, now)
    uids = {m.baseName: m.uid for m in state.messages}
    return state.uidValidity, [uids.get(n, 0) if n else 0 for n in names], moved


def _copyFile(source: str, target: str) -> None:
    """
    Copy a message file: a hard link if possible, else a durable copy
    with the same modification time.
    """
    try:
        os.link(source, target)
        return
    except OSError:
        pass
    temp = os.path.join(os.path.dirname(os.path.dirname(target)), "tmp", os.path.basename(target).partition(":")[0])
    with open(source, "rb") as src, open(temp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, temp)
    os.rename(temp, target)


def expunge(folderPath: str, messages: list[FolderMessage], root: str, quotaBytes: int) -> list[str]:
    """
    Remove messages (EXPUNGE), following any another session renamed.

    @return: the base names removed (one already gone counts as removed).
    """
    removed, total, count = [], 0, 0
    for message in messages:
        path = message.path
        for attempt in (0, 1):
            try:
                size = storedSize(path)
                os.unlink(path)
                total, count = total + size, count + 1
                break
            except FileNotFoundError:
                path = locate(folderPath, message.baseName) if attempt == 0 else None
                if path is None:
                    break
        removed.append(message.baseName)
    for sub in ("new", "cur"):
        syncDirectory(os.path.join(folderPath, sub))
    if count:
        recordUsage(root, quotaBytes, -total, -count)
    return removed


def deleteFolder(root: str, name: str, quotaBytes: int) -> None:
    """
    Delete a folder (see L{MaildirFolders.delete}) and take its messages
    off the quota.
    """
    folders = MaildirFolders(root)
    path = folders.pathOf(name)
    total, count = countMailbox(path) if folders.exists(name) else (0, 0)
    folders.delete(name)
    if count:
        recordUsage(root, quotaBytes, -total, -count)
