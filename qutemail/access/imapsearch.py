# -*- test-case-name: tests.access.test_imapserver -*-
"""
SEARCH criteria (RFC 3501 §6.4.4): parsed from the command's tokens into
a tree, then matched against each message.

Flags, sequence numbers, UIDs and INTERNALDATE need nothing but the
session's view; sizes, header fields and the sent date need the message's
scanned structure, or for the fields the folder's fetch index keeps
(L{qutemail.access.searchfields}), its index entry; BODY and TEXT read
the message (decrypted) in chunks.
Header fields match their raw form or their RFC 2047 decoded form; BODY
and TEXT match the message's bytes as stored (a base64 or
quoted-printable part is not decoded); matching ignores case (Unicode
case folding for header fields, ASCII case for bodies).

Parsing and matching recurse once per level of parentheses, NOT and OR;
a search nested deeper than L{MAX_SEARCH_DEPTH} levels is refused with
L{qutemail.access.imapwire.TooDeep} (C{BAD}) before anything is matched.
"""

import datetime
import email.utils
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Iterator

import attrs

from qutemail.access.imapmailbox import Slot, isRecent
from qutemail.access.imapmime import Entity
from qutemail.access.searchfields import INDEXED_FIELDS, IndexedHeader, fieldMatches
from qutemail.access.imapstructure import unfold
from qutemail.access.imapwire import (
    Atom, ParseError, SequenceMembership, TooDeep, parseDate, parseSequenceSet,
)

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True), "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
CHARSETS = ("US-ASCII", "UTF-8")
# Levels of parentheses, NOT and OR (a chain of N ORs is N levels): far
# more than clients build (Thunderbird's "any of" filters, mutt patterns)
# and far below the interpreter's recursion limit.
MAX_SEARCH_DEPTH = 64


@attrs.frozen
class Key:
    """
    One node of a parsed search.

    @ivar op: what it tests (C{"and"}, C{"or"}, C{"not"}, C{"flag"} ...).
    @ivar args: its arguments.
    """

    op: str
    args: tuple


@attrs.define
class Candidate:
    """
    A message being matched.

    @ivar seq: its sequence number.
    @ivar slot: its slot in the view.
    @ivar lastSeq: the largest sequence number (C{*}).
    @ivar lastUid: the largest UID (C{*} in a UID set).
    @ivar structure: gives its scanned structure, or its index entry when
        L{searchIndexable} (a coroutine function).
    @ivar contains: tells whether a region (C{"body"} or C{"all"}) holds
        some lower-case bytes (a coroutine function).
    """

    seq: int
    slot: Slot
    lastSeq: int
    lastUid: int
    structure: Callable[[], Awaitable[Entity | IndexedHeader]]
    contains: Callable[[str, bytes], Awaitable[bool]]


def _text(token: Any, charset: str) -> str:
    """
    @return: a string argument as text.
    @raise ParseError: it is not a string.
    """
    if not isinstance(token, bytes):
        raise ParseError("SEARCH expected a string")
    return token.decode("utf-8" if charset == "UTF-8" else "ascii", "replace")


def _take(tokens: list, what: str) -> Any:
    """
    @return: the next token.
    @raise ParseError: there is none.
    """
    if not tokens:
        raise ParseError(f"SEARCH {what} needs an argument")
    return tokens.pop(0)


def _parseOne(tokens: list, charset: str, depth: int) -> Key:
    """
    Parse one search key from the front of C{tokens}.

    @param depth: how many levels of parentheses, NOT and OR enclose it.
    @raise TooDeep: it would nest deeper than L{MAX_SEARCH_DEPTH}.
    """
    token = tokens.pop(0)
    if isinstance(token, list) or (isinstance(token, Atom) and token.upper() in (b"NOT", b"OR")):
        if depth >= MAX_SEARCH_DEPTH:
            raise TooDeep(f"SEARCH nested deeper than {MAX_SEARCH_DEPTH} levels")
    if isinstance(token, list):
        return Key("and", tuple(parseKeys(list(token), charset, depth + 1)))
    if not isinstance(token, Atom):
        raise ParseError("SEARCH expected a search key")
    word = token.upper().decode("ascii", "replace")
    if word[:1].isdigit() or word[:1] == "*":
        return Key("seq", (parseSequenceSet(bytes(token)),))
    if word == "ALL":
        return Key("all", ())
    if word in _FLAG_KEYS:
        return Key("flag", _FLAG_KEYS[word])
    if word in ("NEW", "OLD", "RECENT"):
        return Key(word.lower(), ())
    if word in ("KEYWORD", "UNKEYWORD"):
        return Key("flag", (_text(_take(tokens, word), "US-ASCII"), word == "KEYWORD"))
    if word in _HEADER_KEYS:
        return Key("header", (_HEADER_KEYS[word], _text(_take(tokens, word), charset)))
    if word == "HEADER":
        name = _text(_take(tokens, word), "US-ASCII").lower()
        return Key("header", (name, _text(_take(tokens, word), charset)))
    if word in ("BODY", "TEXT"):
        needle = _text(_take(tokens, word), charset).encode("utf-8").lower()
        return Key("contains", ("body" if word == "BODY" else "all", needle))
    if word in ("LARGER", "SMALLER"):
        value = _take(tokens, word)
        if not isinstance(value, Atom) or not value.isdigit():
            raise ParseError(f"SEARCH {word} needs a number")
        return Key(word.lower(), (int(value),))
    if word in _DATE_KEYS:
        value = _take(tokens, word)
        if not isinstance(value, bytes):
            raise ParseError(f"SEARCH {word} needs a date")
        return Key("date", (word, parseDate(bytes(value))))
    if word == "UID":
        value = _take(tokens, word)
        if not isinstance(value, Atom):
            raise ParseError("SEARCH UID needs a sequence set")
        return Key("uid", (parseSequenceSet(bytes(value)),))
    if word == "NOT":
        if not tokens:
            raise ParseError("SEARCH NOT needs a key")
        return Key("not", (_parseOne(tokens, charset, depth + 1),))
    if word == "OR":
        if not tokens:
            raise ParseError("SEARCH OR needs two keys")
        first = _parseOne(tokens, charset, depth + 1)
        if not tokens:
            raise ParseError("SEARCH OR needs two keys")
        return Key("or", (first, _parseOne(tokens, charset, depth + 1)))
    raise ParseError(f"unknown SEARCH key {word[:40]}")


def parseKeys(tokens: list, charset: str = "US-ASCII", depth: int = 0) -> list[Key]:
    """
    Parse search keys.

    @param tokens: the command's tokens after any CHARSET.
    @param charset: C{US-ASCII} or C{UTF-8}.
    @param depth: the nesting level of C{tokens} (0: the command's).
    @return: the keys, all of which must match.
    @raise ParseError: bad syntax.
    @raise TooDeep: nested deeper than L{MAX_SEARCH_DEPTH}.
    """
    keys = []
    while tokens:
        keys.append(_parseOne(tokens, charset, depth))
    if not keys:
        raise ParseError("SEARCH needs a search key")
    return keys


def _sentDate(structure: Entity | IndexedHeader, slot: Slot) -> datetime.date:
    """
    @return: the date of the Date field in its own zone, else the
        INTERNALDATE's.
    """
    value = structure.rawField("date")
    parsed = email.utils.parsedate_tz(unfold(str(value))) if value is not None else None
    if parsed is not None:
        try:
            return datetime.date(*parsed[:3])
        except ValueError:
            pass
    return datetime.datetime.fromtimestamp(slot.mtime, datetime.timezone.utc).date()


def _compare(word: str, date: datetime.date, wanted: datetime.date) -> bool:
    """
    @return: whether C{date} is BEFORE, ON or SINCE C{wanted}.
    """
    if word.endswith("BEFORE"):
        return date < wanted
    if word.endswith("ON"):
        return date == wanted
    return date >= wanted


# SEARCH tests one set against every message: its merged form is made
# once per search (keyed by the parsed set, which is kept alive here so its
# id is not reused) rather than scanned range by range per message.
_MEMBERSHIPS: OrderedDict[tuple[int, int], tuple[list, SequenceMembership]] = OrderedDict()
_MEMBERSHIPS_KEPT = 64


def _membership(ranges: list, largest: int) -> SequenceMembership:
    """
    @return: the L{SequenceMembership} of C{ranges} with C{*} as C{largest}.
    """
    key = (id(ranges), largest)
    hit = _MEMBERSHIPS.get(key)
    if hit is None or hit[0] is not ranges:
        hit = _MEMBERSHIPS[key] = (ranges, SequenceMembership(ranges, largest))
        while len(_MEMBERSHIPS) > _MEMBERSHIPS_KEPT:
            _MEMBERSHIPS.popitem(last=False)
    return hit[1]


def _leaves(key: Key) -> Iterator[Key]:
    """
    @return: the keys of a search that test something (all but C{and},
        C{or} and C{not}).
    """
    if key.op in ("and", "or", "not"):
        for sub in key.args:
            yield from _leaves(sub)
    else:
        yield key


def searchNeedsStructure(key: Key) -> bool:
    """
    @return: whether matching C{key} may need messages' structures (a
        header, the sent date, the size).
    """
    return any(k.op in ("larger", "smaller", "header") or (k.op == "date" and k.args[0].startswith("SENT"))
               for k in _leaves(key))


def searchIndexable(key: Key) -> bool:
    """
    @return: whether a message's fetch index entry (L{IndexedHeader}) can
        stand for its structure in matching C{key}: every header field it
        tests is one of L{INDEXED_FIELDS}.
    """
    return all(k.op != "header" or k.args[0].lower() in INDEXED_FIELDS for k in _leaves(key))


def searchNeedsTimes(key: Key) -> bool:
    """
    @return: whether matching C{key} may need messages' INTERNALDATEs
        (BEFORE, ON, SINCE; the SENT* keys too, for a message without a
        Date field).
    """
    return any(k.op == "date" for k in _leaves(key))


def readsBodies(key: Key) -> bool:
    """
    @return: whether matching C{key} may read message bodies (BODY, TEXT).
    """
    return any(k.op == "contains" for k in _leaves(key))


def matcher(key: Key) -> Callable[[Candidate], Awaitable[bool]]:
    """
    @return: a coroutine function telling whether a message matches
        C{key}, with what the search needs worked out once, not per
        message.
    """
    if readsBodies(key):
        return lambda c: matches(key, c)
    needsStructure = searchNeedsStructure(key)

    async def match(c: Candidate) -> bool:
        """
        @return: whether the message matches.
        """
        return matchesNow(key, c, await c.structure() if needsStructure else None)

    return match


async def matches(key: Key, c: Candidate) -> bool:
    """
    @return: whether a message matches a key.  A search that reads no
        bodies takes the message's structure (when it needs it) once and
        is matched without further waits; one that does reads a body only
        when the keys before it have not decided.
    """
    if not readsBodies(key):
        return matchesNow(key, c, await c.structure() if searchNeedsStructure(key) else None)
    op, args = key.op, key.args
    if op == "and":
        for sub in args:
            if not await matches(sub, c):
                return False
        return True
    if op == "or":
        return await matches(args[0], c) or await matches(args[1], c)
    if op == "not":
        return not await matches(args[0], c)
    return await c.contains(args[0], args[1])


def matchesNow(key: Key, c: Candidate, structure: Any) -> bool:
    """
    @param structure: the message's structure or L{IndexedHeader}, if
        L{searchNeedsStructure}.
    @return: whether a message matches a key that reads no bodies.
    """
    op, args = key.op, key.args
    if op == "and":
        for sub in args:
            if not matchesNow(sub, c, structure):
                return False
        return True
    if op == "or":
        return matchesNow(args[0], c, structure) or matchesNow(args[1], c, structure)
    if op == "not":
        return not matchesNow(args[0], c, structure)
    if op == "all":
        return True
    if op == "flag":
        flag, present = args
        return (flag.lower() in {f.lower() for f in c.slot.flags}) == present
    if op == "recent":
        return isRecent(c.slot)
    if op == "new":
        return isRecent(c.slot) and "\\Seen" not in c.slot.flags
    if op == "old":
        return not isRecent(c.slot)
    if op == "seq":
        return c.seq in _membership(args[0], c.lastSeq)
    if op == "uid":
        return c.slot.uid in _membership(args[0], c.lastUid)
    if op == "date" and not args[0].startswith("SENT"):
        internal = datetime.datetime.fromtimestamp(c.slot.mtime, datetime.timezone.utc).date()
        return _compare(args[0], internal, args[1])
    if op == "date":
        return _compare(args[0], _sentDate(structure, c.slot), args[1])
    if op == "larger":
        return structure.size > args[0]
    if op == "smaller":
        return structure.size < args[0]
    if op == "header":
        return fieldMatches(structure, args[0], args[1])
    raise AssertionError(f"unknown search key {op}")
