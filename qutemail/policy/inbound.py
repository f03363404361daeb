# -*- test-case-name: tests.policy.test_inbound -*-
"""
The checks of mail that arrives from other servers: SPF at MAIL FROM, then
DKIM and DMARC once the whole message is spooled, and the verdicts written
into the message as C{Received-SPF} (RFC 7208 §9.1) and one
C{Authentication-Results} (RFC 8601) header.

What each verdict gets, by default:

  - SPF C{fail}: 550 5.7.23 at MAIL (RFC 7372 §3.2), or only recorded when
    C{[inbound] spf_fail = tag}; C{temperror}: 451 4.4.3, the client tries
    again later.  Every other result is recorded and the mail goes on.
  - DMARC C{fail} where the From domain publishes C{p=reject}: 550 5.7.1
    after DATA, or delivered to the recipients' Junk folder when
    C{[inbound] dmarc_reject = quarantine}; C{p=quarantine}: Junk;
    C{p=none}: recorded only.  When the DMARC policy cannot be read (DNS
    error), or a DKIM check that could have passed hit a DNS error, the
    answer is 451 4.4.3 rather than a guess.  A message whose From field
    names no single domain (several fields or addresses, unclear syntax)
    cannot be evaluated (RFC 7489 §6.6.1) and could hide a p=reject
    domain: it goes to Junk; one without any From field goes to the INBOX.

Mail from our own authenticated users never comes here: it is signed on the
way out instead.  The DNS work runs in worker threads of the runner given to
the checkers, never on the reactor.  What depends on DNS alone is kept on the
reactor thread for as long as the answers hold (whole SPF results, DMARC
policies; see L{qutemail.ttlcache}), so mail from a sender seen a moment ago
is checked without a thread; so is a message without DKIM signatures.  A
message's DMARC lookup runs while its DKIM signatures are verified.
"""

import functools
from typing import Any, Callable

import attrs
from twisted.logger import Logger

from qutemail import replies
from qutemail.policy.authresults import authenticationResults, isSpoofedAuthResults
from qutemail.message import SpooledMessage
from qutemail.policy.dmarc import DMARCResult, fromFieldDomain, fromFields
from qutemail.replies import Reply, ReplyError

# The folder quarantined mail goes to (RFC 6154 \Junk).
JUNK_FOLDER = "Junk"

# How many From field values keep their parsed author domain: parsing one
# with the stdlib's address parser costs more than all the rest of the
# checks of a message whose results are kept, and mail names the same
# authors again and again.
FROM_DOMAINS_KEPT = 4096
# Longer values are parsed each time (a field is at most a few lines).
_FROM_VALUE_KEPT_BYTES = 1024

_log = Logger()


@attrs.frozen
class MessageVerdict:
    """
    What the checks of a whole message concluded.

    @ivar reject: the reply refusing the message, or C{None} to accept it.
    @ivar addedHeaders: the C{Authentication-Results} field, LF line ends.
    @ivar folder: where to deliver it: C{""} (the INBOX) or L{JUNK_FOLDER}.
    """

    reject: Reply | None
    addedHeaders: str = ""
    folder: str = ""


@attrs.define(eq=False)
class InboundChecks:
    """
    SPF, DKIM and DMARC for unauthenticated mail.

    @ivar hostname: our host name: the C{authserv-id} and SPF C{receiver}.
    @ivar spf: an L{qutemail.policy.spf.SPFChecker}.
    @ivar dkim: an L{qutemail.pipeline.dkimverify.DKIMVerifier}.
    @ivar dmarc: an L{qutemail.policy.dmarc.DMARCEvaluator}.
    @ivar spfFail: C{"reject"} or C{"tag"} (C{[inbound] spf_fail}).
    @ivar dmarcReject: C{"reject"} or C{"quarantine"} (C{[inbound]
        dmarc_reject}).
    @ivar metrics: counts each check's results, or C{None}.
    """

    hostname: str
    spf: Any
    dkim: Any
    dmarc: Any
    spfFail: str = "reject"
    dmarcReject: str = "reject"
    metrics: Any = None
    _fromDomains: Callable[[str], str | None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        """
        This checker's memory of From values parsed.
        """
        self._fromDomains = functools.lru_cache(maxsize=FROM_DOMAINS_KEPT)(fromFieldDomain)

    def _fromDomain(self, header: bytes) -> str | None:
        """
        The From domain of a header section, as
        L{qutemail.policy.dmarc.headerFromDomain} finds it, each distinct
        field value parsed once (the L{FROM_DOMAINS_KEPT} last used).
        """
        values = fromFields(header)
        if len(values) != 1:
            return None
        value = values[0]
        if len(value) > _FROM_VALUE_KEPT_BYTES:
            return fromFieldDomain(value)
        return self._fromDomains(value)

    async def checkSender(self, clientIp: str, sender: str, helo: str):
        """
        Check SPF for a transaction's MAIL FROM (or its HELO name for the
        null sender).

        @return: the L{qutemail.policy.spf.SPFResult}.
        @raise ReplyError: with 550 5.7.23 for a C{fail} that is rejected,
            451 4.4.3 for a C{temperror}.
        """
        result = await self.spf.check(clientIp, sender, helo)
        if self.metrics is not None:
            self.metrics.inboundResult("spf", result.result)
        refused = None
        if result.result == "temperror":
            refused = replies.DNS_TEMPFAIL.withText(
                f"Temporary DNS failure checking SPF for {_printable(result.domain)}, try again later")
        elif result.result == "fail" and self.spfFail == "reject":
            detail = f"SPF validation failed for {_printable(result.domain)}: {_printable(result.explanation)}"
            refused = replies.SPF_FAILED.withText(detail[:400])
        if refused is not None:
            # A result that lets the mail go on is logged with the message's
            # other results (checkMessage): one line a message, not two.
            _log.info("SPF {result} for {scope} {domain} from {ip}", result=result.result, scope=result.scope,
                      domain=result.domain, ip=clientIp)
            raise ReplyError(refused)
        return result

    def isForged(self, field: bytes) -> bool:
        """
        Whether an incoming C{Authentication-Results} field claims to be
        ours (RFC 8601 §5): it is then removed.
        """
        return isSpoofedAuthResults(field, self.hostname)

    def traceHeader(self, result: Any, clientIp: str, sender: str, helo: str) -> bytes:
        """
        The C{Received-SPF} field recording an SPF result, LF line ends.
        """
        value = result.receivedSPF(self.hostname, clientIp, sender, helo)
        return f"Received-SPF: {value}\n".encode("utf-8", "replace")

    async def checkMessage(self, spfResult: Any, message: SpooledMessage, header: bytes) -> MessageVerdict:
        """
        Verify a spooled message's DKIM signatures and evaluate DMARC.

        @param spfResult: what L{checkSender} returned.
        @param message: the spooled message.
        @param header: its header section as received (for the From field).
        @return: the L{MessageVerdict}.
        """
        fromDomain = self._fromDomain(header)
        # the DMARC policy's lookup and the DKIM keys' go on at once
        policy = self.dmarc.policyFor(fromDomain) if fromDomain is not None else None
        if message.path is not None:
            verifying = self.dkim.verify(message.path)
        else:
            verifying = self.dkim.verifyBytes(message.inline)
        try:
            dkimResults = await verifying
        finally:
            found = await policy if policy is not None else None
        parts = [spfResult.authResultsPart()] + [r.authResultsPart() for r in dkimResults]
        dmarcResult = None
        folder = ""
        if fromDomain is None:
            # RFC 7489 §6.6.1: no single author domain, nothing to evaluate
            parts.append(DMARCResult.unevaluable("no single From domain").authResultsPart())
            if _hasFromField(header):
                # an unclear or repeated From could hide a p=reject domain
                folder = JUNK_FOLDER
        else:
            spfDomain = spfResult.domain if spfResult.scope == "mailfrom" else ""
            dmarcResult = await self.dmarc.evaluate(
                fromDomain, (spfResult.result, spfDomain),
                tuple((r.result, r.domain) for r in dkimResults if r.domain), found)
            parts.append(dmarcResult.authResultsPart())
        added = authenticationResults(self.hostname, parts, lineEnd=b"\n").decode("utf-8", "replace")
        verdict = self._decide(dmarcResult, dkimResults, added)
        if self.metrics is not None:
            for r in dkimResults or ():
                self.metrics.inboundResult("dkim", r.result)
            self.metrics.inboundResult("dmarc", dmarcResult.result if dmarcResult is not None else "none")
        if folder and verdict.reject is None:
            verdict = attrs.evolve(verdict, folder=folder)
        _log.info("message {queueId} from {peer}: {results}; {action}", queueId=message.queueId,
                  peer=message.envelope.peer, results="; ".join(parts),
                  action=str(verdict.reject) if verdict.reject else (verdict.folder or "INBOX"))
        return verdict

    def _decide(self, dmarcResult: Any, dkimResults: Any, added: str) -> MessageVerdict:
        """
        Turn the DMARC result into a verdict (see the module docstring).
        """
        if dmarcResult is None or dmarcResult.result not in ("fail", "temperror"):
            return MessageVerdict(None, added)
        if dmarcResult.result == "temperror":
            return MessageVerdict(replies.DNS_TEMPFAIL.withText(
                f"Temporary DNS failure checking DMARC for {_printable(dmarcResult.fromDomain)}, try again later"))
        if dmarcResult.policy == "none":
            return MessageVerdict(None, added)
        if any(r.result == "temperror" for r in dkimResults):
            # the failure may only be our DNS trouble: let the sender retry
            return MessageVerdict(replies.DNS_TEMPFAIL.withText(
                "Temporary DNS failure verifying a DKIM signature, try again later"))
        if dmarcResult.policy == "reject" and self.dmarcReject == "reject":
            return MessageVerdict(replies.DMARC_REJECTED.withText(
                f"Message rejected by the DMARC policy of {_printable(dmarcResult.fromDomain)}"))
        return MessageVerdict(None, added, JUNK_FOLDER)


def _hasFromField(header: bytes) -> bool:
    """
    Whether a header section has a C{From} field at all.
    """
    return any(line[:5].lower() == b"from:" or line.split(b":", 1)[0].rstrip().lower() == b"from"
               for line in header.split(b"\n") if b":" in line)


def _printable(text: str) -> str:
    """
    Text from DNS or a client, safe in a one-line SMTP reply: printable
    ASCII only.
    """
    return "".join(c if " " <= c <= "~" else "?" for c in text)
