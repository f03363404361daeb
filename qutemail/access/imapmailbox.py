# -*- test-case-name: tests.access.test_imapserver -*-
"""
A session's view of its selected folder (RFC 3501 §2.3.1): the messages
with their sequence numbers, UIDs and flags as the client was last told.

The view changes only when the session itself changes the folder or
L{FolderView.update} applies a fresh L{qutemail.access.uids.sync}; that
returns the untagged responses (EXPUNGE, FETCH FLAGS, EXISTS, RECENT)
that tell the client, so its sequence numbers never go out of step.
C{\\Recent} is kept for the session only: a message is recent for the
session that first sees it in C{new/} (see
L{qutemail.access.imapstore.syncFolder}).  The folder's keywords (see
L{qutemail.access.keywords}) are part of FLAGS and PERMANENTFLAGS; when
they change, both are sent again (RFC 3501 §7.2.6).

Pure bookkeeping: nothing here touches the disk.
"""

import functools
from collections.abc import Iterable

import attrs

from qutemail.access.imapwire import ParseError, SequenceMembership
from qutemail.access.keywords import EMPTY, KeywordMap
from qutemail.access.uids import FolderMessage, FolderState

RECENT = "\\Recent"
# The flags with a letter of their own in Maildir file names (see
# L{qutemail.access.uids}); keywords come after them.
PERMANENT_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "$Forwarded")
# PERMANENTFLAGS: new keywords can be made (RFC 3501 §7.1).
NEW_KEYWORDS = "\\*"
# Distinct sets of flags whose FETCH FLAGS form is kept.
FLAG_LIST_CACHE_SIZE = 4096


class UIDValidityChanged(Exception):
    """
    The folder's UIDVALIDITY changed under the session (its C{uidlist}
    was lost and rebuilt): the session cannot go on with this folder.
    """


class FolderGone(Exception):
    """
    The selected folder was deleted or renamed by another session.
    """


@attrs.define(unsafe_hash=True)
class RecentMessage(FolderMessage):
    """
    A message that is C{\\Recent} in this session (it was in C{new/}
    when the session claimed it).  A view holds its folder state's own
    L{FolderMessage}s, shared by every session and never copied; only its
    recent ones are made again as this subclass.  Before, every SELECT made
    an object per message: 3-4 ms for 10,000 messages, and the objects
    brought on a full collection of the garbage collector (14 ms with a
    large folder's index in memory).
    """


# A message of a view: a FolderMessage, or a RecentMessage.  A flag change
# replaces it in the view (L{FolderView.replace}); it is never changed in
# place.
Slot = FolderMessage


def isRecent(slot: Slot) -> bool:
    """
    @return: whether a message of the view is C{\\Recent} in its session.
    """
    return type(slot) is RecentMessage


def slotFlagList(slot: Slot) -> bytes:
    """
    @return: what FETCH FLAGS sends for a message of the view: its flags,
        sorted, and C{\\Recent} last when it is recent, as a L{flagList}.
    """
    return _flagListOf(slot.flags, isRecent(slot))


@functools.lru_cache(maxsize=FLAG_LIST_CACHE_SIZE)
def _flagListOf(flags: frozenset[str], recent: bool) -> bytes:
    """
    L{slotFlagList}, kept: a folder's messages share a few sets of flags
    (the sets themselves are shared, L{qutemail.access.uids.sync}), and a
    listing formats one for each message.
    """
    return flagList(sorted(flags) + ([RECENT] if recent else []))


def flagList(flags: Iterable[str]) -> bytes:
    """
    @return: a parenthesised flag list.
    """
    return b"(" + b" ".join(f.encode("ascii", "replace") for f in flags) + b")"


def flagResponses(keywords: KeywordMap, writable: bool) -> list[bytes]:
    """
    @return: the untagged FLAGS and C{OK [PERMANENTFLAGS]} responses of a
        folder with these keywords: C{\\*} while it has room for more, and
        nothing permanent in a read-only session.
    """
    flags = PERMANENT_FLAGS + keywords.names
    permanent = (flags + (() if keywords.full else (NEW_KEYWORDS,))) if writable else ()
    return [b"FLAGS " + flagList(flags), b"OK [PERMANENTFLAGS %b] Flags stored" % (flagList(permanent),)]


def _slots(messages: Iterable[FolderMessage], recent: frozenset[str]) -> list[Slot]:
    """
    @return: a view's messages for these messages of a folder state (the
        same objects unless they are in C{recent}).
    """
    if not recent:
        return list(messages)
    return [RecentMessage(m.uid, m.baseName, m.path, m.flags, m.mtime) if m.baseName in recent else m
            for m in messages]


@attrs.define(eq=False)
class FolderView:
    """
    The selected folder of a session.

    @ivar name: its IMAP name (text, C{INBOX} canonical).
    @ivar path: its directory.
    @ivar writable: SELECT (true) or EXAMINE.
    @ivar uidValidity: its UIDVALIDITY.
    @ivar uidNext: its UIDNEXT as last seen.
    @ivar slots: its messages, by sequence number.
    @ivar keywords: its keywords, as the client was last told.
    """

    name: str
    path: str
    writable: bool
    uidValidity: int
    uidNext: int
    slots: list[Slot]
    keywords: KeywordMap = EMPTY

    @classmethod
    def fromState(cls, name: str, path: str, writable: bool, state: FolderState,
                  recent: frozenset[str]) -> "FolderView":
        """
        @return: a view of a folder just synced.
        """
        return cls(name, path, writable, state.uidValidity, state.uidNext,
                   _slots(state.messages, recent), state.keywords)

    def flagResponses(self) -> list[bytes]:
        """
        @return: the FLAGS and PERMANENTFLAGS responses (see
            L{flagResponses}).
        """
        return flagResponses(self.keywords, self.writable)

    def learnKeywords(self, keywords: KeywordMap) -> list[bytes]:
        """
        Take the folder's keywords as they are now.

        @return: the FLAGS and PERMANENTFLAGS responses when they changed,
            else nothing.
        """
        if (keywords.names, keywords.full) == (self.keywords.names, self.keywords.full):
            return []
        self.keywords = keywords
        return self.flagResponses()

    def recentCount(self) -> int:
        """
        @return: how many messages are C{\\Recent}.
        """
        # The types counted in C: a first SELECT of a large folder asks.
        return list(map(type, self.slots)).count(RecentMessage)

    def firstUnseen(self) -> int | None:
        """
        @return: the sequence number of the first message not C{\\Seen}.
        """
        for seq, slot in enumerate(self.slots, 1):
            if "\\Seen" not in slot.flags:
                return seq
        return None

    def select(self, ranges: list[tuple[int | None, int | None]], uid: bool) -> list[tuple[int, Slot]]:
        """
        The messages of a sequence set.

        @param uid: the set holds UIDs (UIDs not in use are left out);
            else sequence numbers.
        @return: C{(sequence number, slot)} in ascending order.
        @raise ParseError: a sequence number is out of range (RFC 3501
            §6.4.8 allows only UIDs not to exist).
        """
        if uid:
            largest = self.slots[-1].uid if self.slots else 0
            members = SequenceMembership(ranges, largest)
            return [(seq, s) for seq, s in enumerate(self.slots, 1) if s.uid in members]
        count = len(self.slots)
        for low, high in ranges:
            for n in (low, high):
                if (n is not None and n > count) or (n is None and count == 0):
                    raise ParseError("message sequence number out of range")
        members = SequenceMembership(ranges, count)
        return [(seq, s) for seq, s in enumerate(self.slots, 1) if seq in members]

    def replace(self, seq: int, old: Slot, new: Slot) -> None:
        """
        Put C{new} (the same message with other flags or path) where C{old}
        is, at sequence number C{seq} or, if the view changed meanwhile,
        wherever it now is.
        """
        slots = self.slots
        if 0 < seq <= len(slots) and slots[seq - 1] is old:
            slots[seq - 1] = new
            return
        for position, slot in enumerate(slots):
            if slot is old:
                slots[position] = new
                return

    def remove(self, baseNames: Iterable[str]) -> list[bytes]:
        """
        Drop messages the session expunged.

        @return: the untagged EXPUNGE responses, in order.
        """
        gone = set(baseNames)
        lines = []
        kept = []
        for slot in self.slots:
            if slot.baseName in gone:
                lines.append(b"%d EXPUNGE" % (len(kept) + 1,))
            else:
                kept.append(slot)
        self.slots = kept
        return lines

    def update(self, state: FolderState, recent: frozenset[str]) -> list[bytes]:
        """
        Apply a fresh sync.

        @return: the untagged responses telling the client.
        @raise UIDValidityChanged: UIDVALIDITY changed.
        """
        if state.uidValidity != self.uidValidity:
            raise UIDValidityChanged(self.name)
        current = {m.uid: m for m in state.messages}
        lines = self.learnKeywords(state.keywords)
        lines += self.remove(s.baseName for s in self.slots if s.uid not in current)
        slots = self.slots
        for position, slot in enumerate(slots):
            message = current[slot.uid]
            if message is slot or (message.path == slot.path and message.flags == slot.flags):
                continue
            if type(slot) is FolderMessage and message.mtime == slot.mtime:
                slots[position] = message
            else:
                slots[position] = attrs.evolve(slot, path=message.path, flags=message.flags)
            if message.flags != slot.flags:
                lines.append(b"%d FETCH (FLAGS %b)" % (position + 1, slotFlagList(slots[position])))
        largest = slots[-1].uid if slots else 0
        arrived = _slots((m for m in state.messages if m.uid > largest), recent)
        self.slots += arrived
        if arrived:
            lines.append(b"%d EXISTS" % (len(self.slots),))
            lines.append(b"%d RECENT" % (self.recentCount(),))
        self.uidNext = max(self.uidNext, state.uidNext)
        return lines
