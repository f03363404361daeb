# -*- test-case-name: tests.test_replies -*-
"""
Every SMTP reply QutEmail sends: code, enhanced status code, text.

No other module writes a reply code number.  Enhanced codes follow RFC 3463
and the IANA registry of enhanced status codes; we advertise
ENHANCEDSTATUSCODES (RFC 2034), so every 2xx/4xx/5xx reply but the greeting
and the EHLO/HELO reply carries one.

Our SMTP session sends every reply itself (L{Reply.line}), so none goes
through Twisted's phase-specific exceptions.
"""

import base64
import errno
import re
from typing import Any

import attrs

from qutemail.interfaces import UserDirectoryUnavailable


@attrs.frozen
class Reply:
    """
    One SMTP reply.

    @ivar code: the three-digit reply code (RFC 5321 §4.2).
    @ivar enhanced: the enhanced status code, C{class.subject.detail}.
    @ivar text: human-readable text, ASCII.
    """

    code: int
    enhanced: str
    text: str

    def __attrs_post_init__(self) -> None:
        # RFC 2034 §4: the enhanced code's class matches the reply's first digit
        if self.enhanced and self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"{self.enhanced} does not match reply code {self.code}")

    def withText(self, text: str) -> "Reply":
        """
        @return: the same code and enhanced code with other text.
        """
        return attrs.evolve(self, text=text)

    @property
    def line(self) -> bytes:
        """
        The text after the code: enhanced code then text, as bytes.
        """
        return f"{self.enhanced} {self.text}".encode("ascii", "replace")

    @property
    def isTemporary(self) -> bool:
        """
        C{True} for a 4xx reply.
        """
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


# 2xx
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
QUEUED = Reply(250, "2.0.0", "Message accepted")
RESET = Reply(250, "2.0.0", "Reset state")
NOOP = Reply(250, "2.0.0", "OK")
VRFY_CANNOT = Reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")
BYE = Reply(221, "2.0.0", "Bye")
GO_AHEAD_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
HELP = Reply(214, "2.0.0", "See RFC 5321")

# 4xx: temporary
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
# [qkd] min_pool_keys: the KME's key pool is too low for internal mail.
KEY_POOL_LOW = Reply(452, "4.3.1", "QKD key pool low: internal mail is not accepted now, try again later")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")

RATE_LIMITED = Reply(451, "4.7.0", "Rate limit exceeded, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
TOO_MANY_SESSIONS = Reply(421, "4.7.0", "Too many connections, try again later")
AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed authentications, try again later")

# Outbound delivery and the QKD layer: what a queue entry records when a
# delivery attempt fails for now (RFC 3463 §3.5 network and routing status).
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure, will retry")
NO_ANSWER = Reply(451, "4.4.1", "No answer from any mail exchanger, will retry")
CONNECTION_LOST = Reply(451, "4.4.2", "Connection to the remote server lost, will retry")
# RFC 3463 §3.8 X.7.4 and X.7.5; Postfix uses the same codes.
TLS_NOT_OFFERED = Reply(451, "4.7.4", "Verified TLS required but the remote server does not offer STARTTLS")
TLS_NOT_VERIFIED = Reply(451, "4.7.5", "Verified TLS required but the remote certificate did not verify")
KEY_SOURCE_UNAVAILABLE = Reply(451, "4.3.0", "QKD key source unavailable, will retry")
# Inter-site mail (issue 13): no key to seal for, or to open with, yet.
TRANSIT_SEAL_KEY_UNAVAILABLE = Reply(451, "4.3.0", "QKD transit key unavailable")
TRANSIT_KEY_UNAVAILABLE = Reply(451, "4.3.0", "QKD key for this transit message unavailable, try again later")
# RFC 3463 X.7.0: other security status (the smarthost refused our AUTH)
SMARTHOST_AUTH_REFUSED = Reply(451, "4.7.0", "Smarthost refused authentication")

# 5xx: permanent
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_ARGUMENTS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send HELO or EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
PARAM_NOT_IMPLEMENTED = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized or not implemented")
BAD_BODY_PARAM = Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# RFC 5321 §4.5.3.1.6: text lines are at most 1000 octets with the CRLF
BAD_DATA_LINE = Reply(554, "5.6.0", "Message has a line longer than 1000 octets")
# RFC 5321 §2.3.8: CR and LF only as CRLF; bare ones enable SMTP smuggling
BARE_LINEFEED = Reply(554, "5.6.0", "Bare CR or LF in message data is not allowed")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command unrecognized")
# RFC 5321 §2.3.8: a command ends with CRLF, never a bare LF
BARE_LF_COMMAND = Reply(500, "5.5.2", "Command lines must end with CRLF")
# RFC 2920 §3.1: the client sent more before the reply it must wait for
# (Postfix's smtpd_forbid_unauth_pipelining answers the same)
PIPELINING_VIOLATION = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
# An HTTP request or a TLS handshake on a plain SMTP port
NOT_SMTP = Reply(554, "5.5.0", "Not an SMTP client, goodbye")
SIZE_TOO_BIG_FOR_MAILBOX = Reply(452, "4.2.2", "Mailbox full")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_SYNTAX = Reply(501, "5.5.2", "Cannot decode the authentication response")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address is not owned by the authenticated user")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From header is not an address of the authenticated user")
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Recipient domain does not exist")
# RFC 7505 §4.3: a domain publishing a null MX accepts no mail
NULL_MX = Reply(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
QUEUE_EXPIRED = Reply(554, "5.4.7", "Delivery time expired")
DELETED_BY_ADMIN = Reply(554, "5.3.0", "Message returned by the administrator")
# RFC 7372 §3.2: the sender's SPF policy says this host may not send for it
SPF_FAILED = Reply(550, "5.7.23", "SPF validation failed")
# RFC 7489 §10.3 leaves the reply open; 5.7.1 (delivery not authorized) is
# what receivers use for a DMARC p=reject failure
DMARC_REJECTED = Reply(550, "5.7.1", "Message rejected by the From domain's DMARC policy")
# Inter-site mail (issue 13): a transit message we will not open.
TRANSIT_NOT_A_PEER = Reply(550, "5.7.1", "QKD transit message not from a configured peer site")
TRANSIT_REFUSED = Reply(554, "5.7.1", "QKD transit message refused")
TRANSIT_DAMAGED = Reply(554, "5.6.0", "Malformed QKD transit message")
# MTA-STS (RFC 8461 §5): an enforce policy that lists none of the
# domain's exchangers; RFC 8461 names no code, 4.7.5 is the one for a
# failed TLS requirement, and the mail is retried (the policy may change).
MTA_STS_NO_MATCH = Reply(451, "4.7.5", "MTA-STS policy lists none of the domain's exchangers")
# Content scanning (qutemail.content): rspamd's reject and soft reject
# (its own text replaces these when it gives one), clamd's find, and a
# scanner that gave no answer (our fault: temporary).
SPAM_REJECTED = Reply(550, "5.7.1", "Message rejected as spam")
SPAM_DEFERRED = Reply(451, "4.7.1", "Message deferred by the spam filter, try again later")
MALWARE_FOUND = Reply(554, "5.7.0", "Message refused: malware found")
SCANNER_UNAVAILABLE = Reply(451, "4.3.0", "Content scanner unavailable, try again later")

# Enhanced codes for replies Twisted sends itself, chosen by code (RFC 3463).
DEFAULT_ENHANCED = {
    2: "2.0.0",
    4: "4.0.0",
    5: "5.0.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    550: "5.0.0",
    553: "5.1.3",
    421: "4.3.0",
    451: "4.3.0",
    454: "4.7.0",
}


def authChallenge(challenge: bytes) -> bytes:
    """
    An AUTH continuation line (RFC 4954 §4): 334 and the base64 challenge,
    with no enhanced code.

    @param challenge: the raw challenge.
    @return: the line, CRLF included.
    """
    return b"334 " + base64.b64encode(challenge) + b"\r\n"


def enhancedFor(code: int) -> str:
    """
    The enhanced code to add to a reply that was sent without one.

    @param code: the reply code.
    @return: a code from L{DEFAULT_ENHANCED}, falling back to C{X.0.0}.
    """
    return DEFAULT_ENHANCED.get(code) or DEFAULT_ENHANCED.get(code // 100, f"{code // 100}.0.0")


_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")


def enhancedOf(text: str, codeClass: int) -> str | None:
    """
    The enhanced status code (RFC 2034) at the start of a reply's text, or
    after its code (C{"451 4.3.0 ..."}), when its class is C{codeClass}.

    @return: the code, e.g. C{"4.3.0"}, or C{None}.
    """
    for word in text.split()[:2]:
        match = _ENHANCED.fullmatch(word)
        if match:
            return word if int(match.group(1)) == codeClass else None
    return None


def oneLine(text: str, limit: int = 200) -> str:
    """
    @return: C{text} as one line of printable ASCII for a reply or a log
        (each run of other characters and white space one space), cut to
        C{limit} characters.
    """
    text = " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ReplyError(Exception):
    """
    A failure that carries the SMTP reply the client should get.

    @ivar reply: the L{Reply}.
    """

    def __init__(self, reply: Reply) -> None:
        Exception.__init__(self, str(reply))
        self.reply = reply


def logDeliveryFailure(log: Any, failure: Any, what: str, **fields: Any) -> None:
    """
    Log a failed delivery attempt: one warning line for a known, temporary
    fault (the disk, the delivery process, the user directory), which is
    logged where it happened too; the traceback for anything else.

    @param log: the caller's C{Logger}.
    @param what: the event's format, e.g. C{"delivery of {queueId} to
        {recipient} failed"}.
    @param fields: its fields.
    """
    if failure.check(OSError, UserDirectoryUnavailable):
        log.warn(what + ": {reason}", reason=failure.getErrorMessage(), **fields)
    else:
        log.failure(what, failure, **fields)


def replyFor(failure) -> Reply:
    """
    The reply that describes a failed local delivery.

    @param failure: the L{twisted.python.failure.Failure}.
    @return: a L{Reply}; our own faults are always temporary.
    """
    if failure.check(ReplyError):
        return failure.value.reply
    if failure.check(OSError) and failure.value.errno in (errno.ENOSPC, errno.EDQUOT):
        return STORAGE_FULL
    return LOCAL_ERROR
