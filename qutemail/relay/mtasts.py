# -*- test-case-name: tests.relay.test_mtasts -*-
"""
MTA-STS (RFC 8461) for outbound mail: a domain that publishes a policy
says which of its exchangers are genuine and that they must be reached
over verified TLS.

Before mail leaves for a domain, its C{_mta-sts} TXT record is read; a
policy whose id we have not cached (or whose cache expired) is fetched
from C{https://mta-sts.<domain>/.well-known/mta-sts.txt} over verified TLS
(no redirects, RFC 8461 §3.3) and cached for its C{max_age}.  A domain
whose TXT record disappears keeps its cached policy until that expires
(§5.1), so an attacker who strips the record gains nothing.  The relay
then uses only the exchangers an C{enforce} policy lists, and only over
verified TLS; under C{testing} it logs what would have failed and goes
on as before.
"""

import re
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from qutemail.dns import FOUND
from qutemail.httpbody import readCapped
from qutemail.replies import MTA_STS_NO_MATCH, Reply
from qutemail.tlsclient import VerifyingClientTLS

# RFC 8461 §3.2: max_age is at most a year.
MAX_AGE_LIMIT_SECONDS = 31_557_600
# §3.3: a policy body is small; a larger answer is not a policy.
MAX_POLICY_BYTES = 64 * 1024
# §3.3 suggests a timeout of a minute at most for the fetch.
FETCH_TIMEOUT_SECONDS = 30.0
ENFORCE = "enforce"
TESTING = "testing"
NONE = "none"
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class PolicyError(Exception):
    """
    A TXT record or policy body that RFC 8461 does not allow.
    """


@attrs.frozen
class STSPolicy:
    """
    One domain's MTA-STS policy.

    @ivar mode: L{ENFORCE}, L{TESTING} or L{NONE}.
    @ivar mx: the exchanger patterns (C{mx.example.com},
        C{*.example.com}), lower case.
    @ivar maxAgeSeconds: how long it may be cached.
    @ivar id: the id of the TXT record it was fetched under.
    """

    mode: str
    mx: tuple[str, ...]
    maxAgeSeconds: int
    id: str = ""

    def matches(self, host: str) -> bool:
        """
        Whether an exchanger's name is one the policy lists (RFC 8461
        §4.1: a wildcard stands for exactly the leftmost label).
        """
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parseRecord(texts: list[bytes]) -> str | None:
    """
    Find the policy id in a domain's C{_mta-sts} TXT records (RFC 8461
    §3.1).

    @return: the id, or C{None} when there is not exactly one valid
        C{v=STSv1} record.
    """
    ids = []
    for raw in texts:
        text = raw.decode("ascii", "replace")
        if not text.startswith("v=STSv1"):
            continue
        fields = dict(part.strip().partition("=")[::2] for part in text.split(";") if part.strip())
        if fields.get("v") == "STSv1" and _ID.fullmatch(fields.get("id", "")):
            ids.append(fields["id"])
        else:
            ids.append(None)
    return ids[0] if len(ids) == 1 else None


def parsePolicy(body: bytes, policyId: str = "") -> STSPolicy:
    """
    Read a policy body (RFC 8461 §3.2): C{key: value} lines, CRLF or LF.

    @raise PolicyError: it is not a valid STSv1 policy.
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("the policy is not ASCII") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"not a policy line: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in (ENFORCE, TESTING, NONE):
        raise PolicyError(f"unknown mode {str(mode)[:20]!r}")
    maxAge = fields.get("max_age", "")
    if not maxAge.isdigit() or len(maxAge) > 10:
        raise PolicyError("max_age is not a whole number of seconds")
    for pattern in mx:
        name = pattern[2:] if pattern.startswith("*.") else pattern
        if not name or not all(_LABEL.fullmatch(label) for label in name.split(".")):
            raise PolicyError(f"not an mx pattern: {pattern[:60]!r}")
    if mode != NONE and not mx:
        raise PolicyError(f"mode {mode} without mx lines")
    return STSPolicy(mode, tuple(mx), min(int(maxAge), MAX_AGE_LIMIT_SECONDS), policyId)


_log = Logger()


def applyPolicy(policy: STSPolicy | None, domain: str, destinations: list) -> tuple[list, bool, Reply | None]:
    """
    What a domain's policy makes of its exchangers (RFC 8461 §4.2, §5).

    @param policy: the policy, or C{None}.
    @param destinations: the exchangers' destinations, best first (each
        has a C{host}).
    @return: the destinations to try; whether they must be reached over
        verified TLS; and the reply that defers the mail instead, when an
        C{enforce} policy lists none of them.  Under C{testing} the
        exchangers it does not list are logged and all are tried as before.
    """
    if policy is None or policy.mode not in (ENFORCE, TESTING):
        return destinations, False, None
    listed = [d for d in destinations if policy.matches(d.host)]
    unlisted = ", ".join(sorted({d.host for d in destinations} - {d.host for d in listed}))
    if policy.mode == TESTING:
        if unlisted:
            _log.warn("MTA-STS testing policy of {domain} (id {id}) does not list {hosts}; delivering as before",
                      domain=domain, id=policy.id, hosts=unlisted)
        return destinations, False, None
    if not listed:
        reply = MTA_STS_NO_MATCH.withText(
            f"MTA-STS policy of {domain} (id {policy.id}) lists none of its exchangers ({unlisted})")
        _log.warn("not relaying to {domain}: {reply}", domain=domain, reply=str(reply))
        return [], True, reply
    return listed, True, None


@attrs.define
class _Cached:
    """
    A cached policy and when it expires.
    """

    policy: STSPolicy
    expiresAt: float


class MTASTSPolicies:
    """
    Finds and caches the MTA-STS policies of the domains mail goes to.
    """

    _log = Logger()

    def __init__(self, reactor: Any, resolver: Any, trustRoot: Any = None, httpsPort: int = 443,
                 timeoutSeconds: float = FETCH_TIMEOUT_SECONDS) -> None:
        """
        @param reactor: an C{IReactorTCP} and C{IReactorTime}.
        @param resolver: asks DNS (L{qutemail.relay.mx.MXResolver.query}).
        @param trustRoot: what verifies the policy host's certificate
            (C{[relay] tls_ca}), or C{None} for the platform's store.
        @param httpsPort: where policy hosts are reached (443; tests use
            another).
        @param timeoutSeconds: the deadline of one fetch.
        """
        self.reactor = reactor
        self.resolver = resolver
        self.trustRoot = trustRoot
        self.httpsPort = httpsPort
        self.timeoutSeconds = timeoutSeconds
        self._cache: dict[str, _Cached] = {}
        # One fetch per domain and id at a time, however many deliveries
        # to the domain start together.
        self._fetching: dict[tuple[str, str], Deferred] = {}

    def policyFor(self, domain: str) -> Deferred:
        """
        The policy that holds for mail to C{domain} now.

        @return: a Deferred firing with the L{STSPolicy}, or C{None} when
            the domain has none we could learn (mail then goes as before).
            It never fails.
        """
        return Deferred.fromCoroutine(self._policyFor(domain.lower().rstrip(".")))

    async def _policyFor(self, domain: str) -> STSPolicy | None:
        """
        See L{policyFor}.
        """
        answer = await self.resolver.query(f"_mta-sts.{domain}", "TXT")
        policyId = parseRecord(list(answer.records)) if answer.status == FOUND else None
        # The cache as it is once the answer is in: a fetch started by
        # another delivery may have finished while this one waited.
        now = self.reactor.seconds()
        cached = self._cache.get(domain)
        if cached is not None and cached.expiresAt <= now:
            del self._cache[domain]
            cached = None
        if policyId is None or (cached is not None and cached.policy.id == policyId):
            # No record (or no usable one): a cached policy still holds
            # until it expires (RFC 8461 §5.1).
            return cached.policy if cached is not None else None
        fetching = self._fetching.get((domain, policyId))
        if fetching is None:
            fetching = self._fetching[(domain, policyId)] = Deferred.fromCoroutine(self._fetchOnce(domain, policyId))
        try:
            policy = await _follow(fetching)
        except Exception as e:
            self._log.warn("MTA-STS policy of {domain} (id {id}) could not be fetched: {reason}; "
                           "{fallback}", domain=domain, id=policyId, reason=str(e) or e.__class__.__name__,
                           fallback="keeping the cached one" if cached is not None else "delivering as before")
            return cached.policy if cached is not None else None
        return policy

    async def _fetchOnce(self, domain: str, policyId: str) -> STSPolicy:
        """
        Fetch a policy and cache it; whoever asked for the same domain and
        id meanwhile gets the same answer.
        """
        try:
            policy = await self._fetch(domain, policyId)
        finally:
            del self._fetching[(domain, policyId)]
        self._cache[domain] = _Cached(policy, self.reactor.seconds() + policy.maxAgeSeconds)
        self._log.info("MTA-STS policy of {domain} (id {id}): mode {mode}, mx {mx}, max_age {maxAge}",
                       domain=domain, id=policyId, mode=policy.mode, mx=", ".join(policy.mx),
                       maxAge=policy.maxAgeSeconds)
        return policy

    async def _fetch(self, domain: str, policyId: str) -> STSPolicy:
        """
        Fetch and read a domain's policy over verified TLS.

        @raise Exception: it could not be fetched, or is not a policy.
        """
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.query(host, "A")
        if addresses.status != FOUND or not addresses.records:
            raise PolicyError(f"{host} has no address")
        endpoints = _PolicyEndpoints(self.reactor, host, addresses.records[0], self.trustRoot)
        agent = Agent.usingEndpointFactory(self.reactor, endpoints)
        port = "" if self.httpsPort == 443 else f":{self.httpsPort}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt".encode("ascii")
        d = agent.request(b"GET", url, Headers({b"User-Agent": [b"QutEmail MTA-STS"]}))
        d.addTimeout(self.timeoutSeconds, self.reactor)
        response = await d
        body = readCapped(response, MAX_POLICY_BYTES)
        body.addTimeout(self.timeoutSeconds, self.reactor)
        body = await body
        if response.code != 200:
            # §3.3: redirects are not followed; anything but 200 is no policy.
            raise PolicyError(f"HTTP {response.code}")
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip().lower()
        if kind != b"text/plain":
            raise PolicyError(f"content type {kind[:40]!r}, not text/plain")
        return parsePolicy(body, policyId)


def _follow(d: Deferred) -> Deferred:
    """
    @return: a Deferred with C{d}'s result, leaving C{d} itself for others
        to follow too.
    """
    follower: Deferred = Deferred()

    def passOn(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(result)
        return result

    d.addBoth(passOn)
    # The shared Deferred's failure is each follower's to handle.
    d.addErrback(lambda _: None)
    return follower


@attrs.frozen
class _PolicyEndpoints:
    """
    Reaches the policy host at the address our DNS gave, over TLS that
    verifies the host's name (the platform resolver is not asked).
    """

    reactor: Any
    host: str
    address: str
    trustRoot: Any

    def endpointForURI(self, uri: Any) -> Any:
        """
        @return: a TLS endpoint to the policy host.
        """
        tcp = HostnameEndpoint(self.reactor, self.address, uri.port)
        return wrapClientTLS(VerifyingClientTLS(self.host, self.trustRoot), tcp)

