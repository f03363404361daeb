# -*- test-case-name: tests.access.test_listingcache -*-
"""
A process-wide memory of folders' last L{qutemail.access.uids.sync}, so
that opening an unchanged folder does not list every message file and
parse its C{uidlist} again (issue 14: on a 10,000-message INBOX
that was most of a SELECT).  Dovecot spares itself the same work by
keeping C{new/} and C{cur/}'s modification times in its index.

A folder's state is reused only while the C{stat} of each file it was
read from (C{new/}, C{cur/}, C{uidlist}, C{dovecot-keywords}: inode,
modification time in nanoseconds, size) is the same as when it was read.
Every delivery, expunge, move or flag change renames or creates a file in
C{new/} or C{cur/}, which updates that directory's modification time.  A
file system's clock ticks coarsely, though (a few milliseconds), so a
change within the same tick as the look would leave the times equal: a
state is only remembered when every one of those times is at least
L{SETTLED_SECONDS} older than the look, the rule Dovecot follows for the
same reason (it keeps whole seconds).  Where the times have a fraction of
a second (ext4, XFS, Btrfs, tmpfs: nanoseconds, ticking with the kernel's
coarse clock every 1-10 ms), L{FINE_SETTLED_SECONDS} is margin enough; a
time on a whole second, as a file system that keeps whole seconds gives
every time, is taken for one of those.  The C{uidlist} is the exception:
only a look writes it, by replacing it under the folder's lock, and it
changes only when the directories did (or when it is rebuilt), so the
state the look wrote into it is remembered at once.  A folder that keeps
changing is simply read each time, as before.

L{TimeCache} keeps the modification times sessions have looked up (a look
lists a folder without them, see L{qutemail.access.uids.withTimes}).

Everything here is called from worker threads; a lock guards each table.
"""

import os
import threading
from collections import OrderedDict
from typing import Any

# How old a folder's newest change must be before its state is remembered
# (Dovecot's MAILDIR_SYNC_SECS is 1 too): far more than a local file
# system's clock tick.
SETTLED_SECONDS = 1.0
# The same where every time has a fraction of a second: ten of the
# kernel's coarsest timestamp ticks (HZ=100).
FINE_SETTLED_SECONDS = 0.1
# How many messages' states are kept in all (each costs a few hundred
# bytes); the least recently used folders go first.
MAX_MESSAGES = 200_000


def _stamp(path: str) -> tuple[int, int, int] | None:
    """
    @return: a file's inode, modification time (ns) and size, or C{None}
        when it does not exist.  Blocking.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_ino, status.st_mtime_ns, status.st_size)


def folderStamps(folderPath: str, names: tuple[str, ...]) -> tuple:
    """
    @return: the stamps of C{names} in a folder's directory.  Blocking.
    """
    return tuple(_stamp(os.path.join(folderPath, name)) for name in names)


def settled(stamps: tuple, now: float) -> bool:
    """
    @return: whether every stamped file last changed at least
        L{SETTLED_SECONDS} before C{now}, or L{FINE_SETTLED_SECONDS} when
        every time has a fraction of a second.
    """
    present = [stamp for stamp in stamps if stamp is not None]
    fine = bool(present) and all(stamp[1] % 1_000_000_000 for stamp in present)
    limit = int((now - (FINE_SETTLED_SECONDS if fine else SETTLED_SECONDS)) * 1_000_000_000)
    return all(stamp[1] < limit for stamp in present)


class ListingCache:
    """
    The last state read of each folder, by folder path, with the stamps
    it was read under.
    """

    def __init__(self, maxMessages: int = MAX_MESSAGES) -> None:
        """
        @param maxMessages: how many messages' states to keep in all.
        """
        self.maxMessages = maxMessages
        self._lock = threading.Lock()
        # By folder path: (stamps, state, messages).
        self._states: OrderedDict[str, tuple[tuple, Any, int]] = OrderedDict()
        self._held = 0

    def get(self, folderPath: str, stamps: tuple) -> Any:
        """
        @return: the state remembered for a folder if its files had
            settled and it was read under the same C{stamps}, else
            C{None}.
        """
        with self._lock:
            hit = self._states.get(folderPath)
            if hit is None or hit[0] != stamps:
                return None
            self._states.move_to_end(folderPath)
            return hit[1]

    def put(self, folderPath: str, stamps: tuple, state: Any, size: int, now: float,
            written: tuple[int, ...] = ()) -> None:
        """
        Remember a folder's state for L{get}, if its files have settled
        (see L{settled}); an unsettled one is forgotten.

        @param stamps: the stamps taken before the state was read (after
            writing, for the files the look wrote itself).
        @param size: its number of messages (what the bound counts).
        @param now: the time of the look, in seconds.
        @param written: the places in C{stamps} of files only ever
            replaced (renamed over, so a new inode) under the folder's
            lock, by a look that then puts the state it wrote: they need
            not have settled.
        """
        mustSettle = tuple(stamp for i, stamp in enumerate(stamps) if i not in written)
        with self._lock:
            old = self._states.pop(folderPath, None)
            if old is not None:
                self._held -= old[2]
            if size > self.maxMessages or not settled(mustSettle, now):
                return
            self._states[folderPath] = (stamps, state, size)
            self._held += size
            while self._held > self.maxMessages:
                _, (_, _, dropped) = self._states.popitem(last=False)
                self._held -= dropped

    def clear(self) -> None:
        """
        Forget every folder.
        """
        with self._lock:
            self._states.clear()
            self._held = 0


class TimeCache:
    """
    The modification times (IMAP INTERNALDATEs) of message files, by
    folder path and base name, as L{qutemail.access.uids.withTimes} found
    them, so that a session does not C{stat} what another has: a stored
    message never changes while it keeps its name, and a name is never
    given twice.  Bounded like L{ListingCache}; the least recently used
    folders go first.
    """

    def __init__(self, maxMessages: int = MAX_MESSAGES) -> None:
        """
        @param maxMessages: how many times to keep in all.
        """
        self.maxMessages = maxMessages
        self._lock = threading.Lock()
        self._folders: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._held = 0

    def known(self, folderPath: str) -> dict[str, float]:
        """
        @return: the times known in a folder, by base name (a copy).
        """
        with self._lock:
            times = self._folders.get(folderPath)
            if times is None:
                return {}
            self._folders.move_to_end(folderPath)
            return dict(times)

    def add(self, folderPath: str, found: dict[str, float]) -> None:
        """
        Remember times found in a folder.
        """
        if not found or len(found) > self.maxMessages:
            return
        with self._lock:
            times = self._folders.setdefault(folderPath, {})
            self._folders.move_to_end(folderPath)
            before = len(times)
            times.update(found)
            self._held += len(times) - before
            while self._held > self.maxMessages:
                _, dropped = self._folders.popitem(last=False)
                self._held -= len(dropped)

