"""
Tests for L{qutemail.relay.mx}: MX resolution and TXT lookups against the
loopback DNS server of L{tests.dnsserver}, through a real thread pool.
"""

import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.relay.mx import DNSLookupError, MailExchanger, MXResolver
from qutemail.dns import FOUND, DNSAnswer
from qutemail.replies import DNS_TEMPFAIL, NO_SUCH_DOMAIN, NULL_MX
from tests.dnsserver import SERVFAIL, SILENT, startDNSServer

LONG_TXT = "v=DKIM1; k=rsa; p=" + "B" * 700


def byHostDescending(group: list) -> None:
    """
    A deterministic stand-in for the random shuffle: sort a group of equal
    preference by host, last first.
    """
    group.sort(key=lambda record: record[1], reverse=True)


class MXResolverTests(TestCase):
    """
    L{MXResolver} against a real DNS server on loopback.
    """

    def setUp(self):
        """
        Start a thread pool for the blocking lookups.
        """
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    async def resolverFor(self, records, timeoutSeconds: float = 2.0, **kwargs):
        """
        Start a DNS server with the records.

        @return: C{(server, resolver)}, the resolver asking that server.
        """
        server = await startDNSServer(self, records)
        return server, MXResolver(self.runner, server.nameservers, timeoutSeconds=timeoutSeconds, **kwargs)

    async def assertLookupFails(self, coroutine, reply):
        """
        Assert a lookup fails with a L{DNSLookupError} whose reply has the
        code and enhanced code of C{reply}.

        @return: the error.
        """
        with self.assertRaises(DNSLookupError) as caught:
            await coroutine
        error = caught.exception
        self.assertEqual((error.reply.code, error.reply.enhanced), (reply.code, reply.enhanced))
        self.assertEqual(error.temporary, reply.isTemporary)
        return error

    async def test_preferenceOrder(self):
        """
        Exchangers come best preference first, each with its addresses.
        """
        _, resolver = await self.resolverFor([
            ("remote.test", "MX", (20, "mx2.remote.test")),
            ("remote.test", "MX", (10, "mx1.remote.test")),
            ("remote.test", "MX", (30, "mx3.other.test")),
            ("mx1.remote.test", "A", "127.0.0.1"),
            ("mx2.remote.test", "A", "127.0.0.2"),
            ("mx3.other.test", "AAAA", "::1"),
        ])
        self.assertEqual(await resolver.resolve("Remote.Test."), [
            MailExchanger("mx1.remote.test", 10, ("127.0.0.1",)),
            MailExchanger("mx2.remote.test", 20, ("127.0.0.2",)),
            MailExchanger("mx3.other.test", 30, ("::1",)),
        ])

    async def test_equalPreferencesShuffled(self):
        """
        The shuffle reorders exchangers of equal preference only, and a host
        listed twice is kept at its best preference.
        """
        records = [("remote.test", "MX", (pref, host)) for pref, host in
                   [(10, "a.test"), (20, "c.test"), (10, "b.test"), (20, "d.test"), (30, "a.test")]]
        records += [(host, "A", "127.0.0.1") for host in ("a.test", "b.test", "c.test", "d.test")]
        _, resolver = await self.resolverFor(records, shuffle=byHostDescending)
        exchangers = await resolver.resolve("remote.test")
        self.assertEqual([(e.preference, e.host) for e in exchangers],
                         [(10, "b.test"), (10, "a.test"), (20, "d.test"), (20, "c.test")])

    async def test_defaultShuffleKeepsPreferenceOrder(self):
        """
        With the default random shuffle, preferences stay in order and every
        exchanger is there.
        """
        records = [("remote.test", "MX", (10 * (i % 3), f"mx{i}.test")) for i in range(9)]
        records += [(f"mx{i}.test", "A", "127.0.0.1") for i in range(9)]
        _, resolver = await self.resolverFor(records)
        exchangers = await resolver.resolve("remote.test")
        self.assertEqual([e.preference for e in exchangers], [0] * 3 + [10] * 3 + [20] * 3)
        self.assertEqual(sorted(e.host for e in exchangers), [f"mx{i}.test" for i in range(9)])

    async def test_maxExchangers(self):
        """
        Only the best C{maxExchangers} are looked up.
        """
        records = [("remote.test", "MX", (i, f"mx{i}.test")) for i in range(5)]
        records += [(f"mx{i}.test", "A", "127.0.0.1") for i in range(5)]
        server, resolver = await self.resolverFor(records, maxExchangers=2)
        self.assertEqual([e.host for e in await resolver.resolve("remote.test")], ["mx0.test", "mx1.test"])
        self.assertNotIn(("mx2.test", "A"), server.queries)

    async def test_multipleAddresses(self):
        """
        An exchanger's IPv4 addresses come first, then its IPv6 ones.
        """
        _, resolver = await self.resolverFor([
            ("remote.test", "MX", (10, "mx.remote.test")),
            ("mx.remote.test", "AAAA", "::1"),
            ("mx.remote.test", "A", "127.0.0.1"),
            ("mx.remote.test", "A", "127.0.0.2"),
        ])
        [exchanger] = await resolver.resolve("remote.test")
        self.assertEqual(sorted(exchanger.addresses[:2]), ["127.0.0.1", "127.0.0.2"])
        self.assertEqual(exchanger.addresses[2:], ("::1",))

    async def test_implicitMX(self):
        """
        A domain without MX records is its own exchanger, preference 0.
        """
        _, resolver = await self.resolverFor([("remote.test", "A", "127.0.0.1")])
        self.assertEqual(await resolver.resolve("remote.test"),
                         [MailExchanger("remote.test", 0, ("127.0.0.1",), implicit=True)])

    async def test_implicitMXWithoutAddress(self):
        """
        A domain with neither MX nor address records fails for now.
        """
        _, resolver = await self.resolverFor([("remote.test", "TXT", "v=spf1 -all")])
        error = await self.assertLookupFails(resolver.resolve("remote.test"), DNS_TEMPFAIL)
        self.assertIn("remote.test", error.reply.text)

    async def test_nullMX(self):
        """
        A null MX means the domain takes no mail: permanent NULL_MX, and no
        address lookup.
        """
        server, resolver = await self.resolverFor([("remote.test", "MX", (0, ".")), ("remote.test", "A", "127.0.0.1")])
        error = await self.assertLookupFails(resolver.resolve("remote.test"), NULL_MX)
        self.assertEqual(error.reply, NULL_MX)
        self.assertEqual(server.queries, [("remote.test", "MX")])

    async def test_rootAmongOtherMX(self):
        """
        A root exchange listed beside real ones is dropped.
        """
        _, resolver = await self.resolverFor([("remote.test", "MX", (0, ".")),
                                              ("remote.test", "MX", (10, "mx.remote.test")),
                                              ("mx.remote.test", "A", "127.0.0.1")])
        self.assertEqual([e.host for e in await resolver.resolve("remote.test")], ["mx.remote.test"])

    async def test_nxdomain(self):
        """
        A domain that does not exist fails for good with NO_SUCH_DOMAIN, as
        does a name that is not a domain name.
        """
        _, resolver = await self.resolverFor([("other.test", "A", "127.0.0.1")])
        error = await self.assertLookupFails(resolver.resolve("remote.test"), NO_SUCH_DOMAIN)
        self.assertEqual(error.reply, NO_SUCH_DOMAIN)
        await self.assertLookupFails(resolver.resolve("bad..name"), NO_SUCH_DOMAIN)

    async def test_servfail(self):
        """
        SERVFAIL is a temporary failure naming the domain.
        """
        server, resolver = await self.resolverFor([("remote.test", "MX", (10, "mx.remote.test"))])
        server.setMode(SERVFAIL)
        error = await self.assertLookupFails(resolver.resolve("remote.test"), DNS_TEMPFAIL)
        self.assertEqual(error.reply.text, "Temporary DNS failure for remote.test (server failure), will retry")

    async def test_timeout(self):
        """
        A server that never answers gives a temporary failure once the
        lookup's lifetime is over.
        """
        server, resolver = await self.resolverFor([("remote.test", "MX", (10, "mx.remote.test"))],
                                                  timeoutSeconds=0.5)
        server.setMode(SILENT)
        started = time.monotonic()
        error = await self.assertLookupFails(resolver.resolve("remote.test"), DNS_TEMPFAIL)
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertIn("timeout", error.reply.text)
        self.assertIn(("remote.test", "MX"), server.queries)

    async def test_noNameserverListening(self):
        """
        Nothing listening at the nameserver's port is a temporary failure.
        """
        server, resolver = await self.resolverFor([], timeoutSeconds=0.5)
        await server.stop()
        await self.assertLookupFails(resolver.resolve("remote.test"), DNS_TEMPFAIL)

    async def test_brokenExchangersSkipped(self):
        """
        Exchangers whose address lookups fail, time out, or find nothing
        are skipped; the rest are used.
        """
        server, resolver = await self.resolverFor([
            ("remote.test", "MX", (10, "broken.remote.test")),
            ("remote.test", "MX", (20, "slow.remote.test")),
            ("remote.test", "MX", (30, "missing.remote.test")),
            ("remote.test", "MX", (40, "good.remote.test")),
            ("broken.remote.test", "A", "127.0.0.3"),
            ("slow.remote.test", "A", "127.0.0.4"),
            ("good.remote.test", "A", "127.0.0.1"),
        ], timeoutSeconds=0.5)
        server.setMode(SERVFAIL, "broken.remote.test")
        server.setMode(SILENT, "slow.remote.test")
        self.assertEqual(await resolver.resolve("remote.test"),
                         [MailExchanger("good.remote.test", 40, ("127.0.0.1",))])

    async def test_noExchangerHasAddress(self):
        """
        When no exchanger has an address, the failure is temporary.
        """
        server, resolver = await self.resolverFor([("remote.test", "MX", (10, "mx.remote.test")),
                                                   ("remote.test", "MX", (20, "mx2.remote.test")),
                                                   ("mx2.remote.test", "A", "127.0.0.1")])
        server.setMode(SERVFAIL, "mx2.remote.test")
        error = await self.assertLookupFails(resolver.resolve("remote.test"), DNS_TEMPFAIL)
        self.assertIn("no mail exchanger has an address", error.reply.text)

    async def test_lookupTXT(self):
        """
        TXT records come back one string per record, long ones joined.
        """
        server, resolver = await self.resolverFor([("sel._domainkey.remote.test", "TXT", LONG_TXT),
                                                   ("remote.test", "TXT", "v=spf1 mx -all"),
                                                   ("remote.test", "TXT", ("other ", "record"))])
        self.assertEqual(await resolver.lookupTXT("sel._domainkey.remote.test"), [LONG_TXT])
        self.assertEqual(sorted(await resolver.lookupTXT("remote.test")), ["other record", "v=spf1 mx -all"])
        self.assertEqual(await resolver.lookupTXT("nothing.remote.test"), [])
        server.add("a.remote.test", "A", "127.0.0.1")
        self.assertEqual(await resolver.lookupTXT("a.remote.test"), [])
        server.setMode(SERVFAIL)
        await self.assertLookupFails(resolver.lookupTXT("remote.test"), DNS_TEMPFAIL)


class FakeQueryTests(TestCase):
    """
    The parts of L{MXResolver} that need no DNS server, with answers made
    up by a fake C{queryBlocking} run inline.
    """

    async def test_programmingErrorsSurface(self):
        """
        An unexpected error in an address lookup is raised as itself, not
        wrapped and not taken for a DNS failure.
        """
        calls = []

        class Runner(InlineRunner):
            """
            Answers the MX query, then breaks.
            """

            def run(self, f, *args):
                """
                Record the call; the first answers, the rest raise.
                """
                calls.append(args)
                if len(calls) == 1:
                    return InlineRunner.run(self, lambda: DNSAnswer(FOUND, ((10, "mx.test"),)))
                return InlineRunner.run(self, lambda: 1 / 0)

        with self.assertRaises(ZeroDivisionError):
            await MXResolver(Runner()).resolve("remote.test")
        self.assertEqual([args[2:] for args in calls], [("remote.test", "MX"), ("mx.test", "A"), ("mx.test", "AAAA")])
