# -*- test-case-name: tests.test_dnsserver -*-
"""
A real authoritative DNS server on loopback, for tests that need DNS (MX, A,
AAAA, TXT for SPF, DKIM and DMARC).

The server is built from C{twisted.names} protocols and listens on
127.0.0.1, UDP and TCP on the same free port, so a test points dnspython (or
our configuration's C{[relay] nameservers}) at L{DNSServer.nameservers}.
Records are tuples C{(name, type, value)}::

    ("remote.test", "MX", (10, "mx.remote.test"))
    ("remote.test", "MX", (0, "."))                   # null MX (RFC 7505)
    ("mx.remote.test", "A", "127.0.0.1")
    ("mx.remote.test", "AAAA", "::1")
    ("sel._domainkey.example.test", "TXT", "v=DKIM1; k=rsa; p=...")
    ("old.example.test", "SPF", "v=spf1 -all")         # type 99 (RFC 4408)
    ("alias.test", "CNAME", "remote.test")

A C{str} TXT value is one logical string, split into 255-byte
character-strings on the wire (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2); a
tuple of strings gives the character-strings themselves.

The server is authoritative for every name under its origin (the root by
default): a name with no records and nothing below it gets NXDOMAIN, a name
that exists without the asked type gets NOERROR with no answer, both with
the zone's SOA in the authority section (RFC 2308).  Names outside the
origin are refused.  A whole server, or single names, can instead be
I{silent} (queries are read and never answered: timeouts) or answer
I{SERVFAIL}; so can single types of a name.
"""

from typing import Any, Iterable

import attrs
from dns import zone as dnszone
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ServerFactory
from twisted.names import dns

ANSWER = "answer"
SILENT = "silent"
SERVFAIL = "servfail"
_MODES = (ANSWER, SILENT, SERVFAIL)

_TYPES = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "MX": dns.MX,
    "TXT": dns.TXT,
    "CNAME": dns.CNAME,
    "PTR": dns.PTR,
    "NS": dns.NS,
    # RFC 4408's SPF type, which RFC 7208 §3.1 retired: served so that tests
    # can show it is ignored
    "SPF": dns.SPF,
}
_TYPE_NAMES = {number: name for name, number in _TYPES.items()}
# RFC 1034 §3.6.2: a resolver follows CNAMEs, but not forever
_MAX_CNAME_CHAIN = 8


def normaliseName(name: str) -> str:
    """
    @param name: a domain name, absolute or not, in any case.
    @return: the name in lower case without the final dot; C{""} for the
        root.
    """
    return name.lower().rstrip(".")


def characterStrings(value: str | bytes | tuple | list) -> list[bytes]:
    """
    Split a TXT value into DNS character-strings.

    @param value: one logical string (C{str} or C{bytes}), split into pieces
        of at most 255 bytes; or a tuple/list of strings used as they are.
    @return: the character-strings.
    @raise ValueError: when a given character-string is longer than 255
        bytes.
    """
    if isinstance(value, (tuple, list)):
        pieces = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in value]
        for piece in pieces:
            if len(piece) > 255:
                raise ValueError(f"a TXT character-string is at most 255 bytes, not {len(piece)}")
        return pieces
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def _payload(rtype: str, value: Any, ttl: int):
    """
    Build the C{twisted.names} record for one C{(type, value)}.

    @raise ValueError: for an unknown type or a bad value.
    """
    if rtype == "A":
        return dns.Record_A(value, ttl=ttl)
    if rtype == "AAAA":
        return dns.Record_AAAA(value, ttl=ttl)
    if rtype == "MX":
        preference, exchange = value
        return dns.Record_MX(int(preference), normaliseName(exchange).encode("ascii"), ttl=ttl)
    if rtype == "TXT":
        return dns.Record_TXT(*characterStrings(value), ttl=ttl)
    if rtype == "SPF":
        return dns.Record_SPF(*characterStrings(value), ttl=ttl)
    if rtype in ("CNAME", "PTR", "NS"):
        recordClass = {"CNAME": dns.Record_CNAME, "PTR": dns.Record_PTR, "NS": dns.Record_NS}[rtype]
        return recordClass(normaliseName(value).encode("ascii"), ttl=ttl)
    raise ValueError(f"unsupported record type {rtype!r} (known: {', '.join(_TYPES)})")


def zoneRecords(text: str, origin: str) -> list[tuple[str, str, Any]]:
    """
    Turn zone-file text into records for L{DNSServer}, through dnspython's
    zone parser (C{twisted.names}' own parser cuts lines at any C{;}, even
    inside quotes, so it cannot read SPF, DKIM or DMARC records).

    @param text: zone-file lines; no SOA or NS needed.
    @param origin: the zone's origin, for relative names.
    @return: C{(name, type, value)} tuples of the types L{DNSServer} serves;
        TXT values keep their character-strings.
    """
    zone = dnszone.from_text(text, origin=origin, relativize=False, check_origin=False)
    records = []
    for name, rdataset in zone.iterate_rdatasets():
        rtype = dns.QUERY_TYPES.get(rdataset.rdtype)
        for rdata in rdataset:
            owner = name.to_text()
            if rtype == "MX":
                records.append((owner, rtype, (rdata.preference, rdata.exchange.to_text())))
            elif rtype in ("TXT", "SPF"):
                records.append((owner, rtype, tuple(rdata.strings)))
            elif rtype in ("CNAME", "PTR", "NS"):
                records.append((owner, rtype, rdata.target.to_text()))
            elif rtype in ("A", "AAAA"):
                records.append((owner, rtype, rdata.address))
    return records


def _udpPayloadBytes(query: dns.Message) -> int:
    """
    The largest UDP answer a client takes: 512 bytes (RFC 1035 §4.2.1), or
    what its EDNS OPT record offers (RFC 6891 §6.2.3; the size is in the
    record's class field).
    """
    offers = [header.cls for header in query.additional if header.type == dns.OPT]
    return max([512] + offers)


class _StreamFactory(ServerFactory):
    """
    Builds one C{twisted.names} TCP protocol per connection, all reporting
    to the same L{DNSServer}.
    """

    def __init__(self, server: "DNSServer") -> None:
        """
        @param server: the controller of every protocol.
        """
        self.server = server

    def buildProtocol(self, addr):
        """
        @return: a L{dns.DNSProtocol} controlled by the server.
        """
        return dns.DNSProtocol(self.server, self.server.reactor)


@attrs.define(eq=False)
class DNSServer:
    """
    An authoritative DNS server on loopback with records a test sets.

    It is the controller of the C{twisted.names} protocols: they call
    L{messageReceived}, L{connectionMade} and L{connectionLost}.

    @ivar reactor: the reactor it listens with.
    @ivar origin: the zone it is authoritative for (C{""}: everything).
    @ivar ttl: the TTL of every record.
    @ivar mode: the default behaviour: L{ANSWER}, L{SILENT} or L{SERVFAIL}.
    @ivar queries: every query received, as C{(name, type)}, names
        normalised by L{normaliseName}, types as names (C{"MX"}).
    """

    reactor: Any
    origin: str = attrs.field(default="", converter=normaliseName)
    ttl: int = 300
    mode: str = attrs.field(default=ANSWER, validator=attrs.validators.in_(_MODES))
    queries: list = attrs.field(factory=list)
    _records: dict = attrs.field(factory=dict)
    _nameModes: dict = attrs.field(factory=dict)
    _udpPort: Any = None
    _tcpPort: Any = None
    _connections: dict = attrs.field(factory=dict)

    @property
    def port(self) -> int:
        """
        The port number, the same for UDP and TCP.
        """
        return self._udpPort.getHost().port

    @property
    def nameservers(self) -> tuple[tuple[str, int], ...]:
        """
        This server as C{[relay] nameservers} holds it: C{(("127.0.0.1",
        port),)}.
        """
        return (("127.0.0.1", self.port),)

    def add(self, name: str, rtype: str, value: Any) -> None:
        """
        Add one record, keeping those already there.

        @param name: the owner name.
        @param rtype: C{"A"}, C{"AAAA"}, C{"MX"}, C{"TXT"}, C{"CNAME"},
            C{"PTR"}, C{"NS"} or C{"SPF"} (type 99, given like TXT).
        @param value: see the module docstring.
        @raise ValueError: for an unknown type or a bad value.
        """
        rtype = rtype.upper()
        payload = _payload(rtype, value, self.ttl)
        self._records.setdefault(normaliseName(name), []).append(payload)

    def set(self, name: str, rtype: str, *values: Any) -> None:
        """
        Replace every record of one name and type; no values removes them.

        @param name: the owner name.
        @param rtype: the type, as for L{add}.
        @param values: the new values.
        """
        rtype = rtype.upper()
        payloads = [_payload(rtype, value, self.ttl) for value in values]
        key = normaliseName(name)
        kept = [p for p in self._records.get(key, []) if p.TYPE != _TYPES[rtype]]
        self._records[key] = kept + payloads
        if not self._records[key]:
            del self._records[key]

    def remove(self, name: str) -> None:
        """
        Remove every record of a name (it then gets NXDOMAIN, unless names
        below it exist).
        """
        self._records.pop(normaliseName(name), None)

    def load(self, records: Iterable[tuple[str, str, Any]]) -> None:
        """
        Add several records.

        @param records: C{(name, type, value)} tuples.
        """
        for name, rtype, value in records:
            self.add(name, rtype, value)

    def setMode(self, mode: str, name: str | None = None, rtype: str | None = None) -> None:
        """
        Choose how queries are treated.

        @param mode: L{ANSWER}, L{SILENT} (read, never answered) or
            L{SERVFAIL}.
        @param name: only queries for this name; C{None} for the whole
            server (names given their own mode keep it).
        @param rtype: with C{name}, only queries for this type of it (e.g.
            C{"TXT"}); such a mode wins over the name's own.
        @raise ValueError: for an unknown mode, or C{rtype} without
            C{name}.
        """
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if name is None:
            if rtype is not None:
                raise ValueError("a mode for a type needs a name")
            self.mode = mode
        elif rtype is None:
            self._nameModes[normaliseName(name)] = mode
        else:
            self._nameModes[normaliseName(name), rtype.upper()] = mode

    def answer(self, name: str, qtype: int) -> tuple[int, list, list]:
        """
        Work out the answer to one query from the records, as an
        authoritative server does.

        @param name: the queried name, normalised.
        @param qtype: the queried type number.
        @return: C{(rCode, answers, authority)}, the last two lists of
            L{dns.RRHeader}.
        """
        if not self._inZone(name):
            return dns.EREFUSED, [], []
        answers = []
        for _ in range(_MAX_CNAME_CHAIN):
            entries = self._records.get(name, [])
            found = [p for p in entries if qtype in (p.TYPE, dns.ALL_RECORDS)]
            if qtype in (dns.SOA, dns.ALL_RECORDS) and name == self.origin:
                found.append(self._soa())
            if found:
                return dns.OK, answers + [self._header(name, p) for p in found], []
            aliases = [p for p in entries if p.TYPE == dns.CNAME]
            if not aliases:
                break
            answers.append(self._header(name, aliases[0]))
            name = aliases[0].name.name.decode("ascii")
            if not self._inZone(name):
                return dns.OK, answers, []
        rCode = dns.OK if self._exists(name) else dns.ENAME
        return rCode, answers, [self._header(self.origin, self._soa())]

    def _inZone(self, name: str) -> bool:
        """
        Whether a name is at or under the origin.
        """
        return not self.origin or name == self.origin or name.endswith("." + self.origin)

    def _exists(self, name: str) -> bool:
        """
        Whether a name has records, is the origin, or has names below it
        (an empty non-terminal exists: RFC 8020).
        """
        if name == self.origin or self._records.get(name):
            return True
        suffix = "." + name if name else ""
        return any(owner.endswith(suffix) for owner, entries in self._records.items() if entries)

    def _soa(self):
        """
        The zone's SOA record.
        """
        zone = self.origin.encode("ascii")
        host = b"ns." + zone if zone else b"ns.test"
        return dns.Record_SOA(mname=host, rname=b"hostmaster." + host, serial=1, refresh=3600,
                              retry=600, expire=86400, minimum=self.ttl, ttl=self.ttl)

    def _header(self, name: str, payload) -> dns.RRHeader:
        """
        Wrap a record for a message, marked authoritative.
        """
        return dns.RRHeader(name.encode("ascii"), payload.TYPE, dns.IN, self.ttl, payload, auth=True)

    def messageReceived(self, message: dns.Message, protocol, address=None) -> None:
        """
        Answer a query, or don't (silent mode); called by the protocols.

        @param message: the query.
        @param protocol: the protocol that read it, to write the answer.
        @param address: the client's address for UDP, C{None} for TCP.
        """
        if message.answer or message.opCode != dns.OP_QUERY or len(message.queries) != 1:
            rCode, answers, authority = dns.EFORMAT, [], []
        else:
            query = message.queries[0]
            name = normaliseName(query.name.name.decode("ascii", "replace"))
            typeName = _TYPE_NAMES.get(query.type, dns.QUERY_TYPES.get(query.type, str(query.type)))
            self.queries.append((name, typeName))
            mode = self._nameModes.get((name, typeName), self._nameModes.get(name, self.mode))
            if mode == SILENT:
                return
            if mode == SERVFAIL:
                rCode, answers, authority = dns.ESERVER, [], []
            else:
                rCode, answers, authority = self.answer(name, query.type)
        # maxSize=0: Twisted would cut the message at any byte; we truncate
        # whole sections below instead
        response = dns.Message(id=message.id, answer=1, opCode=message.opCode, recDes=message.recDes,
                               auth=int(rCode in (dns.OK, dns.ENAME)), rCode=rCode, maxSize=0)
        response.queries = message.queries[:1]
        response.answers = answers
        response.authority = authority
        if address is None:
            protocol.writeMessage(response)
            return
        if len(response.toStr()) > _udpPayloadBytes(message):
            # RFC 2181 §9: set TC and drop the records; the client asks again over TCP
            response.answers, response.authority, response.trunc = [], [], 1
        protocol.writeMessage(response, address)

    def connectionMade(self, protocol) -> None:
        """
        Track a TCP connection, so L{stop} can close it.
        """
        self._connections[protocol] = Deferred()

    def connectionLost(self, protocol) -> None:
        """
        Forget a closed TCP connection.
        """
        self._connections.pop(protocol).callback(None)

    def listen(self, attempts: int = 20) -> None:
        """
        Listen on a free loopback port, UDP and TCP on the same number.

        @param attempts: how many UDP ports to try before giving up, when
            the matching TCP port is taken.
        @raise CannotListenError: when no port worked.
        """
        for _ in range(attempts):
            udpPort = self.reactor.listenUDP(0, dns.DNSDatagramProtocol(self, self.reactor), interface="127.0.0.1")
            try:
                tcpPort = self.reactor.listenTCP(udpPort.getHost().port, _StreamFactory(self), interface="127.0.0.1")
            except CannotListenError:
                udpPort.stopListening()
                continue
            self._udpPort, self._tcpPort = udpPort, tcpPort
            return
        raise CannotListenError("127.0.0.1", 0, "no port free for both UDP and TCP")

    def stop(self) -> Deferred:
        """
        Stop listening and close every open TCP connection.

        @return: a Deferred that fires once the ports and connections are
            closed.
        """
        waits = [maybeDeferred(port.stopListening) for port in (self._udpPort, self._tcpPort) if port is not None]
        self._udpPort = self._tcpPort = None
        for protocol, lost in list(self._connections.items()):
            waits.append(lost)
            protocol.transport.abortConnection()
        return gatherResults(waits, consumeErrors=True)


async def startDNSServer(testCase, records: Iterable[tuple[str, str, Any]] = (), *, mode: str = ANSWER,
                         origin: str = ".", reactor: Any = None) -> DNSServer:
    """
    Start a L{DNSServer} for one test; it stops when the test ends.

    @param testCase: the test; the server's L{DNSServer.stop} is registered
        with its C{addCleanup}.
    @param records: the initial C{(name, type, value)} records.
    @param mode: the server's default mode (L{ANSWER}, L{SILENT},
        L{SERVFAIL}).
    @param origin: the zone it is authoritative for; the root by default.
    @param reactor: the reactor; the global one if C{None}.
    @return: the listening server.
    """
    if reactor is None:
        from twisted.internet import reactor
    server = DNSServer(reactor, origin=origin, mode=mode)
    server.load(records)
    server.listen()
    testCase.addCleanup(server.stop)
    return server
