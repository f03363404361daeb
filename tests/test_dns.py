"""
Tests for L{qutemail.dns}: questions asked of a real DNS server on loopback.
"""

import dns.resolver
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.dns import FOUND, NXDOMAIN, queryBlocking
from tests.dnsserver import startDNSServer


def byHostDescending(group: list) -> None:
    """
    A deterministic stand-in for the random shuffle: sort a group of equal
    preference by host, last first.
    """
    group.sort(key=lambda record: record[1], reverse=True)


class QueryCacheTests(TestCase):
    """
    L{queryBlocking} with and without a shared cache, against a real DNS
    server on loopback.
    """

    async def test_cacheKeepsAnswers(self):
        """
        With a cache, a second question for a name (answered, or NXDOMAIN)
        does not reach the server; without one, every question does.
        """
        server = await startDNSServer(self, [("a.test", "TXT", "v=spf1 -all")])
        cache = dns.resolver.LRUCache(100)

        def ask():
            for _ in range(2):
                self.assertEqual(queryBlocking(server.nameservers, 2.0, "a.test", "TXT", cache).status, FOUND)
                self.assertEqual(queryBlocking(server.nameservers, 2.0, "gone.test", "TXT", cache).status, NXDOMAIN)
            queryBlocking(server.nameservers, 2.0, "a.test", "TXT")

        await deferToThread(ask)
        self.assertEqual(server.queries, [("a.test", "TXT"), ("gone.test", "TXT"), ("a.test", "TXT")])
