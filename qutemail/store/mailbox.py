# -*- test-case-name: tests.store.test_mailbox -*-
"""
A Maildir++ mailbox on disk, as every process that touches one sees it (SMTP
delivery, IMAP, POP3, retention, the command-line tool): where it is, which
files are its messages, and how much it holds.

Usage is kept in the Maildir++ C{maildirsize} file: a first line with the
quota (C{<bytes>S}), then one C{<bytes> <count>} line per change, so that
reading usage never scans the mailbox.  Delivery is L{qutemail.store.maildir}.
"""

import fcntl
import os
import threading
from collections.abc import Iterator

import attrs

from qutemail.durable import PRIVATE_FILE_MODE, writeAll

class MailDirError(Exception):
    """
    C{[mailbox] mail_dir} cannot be put in place; C{str()} is one line.
    """


def linkMailDir(dataDir: str, mailDir: str) -> None:
    """
    Make C{data_dir/mail} lead to C{[mailbox] mail_dir} (a symbolic link,
    made at start), so that every reader and writer of mailboxes finds
    them on the shared storage.  Blocking: call it before the reactor runs.

    @param mailDir: the directory, absolute; C{""} leaves C{data_dir/mail}
        as it is.
    @raise MailDirError: C{data_dir/mail} holds mailboxes of its own, or
        leads elsewhere: moving mail is the administrator's decision.
    """
    if not mailDir:
        return
    link = os.path.join(dataDir, "mail")
    os.makedirs(mailDir, mode=0o700, exist_ok=True)
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(mailDir):
            return
        raise MailDirError(f"[mailbox] mail_dir: {link} already leads to {os.readlink(link)}, not {mailDir}")
    if os.path.isdir(link):
        if os.listdir(link):
            raise MailDirError(f"[mailbox] mail_dir: {link} holds mailboxes; move them to {mailDir} "
                               f"and remove it first")
        os.rmdir(link)
    os.makedirs(dataDir, mode=0o700, exist_ok=True)
    os.symlink(mailDir, link)


# Maildir++: a maildirsize file past 5120 bytes is recalculated.
MAILDIRSIZE_MAX_BYTES = 5120


def mailboxPath(dataDir: str, address: str) -> str:
    """
    The Maildir of an account.

    @param dataDir: the server's C{data_dir}.
    @param address: a normalised address (validated: no C{/}, no leading dot).
    @return: C{data_dir/mail/<domain>/<localpart>}.
    """
    localpart, _, domain = address.rpartition("@")
    return os.path.join(dataDir, "mail", domain, localpart)


def readUsage(path: str) -> tuple[int, int]:
    """
    Read a mailbox's usage from its C{maildirsize} file, or count the
    mailbox when that file is missing.  Blocking.

    @param path: the mailbox directory.
    @return: C{(bytes, messages)}; C{(0, 0)} for a mailbox that does not
        exist yet.
    """
    try:
        with open(os.path.join(path, "maildirsize"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return countMailbox(path)
    # The first line is the quota definition, not usage.
    first = data.find(b"\n")
    total, count = _sumUsageLines(data[first + 1 :] if first >= 0 else b"")
    return max(total, 0), max(count, 0)


def _sumUsageLines(data: bytes) -> tuple[int, int]:
    """
    Sum C{maildirsize} lines (the quota line already left out), skipping
    malformed ones as L{readUsage} does.

    @param data: whole lines.
    @return: C{(bytes, messages)}, not clamped at zero.
    """
    total = count = 0
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) == 2:
            try:
                size, number = int(fields[0]), int(fields[1])
            except ValueError:
                continue
            total += size
            count += number
    return total, count


@attrs.define
class UsageTail:
    """
    How much of one mailbox's C{maildirsize} has been read, so that the
    next read takes only the lines appended since.

    @ivar inode: the file's inode number (a replaced file has another).
    @ivar offset: the end of the last whole line read.
    @ivar lastBytes: the bytes just before C{offset}, read again to make
        sure the file is still the one read before.
    @ivar totalBytes: the sum of the lines before C{offset}.
    @ivar messages: the sum of their message counts.
    """

    inode: int
    offset: int
    lastBytes: bytes
    totalBytes: int
    messages: int


# How many bytes before the end of what was read are compared again.
_TAIL_CHECK_BYTES = 32


def readUsageFrom(path: str, tail: UsageTail | None) -> tuple[tuple[int, int], UsageTail | None]:
    """
    L{readUsage}, reading only what was appended to C{maildirsize} since
    C{tail} was taken: the file is append-only until it is replaced, so a
    delivery's quota check costs one short read, not a parse of the whole
    file.  Blocking.

    @param path: the mailbox directory.
    @param tail: what an earlier call returned for this mailbox, or C{None}.
    @return: C{(bytes, messages)} as L{readUsage} gives it, and the tail to
        pass next time (C{None} when there is nothing to remember).
    """
    try:
        fd = os.open(os.path.join(path, "maildirsize"), os.O_RDONLY)
    except FileNotFoundError:
        return countMailbox(path), None
    try:
        st = os.fstat(fd)
        data = b""
        if tail is not None and tail.inode == st.st_ino and tail.offset <= st.st_size:
            start = tail.offset - len(tail.lastBytes)
            data = os.pread(fd, st.st_size - start, start)
            if data.startswith(tail.lastBytes):
                data = data[len(tail.lastBytes):]
            else:
                tail = None
        else:
            # Another file (replaced when it grew too long) or a shorter one.
            tail = None
        if tail is None:
            data = os.pread(fd, st.st_size, 0)
            # The first line is the quota definition, not usage.
            first = data.find(b"\n") + 1
            if not first:
                return (0, 0), None
            tail = UsageTail(st.st_ino, first, data[:first][-_TAIL_CHECK_BYTES:], 0, 0)
            data = data[first:]
    finally:
        os.close(fd)
    # Whole lines only: one being appended right now is read next time.
    end = data.rfind(b"\n") + 1
    addedBytes, addedMessages = _sumUsageLines(data[:end])
    tail = UsageTail(
        st.st_ino, tail.offset + end, (tail.lastBytes + data[:end])[-_TAIL_CHECK_BYTES:],
        tail.totalBytes + addedBytes, tail.messages + addedMessages,
    )
    return (max(tail.totalBytes, 0), max(tail.messages, 0)), tail


def messageEntries(path: str) -> Iterator[os.DirEntry]:
    """
    The message files of a mailbox's INBOX: C{new/} first (so a message
    moving to C{cur/} during the scan is seen at least once), then C{cur/};
    dot files are skipped and a missing folder is empty.  Blocking.

    @param path: the mailbox directory.
    """
    for sub in ("new", "cur"):
        yield from subdirectoryEntries(os.path.join(path, sub))


def subdirectoryEntries(directory: str) -> list[os.DirEntry]:
    """
    The entries of one Maildir subdirectory (C{new/} or C{cur/}) but its
    dot files, read in one go; a missing directory has none.  Blocking.
    """
    try:
        listing = os.scandir(directory)
    except FileNotFoundError:
        return []
    with listing:
        return [entry for entry in listing if entry.name[0] != "."]


def _allMessageEntries(path: str) -> Iterator[os.DirEntry]:
    """
    The message files of a mailbox and of its Maildir++ folders (the
    C{.Name} directories beside C{cur/}).  Blocking.
    """
    yield from messageEntries(path)
    try:
        folders = [e.path for e in os.scandir(path)
                   if e.name.startswith(".") and e.name not in (".", "..") and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for folder in sorted(folders):
        yield from messageEntries(folder)


def countMailbox(path: str) -> tuple[int, int]:
    """
    Count a mailbox's messages and bytes from its files, its Maildir++
    folders included (the C{,S=} size in a name saves a stat).  Blocking.

    @param path: the mailbox directory.
    @return: C{(bytes, messages)}.
    """
    total = count = 0
    for entry in _allMessageEntries(path):
        _, marker, rest = entry.name.partition(",S=")
        digits = rest.split(":")[0].split(",")[0]
        try:
            total += int(digits) if marker and digits.isdigit() else entry.stat().st_size
        except FileNotFoundError:
            continue
        count += 1
    return total, count


def recordUsage(root: str, quotaBytes: int, size: int, count: int) -> None:
    """
    Record a change of a mailbox's usage (done already) in its Maildir++
    C{maildirsize}: a line C{<bytes> <messages>}, negative for a removal,
    appended under C{flock} (several processes write it: SMTP workers,
    IMAP, POP3, retention), the file re-opened when another process
    replaced it meanwhile.  A
    missing file is created, for an addition, from a count of the whole
    account (which holds the change), and left missing for a removal
    (L{readUsage} counts the account then); one past
    L{MAILDIRSIZE_MAX_BYTES} is folded into one line.  The file is derived
    data: when it cannot be written it is removed, to be counted again.
    """
    sizeFile = os.path.join(root, "maildirsize")
    create = os.O_CREAT if size > 0 or count > 0 else 0
    try:
        while True:
            try:
                fd = os.open(sizeFile, os.O_WRONLY | os.O_APPEND | create, PRIVATE_FILE_MODE)
            except FileNotFoundError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                opened = os.fstat(fd)
                try:
                    replaced = opened.st_ino != os.stat(sizeFile).st_ino
                except FileNotFoundError:
                    replaced = True
                if replaced:
                    continue
                if opened.st_size == 0:
                    total, messages = countMailbox(root)
                    line = b"%dS\n%d %d\n" % (quotaBytes, total, messages)
                else:
                    line = b"%d %d\n" % (size, count)
                writeAll(fd, line)
                # Under the lock every append is ours: no need to ask the size.
                if opened.st_size + len(line) > MAILDIRSIZE_MAX_BYTES:
                    with open(sizeFile, "rb") as f:
                        quotaLine = f.readline().rstrip(b"\n")
                    total, messages = readUsage(root)
                    temp = f"{sizeFile}.{os.getpid()}.{threading.get_ident()}"
                    folded = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
                    with open(folded, "wb") as f:
                        f.write(b"%s\n%d %d\n" % (quotaLine, total, messages))
                    os.rename(temp, sizeFile)
                return
            finally:
                os.close(fd)
    except OSError:
        try:
            os.unlink(sizeFile)
        except OSError:
            pass
