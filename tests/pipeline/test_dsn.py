"""
Tests for L{qutemail.pipeline.dsn}: RFC 3464 delivery status notifications.
"""

import email

from twisted.trial.unittest import SynchronousTestCase

from qutemail.pipeline.dsn import MAX_HEADER_BYTES, buildReport, originalHeader
from qutemail.message import FailedRecipient

FAILED = [
    FailedRecipient("alice@example.test", "5.1.1", "550 5.1.1 No such user here"),
    FailedRecipient("carol@example.test", "4.2.2", "452 4.2.2 Mailbox full"),
]
HEADER = b"Subject: hello\nFrom: <bob@example.test>\nTo: <alice@example.test>\n"
ORIGINAL = HEADER + b"\nsecret body line\n\nmore body\n"


def parse(report: bytes):
    """
    @return: the report parsed by Python's C{email} package.
    """
    return email.message_from_bytes(report)


class BuildReportTests(SynchronousTestCase):
    """
    L{buildReport} makes a multipart/report a mail reader understands.
    """

    def setUp(self):
        """
        A report about two recipients.
        """
        self.raw = buildReport("mail.example.test", "bob@example.test", "Q123", 0.0, 100.0,
                               FAILED, originalHeader(ORIGINAL))
        self.report = parse(self.raw)

    def test_multipartReport(self):
        """
        The report is multipart/report with report-type delivery-status and
        exactly three parts: text/plain, message/delivery-status and
        text/rfc822-headers, with no parsing defects.
        """
        self.assertEqual(self.report.get_content_type(), "multipart/report")
        self.assertEqual(self.report.get_param("report-type"), "delivery-status")
        parts = self.report.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        self.assertEqual(self.report.defects, [])
        self.assertEqual([p.defects for p in parts], [[], [], []])

    def test_topHeaders(self):
        """
        The report comes from MAILER-DAEMON at our host, goes to the
        original sender, and is marked auto-replied.
        """
        self.assertEqual(self.report["From"], "Mail Delivery System <MAILER-DAEMON@mail.example.test>")
        self.assertEqual(self.report["To"], "<bob@example.test>")
        self.assertEqual(self.report["Auto-Submitted"], "auto-replied")
        self.assertEqual(self.report["Date"], "Thu, 01 Jan 1970 00:01:40 -0000")
        self.assertEqual(self.report["MIME-Version"], "1.0")

    def test_everyRecipientNamed(self):
        """
        The delivery-status part has the per-message fields, then one block
        per failed recipient with its address, C{Action: failed}, status and
        diagnostic.
        """
        blocks = self.report.get_payload()[1].get_payload()
        self.assertEqual([dict(b.items()) for b in blocks], [
            {
                "Reporting-MTA": "dns; mail.example.test",
                "X-QutEmail-Queue-ID": "Q123",
                "Arrival-Date": "Thu, 01 Jan 1970 00:00:00 -0000",
            },
            {
                "Final-Recipient": "rfc822; alice@example.test",
                "Action": "failed",
                "Status": "5.1.1",
                "Diagnostic-Code": "smtp; 550 5.1.1 No such user here",
            },
            {
                "Final-Recipient": "rfc822; carol@example.test",
                "Action": "failed",
                "Status": "4.2.2",
                "Diagnostic-Code": "smtp; 452 4.2.2 Mailbox full",
            },
        ])

    def test_humanReadablePart(self):
        """
        The text part names every failed recipient with its last reply.
        """
        text = self.report.get_payload()[0].get_payload()
        self.assertIn("<alice@example.test>: 550 5.1.1 No such user here\n", text)
        self.assertIn("<carol@example.test>: 452 4.2.2 Mailbox full\n", text)

    def test_originalHeaderOnly(self):
        """
        The third part is exactly the original header, up to the blank line;
        no body text appears anywhere in the report.
        """
        self.assertEqual(self.report.get_payload()[2].get_payload(), HEADER.decode("ascii"))
        self.assertNotIn(b"secret body", self.raw)

    def test_boundariesUnique(self):
        """
        Two reports about the same message have different boundaries and
        Message-IDs.
        """
        other = parse(buildReport("mail.example.test", "bob@example.test", "Q123", 0.0, 100.0,
                                  FAILED, HEADER))
        self.assertNotEqual(other.get_boundary(), self.report.get_boundary())
        self.assertNotEqual(other["Message-ID"], self.report["Message-ID"])


class OriginalHeaderTests(SynchronousTestCase):
    """
    L{originalHeader} cuts a message at the end of its header section.
    """

    def test_stopsAtBlankLine(self):
        """
        The header lines are kept with their line ends, and the blank line
        and body dropped.
        """
        self.assertEqual(originalHeader(ORIGINAL), HEADER)

    def test_noBody(self):
        """
        A message with no blank line is all header.
        """
        self.assertEqual(originalHeader(HEADER), HEADER)

    def test_bounded(self):
        """
        A header section longer than L{MAX_HEADER_BYTES} is cut at that
        length.
        """
        huge = b"X-Long: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\n\nbody\n"
        self.assertEqual(originalHeader(huge), huge[:MAX_HEADER_BYTES])

    def test_emptyHeaderSection(self):
        """
        A message that starts with the blank line has an empty header
        section: none of its body is quoted.
        """
        self.assertEqual(originalHeader(b"\nsecret body\n"), b"")

