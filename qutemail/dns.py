# -*- test-case-name: tests.test_dns -*-
"""
DNS questions for every stage (MX for the relay, TXT for SPF, DKIM and
DMARC): dnspython, asked in a worker thread.

L{queryBlocking} is the one function that talks to dnspython; it turns
every answer into plain values (a L{DNSAnswer}) before it leaves the
thread, so callers run it through a L{qutemail.blocking.BlockingRunner}.
"""

import time
from typing import Any

import attrs
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdataclass
import dns.resolver

# Answer statuses of L{DNSAnswer}.
FOUND = "found"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
FAILED = "failed"

# dnspython's per-try timeout: a lost UDP packet is retried within the
# lifetime instead of using all of it.
_TRY_SECONDS = 2.0

# How long a negative answer whose lifetime cannot be read holds: a missing
# record then costs one question a minute, and a record just published is
# seen within that minute.
NEGATIVE_FALLBACK_SECONDS = 60.0


@attrs.frozen
class DNSAnswer:
    """
    The outcome of one DNS query, as plain values.

    @ivar status: L{FOUND}, L{NXDOMAIN}, L{NODATA} (the name exists without
        records of the type) or L{FAILED} (no usable answer: timeout,
        SERVFAIL, refusal, no resolver configuration).
    @ivar records: for L{FOUND}: MX as C{(preference, exchange)} with the
        exchange in lower case without the final dot (C{""} for the root);
        A and AAAA as address strings; TXT as C{bytes}, the
        character-strings of each record joined; other types as text.
    @ivar detail: for L{FAILED} and for an invalid name, a short reason.
    @ivar ttlSeconds: how much longer the answer holds (what is left of
        its TTL, or of its negative-caching time for L{NXDOMAIN} and
        L{NODATA}; RFC 2308); C{None} for L{FAILED}, which never holds.
    """

    status: str
    records: tuple = ()
    detail: str = ""
    ttlSeconds: float | None = attrs.field(default=None, eq=False)


def answerSeconds(answer: dns.resolver.Answer) -> float:
    """
    @return: how much longer a dnspython answer holds (what is left of
        the smallest TTL along its CNAME chain, or of its negative-caching
        time), by the wall clock dnspython's cache uses.
    """
    return max(0.0, answer.expiration - time.time())


def nxdomainSeconds(resolver: dns.resolver.Resolver, qname: dns.name.Name,
                    error: dns.resolver.NXDOMAIN) -> float:
    """
    How much longer an NXDOMAIN holds (RFC 2308 §5): the entry dnspython's
    cache keeps for it, else the negative TTL of the response, else
    L{NEGATIVE_FALLBACK_SECONDS}.

    @param resolver: the resolver that answered (its cache, if any, holds
        what is left of the lifetime: a response read from the cache
        carries the lifetime it had when it was first received).
    @param qname: the name asked about.
    @param error: the resolver's exception.
    """
    cache = resolver.cache
    if cache is not None:
        cached = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
        if cached is not None:
            return answerSeconds(cached)
        # no entry: this response is fresh from the server
    try:
        responses = error.responses()
        return float(min(response.resolve_chaining().minimum_ttl for response in responses.values()))
    except (dns.exception.DNSException, ValueError, AttributeError, KeyError):
        return NEGATIVE_FALLBACK_SECONDS


class ResolverCache(dns.resolver.LRUCache):
    """
    A dnspython answer cache that also keeps the resolvers built around
    it, one per C{(nameservers, timeout)}: building a C{Resolver} costs
    more than answering from the cache (the inbound checks built one per
    query, which a profile of the checks-on benchmark showed).  A resolver
    is only read once built, so worker threads share it; two threads
    racing to build one both get a working resolver.
    """

    def __init__(self, maxSize: int) -> None:
        super().__init__(maxSize)
        self._resolvers: dict[tuple, dns.resolver.Resolver] = {}

    def resolverFor(self, nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float) -> dns.resolver.Resolver:
        """
        @return: the resolver for these servers and timeout, built the
            first time (see L{makeResolver}).
        """
        key = (tuple(nameservers), timeoutSeconds)
        resolver = self._resolvers.get(key)
        if resolver is None:
            resolver = self._resolvers[key] = _buildResolver(nameservers, timeoutSeconds, self)
        return resolver


def makeResolver(nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float,
                 cache: Any = None) -> dns.resolver.Resolver:
    """
    A dnspython resolver.

    @param nameservers: C{(ip, port)} pairs; none for the system's
        resolvers (read from C{/etc/resolv.conf}).
    @param timeoutSeconds: the query's lifetime.
    @param cache: a C{dns.resolver.LRUCache} shared by the lookups of one
        kind (it keeps answers, NXDOMAIN included, for their TTL; it is
        thread-safe), or C{None} for none; a L{ResolverCache} also gives
        back the resolver it built for the same servers and timeout.
    @raise dns.resolver.NoResolverConfiguration: when the system has none.
    """
    if isinstance(cache, ResolverCache):
        return cache.resolverFor(nameservers, timeoutSeconds)
    return _buildResolver(nameservers, timeoutSeconds, cache)


def _buildResolver(nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float,
                   cache: Any) -> dns.resolver.Resolver:
    """
    Build a resolver (see L{makeResolver}).
    """
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
    else:
        resolver = dns.resolver.Resolver()
    resolver.cache = cache
    resolver.lifetime = timeoutSeconds
    resolver.timeout = min(_TRY_SECONDS, timeoutSeconds)
    return resolver


def _recordValue(rdata: Any) -> Any:
    """
    One record as a plain value (see L{DNSAnswer.records}).
    """
    if rdata.rdtype == dns.rdatatype.MX:
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower().rstrip("."))
    if rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings)
    return rdata.to_text()


def queryBlocking(nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float, name: str,
                  rdtype: str, cache: Any = None) -> DNSAnswer:
    """
    Ask DNS one question, following CNAMEs.  Blocking: call it only in a
    worker thread.

    @param nameservers: C{(ip, port)} pairs; none for the system's
        resolvers.
    @param timeoutSeconds: how long the whole query may take, retries
        included.
    @param name: the domain name, absolute whether or not it ends in a dot.
    @param rdtype: the type, e.g. C{"MX"}.
    @param cache: see L{makeResolver}.
    @return: the L{DNSAnswer}; a name that is not a valid domain name
        gives L{NXDOMAIN}.
    """
    try:
        qname = dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError):
        return DNSAnswer(NXDOMAIN, detail="not a valid domain name")
    try:
        resolver = makeResolver(nameservers, timeoutSeconds, cache)
        answer = resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN as e:
        return DNSAnswer(NXDOMAIN, ttlSeconds=nxdomainSeconds(resolver, qname, e))
    except dns.exception.Timeout:
        return DNSAnswer(FAILED, detail="timeout")
    except dns.resolver.NoNameservers:
        return DNSAnswer(FAILED, detail="server failure")
    except dns.resolver.NoResolverConfiguration:
        return DNSAnswer(FAILED, detail="no resolver configured")
    except dns.exception.DNSException as e:
        return DNSAnswer(FAILED, detail=type(e).__name__)
    if answer.rrset is None:
        return DNSAnswer(NODATA, ttlSeconds=answerSeconds(answer))
    return DNSAnswer(FOUND, tuple(_recordValue(rdata) for rdata in answer.rrset), ttlSeconds=answerSeconds(answer))
