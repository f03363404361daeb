# -*- test-case-name: tests.policy.test_dmarc,tests.policy.test_checkcaches -*-
"""
DMARC (RFC 7489): whether a message's RFC5322.From domain stands behind
it, and what that domain asks receivers to do when it does not.

Evaluation (L{evaluateBlocking}):

  1. Policy discovery (§6.6.3): the TXT records of C{_dmarc.<From
     domain>}; records not starting with C{v=DMARC1} are ignored.  None
     there: the same at the Organizational Domain, whose C{sp=} then
     applies.  More than one record: no DMARC (C{none}), as §6.6.3 says.
     A record starting with C{v=DMARC1} that cannot be used (no valid
     C{p=} and no valid C{rua=} to fall back on) is a C{permerror}
     (RFC 7489 §11.2: "syntactically incorrect DMARC record").  DNS
     trouble (timeout, SERVFAIL) is a C{temperror}.
  2. Identifier alignment (§3.1): an SPF C{pass} whose domain (the
     RFC5321.MailFrom domain) aligns with the From domain, or a DKIM
     C{pass} whose C{d=} aligns, gives C{pass}; anything else C{fail}.
     Relaxed alignment (C{r}, the default) compares Organizational
     Domains, strict (C{s}) the names themselves.
  3. Policy: C{p=} (or C{sp=} for a record found at the Organizational
     Domain), degraded one step (reject to quarantine, quarantine to none)
     for a failing message left out of the C{pct=} sample (§6.6.4).

C{pct}: L{evaluateBlocking} takes the sample as an argument, a number in
[0, 100); without one the policy applies in full, as if C{pct=100}.
L{DMARCEvaluator} draws it from an injectable source of random numbers,
so the sampling §6.6.4 asks for happens in the server and is
deterministic in tests.

The public suffix list (§3.2): no copy of it is installed and none is
fetched, so L{PUBLIC_SUFFIXES} is a built-in, curated list: every
single-label name (any TLD) is a public suffix, and so are the
multi-label suffixes listed there (C{co.uk}, C{com.au}, ... and a few
common hosting suffixes).  A domain under a public suffix missing from
the list gets too short an Organizational Domain, which makes relaxed
alignment more lenient than it should be between unrelated registrants of
that suffix, never stricter; extend the list when that matters.  Wildcard
and exception rules of the real list are not supported.

Authors (§6.6.1): L{headerFromDomain} finds the one From domain, or
C{None} when the message has no From field, several of them, or several
addresses in it.  Such a message cannot be evaluated: the caller records
C{dmarc=permerror} (and applies no policy), see L{DMARCResult.unevaluable}.

DNS lookups block: L{evaluateBlocking} runs in a worker thread, through
the runner of L{DMARCEvaluator}; at most two queries, each limited to
C{timeoutSeconds}.
"""

import email.errors
import email.policy
import random
import re
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, succeed

from qutemail.policy.authresults import comment, quotedValue
from qutemail.dns import FAILED, FOUND, queryBlocking

PASS = "pass"
FAIL = "fail"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"

POLICIES = ("none", "quarantine", "reject")
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}

# Multi-label public suffixes (RFC 7489 §3.2), from the ICANN section of
# the public suffix list, plus a few common private (hosting) ones; every
# single label is a public suffix too.  See the module docstring.
PUBLIC_SUFFIXES = frozenset("""
    ac.uk co.uk gov.uk ltd.uk me.uk net.uk nhs.uk org.uk plc.uk police.uk sch.uk
    ac.jp ad.jp co.jp ed.jp go.jp gr.jp lg.jp ne.jp or.jp
    asn.au com.au edu.au gov.au id.au net.au org.au
    ac.nz co.nz geek.nz gen.nz govt.nz kiwi.nz maori.nz net.nz org.nz school.nz
    com.br edu.br gov.br net.br org.br
    ac.in co.in edu.in firm.in gen.in gov.in ind.in net.in org.in res.in
    ac.za co.za edu.za gov.za net.za org.za web.za
    ac.cn com.cn edu.cn gov.cn net.cn org.cn
    com.hk edu.hk gov.hk idv.hk net.hk org.hk
    com.tw edu.tw gov.tw idv.tw net.tw org.tw
    ac.kr co.kr go.kr ne.kr or.kr re.kr
    com.sg edu.sg gov.sg net.sg org.sg
    com.my edu.my gov.my net.my org.my
    ac.il co.il gov.il net.il org.il
    ac.th co.th go.th in.th or.th
    ac.id co.id go.id or.id web.id
    com.mx edu.mx gob.mx net.mx org.mx
    com.ar edu.ar gob.ar net.ar org.ar
    com.co edu.co gov.co net.co org.co
    com.pe edu.pe gob.pe net.pe org.pe
    com.tr edu.tr gov.tr net.tr org.tr
    com.ua edu.ua gov.ua net.ua org.ua
    com.pl net.pl org.pl
    ac.at co.at gv.at or.at
    com.ph com.pk com.vn com.sa com.eg com.ng co.ke
    github.io gitlab.io herokuapp.com appspot.com blogspot.com netlify.app
    pages.dev workers.dev vercel.app web.app firebaseapp.com azurewebsites.net
""".split())

# Parse defects that make a From field ambiguous: the parser's guess at
# C{a@x.test <b@y.test>} need not be what a mail reader shows.  Obsolete
# syntax (RFC 5322 §4.4) is fine.
_AMBIGUOUS = (email.errors.InvalidHeaderDefect, email.errors.HeaderMissingRequiredValue)

# RFC 7489 §6.4: the record starts with the version tag, exactly DMARC1
_VERSION = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")


def _normalise(domain: str) -> str:
    """
    @return: a domain in lower case without the final dot, as an A-label
        when it is an internationalised name that converts.
    """
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def organisationalDomain(domain: str, suffixes: frozenset[str] = PUBLIC_SUFFIXES) -> str:
    """
    The Organizational Domain of a name (RFC 7489 §3.2): its public suffix
    plus one label.

    @param domain: a domain name, in any case, with or without the final
        dot.
    @param suffixes: the multi-label public suffixes (every single label
        is one anyway).
    @return: the Organizational Domain, normalised (lower case, A-labels);
        the name itself when it is a public suffix or a single label.
    """
    domain = _normalise(domain)
    labels = domain.split(".")
    # the longest public suffix that matches (a single label always does)
    suffixLength = 1
    for length in range(len(labels), 1, -1):
        if ".".join(labels[-length:]) in suffixes:
            suffixLength = length
            break
    if suffixLength >= len(labels):
        return domain
    return ".".join(labels[-(suffixLength + 1):])


@attrs.frozen
class DMARCRecord:
    """
    A parsed DMARC policy record (RFC 7489 §6.3).

    @ivar policy: C{p=}: C{"none"}, C{"quarantine"} or C{"reject"}.
    @ivar subdomainPolicy: C{sp=}, or C{p=} when absent.
    @ivar adkim: DKIM alignment, C{"r"} (relaxed) or C{"s"} (strict).
    @ivar aspf: SPF alignment, C{"r"} or C{"s"}.
    @ivar percent: C{pct=}, 0 to 100.
    """

    policy: str
    subdomainPolicy: str
    adkim: str = "r"
    aspf: str = "r"
    percent: int = 100


def isDMARCRecord(text: str) -> bool:
    """
    @return: whether a TXT record is meant as a DMARC record: it starts
        with C{v=DMARC1} (RFC 7489 §6.6.3 discards the others).
    """
    return _VERSION.match(text) is not None


def _hasValidURI(value: str) -> bool:
    """
    Whether a C{rua=} value holds a syntactically valid reporting URI
    (RFC 7489 §6.4: C{mailto:} addresses with an optional size limit).
    """
    for uri in value.split(","):
        uri = uri.strip()
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.\-]*):([^!\s]+)(![0-9]+[kmgtKMGT]?)?", uri)
        if match and (match.group(1).lower() != "mailto" or "@" in match.group(2)):
            return True
    return False


def parseRecord(text: str) -> DMARCRecord | None:
    """
    Parse a DMARC record (RFC 7489 §6.3, §6.4).

    Tag names and the keyword values are case-insensitive; unknown tags
    are ignored, and so are pieces that are no tag and repeats of a tag
    (the first counts); a bad C{adkim=}, C{aspf=} or C{pct=} is replaced
    by its default (§6.3: syntax errors in the rest of the record are
    discarded).
    A record without a valid C{p=} (or with a bad C{sp=}) that has a valid
    C{rua=} counts as C{p=none} (§6.6.3).

    @param text: the TXT record, its strings joined.
    @return: the record, or C{None} when it is not a usable DMARC record:
        no leading C{v=DMARC1}, or no valid C{p=} and no valid C{rua=} to
        fall back on.
    """
    if not isDMARCRecord(text):
        return None
    tags: dict[str, str] = {}
    for piece in text.split(";"):
        name, equals, value = piece.partition("=")
        name = name.strip().lower()
        if equals and name and name not in tags:
            # a piece that is no tag, or a repeated tag, is a syntax error
            # in the remainder: discarded (the first of a tag counts)
            tags[name] = value.strip()
    policy = tags.get("p", "").lower()
    subdomainPolicy = tags.get("sp", policy).lower()
    if policy not in POLICIES or subdomainPolicy not in POLICIES:
        if not _hasValidURI(tags.get("rua", "")):
            return None
        policy = subdomainPolicy = "none"
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    percentText = tags.get("pct", "100")
    percent = int(percentText) if percentText.isascii() and percentText.isdigit() else 100
    return DMARCRecord(policy, subdomainPolicy, adkim if adkim in ("r", "s") else "r",
                       aspf if aspf in ("r", "s") else "r", percent if 0 <= percent <= 100 else 100)


@attrs.frozen
class DMARCResult:
    """
    The DMARC verdict on one message.

    @ivar result: C{"pass"}, C{"fail"}, C{"none"} (no record),
        C{"temperror"} or C{"permerror"} (RFC 8601 §2.7.2, RFC 7489 §11.2).
    @ivar policy: what the domain asks for this message: C{"none"},
        C{"quarantine"} or C{"reject"} (after C{sp=} and C{pct=}); always
        C{"none"} without a usable record.  It matters only for C{fail}.
    @ivar fromDomain: the RFC5322.From domain evaluated (C{""}: none).
    @ivar reason: a short text saying why, C{""} for a plain pass.
    """

    result: str
    policy: str
    fromDomain: str
    reason: str = ""

    @classmethod
    def unevaluable(cls, reason: str) -> "DMARCResult":
        """
        The verdict on a message with no single From domain (RFC 7489
        §6.6.1): C{permerror}, with no policy applied.

        @param reason: why, e.g. C{"no single From domain"}.
        """
        return cls(PERMERROR, "none", "", reason)

    def authResultsPart(self) -> str:
        """
        This result as a C{resinfo} of C{Authentication-Results} (RFC 7489
        §11.2).

        @return: e.g. C{'dmarc=fail (p=reject) header.from=a.test'}; a
            result without a record carries its reason instead:
            C{'dmarc=temperror reason="DNS timeout" header.from=a.test'}.
        """
        words = [f"dmarc={self.result}"]
        if self.result in (PASS, FAIL):
            words.append(comment(f"p={self.policy}"))
        elif self.reason:
            words.append(f"reason={quotedValue(self.reason)}")
        if self.fromDomain:
            words.append(f"header.from={quotedValue(self.fromDomain)}")
        return " ".join(words)


def headerFromDomain(headerBytes: bytes) -> str | None:
    """
    The RFC5322.From domain of a message (RFC 7489 §3.1, §6.6.1).

    @param headerBytes: the message's header section (LF or CRLF; what
        follows an empty line is ignored, so the whole message may be
        given).
    @return: the domain, normalised (lower case, A-labels); C{None} when
        there is no From field, more than one, a field with no address or
        several, a field that does not parse cleanly (so that which
        address a mail reader shows is unclear, e.g. C{a@x.test
        <b@y.test>}), or an address without a usable domain (an address
        literal).  The caller then treats the message as unevaluable:
        C{dmarc=permerror}, see L{DMARCResult.unevaluable}.
    """
    values = fromFields(headerBytes)
    if len(values) != 1:
        return None
    return fromFieldDomain(values[0])


def fromFields(headerBytes: bytes) -> list[bytes]:
    """
    @return: the value of every From field of a header section (see
        L{headerFromDomain}), continuation lines joined, line ends kept.
    """
    values = []
    current: list[bytes] | None = None
    for line in re.split(rb"(?<=\n)", headerBytes):
        if line in (b"\n", b"\r\n", b""):
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(b":")
        current = None
        if colon and name.rstrip(b" \t").lower() == b"from":
            current = [value]
            values.append(current)
    return [b"".join(value) for value in values]


def fromFieldDomain(value: bytes) -> str | None:
    """
    The author domain of one From field's value (see L{headerFromDomain}).
    It depends on the value alone, so callers may keep it.

    @return: the domain, normalised, or C{None}.
    """
    text = value.decode("utf-8", "replace")
    text = text.replace("\r", "").replace("\n", "")
    try:
        field = email.policy.default.header_factory("From", text)
        addresses, defects = field.addresses, field.defects
    except Exception:
        # the stdlib parser fails on some hostile input (AttributeError,
        # IndexError ...): such a field has no author domain we can trust
        return None
    if len(addresses) != 1 or any(isinstance(d, _AMBIGUOUS) for d in defects):
        return None
    domain = addresses[0].domain or ""
    if not domain or domain.startswith("[") or not re.fullmatch(r"[^\s@()<>,;:\\\"\[\]]+", domain):
        return None
    return _normalise(domain)


def _aligned(identifier: str, fromDomain: str, mode: str) -> bool:
    """
    Identifier alignment (RFC 7489 §3.1): strict wants the same name,
    relaxed the same Organizational Domain.
    """
    identifier = _normalise(identifier)
    if not identifier:
        return False
    if mode == "s":
        return identifier == fromDomain
    return organisationalDomain(identifier) == organisationalDomain(fromDomain)


def _discover(name: str, nameservers: tuple[tuple[str, int], ...],
              timeoutSeconds: float, cache: Any = None) -> tuple[str, list[str], float]:
    """
    Fetch the DMARC records published at one name.

    @return: C{(status, records, holdsSeconds)}: C{"found"} with the
        records starting with C{v=DMARC1} (possibly none), or C{"failed"}
        with C{[detail]}; and how much longer the answer holds (0 for a
        failure).
    """
    answer = queryBlocking(nameservers, timeoutSeconds, f"_dmarc.{name}", "TXT", cache)
    holds = answer.ttlSeconds if answer.ttlSeconds is not None else 0.0
    if answer.status == FAILED:
        return FAILED, [answer.detail or "DNS failure"], 0.0
    if answer.status != FOUND:
        return FOUND, [], holds
    texts = [record.decode("utf-8", "replace") for record in answer.records]
    return FOUND, [text for text in texts if isDMARCRecord(text)], holds


@attrs.frozen
class DMARCPolicy:
    """
    What policy discovery (RFC 7489 §6.6.3) found for a From domain: the
    part of an evaluation that depends on DNS only, and so may be kept for
    as long as the answers hold.

    @ivar fromDomain: the From domain, normalised.
    @ivar foundAt: where the record was looked for last (the From domain
        or its Organizational Domain).
    @ivar record: the usable record, or C{None}.
    @ivar outcome: without a usable record, the result every message from
        the domain gets (C{none}, C{permerror} or C{temperror}); else
        C{None}.
    """

    fromDomain: str
    foundAt: str
    record: DMARCRecord | None
    outcome: DMARCResult | None


def discoverPolicyBlocking(fromDomain: str, nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float,
                           cache: Any = None) -> tuple[DMARCPolicy, float]:
    """
    Find a From domain's DMARC policy (RFC 7489 §6.6.3).  Blocking: call
    it in a worker thread.

    @param fromDomain: the RFC5322.From domain (L{headerFromDomain}).
    @param nameservers: see L{evaluateBlocking}, as are the others.
    @return: the L{DMARCPolicy}, and how much longer it holds: what is
        left of the TTLs of the answers it was made from; 0 after a DNS
        failure (a C{temperror} is never kept).
    """
    fromDomain = _normalise(fromDomain)
    status, records, holds = _discover(fromDomain, nameservers, timeoutSeconds, cache)
    foundAt = fromDomain
    orgDomain = organisationalDomain(fromDomain)
    if status == FOUND and not records and orgDomain != fromDomain:
        status, records, orgHolds = _discover(orgDomain, nameservers, timeoutSeconds, cache)
        foundAt, holds = orgDomain, min(holds, orgHolds)

    def fixed(result: str, reason: str) -> DMARCPolicy:
        """
        @return: a policy without a usable record.
        """
        return DMARCPolicy(fromDomain, foundAt, None, DMARCResult(result, "none", fromDomain, reason))

    if status == FAILED:
        return fixed(TEMPERROR, f"DNS lookup of _dmarc.{foundAt} failed: {records[0]}"), 0.0
    if not records:
        return fixed(NONE, "no DMARC record"), holds
    if len(records) > 1:
        return fixed(NONE, f"several DMARC records at _dmarc.{foundAt}"), holds
    record = parseRecord(records[0])
    if record is None:
        return fixed(PERMERROR, f"invalid DMARC record at _dmarc.{foundAt}"), holds
    return DMARCPolicy(fromDomain, foundAt, record, None), holds


def applyPolicy(found: DMARCPolicy, spf: tuple[str, str], dkim: tuple[tuple[str, str], ...],
                sample: float | None = None) -> DMARCResult:
    """
    Evaluate DMARC for one message from a discovered policy: identifier
    alignment, then the policy (see the module docstring).  It does no
    I/O.

    @param found: what L{discoverPolicyBlocking} found.
    @param spf: see L{evaluateBlocking}, as are C{dkim} and C{sample}.
    @return: the L{DMARCResult}.
    """
    if found.outcome is not None:
        return found.outcome
    record, fromDomain = found.record, found.fromDomain
    policy = record.policy if found.foundAt == fromDomain else record.subdomainPolicy
    spfResult, spfDomain = spf
    if spfResult == PASS and _aligned(spfDomain, fromDomain, record.aspf):
        return DMARCResult(PASS, policy, fromDomain, "")
    for dkimResult, dkimDomain in dkim:
        if dkimResult == PASS and _aligned(dkimDomain, fromDomain, record.adkim):
            return DMARCResult(PASS, policy, fromDomain, "")
    reason = "no aligned SPF or DKIM pass"
    if sample is not None and record.percent < 100 and sample >= record.percent:
        weaker = _WEAKER[policy]
        reason += f"; outside pct={record.percent}: {weaker} instead of {policy}"
        policy = weaker
    return DMARCResult(FAIL, policy, fromDomain, reason)


def evaluateBlocking(fromDomain: str, spf: tuple[str, str], dkim: tuple[tuple[str, str], ...],
                     nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float,
                     sample: float | None = None, cache: Any = None) -> DMARCResult:
    """
    Evaluate DMARC for one message (see the module docstring).  Blocking:
    call it in a worker thread.

    @param fromDomain: the RFC5322.From domain (L{headerFromDomain}).
    @param spf: C{(result, domain)}: the SPF result for the
        RFC5321.MailFrom identity and its domain (C{""} when SPF checked
        only the HELO name, which DMARC does not use).
    @param dkim: C{((result, domain), ...)}: each DKIM signature's result
        and C{d=}.
    @param nameservers: C{(ip, port)} pairs; none for the system's
        resolvers.
    @param timeoutSeconds: each DNS query's lifetime.
    @param cache: a shared DNS cache (L{qutemail.dns.makeResolver}).
    @param sample: a number in [0, 100) drawn for this message: a failing
        message with C{sample >= pct} gets the next weaker policy (RFC 7489
        §6.6.4); C{None} applies the policy in full.
    @return: the L{DMARCResult}.  Never raises for DNS or record trouble.
    """
    found, _ = discoverPolicyBlocking(fromDomain, nameservers, timeoutSeconds, cache)
    return applyPolicy(found, spf, dkim, sample)


def _randomFactory() -> Callable[[], float]:
    """
    @return: the C{random} of a fresh, privately seeded generator.
    """
    return random.Random().random


@attrs.define(eq=False)
class DMARCEvaluator:
    """
    Evaluates DMARC in worker threads.

    @ivar nameservers: C{(ip, port)} pairs (C{[relay] nameservers}); none
        for the system's resolvers.
    @ivar timeoutSeconds: each DNS query's lifetime.
    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    @ivar random: returns a number in [0, 1) for the C{pct=} sample;
        tests pass their own.
    @ivar cache: a DNS cache shared by the evaluations, or C{None} (see
        L{qutemail.dns.makeResolver}).
    @ivar policies: an L{qutemail.ttlcache.ExpiringCache} of discovered
        policies (L{DMARCPolicy}) by From domain, each kept for as long as
        the answers it was made from hold (a C{temperror} never), or
        C{None} for none.  A kept policy is applied at once, without a
        worker thread, and lookups of one domain under way at the same
        time are shared.
    """

    nameservers: tuple[tuple[str, int], ...]
    timeoutSeconds: float
    runner: Any
    random: Callable[[], float] = attrs.field(factory=_randomFactory)
    cache: Any = None
    policies: Any = None

    def policyFor(self, fromDomain: str) -> Deferred:
        """
        Discover a From domain's policy (L{discoverPolicyBlocking}), or
        take the one kept.  Start it early to overlap it with other work.

        @return: a Deferred firing with the L{DMARCPolicy}; it fails only
            when the runner does (not running).
        """
        fromDomain = _normalise(fromDomain)

        def discover() -> Deferred:
            """
            Ask DNS in a worker thread.
            """
            return self.runner.run(discoverPolicyBlocking, fromDomain, tuple(self.nameservers),
                                   self.timeoutSeconds, self.cache)

        if self.policies is None:
            return discover().addCallback(lambda outcome: outcome[0])
        return self.policies.fetch(fromDomain, discover)

    def evaluate(self, fromDomain: str, spf: tuple[str, str], dkim: tuple[tuple[str, str], ...],
                 found: Any = None) -> Deferred:
        """
        Evaluate DMARC for one message; see L{evaluateBlocking}.

        @param found: the L{DMARCPolicy} of L{policyFor} for C{fromDomain},
            or C{None} to discover it now.
        @return: a Deferred firing with the L{DMARCResult}.
        """
        sample = self.random() * 100.0
        spf, dkim = tuple(spf), tuple(tuple(d) for d in dkim)
        if found is not None:
            return succeed(applyPolicy(found, spf, dkim, sample))
        return self.policyFor(fromDomain).addCallback(applyPolicy, spf, dkim, sample)
