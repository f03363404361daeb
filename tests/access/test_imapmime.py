# -*- test-case-name: tests.access.test_imapmime -*-
"""
Tests for L{qutemail.access.imapmime} and L{qutemail.access.imapstructure}.
"""

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access import imapmime
from qutemail.access.imapmime import scanMessage
from qutemail.access.imapstructure import (
    NoSuchSection, envelope, headerFields, messageOf, region, resolvePart, structures,
)
from qutemail.access.imapwire import CRLFConverter, formatList

NESTED = (
    b"From: A <a@x.test>\nTo: b@y.test, C <c@z.test>\nSubject: hi\n =?utf-8?q?there?=\n"
    b"Content-Type: multipart/mixed; boundary=\"XX\"\n\npreamble\n"
    b"--XX\nContent-Type: text/plain; charset=utf-8\nContent-Disposition: inline\n\nhello\nworld\n"
    b"--XX\r\nContent-Type: message/rfc822\n\n"
    b"Subject: inner\nContent-Type: multipart/alternative; boundary=YY\n\n"
    b"--YY\n\ninner text\n--YY\nContent-Type: text/html\n\n<b>x</b>\n--YY--\n\n"
    b"--XX--\nepilogue\n"
)
_PIECES = [b"--XX", b"--XX--", b"--YY", b"\r\n", b"\n", b"\r", b"abc", b"  ", b"--", b"x" * 20, b"\n\n",
           b"Content-Type: multipart/mixed; boundary=YY\n", b"Content-Type: message/rfc822\n"]


def crlf(data: bytes) -> bytes:
    """
    @return: C{data} with bare LFs made CRLF.
    """
    return CRLFConverter().feed(data)


def lines(data: bytes) -> int:
    """
    @return: how many lines C{data} has (a last one without LF counts).
    """
    return 0 if not data else data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def shape(entity) -> tuple:
    """
    @return: the offsets of an entity and those inside it.
    """
    return (entity.start.raw, entity.bodyStart.raw, entity.end.raw, [shape(p) for p in entity.parts or []],
            entity.message and shape(entity.message))


class ScanTests(SynchronousTestCase):
    """
    L{scanMessage} finds each entity's bytes, sizes and line counts.
    """

    def check(self, message: bytes):
        """
        Assert every entity's sizes and line counts match its bytes.

        @return: the scanned message.
        """
        root = scanMessage(io.BytesIO(message))
        self.assertEqual(root.size, len(crlf(message)))

        def walk(entity):
            """
            Check an entity and those inside it.
            """
            body = message[entity.bodyStart.raw:entity.end.raw]
            self.assertEqual(entity.bodySize, len(crlf(body)))
            self.assertEqual(entity.bodyLines, lines(body))
            self.assertEqual(entity.headerSize, len(crlf(message[entity.start.raw:entity.bodyStart.raw])))
            for part in entity.parts or []:
                walk(part)
            if entity.message is not None:
                walk(entity.message)

        walk(root)
        return root

    def test_nested(self) -> None:
        """
        Parts, an embedded message and its parts are found; a delimiter's
        preceding line end belongs to the delimiter (RFC 2046 §5.1.1).
        """
        root = self.check(NESTED)
        text = resolvePart(root, (0,))
        self.assertEqual(NESTED[text.bodyStart.raw:text.end.raw], b"hello\nworld")
        inner = resolvePart(root, (1,))
        self.assertEqual(NESTED[inner.bodyStart.raw:inner.bodyStart.raw + 14], b"Subject: inner")
        self.assertEqual(NESTED[resolvePart(root, (1, 0)).bodyStart.raw:resolvePart(root, (1, 0)).end.raw],
                         b"inner text")
        html = resolvePart(root, (1, 1))
        self.assertEqual((html.mainType, html.subType), ("text", "html"))
        self.assertIs(messageOf(root, inner, (1,)), inner.message)
        self.assertRaises(NoSuchSection, resolvePart, root, (2,))
        self.assertRaises(NoSuchSection, messageOf, root, text, (0,))

    @given(st.lists(st.sampled_from(_PIECES), max_size=40), st.sampled_from([b"", b"Content-Type: multipart/mixed;"
                                                                             b" boundary=XX\n\n",
                                                                             b"Content-Type: message/rfc822\n\n"]))
    def test_anyMessage(self, pieces: list, head: bytes) -> None:
        """
        For any message, sizes and line counts match the bytes, and the
        structure found does not depend on the block size.
        """
        message = head + b"".join(pieces)
        root = self.check(message)
        self.patch(imapmime, "BLOCK_BYTES", 5)
        self.patch(imapmime, "PIECE_BYTES", 32)
        self.assertEqual(shape(self.check(message)), shape(root))

    def test_headerKeptWithinCap(self) -> None:
        """
        A header past the cap is truncated in memory, but its region is
        exact.
        """
        self.patch(imapmime, "HEADER_CAP_BYTES", 20)
        message = b"Subject: " + b"x" * 50 + b"\nTo: a@b.test\n\nbody\n"
        root = self.check(message)
        self.assertTrue(root.headerTruncated)
        self.assertEqual(len(root.header), 20)
        self.assertEqual(message[root.bodyStart.raw:], b"body\n")

    def test_longLines(self) -> None:
        """
        Lines longer than a block or piece are counted right.
        """
        self.patch(imapmime, "BLOCK_BYTES", 7)
        self.patch(imapmime, "PIECE_BYTES", 16)
        self.check(b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\n\n" + b"y" * 100 + b"\r\n--XX--")


class StructureTests(SynchronousTestCase):
    """
    ENVELOPE, BODYSTRUCTURE and header fields.
    """

    def test_envelope(self) -> None:
        """
        Raw values (RFC 2047 words kept, folding removed), address lists
        (addresses one after another with no space, RFC 3501 §9); Sender
        and Reply-To default to From.
        """
        root = scanMessage(io.BytesIO(NESTED))
        self.assertEqual(
            formatList(envelope(root)),
            b'(NIL "hi =?utf-8?q?there?=" (("A" NIL "a" "x.test")) (("A" NIL "a" "x.test"))'
            b' (("A" NIL "a" "x.test")) ((NIL NIL "b" "y.test")("C" NIL "c" "z.test")) NIL NIL NIL NIL)')

    def test_eightBitHeader(self) -> None:
        """
        8-bit header bytes come back as they were, in a literal.
        """
        root = scanMessage(io.BytesIO(b"Subject: caf\xc3\xa9\n\nx\n"))
        self.assertIn(b"{5}\r\ncaf\xc3\xa9", formatList(envelope(root)))

    def test_bodyStructure(self) -> None:
        """
        Multipart (its parts one after another with no space, RFC 3501
        §9 body-type-mpart), text (with line counts), message/rfc822 (with
        its envelope and structure) and extension data.
        """
        root = scanMessage(io.BytesIO(NESTED))
        body, structure = structures(root)
        self.assertEqual(
            structure,
            b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 2 NIL ("inline" NIL) NIL NIL)'
            b'("message" "rfc822" NIL NIL NIL "7bit" 139 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
            b' (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL)'
            b'("text" "html" NIL NIL NIL "7bit" 8 1 NIL NIL NIL NIL) "alternative" ("boundary" "YY") NIL NIL NIL)'
            b' 11 NIL NIL NIL NIL) "mixed" ("boundary" "XX") NIL NIL NIL)')
        self.assertEqual(structures(resolvePart(root, (0,)))[0],
                         b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 2)')
        # BODY: the same without extension data, at every level.
        self.assertEqual(
            body,
            b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 2)("message" "rfc822" NIL NIL NIL "7bit" 139'
            b' (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit"'
            b' 10 1)("text" "html" NIL NIL NIL "7bit" 8 1) "alternative") 11) "mixed")')

    def test_headerFields(self) -> None:
        """
        HEADER.FIELDS keeps folded fields whole; .NOT gives the others.
        """
        root = scanMessage(io.BytesIO(NESTED))
        self.assertEqual(headerFields(root, [b"SUBJECT", b"to"], False),
                         b"To: b@y.test, C <c@z.test>\r\nSubject: hi\r\n =?utf-8?q?there?=\r\n\r\n")
        self.assertEqual(headerFields(root, [b"subject", b"to", b"content-type"], True),
                         b"From: A <a@x.test>\r\n\r\n")

    def test_regions(self) -> None:
        """
        Header, body and whole regions of an entity.
        """
        root = scanMessage(io.BytesIO(b"A: b\n\nc\n"))
        self.assertEqual([(s.raw, e.raw) for s, e in (region(root, w) for w in ("header", "body", "all"))],
                         [(0, 6), (6, 8), (0, 8)])
