# -*- test-case-name: tests.pipeline.test_dsn -*-
"""
Delivery status notifications (RFC 3464): the bounce a sender gets when a
recipient could not be delivered.

The report is C{multipart/report; report-type=delivery-status} (RFC 6522)
with a human-readable part, a C{message/delivery-status} part and the
original message's header as C{text/rfc822-headers}.  It goes to the
envelope sender with the null reverse path, so it can never bounce itself.
"""

import email.utils
import uuid

from qutemail.message import FailedRecipient

# Enough of the original header to identify the message, bounded so a huge
# header cannot make a huge bounce.
MAX_HEADER_BYTES = 64 * 1024


def originalHeader(body: bytes) -> bytes:
    """
    The header section of a message, bounded by L{MAX_HEADER_BYTES}.

    @param body: the start of the message (LF line ends).
    @return: the header lines without the blank line after them.
    """
    head = body[:MAX_HEADER_BYTES]
    if head.startswith(b"\n"):
        return b""
    end = head.find(b"\n\n")
    return head if end < 0 else head[: end + 1]


def buildReport(
    hostname: str,
    sender: str,
    queueId: str,
    arrival: float,
    now: float,
    failed: list[FailedRecipient],
    header: bytes,
    retryUntil: float | None = None,
) -> bytes:
    """
    Build a bounce, or with C{retryUntil} a delay notice (RFC 3464
    C{Action: delayed}, as Postfix's C{delay_warning_time} sends).

    @param hostname: this server (the Reporting-MTA).
    @param sender: the original envelope sender, who gets the report.
    @param queueId: the original message's queue id.
    @param arrival: when the original arrived (POSIX time).
    @param now: the current time.
    @param failed: the recipients that failed.
    @param header: the original header section (see L{originalHeader}).
    @param retryUntil: for a delay notice, when the mail system gives up
        (the message's arrival plus the queue lifetime); C{None} for a
        bounce.
    @return: the report, LF line ends.
    """
    delayed = retryUntil is not None
    boundary = f"{queueId}.{uuid.uuid4().hex}/{hostname}"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: " + ("Delayed Mail (still being retried)" if delayed
                       else "Undelivered Mail Returned to Sender"),
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {hostname}.",
        "",
    ]
    if delayed:
        lines += ["Your message could not be delivered yet to one or more recipients.",
                  f"The mail system will keep trying until {email.utils.formatdate(retryUntil)}.",
                  "You do not need to send it again.", ""]
    else:
        lines += ["Your message could not be delivered to one or more recipients.", ""]
    lines += [f"<{r.address}>: {r.diagnostic}" for r in failed]
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-QutEmail-Queue-ID: {queueId}",
        f"Arrival-Date: {email.utils.formatdate(arrival)}",
    ]
    for r in failed:
        lines += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            "Action: delayed" if delayed else "Action: failed",
            f"Status: {r.status}",
            f"Diagnostic-Code: smtp; {r.diagnostic}",
        ]
        if delayed:
            lines.append(f"Will-Retry-Until: {email.utils.formatdate(retryUntil)}")
    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    text = "\n".join(lines).encode("utf-8") + b"\n"
    return text + header + b"\n--" + boundary.encode("utf-8") + b"--\n"
