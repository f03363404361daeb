# -*- test-case-name: tests.access.test_searchfields -*-
"""
What SEARCH matches in a message's header fields, and the same kept in
the folder's fetch index (L{qutemail.access.fetchindex}) for the fields
clients search most, so that a C{SEARCH FROM}, C{SUBJECT} or C{HEADER
Message-ID} of a whole folder reads no message file (issue 14; Dovecot
answers these from its cache of header fields).

A field matches a needle when the needle, case folded, is in one of its
values, taken raw (folding removed), read as UTF-8, or RFC 2047 decoded.
The index keeps, for each of L{INDEXED_FIELDS} a message has, exactly
those forms, case folded, joined by NUL (which a search string cannot
hold), so the match there is one substring test per field.
"""

import email.errors
import email.header
from typing import Any

from qutemail.access.imapstructure import unfold

# The fields the index keeps for SEARCH: the address fields, the subject,
# the sent date, and those threading clients look messages up by.
INDEXED_FIELDS = ("bcc", "cc", "date", "from", "in-reply-to", "list-id", "message-id", "references",
                  "reply-to", "sender", "subject", "to")
_FIELD_SEP = "\x01"
_ENTRY_SEP = "\x02"


def headerValues(structure: Any, name: str) -> list[str]:
    """
    @param structure: a scanned L{qutemail.access.imapmime.Entity}.
    @return: a field's values, each raw, read as UTF-8, and RFC 2047
        decoded.
    """
    return _forms(structure.rawFields(name))


def _forms(rawValues: list[str]) -> list[str]:
    """
    L{headerValues} of a field's raw values.
    """
    values = []
    for value in rawValues:
        raw = unfold(str(value))
        values.append(raw)
        if not raw.isascii():
            # Raw 8-bit bytes (surrogate escapes) read as UTF-8 (an ASCII
            # value reads as itself).
            values.append(raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        if "=?" in raw:
            # Without an encoded word, decoding gives the value itself
            # (or fails): the stdlib's decoder is worth calling only here.
            try:
                values.append(str(email.header.make_header(email.header.decode_header(raw))))
            except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
                pass
    return values


def _haystack(values: list[str]) -> str:
    """
    @return: a field's forms, case folded, in one string.
    """
    joined = "\x00".join(v.replace("\x00", " ") if "\x00" in v else v for v in values)
    # Case folding maps each character alone (no context, unlike lower()'s
    # final sigma) and never makes a NUL, so the whole folds as its parts.
    return joined.casefold()


def _plain(header: bytes) -> bool:
    """
    @return: whether a header block's values are each their only form
        with nothing to blank: ASCII, no encoded word, no NUL and no
        separator.  (Five scans in C take a fifth of the time one regular
        expression does.)
    """
    return (header.isascii() and b"=?" not in header and b"\x00" not in header and b"\x01" not in header
            and b"\x02" not in header)


def indexedFields(structure: Any) -> bytes:
    """
    @return: the index's record of a message's L{INDEXED_FIELDS}: for each
        it has, its name, its first raw value (the sent date is read from
        C{date}'s) and its case folded forms.
    """
    if _plain(structure.header):
        # Most headers: a first listing indexes thousands, and this takes
        # three quarters of the time.
        return _plainRecord(structure.fieldValues())
    return _record(structure.fieldValues())


def _record(byName: dict[str, list[str]]) -> bytes:
    """
    L{indexedFields} of any header's fields.
    """
    entries = []
    for name in INDEXED_FIELDS:
        raw = byName.get(name)
        if raw:
            values = _forms(raw)
            entries.append(_FIELD_SEP.join((name, values[0].replace(_ENTRY_SEP, " ").replace(_FIELD_SEP, " "),
                                            _haystack(values).replace(_ENTRY_SEP, " ").replace(_FIELD_SEP, " "))))
    return _ENTRY_SEP.join(entries).encode("utf-8", "surrogatepass")


def _plainRecord(byName: dict[str, list[str]]) -> bytes:
    """
    L{_record} of the fields of a header that is L{_plain}: each value's
    only form is itself, unfolded, and there is nothing to blank.
    """
    entries = []
    for name in INDEXED_FIELDS:
        raw = byName.get(name)
        if raw:
            values = [unfold(value) for value in raw]
            entries.append(_FIELD_SEP.join((name, values[0], "\x00".join(values).casefold())))
    return _ENTRY_SEP.join(entries).encode("ascii")


class IndexedHeader:
    """
    A message as SEARCH sees it from its index entry: its size and its
    L{INDEXED_FIELDS}.  It stands for the message's scanned structure in
    L{qutemail.access.imapsearch.matches} for searches of those fields.

    A field is looked up in the record itself (its entries are separated
    by a character no value holds), not split into a table: a search makes
    one of these per message and drops it, so a folder's records cost the
    cyclic garbage collector nothing between searches, and the first
    search of a folder builds no table per message.

    @ivar size: C{RFC822.SIZE}.
    """

    __slots__ = ("size", "_record")

    def __init__(self, size: int, record: bytes) -> None:
        """
        @param record: what L{indexedFields} made.
        """
        self.size = size
        self._record = record.decode("utf-8", "surrogatepass")

    def _find(self, name: str) -> tuple[str, str] | None:
        """
        @return: a field's first value and haystack, or C{None}.
        """
        record = self._record
        key = name.lower() + _FIELD_SEP
        if record.startswith(key):
            start = len(key)
        else:
            start = record.find(_ENTRY_SEP + key)
            if start < 0:
                return None
            start += len(key) + 1
        end = record.find(_ENTRY_SEP, start)
        first, _, haystack = (record[start:] if end < 0 else record[start:end]).partition(_FIELD_SEP)
        return first, haystack

    def rawField(self, name: str) -> str | None:
        """
        @return: the first value of an indexed field, unfolded, or
            C{None}.
        """
        found = self._find(name)
        return found[0] if found is not None else None

    def fieldMatches(self, name: str, folded: str) -> bool:
        """
        @param folded: the needle, case folded (C{""}: any value).
        @return: whether an indexed field has a value holding it.
        """
        found = self._find(name)
        return found is not None and folded in found[1]


def fieldMatches(structure: Any, name: str, needle: str) -> bool:
    """
    @param structure: a scanned message or an L{IndexedHeader} (for one of
        L{INDEXED_FIELDS}).
    @return: whether the field has a value holding C{needle} (C{""}: any
        value), ignoring case.
    """
    folded = needle.casefold()
    if isinstance(structure, IndexedHeader):
        return structure.fieldMatches(name, folded)
    values = headerValues(structure, name)
    return any(folded in v.casefold() for v in values) if needle else bool(values)
