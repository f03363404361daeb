# -*- test-case-name: tests.jmap.test_parse -*-
"""
Unit tests of L{qutemail.jmap.parse}: the body part sorting of RFC 8621
§4.1.4, header forms, body values and previews.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail.jmap.parse import bodyValue, breakDown, headerValue, parseHeaderProperty, partObject, preview

ALTERNATIVE = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>, b@example.test\n"
               b"To: Group: x@example.test;\nSubject: =?utf-8?b?SGVsbG8g4pyT?=\n"
               b"Message-ID: <a@b>\nReferences: <r1@x> <r2@x>\nDate: Tue, 1 Dec 2026 10:00:00 +0100\n"
               b"List-Post: <mailto:list@example.test>\n"
               b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=M\n\n"
               b"--M\nContent-Type: multipart/alternative; boundary=A\n\n"
               b"--A\nContent-Type: text/plain; charset=utf-8\n\nplain \xc3\xa9  text\n"
               b"--A\nContent-Type: text/html; charset=utf-8\n\n<p>html <b>text</b></p>\n--A--\n"
               b"--M\nContent-Type: image/png\nContent-Disposition: inline\n\nPNG\n"
               b"--M\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=\"d.pdf\"\n\nPDF\n"
               b"--M--\n")


class StructureTests(SynchronousTestCase):
    """
    L{breakDown}.
    """

    def test_alternativeWithAttachments(self):
        """
        multipart/alternative gives one text and one HTML part; an inline
        image after it (in multipart/mixed) is in both bodies, not in
        attachments; a PDF is an attachment.
        """
        parsed = breakDown(ALTERNATIVE)
        self.assertEqual([p.type for p in parsed.textBody], ["text/plain", "image/png"])
        self.assertEqual([p.type for p in parsed.htmlBody], ["text/html", "image/png"])
        self.assertEqual([p.type for p in parsed.attachments], ["application/pdf"])
        self.assertEqual(sorted(parsed.parts), ["1", "2", "3", "4"])
        structure = partObject(parsed, "base", parsed.root, ("partId", "type"), True)
        self.assertEqual(structure["type"], "multipart/mixed")
        self.assertEqual(structure["subParts"][0]["subParts"][1], {"partId": "2", "type": "text/html"})
        pdf = partObject(parsed, "base", parsed.parts["4"], ("blobId", "name", "size", "disposition"), False)
        self.assertEqual(pdf["name"], "d.pdf")
        self.assertEqual(pdf["disposition"], "attachment")
        self.assertTrue(pdf["blobId"].startswith("p") and pdf["blobId"].endswith("_4"))

    def test_plainOnly(self):
        """
        A single text/plain message is its own text and HTML body.
        """
        parsed = breakDown(b"Subject: x\n\nbody\n")
        self.assertEqual([p.partId for p in parsed.textBody], ["1"])
        self.assertEqual([p.partId for p in parsed.htmlBody], ["1"])
        self.assertEqual(parsed.attachments, [])
        self.assertEqual(preview(parsed), "body")


class HeaderTests(SynchronousTestCase):
    """
    The header forms of RFC 8621 §4.1.2.
    """

    def test_forms(self):
        """
        asText decodes RFC 2047, asAddresses gives names and addresses,
        asMessageIds, asDate, asURLs, asRaw and :all.
        """
        message = breakDown(ALTERNATIVE).message
        self.assertEqual(headerValue(message, "header:Subject:asText"), "Hello \u2713")
        self.assertEqual(headerValue(message, "header:From:asAddresses"),
                         [{"name": "J\u00fcrgen", "email": "j@example.test"},
                          {"name": None, "email": "b@example.test"}])
        self.assertEqual(headerValue(message, "header:References:asMessageIds"), ["r1@x", "r2@x"])
        self.assertEqual(headerValue(message, "header:Date:asDate"), "2026-12-01T10:00:00+01:00")
        self.assertEqual(headerValue(message, "header:List-Post:asURLs"), ["mailto:list@example.test"])
        self.assertEqual(headerValue(message, "header:message-id"), " <a@b>")
        self.assertEqual(headerValue(message, "header:X-None:asText"), None)
        self.assertEqual(headerValue(message, "header:Subject:asText:all"), ["Hello \u2713"])
        self.assertIsNone(parseHeaderProperty("header:Subject:asNothing"))
        self.assertIsNone(parseHeaderProperty("header::asText"))

    def test_bodyValueTruncation(self):
        """
        maxBodyValueBytes truncates on a character boundary and says so.
        """
        parsed = breakDown(ALTERNATIVE)
        value = bodyValue(parsed.parts["1"], 7)
        self.assertEqual(value, {"value": "plain ", "isEncodingProblem": False, "isTruncated": True})
        self.assertFalse(bodyValue(parsed.parts["1"], 0)["isTruncated"])
