"""
Tests for L{qutemail.relay.sender}: real ESMTP sessions over loopback with a
scripted remote exchanger.
"""

import datetime

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from qutemail.tlsserver import generateSelfSigned
from qutemail.relay.sender import Relay, remoteReply
from qutemail.replies import Reply
from tests.relay.remote import Script, selfSignedContext, startRemote
from tests.test_tlsclient import TestCA

BODY = b"From: bob@example.test\nTo: dave@remote.test\nSubject: hi\n\nline one\n.dot line\n..two dots\n\xc3\xa9t\xc3\xa9\n"


@attrs.frozen
class Exchanger:
    """
    What an MX resolver returns for one exchanger.
    """

    host: str
    addresses: list[str]


@attrs.define
class FixedExchangers:
    """
    A resolver answering every domain with the same exchangers (the DNS
    path itself is tested against a real DNS server in test_mx and the
    end-to-end tests).
    """

    exchangers: list[Exchanger]
    asked: list[str] = attrs.field(factory=list)

    async def resolve(self, domain: str) -> list[Exchanger]:
        """
        The fixed answer.
        """
        self.asked.append(domain)
        return self.exchangers


def expectedWire(body: bytes, prefix: bytes = b"") -> bytes:
    """
    What the remote should record: CRLF line ends, stuffing removed.
    """
    return (prefix + body).replace(b"\n", b"\r\n")


def freeClosedPort() -> int:
    """
    @return: a loopback port nobody listens on.
    """
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RemoteReplyTests(TestCase):
    """
    L{remoteReply} keeps the remote's enhanced code when it has one.
    """

    def test_enhanced(self) -> None:
        """
        An enhanced code of the right class is kept; its text follows.
        """
        self.assertEqual(remoteReply(550, b"5.1.1 No such user\nreally"),
                         Reply(550, "5.1.1", "No such user really"))

    def test_missingOrWrongClass(self) -> None:
        """
        Without an enhanced code, or with one of another class, X.0.0 is used.
        """
        self.assertEqual(remoteReply(451, b"try later"), Reply(451, "4.0.0", "try later"))
        self.assertEqual(remoteReply(451, b"5.1.1 odd"), Reply(451, "4.0.0", "5.1.1 odd"))


class RelayTests(TestCase):
    """
    L{Relay.deliver} over real loopback sockets.
    """

    def relay(self, remotePort: int, **kwargs) -> Relay:
        """
        A relay whose only exchanger is the remote on loopback.
        """
        resolver = kwargs.pop("resolver", None) or FixedExchangers([Exchanger("mx.remote.test", ["127.0.0.1"])])
        return Relay(reactor=reactor, resolver=resolver, hostname="mail.example.test", mxPort=remotePort,
                     **kwargs)

    def deliver(self, relay: Relay, recipients: list[str], body: bytes = BODY, prefix: bytes = b"",
                sender: str = "bob@example.test") -> Deferred:
        """
        Deliver C{body} from a file.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        return Deferred.fromCoroutine(relay.deliver(
            domain="remote.test", sender=sender, recipients=recipients, body=lambda: open(path, "rb"),
            sizeBytes=len(body), prefix=prefix))

    async def test_delivers(self) -> None:
        """
        Two recipients go in one session over opportunistic STARTTLS, with
        SIZE and BODY=8BITMIME, the prefix before the body, and dot lines
        arriving intact.
        """
        remote = await startRemote(self, tlsContext=selfSignedContext())
        prefix = b"DKIM-Signature: v=1; a=rsa-sha256;\n b=abc\n"
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test", "erin@remote.test"],
                                     prefix=prefix)
        self.assertEqual({r: reply.code for r, reply in replies.items()},
                         {"dave@remote.test": 250, "erin@remote.test": 250})
        self.assertEqual(len(remote.received), 1)
        received = remote.received[0]
        self.assertEqual((received.sender, received.recipients, received.tls),
                         ("bob@example.test", ["dave@remote.test", "erin@remote.test"], True))
        self.assertEqual(received.data, expectedWire(BODY, prefix))
        self.assertEqual(received.mailParameters, b"SIZE=%d BODY=8BITMIME" % (len(BODY) + len(prefix)))
        self.assertEqual(sum(1 for c in remote.commands if c.startswith(b"MAIL")), 1)

    async def test_nullSender(self) -> None:
        """
        A bounce goes out with MAIL FROM:<>.
        """
        remote = await startRemote(self)
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test"], sender="")
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertIn(b"MAIL FROM:<> SIZE=%d BODY=8BITMIME" % len(BODY), remote.commands)

    async def test_dotAtChunkBoundary(self) -> None:
        """
        A line starting with a dot right where one read chunk ends and the
        next begins is still stuffed (Twisted's own transform misses it),
        and a lone dot line never ends the data early.
        """
        remote = await startRemote(self)
        head = b"Subject: dots\n\n"
        filler = b"x" * (2**14 - len(head) - 1) + b"\n"
        body = head + filler + b".\n.hidden\nend\n"
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test"], body=body)
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertEqual(remote.received[0].data, expectedWire(body))

    async def test_perRecipient(self) -> None:
        """
        A recipient refused at RCPT gets the remote's reply; the other gets
        the reply to the end of data.
        """
        remote = await startRemote(self, Script(rcpt={"nobody@remote.test": [b"550 5.1.1 No such user"]}))
        replies = await self.deliver(self.relay(remote.port), ["nobody@remote.test", "dave@remote.test"])
        self.assertEqual(replies["nobody@remote.test"], Reply(550, "5.1.1", "No such user"))
        self.assertEqual(replies["dave@remote.test"], Reply(250, "2.0.0", "Queued"))
        self.assertEqual(remote.received[0].recipients, ["dave@remote.test"])
        await remote.whenIdle()
        self.assertEqual(remote.commands[-1], b"QUIT")

    async def test_everyRecipientRefused(self) -> None:
        """
        When the remote refuses every RCPT with 550 5.1.1, each recipient
        gets that reply (not a lost connection), no DATA is sent, the
        session ends with QUIT, and nothing is logged as an error.
        """
        remote = await startRemote(self, Script(everyRcpt=b"550 5.1.1 No such user"))
        replies = await self.deliver(self.relay(remote.port), ["nobody@remote.test", "noone@remote.test"])
        self.assertEqual(replies, {"nobody@remote.test": Reply(550, "5.1.1", "No such user"),
                                   "noone@remote.test": Reply(550, "5.1.1", "No such user")})
        await remote.whenIdle()
        self.assertEqual([c.split(b":")[0] for c in remote.commands if not c.startswith(b"EHLO")],
                         [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"QUIT"])
        self.assertEqual(remote.received, [])

    async def test_everyRecipientDeferred(self) -> None:
        """
        When the remote answers 450 4.2.1 to every RCPT, each recipient gets
        that temporary reply, and the session ends with QUIT.
        """
        remote = await startRemote(self, Script(everyRcpt=b"450 4.2.1 Try later"))
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test", "erin@remote.test"])
        self.assertEqual(replies, {"dave@remote.test": Reply(450, "4.2.1", "Try later"),
                                   "erin@remote.test": Reply(450, "4.2.1", "Try later")})
        await remote.whenIdle()
        self.assertIn(b"QUIT", remote.commands)
        self.assertFalse(any(c.startswith(b"DATA") for c in remote.commands))

    async def test_dataTemporaryFailure(self) -> None:
        """
        A 451 at the end of data applies to every accepted recipient.
        """
        remote = await startRemote(self, Script(data=[b"451 4.3.0 Try later"]))
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test", "erin@remote.test"])
        self.assertEqual(set(replies.values()), {Reply(451, "4.3.0", "Try later")})
        self.assertEqual(remote.received, [])

    async def test_senderRefused(self) -> None:
        """
        MAIL FROM refused: every recipient gets that reply.
        """
        remote = await startRemote(self)
        remote.protocol = type("Refusing", (remote.protocol,), {
            "smtp_MAIL": lambda self, argument: self.sendLine(b"553 5.7.1 Sender not allowed")})
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test"])
        self.assertEqual(replies, {"dave@remote.test": Reply(553, "5.7.1", "Sender not allowed")})

    async def test_nextExchanger(self) -> None:
        """
        When the first exchanger does not answer, the next one is used.
        """
        remote = await startRemote(self)
        resolver = FixedExchangers([Exchanger("mx1.remote.test", ["127.0.0.2"]),
                                    Exchanger("mx2.remote.test", ["127.0.0.1"])])
        relay = self.relay(remote.port, resolver=resolver)
        relay.mxPort = remote.port
        # 127.0.0.2 is loopback too, but nothing listens there on this port
        # unless the remote bound every address; it binds 127.0.0.1 only.
        replies = await self.deliver(relay, ["dave@remote.test"])
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertEqual(len(remote.received), 1)

    async def test_nobodyAnswers(self) -> None:
        """
        No exchanger accepting connections: a temporary 4.4.1 reply.
        """
        replies = await self.deliver(self.relay(freeClosedPort()), ["dave@remote.test"])
        reply = replies["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.4.1"))
        self.assertIn("Cannot connect to mx.remote.test[127.0.0.1]", reply.text)

    async def test_verifiedTLSSelfSigned(self) -> None:
        """
        With verified TLS required, a self-signed certificate defers the
        mail (4.7.5) and nothing is sent in clear.
        """
        remote = await startRemote(self, tlsContext=selfSignedContext())
        relay = self.relay(remote.port, requireVerifiedTls=("remote.test",))
        replies = await self.deliver(relay, ["dave@remote.test"])
        reply = replies["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.5"))
        self.assertIn("did not verify", reply.text)
        self.assertEqual(remote.received, [])
        self.assertFalse([c for c in remote.commands if c.startswith(b"MAIL")])

    async def test_verifiedTLSNotOffered(self) -> None:
        """
        With verified TLS required, a remote without STARTTLS gets nothing
        (4.7.4).
        """
        remote = await startRemote(self)
        relay = self.relay(remote.port, requireVerifiedTls=("*",))
        replies = await self.deliver(relay, ["dave@remote.test"])
        self.assertEqual(replies["dave@remote.test"].enhanced, "4.7.4")
        self.assertEqual(remote.received, [])

    async def test_verifiedTLS(self) -> None:
        """
        With verified TLS required and a certificate that verifies for the
        exchanger's name, the mail goes over TLS.
        """
        cert, key = generateSelfSigned("mx.remote.test", datetime.datetime.now(datetime.timezone.utc))
        remote = await startRemote(self, tlsContext=PrivateCertificate.loadPEM(cert + key).options())
        relay = self.relay(remote.port, requireVerifiedTls=("remote.test",), trustRoot=Certificate.loadPEM(cert))
        replies = await self.deliver(relay, ["dave@remote.test"])
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertTrue(remote.received[0].tls)

    async def test_verifiedTLSNames(self) -> None:
        """
        With verified TLS required, a certificate from the trusted CA counts
        as verified only when a subjectAltName names the exchanger: one
        without any subjectAltName (CN alone) or naming another host gets
        4.7.5 and no MAIL; the right name gets the mail.
        """
        ca = TestCA()
        for context, code in ((ca.serverContext("mx.remote.test"), 451),
                              (ca.serverContext("mx.remote.test", dnsNames=["mx.other.test"]), 451),
                              (ca.serverContext("x", dnsNames=["mx.remote.test"]), 250)):
            remote = await startRemote(self, tlsContext=context)
            relay = self.relay(remote.port, requireVerifiedTls=("remote.test",), trustRoot=ca.root())
            reply = (await self.deliver(relay, ["dave@remote.test"]))["dave@remote.test"]
            self.assertEqual(reply.code, code, str(reply))
            if code == 451:
                self.assertEqual(reply.enhanced, "4.7.5")
                self.assertEqual(remote.received, [])
                self.assertFalse(any(c.startswith(b"MAIL") for c in remote.commands))
            else:
                self.assertTrue(remote.received[0].tls)

    async def test_smarthostAuthNeedsName(self) -> None:
        """
        AUTH to a smarthost is never sent to a certificate without a
        subjectAltName for it, even one from the trusted CA.
        """
        ca = TestCA()
        remote = await startRemote(self, Script(credentials=("relay-user", "s3cret")),
                                   tlsContext=ca.serverContext("localhost"))
        relay = self.relay(remote.port, smarthost=("localhost", remote.port), username="relay-user",
                           password="s3cret", trustRoot=ca.root())
        reply = (await self.deliver(relay, ["dave@remote.test"]))["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.5"))
        self.assertFalse(any(c.startswith(b"AUTH") for c in remote.commands))

    async def test_opportunisticFallsBackToClear(self) -> None:
        """
        When the TLS handshake fails and TLS is only opportunistic, the mail
        is sent again in clear (RFC 3207 §4.1).
        """
        cert, key = generateSelfSigned("mx.remote.test", datetime.datetime.now(datetime.timezone.utc))
        server = PrivateCertificate.loadPEM(cert + key)
        # Demands a client certificate we do not have: the handshake fails.
        picky = CertificateOptions(privateKey=server.privateKey.original, certificate=server.original,
                                   verify=True, requireCertificate=True, caCerts=[server.original])
        remote = await startRemote(self, tlsContext=picky)
        replies = await self.deliver(self.relay(remote.port), ["dave@remote.test"])
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertEqual([r.tls for r in remote.received], [False])

    async def test_idleTimeout(self) -> None:
        """
        A remote that stops answering is given up on after the idle timeout
        (on the injected clock), with a temporary reply.
        """
        hold = Deferred()
        remote = await startRemote(self, Script(holdRcpt=hold))
        clock = Clock()
        relay = self.relay(remote.port, clock=clock, timeoutSeconds=300)
        d = self.deliver(relay, ["dave@remote.test"])
        while not any(c.startswith(b"RCPT") for c in remote.commands):
            await deferLater(0.01)
        clock.advance(299)
        self.assertNoResult(d)
        clock.advance(2)
        replies = await d
        reply = replies["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.4.2"))
        self.assertIn("Timed out", reply.text)
        hold.callback(None)

    async def test_smarthostAuth(self) -> None:
        """
        Through a smarthost with AUTH: verified TLS, then authentication,
        then the message.
        """
        cert, key = generateSelfSigned("localhost", datetime.datetime.now(datetime.timezone.utc))
        remote = await startRemote(self, Script(credentials=("relay-user", "s3cret")),
                                   tlsContext=PrivateCertificate.loadPEM(cert + key).options())
        relay = self.relay(remote.port, smarthost=("localhost", remote.port), username="relay-user",
                           password="s3cret", trustRoot=Certificate.loadPEM(cert))
        replies = await self.deliver(relay, ["dave@remote.test"])
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertEqual((remote.received[0].tls, remote.received[0].authenticated), (True, "relay-user"))
        self.assertEqual(relay.resolver.asked, [])

    async def test_routeBeforeSmarthost(self) -> None:
        """
        A routed domain goes to its route, ahead of the smarthost and the
        MX records, and the smarthost's credentials are not sent there.
        """
        remote = await startRemote(self, tlsContext=selfSignedContext())
        relay = self.relay(9, smarthost=("127.0.0.1", 9), username="relay-user", password="s3cret",
                           routes={"remote.test": ("127.0.0.1", remote.port)})
        replies = await self.deliver(relay, ["dave@remote.test"])
        self.assertEqual(replies["dave@remote.test"].code, 250)
        self.assertEqual((remote.received[0].tls, remote.received[0].authenticated), (True, None))
        self.assertEqual(relay.resolver.asked, [])

    async def test_smarthostWrongPassword(self) -> None:
        """
        A smarthost refusing our credentials defers the mail with a reply
        that says so.
        """
        cert, key = generateSelfSigned("localhost", datetime.datetime.now(datetime.timezone.utc))
        remote = await startRemote(self, Script(credentials=("relay-user", "right")),
                                   tlsContext=PrivateCertificate.loadPEM(cert + key).options())
        relay = self.relay(remote.port, smarthost=("localhost", remote.port), username="relay-user",
                           password="wrong", trustRoot=Certificate.loadPEM(cert))
        replies = await self.deliver(relay, ["dave@remote.test"])
        reply = replies["dave@remote.test"]
        self.assertEqual((reply.code, reply.enhanced), (451, "4.7.0"))
        self.assertIn("refused authentication", reply.text)
        self.assertEqual(remote.received, [])


def deferLater(seconds: float) -> Deferred:
    """
    Wait a little real time (for the remote to see a command).
    """
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
