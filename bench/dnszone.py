#!/usr/bin/env python3
"""
A loopback DNS server for the benchmark with the inbound checks on
(issue 14, acceptance item 2): what a production site's resolver would
answer for the benchmark's mail, served by the project's own authoritative
server (tests/dnsserver.py, twisted.names) on 127.0.0.1, UDP and TCP on one
free port.

The driver (../shared/bench/smtp_throughput.sh, Postfix's smtp-source)
sends from sender@DOMAIN to bench@DOMAIN with HELO "localhost", so the zone
publishes for DOMAIN an SPF record that passes 127.0.0.1, a DMARC record
(p=none, so no message is refused for the missing DKIM signature), an MX
and A record, and for "localhost" an A record and an SPF record for the
HELO check.  Every record has a TTL of 300 s, as a site's would.

    python bench/dnszone.py [DOMAIN]

prints "127.0.0.1:PORT" (the [relay] nameservers value) on one line, then
serves until it is terminated.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402

from tests.dnsserver import DNSServer  # noqa: E402


def records(domain: str) -> list[tuple[str, str, object]]:
    """
    @return: the zone's C{(name, type, value)} records.
    """
    return [
        (domain, "TXT", "v=spf1 ip4:127.0.0.0/8 -all"),
        (f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"),
        (domain, "MX", (10, f"mail.{domain}")),
        (f"mail.{domain}", "A", "127.0.0.1"),
        ("localhost", "A", "127.0.0.1"),
        ("localhost", "TXT", "v=spf1 ip4:127.0.0.0/8 -all"),
    ]


def main() -> int:
    """
    Serve until terminated.
    """
    domain = sys.argv[1] if len(sys.argv) > 1 else "example.test"
    server = DNSServer(reactor)
    server.load(records(domain))
    server.listen()
    print(f"127.0.0.1:{server.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
