"""
Tests for L{qutemail.dns}: questions asked of a real DNS server on loopback.
"""

import dns.resolver
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.dns import FAILED, FOUND, NODATA, NXDOMAIN, ResolverCache, makeResolver, queryBlocking
from tests.dnsserver import SERVFAIL, startDNSServer


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


class ResolverCacheTests(SynchronousTestCase):
    """
    L{ResolverCache} builds one resolver per servers and timeout.
    """

    def test_reused(self):
        """
        The same servers and timeout give back the same resolver, using
        the cache; others get their own; a plain cache gets a new one each
        time.
        """
        cache = ResolverCache(10)
        servers = (("127.0.0.1", 5353),)
        first = makeResolver(servers, 2.0, cache)
        self.assertIs(makeResolver(servers, 2.0, cache), first)
        self.assertIs(first.cache, cache)
        self.assertEqual([(n.address, n.port) for n in first.nameservers], [("127.0.0.1", 5353)])
        self.assertIsNot(makeResolver((("127.0.0.2", 53),), 2.0, cache), first)
        self.assertIsNot(makeResolver(servers, 3.0, cache), first)
        plain = dns.resolver.LRUCache(10)
        self.assertIsNot(makeResolver(servers, 2.0, plain), makeResolver(servers, 2.0, plain))


class HoldsTests(TestCase):
    """
    L{DNSAnswer.ttlSeconds}: how much longer an answer holds.
    """

    async def test_remainingTTL(self):
        """
        An answer, a negative answer and an NXDOMAIN hold for what is left
        of their TTL (or negative TTL), read from the cache the second
        time; a failure holds for no time.
        """
        server = await startDNSServer(self, [("a.test", "TXT", "v=spf1 -all")])
        server.ttl = 30
        cache = dns.resolver.LRUCache(100)

        def ask():
            return [queryBlocking(server.nameservers, 2.0, name, rtype, cache)
                    for _ in range(2) for name, rtype in [("a.test", "TXT"), ("a.test", "MX"), ("gone.test", "TXT")]]

        answers = await deferToThread(ask)
        self.assertEqual([a.status for a in answers[:3]], [FOUND, NODATA, NXDOMAIN])
        self.assertEqual(len(server.queries), 3)
        for answer in answers:
            self.assertTrue(28 < answer.ttlSeconds <= 30, answer)
        for first, again in zip(answers[:3], answers[3:]):
            self.assertLessEqual(again.ttlSeconds, first.ttlSeconds)
        server.setMode(SERVFAIL)
        failed = await deferToThread(queryBlocking, server.nameservers, 2.0, "b.test", "TXT")
        self.assertEqual((failed.status, failed.ttlSeconds), (FAILED, None))
