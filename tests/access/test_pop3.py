# -*- test-case-name: tests.access.test_pop3 -*-
"""
Tests for L{qutemail.access.pop3}: sessions over C{StringTransport} with a
clock and the inline runner, and end to end over loopback with poplib.
"""

import datetime
import os
import poplib
import ssl
import uuid

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.access.pop3 import POP3Factory, pop3Portal
from qutemail.backends.memory import MemoryUserDirectory
from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.tlsserver import ServerCredentials, contextFactory, generateSelfSigned
from qutemail.policy.throttle import AuthThrottle
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.vault import FileKeyVault
from qutemail.store.mailbox import mailboxPath, readUsage
from tests.integration.support import CLIENT_TIMEOUT, waitFor

ORIGINAL = b"Received: from c.test\nFrom: bob@example.test\nSubject: private\n\nthe plan\n.dotted line\nend\n"
PLAIN = b"Return-Path: <x@remote.test>\nSubject: from outside\n\nhello\n"
ENCRYPTED_NAME = "1700000001.M1Q1R0.host,S=1"
PLAIN_NAME = "1700000002.M2Q2R0.host,S=2:2,S"


def makeMailbox(testCase, dataDir: str) -> tuple[FileKeyVault, str, str]:
    """
    Alice's INBOX: one encrypted message in C{new/}, one plain in C{cur/}.

    @return: the vault, the encrypted message's key id and path.
    """
    keys = os.path.join(dataDir, "keys")
    vault = FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), InlineRunner())
    keyId, key = str(uuid.uuid4()), os.urandom(32)
    testCase.successResultOf(ensureDeferred(_store(vault, keyId, key)))
    base = os.path.join(dataDir, "mail", "example.test", "alice")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(base, sub))
    encrypted = os.path.join(base, "new", ENCRYPTED_NAME)
    with open(encrypted, "wb") as f:
        f.write(b"Return-Path: <bob@example.test>\n" + encryptBytes(ORIGINAL, keyId, key))
    with open(os.path.join(base, "cur", PLAIN_NAME), "wb") as f:
        f.write(PLAIN)
    os.utime(encrypted, (1700000001, 1700000001))
    os.utime(os.path.join(base, "cur", PLAIN_NAME), (1700000002, 1700000002))
    return vault, keyId, encrypted


async def _store(vault, keyId: str, key: bytes) -> None:
    """
    Keep a key in the vault.
    """
    await vault.store(keyId, key)


class TLSStringTransport(StringTransport):
    """
    A StringTransport that records C{startTLS}.
    """

    tlsContext = None

    def startTLS(self, context) -> None:
        """
        Remember the context.
        """
        self.tlsContext = context


class SessionTests(SynchronousTestCase):
    """
    Sessions over C{StringTransport}, with a clock and the inline runner.
    """

    def setUp(self) -> None:
        """
        Alice's mailbox and a factory over it.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.vault, self.keyId, self.encrypted = makeMailbox(self, self.dataDir)
        users = MemoryUserDirectory()
        users.addUser("alice@example.test", b"pw-alice")
        self.clock = Clock()
        self.throttle = AuthThrottle(maxFailures=3)
        self.portal = pop3Portal(users, self.dataDir, self.vault, InlineRunner())

    def connect(self, implicitTLS: bool = True, context=object()):
        """
        @return: a connected session and its transport, greeting cleared.
        """
        factory = POP3Factory(self.portal, InlineRunner(), self.clock, self.throttle, context,
                              implicitTLS=implicitTLS)
        proto = factory.buildProtocol(None)
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5555))
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"+OK QutEmail POP3 server ready\r\n")
        transport.clear()
        return proto, transport

    def send(self, proto, transport, *lines: bytes) -> bytes:
        """
        @return: the replies to C{lines}.
        """
        transport.clear()
        for line in lines:
            proto.dataReceived(line + b"\r\n")
        return transport.value()

    def login(self):
        """
        @return: a session logged in as alice.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"USER alice@example.test", b"PASS pw-alice"),
                         b"+OK USER accepted, send PASS\r\n+OK maildrop has 2 messages\r\n")
        return proto, transport

    def test_userBeforeSTLSRefused(self) -> None:
        """
        On the plain port USER and PASS get C{-ERR}; CAPA offers STLS and not
        USER; after STLS, CAPA offers USER and login works.
        """
        proto, transport = self.connect(implicitTLS=False)
        self.assertTrue(self.send(proto, transport, b"USER alice@example.test").startswith(b"-ERR [AUTH]"))
        self.assertTrue(self.send(proto, transport, b"PASS pw-alice").startswith(b"-ERR [AUTH]"))
        capa = self.send(proto, transport, b"CAPA")
        self.assertIn(b"\r\nSTLS\r\n", capa)
        self.assertNotIn(b"\r\nUSER\r\n", capa)
        self.assertEqual(self.send(proto, transport, b"STLS"), b"+OK Begin TLS negotiation\r\n")
        self.assertIsNotNone(transport.tlsContext)
        capa = self.send(proto, transport, b"CAPA")
        self.assertIn(b"\r\nUSER\r\n", capa)
        self.assertNotIn(b"STLS", capa)
        self.assertEqual(self.send(proto, transport, b"USER alice@example.test", b"PASS pw-alice"),
                         b"+OK USER accepted, send PASS\r\n+OK maildrop has 2 messages\r\n")

    def test_injectionAfterSTLSDropped(self) -> None:
        """
        Cleartext commands sent with STLS in one segment are discarded.
        """
        proto, transport = self.connect(implicitTLS=False)
        proto.dataReceived(b"STLS\r\nUSER alice@example.test\r\n")
        self.assertEqual(transport.value(), b"+OK Begin TLS negotiation\r\n")
        self.assertTrue(self.send(proto, transport, b"PASS pw-alice").startswith(b"-ERR USER required"))

    def test_apopRefused(self) -> None:
        """
        APOP is refused (and the greeting had no challenge).
        """
        proto, transport = self.connect()
        self.assertTrue(self.send(proto, transport, b"APOP alice@example.test abc").startswith(b"-ERR"))

    def test_listUidlRetr(self) -> None:
        """
        LIST gives decrypted sizes, UIDL the base names, RETR the decrypted
        original (CRLF, dot-stuffed).
        """
        proto, transport = self.login()
        plainId = PLAIN_NAME.partition(":")[0].encode()
        self.assertEqual(self.send(proto, transport, b"LIST"),
                         b"+OK \r\n1 %d\r\n2 %d\r\n.\r\n" % (len(ORIGINAL), len(PLAIN)))
        self.assertEqual(self.send(proto, transport, b"UIDL"),
                         b"+OK \r\n1 %b\r\n2 %b\r\n.\r\n" % (ENCRYPTED_NAME.encode(), plainId))
        self.assertEqual(self.send(proto, transport, b"STAT"), b"+OK 2 %d\r\n" % (len(ORIGINAL) + len(PLAIN)))
        expected = ORIGINAL.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
        self.assertEqual(self.send(proto, transport, b"RETR 1"),
                         b"+OK %d octets\r\n" % (len(ORIGINAL),) + expected + b".\r\n")
        self.assertEqual(self.send(proto, transport, b"TOP 1 0"),
                         b"+OK top of message follows\r\n"
                         b"Received: from c.test\r\nFrom: bob@example.test\r\nSubject: private\r\n\r\n.\r\n")
        self.assertEqual(self.send(proto, transport, b"RETR 3"), b"-ERR no such message\r\n")

    def test_keyErasedNotice(self) -> None:
        """
        A message whose key was erased is served as a short notice, and the
        event is logged.
        """
        self.successResultOf(self.vault.erase(self.keyId))
        proto, transport = self.login()
        reply = self.send(proto, transport, b"RETR 1")
        self.assertTrue(reply.startswith(b"+OK "))
        self.assertIn(b"Subject: [QutEmail] unreadable message", reply)
        self.assertIn(b"is no longer in the vault", reply)
        self.assertNotIn(b"the plan", reply)

    def test_deleteAtQuit(self) -> None:
        """
        DELE hides a message; RSET restores it; the file goes at QUIT only,
        and the mailbox's usage drops by its size.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"DELE 1"), b"+OK message 1 deleted\r\n")
        self.assertEqual(self.send(proto, transport, b"DELE 1"), b"-ERR no such message\r\n")
        self.assertEqual(self.send(proto, transport, b"STAT"), b"+OK 1 %d\r\n" % (len(PLAIN),))
        self.assertEqual(self.send(proto, transport, b"RSET"), b"+OK \r\n")
        self.assertEqual(self.send(proto, transport, b"STAT")[:6], b"+OK 2 ")
        self.send(proto, transport, b"DELE 1")
        self.assertTrue(os.path.exists(self.encrypted))
        mailbox = mailboxPath(self.dataDir, "alice@example.test")
        with open(os.path.join(mailbox, "maildirsize"), "wb") as f:
            f.write(b"0S\n5000 2\n")
        size = os.path.getsize(self.encrypted)
        self.assertEqual(self.send(proto, transport, b"QUIT"), b"+OK bye\r\n")
        self.assertFalse(os.path.exists(self.encrypted))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(readUsage(mailbox), (5000 - size, 1))

    def test_disconnectKeepsMessages(self) -> None:
        """
        A session that ends without QUIT removes nothing.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1")
        proto.connectionLost(None)
        self.assertTrue(os.path.exists(self.encrypted))

    def test_wrongPasswordThrottled(self) -> None:
        """
        A wrong password is answered C{-ERR} only after the throttle's
        delay; after three failures the IP is locked out.
        """
        proto, transport = self.connect()
        self.send(proto, transport, b"USER alice@example.test")
        self.assertEqual(self.send(proto, transport, b"PASS nope"), b"")
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"-ERR [AUTH] authentication failed\r\n")
        for _ in range(2):
            self.send(proto, transport, b"USER alice@example.test", b"PASS nope")
            self.clock.advance(30)
        reply = self.send(proto, transport, b"USER alice@example.test", b"PASS pw-alice")
        self.assertIn(b"-ERR [AUTH] too many failed logins", reply)

    def test_commandsBeforeLogin(self) -> None:
        """
        Transaction commands before login get C{-ERR}, nothing is logged as
        an error.
        """
        proto, transport = self.connect()
        self.assertTrue(self.send(proto, transport, b"STAT").startswith(b"-ERR not authenticated"))
        self.assertTrue(self.send(proto, transport, b"FROB").startswith(b"-ERR"))

    def test_idleTimeout(self) -> None:
        """
        An idle session is closed by the injected clock.
        """
        proto, transport = self.connect()
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)


class LoopbackTests(TestCase):
    """
    End to end: a real listener on loopback, real TLS, poplib in a thread.
    """

    def setUp(self) -> None:
        """
        Alice's mailbox, a listener with STLS, and a running thread pool.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.vault, self.keyId, self.encrypted = makeMailbox(self, self.dataDir)
        certificate, key = generateSelfSigned("mail.example.test", datetime.datetime.now(datetime.timezone.utc))
        certPath, keyPath = os.path.join(self.dataDir, "cert.pem"), os.path.join(self.dataDir, "key.pem")
        for path, data in ((certPath, certificate), (keyPath, key)):
            with open(path, "wb") as f:
                f.write(data)
        tls = contextFactory(ServerCredentials(certPath, keyPath), datetime.datetime.now(datetime.timezone.utc))
        runner = BlockingRunner(reactor)
        runner.startService()
        self.addCleanup(runner.stopService)
        users = MemoryUserDirectory()
        users.addUser("alice@example.test", b"pw-alice")
        portal = pop3Portal(users, self.dataDir, self.vault, runner)
        factory = POP3Factory(portal, runner, reactor, AuthThrottle(failureDelaySeconds=0.01), tls)
        self.sessions = []
        self.record(factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        implicit = POP3Factory(portal, runner, reactor, AuthThrottle(), tls, implicitTLS=True)
        self.record(implicit)
        tlsPort = reactor.listenTCP(0, TLSMemoryBIOFactory(tls, False, implicit), interface="127.0.0.1")
        self.addCleanup(tlsPort.stopListening)
        self.tlsPort = tlsPort.getHost().port

    def record(self, factory: POP3Factory) -> None:
        """
        Keep every session C{factory} builds in C{self.sessions}, so tests
        can wait for the server side to close.
        """
        build = factory.buildProtocol

        def recording(addr):
            proto = build(addr)
            self.sessions.append(proto)
            return proto

        factory.buildProtocol = recording

    async def pop(self, f):
        """
        Run C{f(client)} with a poplib client after STLS, in a thread, and
        wait for the server side to close.
        """

        def run():
            client = poplib.POP3("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            try:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                client.stls(context)
                return f(client)
            finally:
                try:
                    client.quit()
                except (poplib.error_proto, OSError):
                    client.close()

        try:
            return await deferToThread(run)
        finally:
            await waitFor(lambda: all(p._lost for p in self.sessions), timeout=10)

    async def test_userBeforeSTLS(self) -> None:
        """
        USER before STLS is refused.
        """

        def run():
            client = poplib.POP3("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            try:
                with self.assertRaises(poplib.error_proto) as caught:
                    client.user("alice@example.test")
                return caught.exception.args[0]
            finally:
                client.quit()

        reply = await deferToThread(run)
        await waitFor(lambda: all(p._lost for p in self.sessions), timeout=10)
        self.assertTrue(reply.startswith(b"-ERR [AUTH]"))

    async def test_readDecrypted(self) -> None:
        """
        After STLS: LIST, UIDL and RETR give the decrypted original exactly;
        UIDL is the same in a second session.
        """

        def session(client):
            client.user("alice@example.test")
            client.pass_("pw-alice")
            return client.list()[1], client.uidl()[1], client.retr(1)[1], client.retr(2)[1]

        listing, uidl, first, second = await self.pop(session)
        self.assertEqual(listing, [b"1 %d" % (len(ORIGINAL),), b"2 %d" % (len(PLAIN),)])
        self.assertEqual(b"\n".join(first) + b"\n", ORIGINAL)
        self.assertEqual(b"\n".join(second) + b"\n", PLAIN)
        again = await self.pop(lambda c: (c.user("alice@example.test"), c.pass_("pw-alice"), c.uidl()[1])[2])
        self.assertEqual(uidl, again)
        self.assertEqual(uidl[0], b"1 " + ENCRYPTED_NAME.encode())

    async def test_deleteThenQuit(self) -> None:
        """
        DELE then QUIT removes the file.
        """

        def session(client):
            client.user("alice@example.test")
            client.pass_("pw-alice")
            client.dele(1)

        await self.pop(session)
        self.assertFalse(os.path.exists(self.encrypted))

    async def test_wrongPassword(self) -> None:
        """
        A wrong password gets C{-ERR}.
        """

        def session(client):
            client.user("alice@example.test")
            with self.assertRaises(poplib.error_proto) as caught:
                client.pass_("wrong")
            return caught.exception.args[0]

        self.assertEqual(await self.pop(session), b"-ERR [AUTH] authentication failed")

    async def test_erasedKeyNotice(self) -> None:
        """
        A message whose key was erased comes back as the short notice.
        """
        await self.vault.erase(self.keyId)

        def session(client):
            client.user("alice@example.test")
            client.pass_("pw-alice")
            return client.retr(1)[1]

        lines = await self.pop(session)
        self.assertIn(b"Subject: [QutEmail] unreadable message", lines)
        self.assertNotIn(b"the plan", lines)

    async def test_implicitTLS(self) -> None:
        """
        On the implicit-TLS port login works at once and RETR decrypts.
        """

        def run():
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            client = poplib.POP3_SSL("127.0.0.1", self.tlsPort, context=context, timeout=CLIENT_TIMEOUT)
            try:
                self.assertNotIn("STLS", client.capa())
                client.user("alice@example.test")
                client.pass_("pw-alice")
                return client.retr(1)[1]
            finally:
                client.quit()

        lines = await deferToThread(run)
        await waitFor(lambda: all(p._lost for p in self.sessions), timeout=10)
        self.assertEqual(b"\n".join(lines) + b"\n", ORIGINAL)
