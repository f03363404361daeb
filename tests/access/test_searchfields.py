"""
Tests for L{qutemail.access.searchfields}: what the fetch index keeps of a
message's header fields matches a SEARCH exactly as the message does.
"""

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.imapmime import scanMessage
from qutemail.access.imapstructure import unfold
from qutemail.access.searchfields import (INDEXED_FIELDS, IndexedHeader, _plain, _plainRecord, _record, fieldMatches,
                                         indexedFields)

VALUES = st.sampled_from([
    "Alice <alice@example.test>", "=?utf-8?q?caf=C3=A9?= r\u00e9sum\u00e9", "=?iso-8859-1?b?Y2Fm6Q==?=",
    "STRASSE stra\u00dfe", "", "<1.2@host>", "report 7 on project 9", "Mon, 2 Oct 2023 10:00:00 +0200",
    "tab\there", "bad =?utf-8?q?=FF?= word",
])
NAMES = st.sampled_from(list(INDEXED_FIELDS) + ["Subject", "FROM", "X-Mailer", "Content-Type"])
NEEDLES = st.sampled_from(["", "alice", "CAF\u00c9", "caf\u00e9", "strasse", "<1.2@", "project 9", "oct 2023",
                           "\t", "nothing", "=?utf-8", "r\u00e9sum\u00c9"])


def message(fields: list[tuple[str, str]]) -> bytes:
    """
    @return: a message with these header fields (long ones folded).
    """
    lines = []
    for name, value in fields:
        line = f"{name}: {value}"
        if len(line) > 40 and " " in value:
            cut = line.index(" ", len(name) + 2)
            line = line[:cut] + "\n" + line[cut:]
        lines.append(line)
    return ("\n".join(lines) + "\n\nbody\n").encode("utf-8")


class IndexedHeaderTests(SynchronousTestCase):
    """
    L{IndexedHeader} against the scanned message.
    """

    @settings(max_examples=300, deadline=None)
    @given(fields=st.lists(st.tuples(st.sampled_from(INDEXED_FIELDS), VALUES), max_size=6),
           name=st.sampled_from(INDEXED_FIELDS), needle=NEEDLES)
    def test_sameAsScanned(self, fields, name, needle):
        """
        For any header and indexed field, the index entry matches a needle
        exactly when the scanned message does, and gives the same first
        C{Date}.
        """
        root = scanMessage(io.BytesIO(message(fields)))
        indexed = IndexedHeader(root.size, indexedFields(root))
        self.assertEqual(fieldMatches(indexed, name, needle), fieldMatches(root, name, needle))
        date = root.rawField("date")
        self.assertEqual(indexed.rawField("Date"), None if date is None else unfold(str(date)))

    @settings(max_examples=300, deadline=None)
    @given(fields=st.lists(st.tuples(NAMES, st.text(st.characters(min_codepoint=0, max_codepoint=0x7e), max_size=30)
                                     | VALUES), max_size=8))
    def test_plainShortcut(self, fields):
        """
        A header that L{_plain} lets through gets the same record by the
        shortcut as the long way, and one with a NUL, a separator, a byte
        that is not ASCII or an encoded word is not let through.
        """
        text = message([(n, v.replace("\n", " ").replace("\r", " ")) for n, v in fields])
        root = scanMessage(io.BytesIO(text))
        if _plain(root.header):
            self.assertEqual(_plainRecord(root.fieldValues()), _record(root.fieldValues()))
        else:
            self.assertTrue(any(c in root.header for c in (b"\x00", b"\x01", b"\x02", b"=?"))
                            or not root.header.isascii())

    def test_decodedAndFolded(self):
        """
        A field matches in its decoded form and case-insensitively, a
        missing one matches nothing, even the empty string.
        """
        root = scanMessage(io.BytesIO(message([("Subject", "=?utf-8?q?caf=C3=A9?= au lait"),
                                               ("From", "Bob <bob@example.test>")])))
        indexed = IndexedHeader(root.size, indexedFields(root))
        self.assertTrue(fieldMatches(indexed, "SUBJECT", "CAF\u00c9 AU"))
        self.assertTrue(fieldMatches(indexed, "from", ""))
        self.assertFalse(fieldMatches(indexed, "cc", ""))
        self.assertFalse(fieldMatches(indexed, "subject", "tea"))
        self.assertEqual(indexed.size, root.size)

    def test_caseFolded(self):
        """
        The index matches without regard to case, full case folding
        included (C{ß} is C{ss}), in every field it keeps, as the scanned
        message does.
        """
        root = scanMessage(io.BytesIO(message([("Subject", "Quarterly REPORT"), ("To", "STRASSE <s@x.test>"),
                                               ("Cc", "=?utf-8?q?Stra=C3=9Fe?= <t@x.test>")])))
        indexed = IndexedHeader(root.size, indexedFields(root))
        for name, needle in [("subject", "report"), ("subject", "QUARTERLY"), ("to", "stra\u00dfe"),
                             ("cc", "STRASSE")]:
            self.assertTrue(fieldMatches(root, name, needle), (name, needle))
            self.assertTrue(fieldMatches(indexed, name, needle), (name, needle))
