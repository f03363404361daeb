"""
Tests of the loopback DNS server fixture in L{tests.dnsserver}, queried by
dnspython in threads.
"""

import socket

import dns.exception
import dns.flags
import dns.message
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.dnsserver import SERVFAIL, SILENT, characterStrings, startDNSServer, zoneRecords

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 600


def query(server, name: str, rdtype: str, tcp: bool = False, timeout: float = 2.0):
    """
    Ask the server one question with dnspython, in a thread.

    @return: a Deferred firing with the response message.
    """
    message = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return deferToThread(send, message, "127.0.0.1", timeout=timeout, port=server.port)


def closedByPeer(client: socket.socket) -> bool:
    """
    Wait for the peer to close a connection (blocking: run it in a thread).

    @return: C{True} once it is closed, cleanly or by a reset; C{False} if
        data came instead.
    """
    try:
        return client.recv(10) == b""
    except ConnectionResetError:
        return True


def rdatas(response, rdtype: str) -> list:
    """
    @return: the answer section's records of one type.
    """
    wanted = dns.rdatatype.from_text(rdtype)
    return [rdata for rrset in response.answer if rrset.rdtype == wanted for rdata in rrset]


class DNSServerTests(TestCase):
    """
    The fixture answers as an authoritative server, over UDP and TCP.
    """

    async def test_addressOverUDPAndTCP(self):
        """
        An A query is answered, authoritatively, over UDP and over TCP on
        the same port.
        """
        server = await startDNSServer(self, [("mx.remote.test", "A", "127.0.0.1"),
                                             ("mx.remote.test", "A", "127.0.0.2")])
        self.assertEqual(server.nameservers, (("127.0.0.1", server.port),))
        for tcp in (False, True):
            response = await query(server, "MX.Remote.Test.", "A", tcp=tcp)
            self.assertEqual(response.rcode(), dns.rcode.NOERROR)
            self.assertTrue(response.flags & dns.flags.AA)
            self.assertEqual(sorted(r.address for r in rdatas(response, "A")), ["127.0.0.1", "127.0.0.2"])
        self.assertEqual(server.queries, [("mx.remote.test", "A")] * 2)

    async def test_mxAndNullMX(self):
        """
        MX records carry preference and exchange; a null MX's exchange is
        the root.
        """
        server = await startDNSServer(self, [("remote.test", "MX", (20, "mx2.remote.test")),
                                             ("remote.test", "MX", (10, "mx1.remote.test.")),
                                             ("null.test", "MX", (0, "."))])
        response = await query(server, "remote.test", "MX")
        self.assertEqual(sorted((r.preference, r.exchange.to_text()) for r in rdatas(response, "MX")),
                         [(10, "mx1.remote.test."), (20, "mx2.remote.test.")])
        response = await query(server, "null.test", "MX")
        self.assertEqual([(r.preference, r.exchange.to_text()) for r in rdatas(response, "MX")], [(0, ".")])

    async def test_longTXT(self):
        """
        A TXT value longer than 255 bytes goes out as several
        character-strings that join back to the value.  Over UDP the answer
        is too big for 512 bytes, so it is truncated (TC, no records) and a
        resolver gets it over TCP.
        """
        name = "sel._domainkey.example.test"
        server = await startDNSServer(self, [(name, "TXT", LONG_TXT)])
        response = await query(server, name, "TXT")
        self.assertTrue(response.flags & dns.flags.TC)
        self.assertEqual(response.answer, [])
        response = await query(server, name, "TXT", tcp=True)
        [record] = rdatas(response, "TXT")
        self.assertEqual([len(s) for s in record.strings], [255, 255, 108])
        self.assertEqual(b"".join(record.strings).decode("ascii"), LONG_TXT)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in server.nameservers]
        answer = await deferToThread(resolver.resolve, name, "TXT", lifetime=5)
        self.assertEqual([b"".join(r.strings).decode("ascii") for r in answer], [LONG_TXT])
        self.assertEqual(server.queries, [(name, "TXT")] * 4)

    async def test_ednsPayload(self):
        """
        A client offering a larger UDP payload with EDNS gets the long
        answer over UDP.
        """
        server = await startDNSServer(self, [("sel._domainkey.example.test", "TXT", LONG_TXT)])
        message = dns.message.make_query("sel._domainkey.example.test", "TXT", use_edns=0, payload=1232)
        response = await deferToThread(dns.query.udp, message, "127.0.0.1", timeout=2, port=server.port)
        self.assertFalse(response.flags & dns.flags.TC)
        [record] = rdatas(response, "TXT")
        self.assertEqual(b"".join(record.strings).decode("ascii"), LONG_TXT)

    def test_characterStrings(self):
        """
        Given character-strings are kept; one over 255 bytes is refused.
        """
        self.assertEqual(characterStrings(("a", b"b")), [b"a", b"b"])
        self.assertEqual(characterStrings(""), [b""])
        self.assertRaises(ValueError, characterStrings, ("x" * 256,))

    async def test_nxdomainAndNoData(self):
        """
        A name that does not exist gets NXDOMAIN; an existing name, or an
        empty non-terminal, without the type gets NOERROR and no answer;
        both carry the zone's SOA.
        """
        server = await startDNSServer(self, [("sel._domainkey.example.test", "TXT", "v=DKIM1; p=")])
        response = await query(server, "nowhere.example.test", "MX")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual([rrset.rdtype for rrset in response.authority], [dns.rdatatype.SOA])
        for name in ("sel._domainkey.example.test", "_domainkey.example.test", "example.test"):
            response = await query(server, name, "MX")
            self.assertEqual((response.rcode(), response.answer), (dns.rcode.NOERROR, []), name)
            self.assertEqual([rrset.rdtype for rrset in response.authority], [dns.rdatatype.SOA])

    async def test_changeWhileRunning(self):
        """
        Records added, replaced or removed while the server runs show in the
        next answer.
        """
        server = await startDNSServer(self, [("remote.test", "A", "192.0.2.1")])
        server.add("remote.test", "A", "192.0.2.2")
        response = await query(server, "remote.test", "A")
        self.assertEqual(sorted(r.address for r in rdatas(response, "A")), ["192.0.2.1", "192.0.2.2"])
        server.set("remote.test", "A", "192.0.2.9")
        response = await query(server, "remote.test", "A")
        self.assertEqual([r.address for r in rdatas(response, "A")], ["192.0.2.9"])
        server.set("remote.test", "A")
        response = await query(server, "remote.test", "A")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)
        server.add("remote.test", "TXT", "hello")
        server.remove("remote.test")
        response = await query(server, "remote.test", "TXT")
        self.assertEqual(response.rcode(), dns.rcode.NXDOMAIN)

    async def test_silent(self):
        """
        A silent server reads the query and never answers, over UDP and
        TCP; its open TCP connection is closed when the test ends.
        """
        server = await startDNSServer(self, [("remote.test", "A", "192.0.2.1")], mode=SILENT)
        for tcp in (False, True):
            with self.assertRaises(dns.exception.Timeout):
                await query(server, "remote.test", "A", tcp=tcp, timeout=0.3)
        self.assertEqual(server.queries, [("remote.test", "A")] * 2)

    async def test_stopClosesConnections(self):
        """
        Stopping the server closes a TCP connection that is still open.
        """
        server = await startDNSServer(self)
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.addCleanup(client.close)
        for _ in range(200):
            if server._connections:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(len(server._connections), 1)
        await server.stop()
        self.assertTrue(await deferToThread(closedByPeer, client))

    async def test_servfail(self):
        """
        The whole server, or one name, can answer SERVFAIL.
        """
        server = await startDNSServer(self, [("remote.test", "A", "192.0.2.1"), ("ok.test", "A", "192.0.2.2")])
        server.setMode(SERVFAIL, "remote.test")
        self.assertEqual((await query(server, "remote.test", "A")).rcode(), dns.rcode.SERVFAIL)
        self.assertEqual((await query(server, "ok.test", "A")).rcode(), dns.rcode.NOERROR)
        server.setMode(SERVFAIL)
        self.assertEqual((await query(server, "ok.test", "A")).rcode(), dns.rcode.SERVFAIL)
        self.assertRaises(ValueError, server.setMode, "sulk")

    async def test_modeOfOneType(self):
        """
        One type of a name can be silent while its other types answer; a
        mode for a type needs a name.
        """
        server = await startDNSServer(self, [("slow.test", "TXT", "v=spf1 -all"), ("slow.test", "A", "192.0.2.3")])
        server.setMode(SILENT, "slow.test", "a")
        self.assertEqual(rdatas(await query(server, "slow.test", "TXT"), "TXT")[0].strings, (b"v=spf1 -all",))
        with self.assertRaises(dns.exception.Timeout):
            await query(server, "slow.test", "A", timeout=0.3)
        self.assertRaises(ValueError, server.setMode, SILENT, None, "A")

    async def test_spfType(self):
        """
        The retired SPF type (99) is served apart from TXT, and read from
        zone text.
        """
        server = await startDNSServer(self, zoneRecords("old.test. 300 IN SPF \"v=spf1 -all\"\n", "test."))
        self.assertEqual(rdatas(await query(server, "old.test", "SPF"), "SPF")[0].strings, (b"v=spf1 -all",))
        self.assertEqual(rdatas(await query(server, "old.test", "TXT"), "TXT"), [])

    async def test_cname(self):
        """
        A CNAME is followed inside the zone, the answer holding the alias
        and the target's records.
        """
        server = await startDNSServer(self, [("key.example.test", "CNAME", "key.provider.test"),
                                             ("key.provider.test", "TXT", "v=DKIM1; p=")])
        response = await query(server, "key.example.test", "TXT")
        self.assertEqual([r.target.to_text() for r in rdatas(response, "CNAME")], ["key.provider.test."])
        self.assertEqual([r.strings for r in rdatas(response, "TXT")], [(b"v=DKIM1; p=",)])

    async def test_outsideOrigin(self):
        """
        A server with an origin refuses names outside it.
        """
        server = await startDNSServer(self, [("a.remote.test", "A", "192.0.2.1")], origin="remote.test")
        self.assertEqual((await query(server, "other.test", "A")).rcode(), dns.rcode.REFUSED)
        self.assertEqual((await query(server, "b.remote.test", "A")).rcode(), dns.rcode.NXDOMAIN)

    async def test_zoneRecords(self):
        """
        Zone-file text, read by dnspython's parser, is served as written.
        """
        text = ('@ 3600 IN MX 10 mx\n'
                'mx 3600 IN A 127.0.0.1\n'
                'sel._domainkey 3600 IN TXT ( "v=DKIM1; k=rsa; " "p=abc" )\n')
        records = zoneRecords(text, "remote.test")
        self.assertIn(("remote.test.", "MX", (10, "mx.remote.test.")), records)
        server = await startDNSServer(self, records)
        response = await query(server, "sel._domainkey.remote.test", "TXT")
        self.assertEqual([r.strings for r in rdatas(response, "TXT")], [(b"v=DKIM1; k=rsa; ", b"p=abc")])

    def test_unknownType(self):
        """
        A record of a type the server does not serve is refused at once.
        """
        from tests.dnsserver import DNSServer
        self.assertRaises(ValueError, DNSServer(reactor).add, "remote.test", "SRV", "x")
