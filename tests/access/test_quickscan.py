# -*- test-case-name: tests.access.test_quickscan -*-
"""
Tests for L{qutemail.access.quickscan}: whenever it answers, it answers
what the full scanner does.
"""

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.fetchindex import ENVELOPE
from qutemail.access.fetchindex import indexEntry
from qutemail.access.imapmime import HEADER_CAP_BYTES, scanMessage
from qutemail.access.quickscan import quickScan, scanBytes

SIMPLE = (b"Return-Path: <a@remote.test>\nFrom: Ann Example <a@remote.test>\nTo: Bob <b@example.test>,\n"
          b"\tCarol <c@example.test>\nSubject: quarterly\n report\nDate: Mon, 7 Dec 2026 10:00:00 +0000\n"
          b"Message-ID: <1.2@remote.test>\nMIME-Version: 1.0\n"
          b"Content-Type: text/plain; charset=\"us-ascii\"; format=flowed\n\nline one\r\nline two\nlast")

_NAMES = st.sampled_from(["From", "To", "cc", "Subject", "Date", "Message-ID", "In-Reply-To", "Reply-To",
                          "Sender", "Content-Type", "content-type", "Content-Transfer-Encoding",
                          "Content-Disposition", "Content-Language", "Content-ID", "X-Odd*Name", "X-1"])
_VALUE_PIECES = st.sampled_from(["", " ", "\t", "a@b.test", "Ann <a@b.test>", ", ", ";", "=", '"', "\\", "<", ">",
                                 "*", "%", "text/plain", "multipart/mixed", "message/rfc822", "TEXT/Html",
                                 "application/octet-stream", "charset", "us-ascii", '"x y"', "name*0", "=?utf-8?q?hi?=",
                                 "\n ", "\n\t", "(c)", "\xe9", "\r", "boundary=XX"])
_CONTENT_TYPES = st.lists(st.sampled_from([
    "text/plain", " text/plain ", "Text/HTML", "application/pdf", "multipart/mixed; boundary=XX",
    "message/rfc822", "text", "text/plain/x", "; charset=x", ";charset=us-ascii", "; Charset = \"utf-8\"",
    ";\n\tformat=flowed", "; name=\"a b.txt\"", "; name*=utf-8''x", "; q=\"a\\\"b\"", "; a=<b>", ";", " ; x=",
    "; n=\"\"", "; dup=1; dup=2"]), min_size=1, max_size=5).map("".join)
_FIELDS = st.one_of(
    st.tuples(_NAMES, st.lists(_VALUE_PIECES, max_size=6).map("".join)),
    st.tuples(st.just("Content-Type"), _CONTENT_TYPES),
)
_BODIES = st.lists(st.sampled_from([b"", b"text", b"\n", b"\r\n", b"\r", b"--XX\n", b".", b"  "]),
                   max_size=12).map(b"".join)


_SIMPLE_PIECES = st.sampled_from(["", " ", "\t", "a@b.test", "Ann <a@b.test>", ", ", "x", "\n ", "\n\t", "  "])
_SIMPLE_TYPES = st.sampled_from(["text/plain", " text/html ", "Application/PDF", "text/plain; charset=us-ascii",
                                 "text/plain;\n\tcharset=\"utf-8\"", "text/plain; Format = flowed ",
                                 "image/png; name=\"a b.png\"", "text/plain; a=1;b=\"\"; a=2"])


@st.composite
def simpleMessages(draw) -> bytes:
    """
    Messages the quick scan should take: ASCII fields, folded or not,
    plain content types, bodies with any line ends.
    """
    fields = draw(st.lists(st.one_of(
        st.tuples(_NAMES, st.lists(_SIMPLE_PIECES, max_size=5).map("".join)),
        st.tuples(st.just("Content-Type"), _SIMPLE_TYPES)), max_size=8))
    header = "".join(f"{name}:{draw(st.sampled_from(['', ' ', chr(9)]))}{value}\n" for name, value in fields)
    return header.encode("ascii") + b"\n" + draw(_BODIES)


@st.composite
def oddMessages(draw) -> bytes:
    """
    Messages from simple to odd: fields, some folded, some 8-bit or
    holding CRs; now and then a line that is no field, or no blank line.
    """
    lines = []
    for name, value in draw(st.lists(_FIELDS, max_size=8)):
        lines.append(f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}")
    if draw(st.booleans()) and lines:
        lines.insert(draw(st.integers(0, len(lines) - 1)), draw(st.sampled_from(["From x", "no colon", " lead"])))
    header = "\n".join(lines).encode("utf-8", "surrogateescape")
    separator = draw(st.sampled_from([b"\n\n", b"\n\n", b"\n\n", b"\r\n\r\n", b"\n"]))
    return header + separator + draw(_BODIES)


def _structure(entity) -> tuple:
    """
    @return: what a scan found, lazily kept parses left out.
    """
    return (entity.start, entity.bodyStart, entity.end, entity.header, entity.headerTruncated, entity.mainType,
            entity.subType, entity.parts, entity.message)


def _fields(entity) -> dict[str, list[str]]:
    """
    @return: every header field's raw values, by lower-case name.
    """
    names = {key.lower() for key, _ in entity.headers().raw_items()}
    return {name: entity.rawFields(name) for name in names}


class QuickScanTests(SynchronousTestCase):
    """
    L{quickScan} gives what L{scanMessage} gives, or nothing.
    """

    def assertSameAsFull(self, data: bytes) -> None:
        """
        C{quickScan(data)}, when not C{None}, has the full scan's structure,
        header fields and fetch index entry.
        """
        quick = quickScan(data)
        if quick is None:
            return
        full = scanMessage(io.BytesIO(data))
        self.assertEqual(_structure(quick), _structure(full))
        self.assertEqual(set(quick._byName), {key.lower() for key, _ in full.headers().raw_items()})
        self.assertEqual({name: quick.rawFields(name) for name in quick._byName}, _fields(full))
        self.assertEqual(indexEntry(quick), indexEntry(full))

    @settings(max_examples=300)
    @given(st.one_of(simpleMessages(), oddMessages()))
    def test_sameAsFullScan(self, data: bytes) -> None:
        """
        On messages of every shape, L{quickScan} agrees with the full scan
        whenever it answers.
        """
        self.assertSameAsFull(data)

    def test_simpleMessage(self) -> None:
        """
        A one-part message with a plain ASCII header (folded fields, a
        quoted parameter, a body with mixed line ends) is scanned quickly,
        to the same result.
        """
        quick = quickScan(SIMPLE)
        self.assertIsNotNone(quick)
        self.assertEqual(quick.contentTypeParams(), ["charset", "us-ascii", "format", "flowed"])
        self.assertSameAsFull(SIMPLE)
        entry = indexEntry(quick)
        self.assertIs(type(entry), tuple)
        self.assertIn(b'"quarterly report"', entry[ENVELOPE])

    def test_noContentType(self) -> None:
        """
        Without C{Content-Type} a message is C{text/plain}, and its
        parameters are none (BODYSTRUCTURE then names us-ascii).
        """
        data = b"Subject: s\n\nbody\n"
        quick = quickScan(data)
        self.assertEqual((quick.mainType, quick.subType, quick.contentTypeParams()), ("text", "plain", None))
        self.assertSameAsFull(data)

    def test_declined(self) -> None:
        """
        Messages the quick scan cannot be sure of are left to the full
        scan: multiparts, C{message/rfc822}, 8-bit or CR in the header, a
        line that is no field, no blank line, RFC 2231 parameters, a header
        past the scanner's cap.
        """
        for data in [
            b"Content-Type: multipart/mixed; boundary=X\n\n--X\n\nx\n--X--\n",
            b"Content-Type: message/rfc822\n\nSubject: inner\n\nx\n",
            b"Subject: caf\xc3\xa9\n\nx\n",
            b"Subject: x\r\n\r\nx\r\n",
            b"From someone\nSubject: x\n\nx\n",
            b"Subject: no body\n",
            b"Content-Type: text/plain; name*=utf-8''x\n\nx\n",
            b"X-Big: " + b"a" * HEADER_CAP_BYTES + b"\n\nx\n",
        ]:
            self.assertIsNone(quickScan(data), data[:40])

    def test_scanBytes(self) -> None:
        """
        L{scanBytes} gives the full scan's structure for a message the
        quick scan declines, and the quick scan's otherwise.
        """
        multipart = b"Content-Type: multipart/mixed; boundary=X\n\n--X\n\nx\n--X--\n"
        self.assertEqual(_structure(scanBytes(multipart))[:3], _structure(scanMessage(io.BytesIO(multipart)))[:3])
        self.assertEqual(len(scanBytes(multipart).parts), 1)
        self.assertEqual(_structure(scanBytes(SIMPLE)), _structure(quickScan(SIMPLE)))
