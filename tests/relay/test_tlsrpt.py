"""
Tests for L{qutemail.relay.tlsrpt}: sessions tallied by domain and policy,
the RFC 8460 report and the message that carries it, and the daily
reporter on a task.Clock.
"""

import email
import email.policy
import gzip
import json

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.dns import FOUND, NXDOMAIN, DNSAnswer
from qutemail.relay.mtasts import parsePolicy
from qutemail.relay.tlsrpt import (
    HOST_MISMATCH,
    STARTTLS_NOT_SUPPORTED,
    TLSReporter,
    TLSReportLog,
    buildReport,
    parseReportRecord,
    reportMessage,
)
from tests.relay.test_mtasts import POLICY


def openReport(message: bytes) -> tuple[email.message.EmailMessage, dict]:
    """
    @return: a report message, parsed, and its gunzipped JSON.
    """
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    [part] = [p for p in parsed.iter_attachments() if p.get_content_type() == "application/tlsrpt+gzip"]
    return parsed, json.loads(gzip.decompress(part.get_payload(decode=True)))


class Resolver:
    """
    Answers TXT questions from a table.
    """

    def __init__(self, records: dict[str, list[bytes]]) -> None:
        """
        @param records: TXT records by name.
        """
        self.records = records
        self.asked: list[str] = []

    def query(self, name: str, rdtype: str):
        """
        @return: the records, or NXDOMAIN.
        """
        self.asked.append(name)
        if name in self.records:
            return succeed(DNSAnswer(FOUND, tuple(self.records[name])))
        return succeed(DNSAnswer(NXDOMAIN))


class LogAndReportTests(SynchronousTestCase):
    """
    L{TLSReportLog}, L{buildReport}, L{parseReportRecord}, L{reportMessage}.
    """

    def test_report(self) -> None:
        """
        Sessions of a day under an STS policy become one policy entry with
        the counts and the failures by type, host and address.
        """
        clock = Clock()
        clock.advance(1_796_000_000)
        log = TLSReportLog(clock)
        policy = parsePolicy(POLICY, "id1")
        for _ in range(3):
            log.record("Remote.Test", policy, "mx.remote.test", "192.0.2.25", None)
        log.record("remote.test", policy, "mx.remote.test", "192.0.2.25", HOST_MISMATCH)
        log.record("other.test", None, "mx.other.test", "192.0.2.26", STARTTLS_NOT_SUPPORTED)
        clock.advance(86400)
        start, end, domains = log.take()
        self.assertEqual((start, end, sorted(domains)), (1_796_000_000, 1_796_086_400, ["other.test", "remote.test"]))
        report = buildReport("mail.example.test", "mailto:postmaster@example.test", "r1", start, end, "remote.test",
                             domains["remote.test"])
        self.assertEqual(report["date-range"], {"start-datetime": "2026-11-30T00:53:20Z",
                                                "end-datetime": "2026-12-01T00:53:20Z"})
        [entry] = report["policies"]
        self.assertEqual(entry["policy"], {
            "policy-type": "sts", "policy-domain": "remote.test", "mx-host": ["mx.remote.test", "*.backup.remote.test"],
            "policy-string": ["version: STSv1", "mode: enforce", "mx: mx.remote.test", "mx: *.backup.remote.test",
                              "max_age: 86400"]})
        self.assertEqual(entry["summary"], {"total-successful-session-count": 3, "total-failure-session-count": 1})
        self.assertEqual(entry["failure-details"], [{"result-type": "certificate-host-mismatch",
                                                     "receiving-mx-hostname": "mx.remote.test",
                                                     "receiving-ip": "192.0.2.25", "failed-session-count": 1}])
        other = buildReport("m", "c", "r2", start, end, "other.test", domains["other.test"])
        self.assertEqual(other["policies"][0]["policy"]["policy-type"], "no-policy-found")
        self.assertEqual(log.take()[2], {})

    def test_record(self) -> None:
        """
        The C{mailto:} addresses of the one C{v=TLSRPTv1} record.
        """
        self.assertEqual(parseReportRecord([b"v=TLSRPTv1; rua=mailto:a@r.test,https://r.test/x,mailto:b@r.test"]),
                         ["a@r.test", "b@r.test"])
        self.assertEqual(parseReportRecord([b"v=TLSRPTv1; rua=mailto:a@r.test", b"v=TLSRPTv1; rua=mailto:b@r.test"]),
                         [])
        self.assertEqual(parseReportRecord([b"v=spf1 -all"]), [])

    def test_message(self) -> None:
        """
        The report goes gzipped in a C{multipart/report; report-type=tlsrpt}
        message with the headers and file name RFC 8460 §5.3 asks for.
        """
        report = {"report-id": "r1", "policies": []}
        raw = reportMessage(report, "mail.example.test", "postmaster@example.test", ["tlsrpt@remote.test"],
                            "remote.test", 1000.0, 87400.0)
        self.assertNotIn(b"\r\n", raw)
        parsed, opened = openReport(raw)
        self.assertEqual(opened, report)
        self.assertEqual((parsed.get_content_type(), parsed.get_param("report-type")), ("multipart/report", "tlsrpt"))
        self.assertEqual((parsed["TLS-Report-Domain"], parsed["TLS-Report-Submitter"]),
                         ("remote.test", "mail.example.test"))
        self.assertEqual(parsed["Subject"], "Report Domain: remote.test Submitter: mail.example.test Report-ID: <r1>")
        [part] = list(parsed.iter_attachments())
        self.assertEqual(part.get_filename(), "mail.example.test!remote.test!1000!87400.json.gz")


class ReporterTests(SynchronousTestCase):
    """
    L{TLSReporter} on a task.Clock.
    """

    def test_daily(self) -> None:
        """
        A day after the start, each domain that publishes a C{rua} gets its
        report through C{submit}; others get none; the next day starts
        empty.
        """
        clock = Clock()
        log = TLSReportLog(clock)
        resolver = Resolver({"_smtp._tls.remote.test": [b"v=TLSRPTv1; rua=mailto:tlsrpt@remote.test"]})
        submitted = []
        reporter = TLSReporter(log=log, resolver=resolver, clock=clock, submitter="mail.example.test",
                               sender="postmaster@example.test",
                               submit=lambda *args: submitted.append(args) or succeed("Q1"))
        reporter.startService()
        self.addCleanup(reporter.stopService)
        log.record("remote.test", None, "mx.remote.test", "192.0.2.25", None)
        log.record("quiet.test", None, "mx.quiet.test", "192.0.2.26", None)
        clock.advance(86399)
        self.assertEqual(submitted, [])
        clock.advance(1)
        [(sender, recipients, message)] = submitted
        self.assertEqual((sender, recipients), ("postmaster@example.test", ["tlsrpt@remote.test"]))
        _, report = openReport(message)
        self.assertEqual(report["policies"][0]["summary"]["total-successful-session-count"], 1)
        self.assertEqual(report["contact-info"], "mailto:postmaster@example.test")
        self.assertEqual(sorted(resolver.asked), ["_smtp._tls.quiet.test", "_smtp._tls.remote.test"])
        clock.advance(86400)
        self.assertEqual(len(submitted), 1)
