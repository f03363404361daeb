# -*- test-case-name: tests.relay.test_mx,tests.test_dns -*-
"""
Where mail for a domain goes: MX resolution (RFC 5321 §5.1, RFC 7505), and
TXT lookups for SPF, DKIM and DMARC.

Every query is made by dnspython in a worker thread, through the
L{qutemail.blocking.BlockingRunner}: dnspython blocks, and the reactor must
not.  L{queryBlocking} is the one function that talks to dnspython; it
turns every answer into plain values (a L{DNSAnswer}) before it leaves the
thread.

Outcomes of L{MXResolver.resolve}:

  - MX records: the exchangers in preference order, each with its
    addresses.  Exchangers of equal preference are shuffled (RFC 5321 §5.1
    asks senders to spread the load); tests can pass their own shuffle.
  - NOERROR without MX records: the domain itself is the implicit MX, with
    preference 0 (RFC 5321 §5.1).
  - NXDOMAIN: permanent, C{NO_SUCH_DOMAIN}.
  - a single MX whose exchange is the root, C{0 .}: permanent, C{NULL_MX}
    (RFC 7505 §3).  A root exchange among other MX records cannot be
    reached and is dropped.
  - a timeout, SERVFAIL, refusal or no usable resolver: temporary,
    C{DNS_TEMPFAIL}.
  - an exchanger whose address lookups fail, or return nothing, is skipped.
    If no exchanger has an address the failure is temporary
    (C{DNS_TEMPFAIL}), whatever the reason: DNS mistakes are often fixed
    within hours, and the queue lifetime bounds the retries.

Failures are raised as L{DNSLookupError}, a L{ReplyError} carrying the
reply; the permanent ones carry C{NO_SUCH_DOMAIN} and C{NULL_MX} unchanged,
the temporary ones C{DNS_TEMPFAIL} with text naming the domain and cause.
"""

import random
from typing import Any, Callable

import attrs
from twisted.internet.defer import FirstError, gatherResults
from twisted.logger import Logger

from qutemail.dns import FAILED, NODATA, NXDOMAIN, DNSAnswer, queryBlocking
from qutemail.replies import DNS_TEMPFAIL, NO_SUCH_DOMAIN, NULL_MX, ReplyError

class DNSLookupError(ReplyError):
    """
    DNS said where mail cannot go, or could not say: carries the L{Reply}
    for the queue entry (see the module docstring for which).
    """

    @property
    def temporary(self) -> bool:
        """
        Whether trying again later may succeed.
        """
        return self.reply.isTemporary


def _tempfail(domain: str, detail: str) -> DNSLookupError:
    """
    @return: a temporary failure naming the domain and the reason.
    """
    return DNSLookupError(DNS_TEMPFAIL.withText(f"Temporary DNS failure for {domain} ({detail}), will retry"))


@attrs.frozen
class MailExchanger:
    """
    One host that takes mail for a domain.

    @ivar host: its name, lower case, without the final dot.
    @ivar preference: its MX preference (0 for an implicit MX).
    @ivar addresses: its IPv4 addresses, then its IPv6 addresses, each in
        the order DNS gave them.
    @ivar implicit: C{True} when the domain has no MX records and this is
        the domain itself (RFC 5321 §5.1).
    """

    host: str
    preference: int
    addresses: tuple[str, ...]
    implicit: bool = False


def _shuffleFactory() -> Callable[[list], None]:
    """
    @return: the C{shuffle} of a fresh, privately seeded generator.
    """
    return random.Random().shuffle


@attrs.define
class MXResolver:
    """
    Resolves where mail for a domain goes, and TXT records.

    A lookup takes at most C{timeoutSeconds} for the MX query plus
    C{timeoutSeconds} for the address queries, which run at once.

    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    @ivar nameservers: C{(ip, port)} pairs (C{[relay] nameservers}); none
        for the system's resolvers.
    @ivar timeoutSeconds: the lifetime of each query.
    @ivar maxExchangers: how many exchangers, best first, are looked up.
    @ivar shuffle: shuffles a list in place; used on each group of equal
        preference.
    """

    runner: Any
    nameservers: tuple[tuple[str, int], ...] = ()
    timeoutSeconds: float = 10.0
    maxExchangers: int = 10
    shuffle: Callable[[list], None] = attrs.field(factory=_shuffleFactory)

    _log = Logger()

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        """
        Ask DNS one question, in a worker thread.

        @param name: the domain name.
        @param rdtype: the type, e.g. C{"MX"}.
        @return: the L{DNSAnswer}.
        """
        return await self.runner.run(queryBlocking, self.nameservers, self.timeoutSeconds, name, rdtype)

    async def resolve(self, domain: str) -> list[MailExchanger]:
        """
        Find the hosts that take mail for a domain.

        @param domain: the recipient domain (an A-label or U-label).
        @return: the L{MailExchanger}s with at least one address, best
            first; never empty.
        @raise DNSLookupError: carrying C{NO_SUCH_DOMAIN} or C{NULL_MX}
            (permanent) or C{DNS_TEMPFAIL} (temporary).
        """
        domain = domain.lower().rstrip(".")
        answer = await self.query(domain, "MX")
        if answer.status == NXDOMAIN:
            raise DNSLookupError(NO_SUCH_DOMAIN)
        if answer.status == FAILED:
            raise _tempfail(domain, answer.detail)
        if answer.status == NODATA:
            candidates = [(0, domain)]
        else:
            # RFC 7505 §3: a lone MX for the root means "no mail here"
            if [exchange for _, exchange in answer.records] == [""]:
                raise DNSLookupError(NULL_MX)
            candidates = self._order([record for record in answer.records if record[1]])
        exchangers = await self._withAddresses(candidates, implicit=answer.status == NODATA)
        self._log.debug("mail for {domain} goes to {hosts}", domain=domain, hosts=[e.host for e in exchangers])
        if not exchangers:
            raise _tempfail(domain, "no mail exchanger has an address")
        return exchangers

    def _order(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """
        Sort MX records by preference, shuffle those of equal preference,
        drop repeated hosts and keep the best C{maxExchangers}.
        """
        ordered: list[tuple[int, str]] = []
        for preference in sorted({p for p, _ in records}):
            group = [record for record in records if record[0] == preference]
            self.shuffle(group)
            ordered.extend(group)
        seen: set[str] = set()
        unique = []
        for preference, host in ordered:
            if host not in seen:
                seen.add(host)
                unique.append((preference, host))
        return unique[:self.maxExchangers]

    async def _withAddresses(self, candidates: list[tuple[int, str]], implicit: bool) -> list[MailExchanger]:
        """
        Look up the A and AAAA records of every candidate at once.

        @return: the candidates that have addresses, in the given order.
        """
        lookups = [self.runner.run(queryBlocking, self.nameservers, self.timeoutSeconds, host, rdtype)
                   for _, host in candidates for rdtype in ("A", "AAAA")]
        try:
            answers = await gatherResults(lookups, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        exchangers = []
        for index, (preference, host) in enumerate(candidates):
            addresses = []
            for answer in answers[2 * index:2 * index + 2]:
                if answer.status == FAILED:
                    self._log.info("skipping mail exchanger {host}: {detail}", host=host, detail=answer.detail)
                addresses.extend(a for a in answer.records if a not in addresses)
            if addresses:
                exchangers.append(MailExchanger(host, preference, tuple(addresses), implicit))
        return exchangers

    async def lookupTXT(self, name: str) -> list[str]:
        """
        Fetch a name's TXT records (SPF, DKIM keys, DMARC policies).

        @param name: the domain name.
        @return: one string per record, its character-strings joined and
            decoded as UTF-8 (bad bytes replaced); an empty list when the
            name does not exist or has no TXT records.
        @raise DNSLookupError: carrying C{DNS_TEMPFAIL} when DNS does not
            answer.
        """
        answer = await self.query(name, "TXT")
        if answer.status == FAILED:
            raise _tempfail(name.lower().rstrip("."), answer.detail)
        return [record.decode("utf-8", "replace") for record in answer.records]
