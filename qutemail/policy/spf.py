# -*- test-case-name: tests.policy.test_spf,tests.policy.test_checkcaches -*-
"""
SPF (RFC 7208): is the connecting client allowed to send mail for the
MAIL FROM domain, or for the HELO name when the sender is null?

The evaluation is pyspf's (C{spf.query}), in its RFC 7208 mode: the
C{query.check} method, whose results carry RFC 7208's names, with
C{strict=True} (RFC 7208's processing limits, no "harsh" record-checker
warnings).  Its DNS goes through L{_Query.dns}, our override, which asks
dnspython and only the nameservers the check was given, each check with a
resolver of its own and one deadline for all its lookups.  Nothing in
pyspf's module is changed, so checks in several threads never share
state.

L{checkBlocking} blocks on DNS: L{SPFChecker.check} runs it through the
L{qutemail.blocking.BlockingRunner}.  It never raises: pyspf's errors, and
any surprise, become C{permerror} or C{temperror}.

Where pyspf departs from RFC 7208, L{_Query} follows the RFC:

  - §4.3: a domain that is malformed, not multi-label, or a domain literal
    gives C{none} at once, without DNS.
  - §5.5: a DNS error while looking up the PTR records means the C{ptr}
    mechanism (and the C{%{p}} macro, §7.3) finds no name; a DNS error
    while validating one of the names skips that name.  pyspf turned both
    into C{temperror}.
  - §4.1: the domain of a sender is what follows its I{last} C{@} (a
    quoted local part may hold an C{@}); pyspf split at the first.
"""

import ipaddress
import re
import time
from typing import Any

import attrs
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import spf
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from qutemail.dns import NEGATIVE_FALLBACK_SECONDS, answerSeconds, makeResolver, nxdomainSeconds

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

MAILFROM = "mailfrom"
HELO = "helo"

# pyspf's names from before RFC 7208 (its C{spf.check} still uses them).
_OLD_NAMES = {"unknown": "permerror", "error": "temperror"}

# Macros (RFC 7208 §7.3) whose expansion depends on the sender's local
# part (C{%{l}}, C{%{s}}) or the time (C{%{t}}, in explanations), matched
# in lower case (upper case only adds URL escaping).
_LOCAL_PART_MACROS = (b"%{l", b"%{s")
_TIME_MACRO = b"%{t"

# Attacker-controlled text in a header is cut to this many characters, so
# the field stays well under RFC 5322's 998-character line limit.
_MAX_VALUE_CHARS = 256

_log = Logger()


def _clean(text: str, limit: int = _MAX_VALUE_CHARS) -> str:
    """
    Make text safe inside a header field: drop every character that is
    not printable (CR, LF, NUL, other controls, format characters, line
    separators) and cut it to C{limit} characters.
    """
    return "".join(c for c in str(text) if c.isprintable())[:limit]


# RFC 5322 §3.2.3: atext and dot-atom-text (ASCII only).
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
# RFC 2045 §5.1: token, as RFC 8601 §2.2 uses it for property values.
_TOKEN = re.compile(r"[!#$%&'*+.0-9A-Z^_`a-z{|}~-]+\Z")


def _quoted(text: str) -> str:
    """
    @return: C{text} as an RFC 5322 quoted-string.
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _kvValue(text: str) -> str:
    """
    A key-value-pair value of Received-SPF (RFC 7208 §9.1): a dot-atom as
    it is, anything else as a quoted-string.
    """
    text = _clean(text)
    return text if _DOT_ATOM.match(text) else _quoted(text)


def _pValue(text: str) -> str:
    """
    A property value of Authentication-Results (RFC 8601 §2.2): a token as
    it is, anything else as a quoted-string.
    """
    text = _clean(text)
    return text if _TOKEN.match(text) else _quoted(text)


def _commentText(text: str) -> str:
    """
    Text for inside an RFC 5322 comment: C{(}, C{)} and C{\\} escaped as
    quoted-pairs.
    """
    return re.sub(r"([()\\])", r"\\\1", _clean(text))


@attrs.frozen
class SPFResult:
    """
    The outcome of one SPF check.

    @ivar result: one of L{RESULTS}.
    @ivar explanation: pyspf's explanation (for C{fail}, the domain's
        C{exp=} text when it has one) or the reason for an error; C{""} if
        none.
    @ivar domain: the domain whose policy was checked: the MAIL FROM
        domain, or the HELO name for a null sender; lower case.
    @ivar scope: C{"mailfrom"} or C{"helo"}: which identity was checked.
    """

    result: str = attrs.field(validator=attrs.validators.in_(RESULTS))
    explanation: str
    domain: str
    scope: str = attrs.field(validator=attrs.validators.in_((MAILFROM, HELO)))

    def receivedSPF(self, receiver: str, clientIp: str, sender: str, helo: str) -> str:
        """
        The value of a Received-SPF header field (RFC 7208 §9.1), on one
        line: no CR or LF, whatever the client sent; every value is
        stripped of control characters, cut to a bounded length, and quoted
        where it is not a dot-atom.  Spaces separate the parts, so the
        caller may fold there.

        @param receiver: our host name.
        @param clientIp: the client's IP address.
        @param sender: the MAIL FROM address (C{""} for a null sender).
        @param helo: the HELO/EHLO name.
        @return: e.g. C{'pass (mx.example.test: domain of bob@a.test
            designates 192.0.2.1 as permitted sender) client-ip=192.0.2.1;
            envelope-from="bob@a.test"; helo=mail.a.test;
            receiver=mx.example.test; identity=mailfrom;'}.
        """
        identity = sender if self.scope == MAILFROM else helo
        comment = f"{receiver}: {self._comment(identity, clientIp)}"
        pairs = [("client-ip", clientIp)]
        if sender:
            pairs.append(("envelope-from", sender))
        pairs.append(("helo", helo))
        if self.result in ("permerror", "temperror") and self.explanation:
            pairs.append(("problem", self.explanation))
        pairs.append(("receiver", receiver))
        fields = " ".join(f"{key}={_kvValue(value)};" for key, value in pairs)
        return f"{self.result} ({_commentText(comment)}) {fields} identity={self.scope};"

    def _comment(self, identity: str, clientIp: str) -> str:
        """
        The human-readable comment, worded as in RFC 7208 §9.1's examples.
        """
        who = f"domain of {identity}"
        return {
            "pass": f"{who} designates {clientIp} as permitted sender",
            "fail": f"{who} does not designate {clientIp} as permitted sender",
            "softfail": f"domain of transitioning {identity} does not designate {clientIp} as permitted sender",
            "neutral": f"{clientIp} is neither permitted nor denied by {who}",
            "none": f"{who} does not designate permitted sender hosts",
            "permerror": f"permanent error in processing {who}",
            "temperror": f"error in processing during lookup of {identity}",
        }[self.result]

    def authResultsPart(self) -> str:
        """
        The SPF part of an Authentication-Results header field (RFC 8601
        §2.7.2).

        @return: e.g. C{'spf=pass smtp.mailfrom=a.test'} or
            C{'spf=none smtp.helo=mail.a.test'}; the domain is quoted when
            it is not a token.
        """
        return f"spf={self.result} smtp.{self.scope}={_pValue(self.domain)}"


def _malformed(domain: str) -> bool:
    """
    Whether a domain cannot have an SPF record (RFC 7208 §4.3): a domain
    literal, a name that is not multi-label, or one with an empty label or a
    label over 63 characters.
    """
    if domain.endswith("."):
        domain = domain[:-1]
    labels = domain.split(".")
    return domain.startswith("[") or len(labels) < 2 or any(not 0 < len(label) < 64 for label in labels)


def _nameText(name: dns.name.Name) -> str:
    """
    A domain name as pyspf wants it: text without the final dot (C{""}
    for the root).
    """
    return name.to_text().rstrip(".")


class _Query(spf.query):
    """
    A pyspf query whose DNS lookups use our resolver and share one
    deadline, and which follows RFC 7208 §5.5 on DNS errors in C{ptr}.
    """

    def __init__(self, resolver: dns.resolver.Resolver, deadline: float, **kwargs: Any) -> None:
        """
        @param resolver: answers every lookup.
        @param deadline: when, by C{time.monotonic()}, lookups stop; a
            lookup after it is a L{spf.TempError}.
        @param kwargs: for C{spf.query}.
        """
        spf.query.__init__(self, **kwargs)
        self._resolver = resolver
        self._deadline = deadline
        # how much longer every answer this check used holds
        self.holdsSeconds = float("inf")

    def dns(self, name: str, qtype: str, cnames: Any = None, ignore_void: bool = False) -> list:
        """
        Look up records, in the form pyspf's DNS back-ends give them:
        address strings for A and AAAA, C{(preference, exchange)} for MX,
        names for PTR, tuples of C{bytes} character-strings for TXT and
        SPF.  CNAMEs are followed by the resolver.  Answers are remembered
        for the rest of the check.

        @param name: the domain name.
        @param qtype: the type's name.
        @param cnames: unused (pyspf's own CNAME bookkeeping).
        @param ignore_void: do not count an empty answer as a void lookup.
        @return: the records; none when the name does not exist or is not a
            valid domain name.
        @raise spf.TempError: when DNS fails or the check's time is up.
        @raise spf.PermError: on the third void lookup (RFC 7208 §4.6.4).
        """
        name = str(name)
        if name.endswith("."):
            name = name[:-1]
        if not all(0 < len(label) < 64 for label in name.split(".")):
            # pyspf's rule: such a name cannot exist, and it is not a void lookup
            return []
        key = (name.lower(), qtype)
        if key not in self.cache:
            self.cache[key] = self._lookup(key[0], qtype)
        records = list(self.cache[key])
        if not records and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return records

    def _lookup(self, name: str, qtype: str) -> list:
        """
        Ask DNS, within what is left of the check's time.

        @raise spf.TempError: when DNS fails or the time is up.
        """
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise spf.TempError(f"DNS time limit reached before looking up {qtype} {name}")
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError):
            return []
        try:
            answer = self._resolver.resolve(qname, qtype, search=False, raise_on_no_answer=False,
                                            lifetime=remaining)
        except dns.resolver.NXDOMAIN as e:
            self._holds(nxdomainSeconds(self._resolver, qname, e))
            return []
        except dns.resolver.NoAnswer:
            self._holds(NEGATIVE_FALLBACK_SECONDS)
            return []
        except dns.exception.Timeout:
            raise spf.TempError(f"DNS timeout looking up {qtype} {name}")
        except dns.resolver.NoNameservers:
            raise spf.TempError(f"DNS failure looking up {qtype} {name}")
        except dns.exception.DNSException as e:
            raise spf.TempError(f"DNS error looking up {qtype} {name}: {type(e).__name__}")
        self._holds(answerSeconds(answer))
        if answer.rrset is None:
            return []
        rdtype = answer.rrset.rdtype
        if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            return [rdata.address for rdata in answer.rrset]
        if rdtype == dns.rdatatype.MX:
            return [(rdata.preference, _nameText(rdata.exchange)) for rdata in answer.rrset]
        if rdtype == dns.rdatatype.PTR:
            return [_nameText(rdata.target) for rdata in answer.rrset]
        return [tuple(rdata.strings) for rdata in answer.rrset]

    def _holds(self, seconds: float) -> None:
        """
        Note how much longer one answer the check used holds.
        """
        self.holdsSeconds = min(self.holdsSeconds, seconds)

    def textMentions(self, needles: tuple[bytes, ...]) -> bool:
        """
        @return: whether any TXT or SPF record the check read holds one of
            C{needles} (lower case), in any case.
        """
        for (_, qtype), records in self.cache.items():
            if qtype in ("TXT", "SPF"):
                for strings in records:
                    text = b"".join(strings).lower()
                    if any(needle in text for needle in needles):
                        return True
        return False

    def validated_ptrs(self) -> list[str]:
        """
        The client's validated domain names (RFC 7208 §5.5): the names its
        PTR records give, at most ten, whose addresses include it.  A DNS
        error on the PTR lookup gives none; one on a name's addresses skips
        that name.

        @raise spf.PermError: on too many void lookups.
        """
        try:
            names = self.dns_ptr(self.i)
        except spf.TempError:
            return []
        validated = []
        for name in names[:spf.MAX_PTR]:
            try:
                addresses = self.dns_a(name, self.A)
            except spf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated


def identityOf(sender: str, helo: str) -> tuple[str, str, str, str]:
    """
    The identity SPF checks for a transaction: the MAIL FROM address; for
    a null sender C{postmaster@<helo>} (RFC 7208 §2.3, §2.4); a sender
    without C{@} is taken as C{postmaster@<sender>}.

    @return: C{(scope, identity, localPart, domain)}, the domain in
        lower case.
    """
    if sender:
        scope = MAILFROM
        identity = sender if "@" in sender else "postmaster@" + sender
    else:
        scope = HELO
        identity = "postmaster@" + helo
    # RFC 5321 §4.1.2: a quoted local part may hold "@"; the domain follows the last
    localPart, _, domain = identity.rpartition("@")
    return scope, identity, localPart, domain.lower()


def checkBlocking(nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float, clientIp: str, sender: str,
                  helo: str, cache: Any = None) -> SPFResult:
    """
    Check SPF for one transaction.  Blocking: call it only in a worker
    thread.  It never raises.  See L{checkTimedBlocking}, which also says
    how long the result holds.

    The identity is the MAIL FROM address; for a null sender it is
    C{postmaster@<helo>} (RFC 7208 §2.3, §2.4).  A sender without C{@} is
    taken as C{postmaster@<sender>}.

    @param nameservers: C{(ip, port)} pairs that every lookup goes to; none
        for the system's resolvers.
    @param timeoutSeconds: how long all the check's DNS lookups together
        may take; past it the result is C{temperror}.
    @param clientIp: the client's IPv4 or IPv6 address.
    @param sender: the MAIL FROM address, C{""} for a null sender.
    @param helo: the HELO/EHLO name.
    @param cache: a shared DNS cache (L{qutemail.dns.makeResolver}).
    @return: the L{SPFResult}.
    """
    return checkTimedBlocking(nameservers, timeoutSeconds, clientIp, sender, helo, cache)[0]


def checkTimedBlocking(nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float, clientIp: str,
                       sender: str, helo: str, cache: Any = None) -> tuple[SPFResult, float, bool]:
    """
    Check SPF for one transaction, and say how long the result holds.
    Blocking: call it only in a worker thread.  It never raises.

    @param nameservers: see L{checkBlocking}, as are the other parameters.
    @return: C{(result, holdsSeconds, byLocalPart)}: the L{SPFResult}; how
        much longer the DNS answers it was made from hold (the least of
        what is left of their TTLs; 0 for a C{temperror}, or when an
        explanation expands C{%{t}}; infinite when no DNS was needed); and
        whether the records read expand the local part (C{%{l}},
        C{%{s}}), so that the result holds only for this sender and not
        for the whole domain.
    """
    scope, identity, localPart, domain = identityOf(sender, helo)

    def result(name: str, explanation: str, query: _Query | None = None) -> tuple[SPFResult, float, bool]:
        """
        @param query: the evaluation, if one ran (for its DNS answers).
        @return: the check's result, with a name from L{RESULTS}, and how
            it holds.
        """
        name = _OLD_NAMES.get(name, name)
        if name not in RESULTS:
            name, explanation = "temperror", f"unexpected SPF result {name!r}"
        outcome = SPFResult(name, explanation, domain, scope)
        if query is None:
            return outcome, (0.0 if name == "temperror" else float("inf")), False
        if name == "temperror" or query.textMentions((_TIME_MACRO,)):
            return outcome, 0.0, False
        return outcome, query.holdsSeconds, query.textMentions(_LOCAL_PART_MACROS)

    try:
        ipaddress.ip_address(clientIp)
    except ValueError:
        return result("permerror", f"not an IP address: {clientIp!r}")
    if _malformed(domain):
        return result("none", "")
    # A worker thread's deadline for blocking calls, which measure time
    # themselves: no reactor clock is involved
    deadline = time.monotonic() + timeoutSeconds
    query = None
    try:
        resolver = makeResolver(nameservers, timeoutSeconds, cache)
        query = _Query(resolver, deadline, i=clientIp, s=identity, h=helo, strict=True)
        # pyspf splits at the first "@"; see above
        query.l, query.o, query.d = localPart or "postmaster", domain, domain
        name, _, explanation = query.check()
    except spf.TempError as e:
        return result("temperror", f"SPF Temporary Error: {e}")
    except spf.PermError as e:
        return result("permerror", f"SPF Permanent Error: {e}", query)
    except dns.exception.DNSException as e:
        return result("temperror", f"DNS error: {type(e).__name__}")
    except Exception as e:
        # The boundary around a third-party evaluator: whatever goes wrong
        # in it is our fault, so temporary (the sender retries).
        _log.failure("SPF check of {domain} from {clientIp} failed", domain=domain, clientIp=clientIp)
        return result("temperror", f"internal error in SPF evaluation ({type(e).__name__})")
    return result(name, str(explanation or ""), query)


@attrs.define
class SPFChecker:
    """
    Checks SPF off the reactor thread.

    The time limit is enforced in the worker thread (every DNS lookup gets
    only what is left of it), so the Deferred needs no timeout of its own:
    it fires within about C{timeoutSeconds}.

    @ivar nameservers: C{(ip, port)} pairs; none for the system's
        resolvers.
    @ivar timeoutSeconds: how long one check may spend on DNS.
    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    @ivar cache: a DNS cache shared by the checks, or C{None} (see
        L{qutemail.dns.makeResolver}).
    @ivar results: an L{qutemail.ttlcache.ExpiringCache} of whole
        results, or C{None} for none.  A result holds for the same client
        address, HELO name and MAIL FROM domain (and local part, when the
        domain's records expand it) for as long as the DNS answers it was
        made from (see L{checkTimedBlocking}); a C{temperror} is never
        kept.  A result found there is given at once, without a worker
        thread.
    """

    nameservers: tuple[tuple[str, int], ...] = attrs.field(
        converter=lambda pairs: tuple((str(ip), int(port)) for ip, port in pairs))
    timeoutSeconds: float
    runner: Any
    cache: Any = None
    results: Any = None

    def check(self, clientIp: str, sender: str, helo: str) -> Deferred:
        """
        Check SPF for one transaction (see L{checkBlocking}).

        @param clientIp: the client's IP address.
        @param sender: the MAIL FROM address, C{""} for a null sender.
        @param helo: the HELO/EHLO name.
        @return: a L{Deferred} firing with the L{SPFResult}.
        """
        if self.results is None:
            return self.runner.run(checkBlocking, self.nameservers, self.timeoutSeconds, clientIp, sender, helo,
                                   self.cache)
        scope, _, localPart, domain = identityOf(sender, helo)
        domainKey = (clientIp, helo, scope, domain)
        senderKey = domainKey + (localPart,)
        kept = self.results.get(domainKey) or self.results.get(senderKey)
        if kept is not None:
            return succeed(kept)

        def keep(outcome: tuple[SPFResult, float, bool]) -> SPFResult:
            """
            Keep a result for as long as it holds.
            """
            result, holdsSeconds, byLocalPart = outcome
            self.results.put(senderKey if byLocalPart else domainKey, result, holdsSeconds)
            return result

        return self.runner.run(checkTimedBlocking, self.nameservers, self.timeoutSeconds, clientIp, sender, helo,
                               self.cache).addCallback(keep)
