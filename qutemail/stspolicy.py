# -*- test-case-name: tests.test_stspolicy -*-
"""
What we publish for mail sent to us: our own MTA-STS policy (RFC 8461),
served at C{/.well-known/mta-sts.txt} on the metrics port for a reverse
proxy to present as C{https://mta-sts.<domain>/}, and the DNS records that
announce it and ask for TLS reports (RFC 8460).
"""

import hashlib

# How long senders may cache our policy: a week (RFC 8461 §3.2 allows up
# to a year; a week lets a change of exchanger take effect in days).
OWN_MAX_AGE_SECONDS = 604800


def ownPolicy(hostname: str, mode: str) -> bytes:
    """
    @param hostname: our exchanger (C{[server] hostname}), the one C{mx}.
    @param mode: C{testing}, C{enforce} or C{none}
        (C{[metrics] mta_sts_mode}).
    @return: the policy body, CRLF line ends (RFC 8461 §3.2).
    """
    lines = ["version: STSv1", f"mode: {mode}", f"mx: {hostname.lower().rstrip('.')}",
             f"max_age: {OWN_MAX_AGE_SECONDS}"]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def policyId(body: bytes) -> str:
    """
    @return: the TXT record's C{id} for a policy body: it changes whenever
        the policy does (RFC 8461 §3.1: up to 32 alphanumerics).
    """
    return hashlib.sha256(body).hexdigest()[:20]


def stsRecords(domain: str, hostname: str, mode: str, ttl: int) -> list[str]:
    """
    The zone-file lines that publish our policy and ask for TLS reports.

    @return: the C{mta-sts} host hint (a comment), the C{_mta-sts} TXT and
        the C{_smtp._tls} TXT records.
    """
    owner = domain.lower().rstrip(".") + "."
    body = ownPolicy(hostname, mode)
    return [
        f"; mta-sts.{owner} must serve https://mta-sts.{domain}/.well-known/mta-sts.txt (a reverse proxy "
        f"in front of the metrics port; see the README)",
        f'_mta-sts.{owner} {ttl} IN TXT "v=STSv1; id={policyId(body)}"',
        f'_smtp._tls.{owner} {ttl} IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{domain}"',
    ]
