# -*- test-case-name: tests.relay.test_tlsrpt -*-
"""
SMTP TLS reporting (RFC 8460) for outbound mail: the relay notes the TLS
outcome of each session by recipient domain (L{TLSReportLog}); once a day
L{TLSReporter} sends each domain that asks for it (a C{_smtp._tls} TXT
record with a C{mailto:} C{rua}) an aggregate report: JSON (§4), gzipped,
in a C{multipart/report; report-type="tlsrpt"} message (§5.3) that goes
out through the intake like any mail of ours.

The log is kept in memory: a restart starts a new period.
"""

import datetime
import gzip
import json
from collections import Counter
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qutemail.dns import FOUND

DAY_SECONDS = 86400.0
# RFC 8460 §4.3.2 result types this relay can tell apart.
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
HOST_MISMATCH = "certificate-host-mismatch"
VALIDATION_FAILURE = "validation-failure"


@attrs.define
class _PolicyTally:
    """
    The sessions of one domain under one policy.
    """

    policyType: str
    policyString: tuple[str, ...]
    mxHosts: tuple[str, ...]
    successes: int = 0
    failures: Counter = attrs.field(factory=Counter)


def describePolicy(policy: Any) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """
    @param policy: an L{qutemail.relay.mtasts.STSPolicy}, or C{None}.
    @return: the report's C{policy-type}, C{policy-string} (the policy's
        lines) and C{mx-host}.
    """
    if policy is None or policy.mode == "none":
        return "no-policy-found", (), ()
    lines = ("version: STSv1", f"mode: {policy.mode}", *(f"mx: {mx}" for mx in policy.mx),
             f"max_age: {policy.maxAgeSeconds}")
    return "sts", lines, policy.mx


class TLSReportLog:
    """
    The TLS outcome of each outbound session, by recipient domain, since
    the last report.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an C{IReactorTime}.
        """
        self.clock = clock
        self.startedAt = clock.seconds()
        self._domains: dict[str, dict[tuple, _PolicyTally]] = {}

    def record(self, domain: str, policy: Any, host: str, address: str, resultType: str | None) -> None:
        """
        Note one session.

        @param policy: the domain's MTA-STS policy, or C{None}.
        @param host: the exchanger's name.
        @param address: the address connected to.
        @param resultType: C{None} for a session over TLS (verified when
            a policy asked for it), else the RFC 8460 result type.
        """
        kind = describePolicy(policy)
        tally = self._domains.setdefault(domain.lower(), {}).get(kind)
        if tally is None:
            tally = self._domains[domain.lower()][kind] = _PolicyTally(*kind)
        if resultType is None:
            tally.successes += 1
        else:
            tally.failures[(resultType, host, address)] += 1

    def take(self) -> tuple[float, float, dict[str, list[_PolicyTally]]]:
        """
        End the period.

        @return: its start and end times and the tallies by domain; the
            log starts a new period.
        """
        start, end = self.startedAt, self.clock.seconds()
        taken = {domain: list(tallies.values()) for domain, tallies in self._domains.items()}
        self._domains = {}
        self.startedAt = end
        return start, end, taken


def _isoTime(seconds: float) -> str:
    """
    @return: an RFC 3339 date-time in UTC.
    """
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def buildReport(organization: str, contact: str, reportId: str, start: float, end: float, domain: str,
                tallies: list[_PolicyTally]) -> dict:
    """
    The RFC 8460 §4.4 report for one domain.
    """
    policies = []
    for tally in tallies:
        entry: dict[str, Any] = {
            "policy": {"policy-type": tally.policyType, "policy-string": list(tally.policyString),
                       "policy-domain": domain, "mx-host": list(tally.mxHosts)},
            "summary": {"total-successful-session-count": tally.successes,
                        "total-failure-session-count": sum(tally.failures.values())},
        }
        if tally.failures:
            entry["failure-details"] = [
                {"result-type": resultType, "receiving-mx-hostname": host, "receiving-ip": address,
                 "failed-session-count": count}
                for (resultType, host, address), count in sorted(tally.failures.items())]
        policies.append(entry)
    return {"organization-name": organization,
            "date-range": {"start-datetime": _isoTime(start), "end-datetime": _isoTime(end)},
            "contact-info": contact, "report-id": reportId, "policies": policies}


def parseReportRecord(texts: list[bytes]) -> list[str]:
    """
    The C{mailto:} addresses of a domain's C{_smtp._tls} TXT record
    (RFC 8460 §3): exactly one C{v=TLSRPTv1} record.

    @return: the addresses (C{https:} ones are not used here), or none.
    """
    records = [t.decode("ascii", "replace") for t in texts if t.startswith(b"v=TLSRPTv1")]
    if len(records) != 1:
        return []
    fields = dict(part.strip().partition("=")[::2] for part in records[0].split(";") if part.strip())
    addresses = []
    for uri in fields.get("rua", "").split(","):
        uri = uri.strip()
        if uri.lower().startswith("mailto:") and "@" in uri:
            addresses.append(uri[7:].split("?")[0])
    return addresses


def reportMessage(report: dict, submitter: str, sender: str, recipients: list[str], domain: str,
                  start: float, end: float) -> bytes:
    """
    The RFC 8460 §5.3 message carrying one report, LF line ends.
    """
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>"
    message["Date"] = formatdate(end, usegmt=True)
    message["Message-ID"] = make_msgid(domain=submitter)
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = submitter
    message.set_content(f"This is an aggregate TLS report from {submitter} for {domain}.\n")
    name = f"{submitter}!{domain}!{int(start)}!{int(end)}.json.gz"
    message.add_attachment(gzip.compress(json.dumps(report, indent=1).encode("utf-8"), mtime=int(end)),
                           maintype="application", subtype="tlsrpt+gzip", filename=name)
    message.set_type("multipart/report")
    message.set_param("report-type", "tlsrpt")
    # Unfolded up to RFC 5322's 998, so the subject stays one line.
    return message.as_bytes(policy=SMTP_POLICY.clone(linesep="\n", max_line_length=998))


class TLSReporter(Service):
    """
    Sends the day's reports, once a day.
    """

    _log = Logger()
    name = "tls-reports"

    def __init__(self, *, log: TLSReportLog, resolver: Any, clock: Any, submitter: str, sender: str,
                 submit: Callable[[str, list[str], bytes], Any], intervalSeconds: float = DAY_SECONDS) -> None:
        """
        @param log: the L{TLSReportLog} the relay writes.
        @param resolver: asks DNS (L{qutemail.relay.mx.MXResolver.query}).
        @param clock: an C{IReactorTime}.
        @param submitter: our host name (C{organization-name}, the
            submitter in the subject and file name).
        @param sender: the reports' From and envelope sender.
        @param submit: C{submit(sender, recipients, message)} makes a
            message of ours durable and routes it (the intake's).
        @param intervalSeconds: the period of a report.
        """
        self.log = log
        self.resolver = resolver
        self.clock = clock
        self.submitter = submitter
        self.sender = sender
        self.submit = submit
        self.intervalSeconds = intervalSeconds
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """
        Report at the end of each period.
        """
        Service.startService(self)
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.sendReports()))
        self._loop.clock = self.clock
        self._loop.start(self.intervalSeconds, now=False).addErrback(
            lambda failure: self._log.failure("TLS reporting stopped", failure))

    def stopService(self) -> None:
        """
        Stop reporting.
        """
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    async def sendReports(self) -> int:
        """
        End the period and send each domain that asks for it its report.

        @return: how many reports were handed to the intake.
        """
        start, end, domains = self.log.take()
        sent = 0
        for domain, tallies in sorted(domains.items()):
            try:
                answer = await self.resolver.query(f"_smtp._tls.{domain}", "TXT")
                recipients = parseReportRecord(list(answer.records)) if answer.status == FOUND else []
                if not recipients:
                    continue
                reportId = f"{_isoTime(start)}_{domain}@{self.submitter}"
                report = buildReport(self.submitter, f"mailto:{self.sender}", reportId, start, end, domain, tallies)
                await self.submit(self.sender, recipients, reportMessage(report, self.submitter, self.sender,
                                                                         recipients, domain, start, end))
            except Exception:
                self._log.failure("TLS report for {domain} not sent", domain=domain)
                continue
            sent += 1
            self._log.info("TLS report for {domain} sent to {recipients}", domain=domain,
                           recipients=", ".join(recipients))
        return sent
