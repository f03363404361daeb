# -*- test-case-name: tests.access.test_imapserver -*-
"""
Tests for L{qutemail.access.imapserver}: sessions over C{StringTransport}
with a clock and the inline runner (login, TLS, folders, security, bad
input, quota).  Message commands are in L{tests.access.test_imapsession}.
"""

import os
import uuid

from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.mail.imap4 import IAccount
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from qutemail.access.imapaccount import IMAPRealm, LoginContext, imapPortal
from qutemail.access.imapserver import IMAPFactory
from qutemail.backends.memory import MemoryUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.policy.throttle import AuthThrottle
from qutemail.qkd.cipher import encryptBytes
from qutemail.qkd.vault import FileKeyVault
from qutemail.store.mailbox import countMailbox

ORIGINAL = (b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: private plan\r\n"
            b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <m1@example.test>\r\n"
            b"Content-Type: text/plain\r\n\r\nthe plan\r\n.dotted\r\n")
PLAIN = b"Return-Path: <x@remote.test>\nFrom: x@remote.test\nSubject: from outside\n\nhello\nworld\n"
ENCRYPTED_NAME = "1700000001.M1Q1R0.host,S=1"
PLAIN_NAME = "1700000002.M2Q2R0.host,S=2"
NOW = 1700000100.0


def makeMailbox(testCase: SynchronousTestCase, dataDir: str) -> tuple[FileKeyVault, str, str, str]:
    """
    Alice's INBOX: one encrypted message in C{new/}, one plain one (Seen)
    in C{cur/}.

    @return: the vault, the encrypted message's key id and path, and the
        mailbox directory.
    """
    keys = os.path.join(dataDir, "keys")
    vault = FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), InlineRunner())
    keyId, key = str(uuid.uuid4()), os.urandom(32)
    testCase.successResultOf(ensureDeferred(_store(vault, keyId, key)))
    base = os.path.join(dataDir, "mail", "example.test", "alice")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(base, sub))
    encrypted = deliver(base, ENCRYPTED_NAME, b"Return-Path: <bob@example.test>\n" + encryptBytes(ORIGINAL, keyId, key),
                        1700000001)
    deliver(base, PLAIN_NAME + ":2,S", PLAIN, 1700000002, "cur")
    return vault, keyId, encrypted, base


def deliver(folder: str, name: str, data: bytes, mtime: float, sub: str = "new") -> str:
    """
    Write a message file into a folder, as the store does.

    @return: its path.
    """
    path = os.path.join(folder, sub, name)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))
    return path


async def _store(vault: FileKeyVault, keyId: str, key: bytes) -> None:
    """
    Keep a key in the vault.
    """
    await vault.store(keyId, key)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """
    A StringTransport that can start TLS, and records that it did.
    """

    tlsContext = None

    def startTLS(self, context, normal: bool = True) -> None:
        """
        Remember the context.
        """
        self.tlsContext = context


class SessionMixin:
    """
    Alice's and Bob's accounts, and sessions over C{StringTransport}.
    """

    def setUpSessions(self) -> None:
        """
        The data directory, vault, users, clock and factory.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.vault, self.keyId, self.encrypted, self.inbox = makeMailbox(self, self.dataDir)
        self.users = MemoryUserDirectory()
        self.users.addUser("alice@example.test", b"pw-alice")
        self.users.addUser("bob@example.test", b"pw-bob")
        self.clock = Clock()
        self.clock.advance(NOW)
        self.throttle = AuthThrottle(maxFailures=3)
        self.factory = self.makeFactory()

    def makeFactory(self, implicitTLS: bool = True, **kwargs) -> IMAPFactory:
        """
        @return: a factory over the test accounts.
        """
        portal = imapPortal(self.users, self.dataDir, self.vault, InlineRunner())
        return IMAPFactory(portal, InlineRunner(), self.clock, self.throttle, object(), implicitTLS,
                           hostname="mail.example.test", **kwargs)

    def connect(self, factory: IMAPFactory | None = None):
        """
        @return: a connected session and its transport, greeting cleared.
        """
        proto = (factory or self.factory).buildProtocol(None)
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5555))
        proto.makeConnection(transport)
        self.greeting = transport.value()
        transport.clear()
        return proto, transport

    def send(self, proto, transport, *lines: bytes) -> bytes:
        """
        @return: the responses to C{lines} (sent at once).
        """
        transport.clear()
        proto.dataReceived(b"".join(line + b"\r\n" for line in lines))
        return transport.value()

    def login(self, user: bytes = b"alice@example.test", password: bytes = b"pw-alice", factory=None):
        """
        @return: a logged-in session and its transport.
        """
        proto, transport = self.connect(factory)
        reply = self.send(proto, transport, b"L LOGIN " + user + b" " + password)
        self.assertTrue(reply.startswith(b"L OK [CAPABILITY "), reply)
        return proto, transport

    def selected(self, folder: bytes = b"INBOX", factory=None):
        """
        @return: a session with a folder selected, and its transport.
        """
        proto, transport = self.login(factory=factory)
        self.assertIn(b"S OK [READ-WRITE]", self.send(proto, transport, b"S SELECT " + folder))
        return proto, transport


class AuthenticationTests(SessionMixin, SynchronousTestCase):
    """
    TLS before passwords, LOGIN and AUTHENTICATE PLAIN, throttling.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_plainPortCapabilities(self) -> None:
        """
        Before TLS the greeting offers STARTTLS and LOGINDISABLED, not AUTH;
        LOGIN and AUTHENTICATE are refused; after STARTTLS, AUTH=PLAIN is
        offered and LOGIN works.
        """
        proto, transport = self.connect(self.makeFactory(implicitTLS=False))
        self.assertIn(b" STARTTLS LOGINDISABLED ", self.greeting)
        self.assertNotIn(b"AUTH=", self.greeting)
        self.assertEqual(self.send(proto, transport, b"a LOGIN alice@example.test pw-alice"),
                         b"a NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n")
        self.assertTrue(self.send(proto, transport, b"b AUTHENTICATE PLAIN AGFsaWNlAHB3").startswith(
            b"b NO [PRIVACYREQUIRED]"))
        self.assertEqual(self.send(proto, transport, b"c STARTTLS"), b"c OK Begin TLS negotiation now\r\n")
        self.assertIsNotNone(transport.tlsContext)
        capabilities = self.send(proto, transport, b"d CAPABILITY")
        self.assertIn(b" AUTH=PLAIN ", capabilities)
        self.assertNotIn(b"LOGINDISABLED", capabilities)
        self.assertNotIn(b"STARTTLS", capabilities)
        self.assertTrue(self.send(proto, transport, b"e LOGIN alice@example.test pw-alice").startswith(b"e OK "))

    def test_injectionAfterSTARTTLSDropped(self) -> None:
        """
        Cleartext commands pipelined after STARTTLS are discarded.
        """
        proto, transport = self.connect(self.makeFactory(implicitTLS=False))
        self.assertEqual(self.send(proto, transport, b"a STARTTLS", b"b LOGIN alice@example.test pw-alice"),
                         b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(proto.state, "unauth")

    def test_implicitTLS(self) -> None:
        """
        On the implicit-TLS port, AUTH=PLAIN and SASL-IR are offered at once.
        """
        self.connect()
        self.assertIn(b" AUTH=PLAIN SASL-IR ", self.greeting)
        self.assertNotIn(b"LOGINDISABLED", self.greeting)
        self.assertTrue(self.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "))

    def test_authenticatePlain(self) -> None:
        """
        AUTHENTICATE PLAIN with an initial response, or after an empty
        challenge; another authorisation identity, or cancelling, is
        refused.
        """
        proto, transport = self.connect()
        self.assertTrue(self.send(proto, transport, b"a AUTHENTICATE PLAIN AGJvYkBleGFtcGxlLnRlc3QAcHctYm9i")
                        .startswith(b"a OK [CAPABILITY "))
        self.assertEqual(proto.account.address, "bob@example.test")
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"b AUTHENTICATE plain"), b"+ \r\n")
        response = b"alice@example.test\0alice@example.test\0pw-alice"
        import base64
        self.assertTrue(self.send(proto, transport, base64.b64encode(response)).startswith(b"b OK "))
        proto, transport = self.connect()
        forged = base64.b64encode(b"bob@example.test\0alice@example.test\0pw-alice")
        self.assertTrue(self.send(proto, transport, b"c AUTHENTICATE PLAIN " + forged).startswith(
            b"c NO [AUTHORIZATIONFAILED]"))
        self.send(proto, transport, b"d AUTHENTICATE PLAIN")
        self.assertEqual(self.send(proto, transport, b"*"), b"d BAD Authentication cancelled\r\n")
        self.assertTrue(self.send(proto, transport, b"e AUTHENTICATE CRAM-MD5").startswith(b"e NO "))
        self.assertTrue(self.send(proto, transport, b"f AUTHENTICATE PLAIN !!!").startswith(b"f BAD "))

    def test_wrongPasswordThrottled(self) -> None:
        """
        A wrong password is answered only after the throttle's delay, and
        logged without the password; after three failures the client is
        locked out even with the right one.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"a LOGIN alice@example.test sEcReT-guess"), b"")
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertTrue(any(e.get("user") == "alice@example.test" for e in events))
        self.assertFalse(any("sEcReT" in repr(e) for e in events))
        for tag in (b"b", b"c"):
            self.send(proto, transport, tag + b" LOGIN alice@example.test nope")
            self.clock.advance(30)
        self.assertEqual(self.send(proto, transport, b"d LOGIN alice@example.test pw-alice"),
                         b"d NO [UNAVAILABLE] Too many failed logins; try again later\r\n")

    def test_literalPassword(self) -> None:
        """
        A password sent as a literal (with a quote and a space in it) works.
        """
        self.users.setPassword("alice@example.test", b'a "b" c')
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"a LOGIN alice@example.test {7}"),
                         b"+ Ready for 7 octets of text\r\n")
        self.assertTrue(self.send(proto, transport, b'a "b" c').startswith(b"a OK "))

    def test_autoLogout(self) -> None:
        """
        A session idle before login is closed by the injected clock.
        """
        proto, transport = self.connect()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"* BYE", transport.value())

    def test_realmAvatar(self) -> None:
        """
        The realm gives an L{IAccount} for the authenticated address, with
        the account's quota or the default.
        """
        realm = IMAPRealm(self.users, self.dataDir, self.vault, InlineRunner())
        self.users.setQuota("bob@example.test", 4096)
        mind = LoginContext(self.clock, 10_000)
        interface, account, _ = self.successResultOf(realm.requestAvatar("alice@example.test", mind, IAccount))
        self.assertIs(interface, IAccount)
        verifyObject(IAccount, account)
        self.assertEqual((account.root, account.quotaBytes), (self.inbox, 10_000))
        _, bob, _ = self.successResultOf(realm.requestAvatar("bob@example.test", mind, IAccount))
        self.assertEqual(bob.quotaBytes, 4096)


class FolderTests(SessionMixin, SynchronousTestCase):
    """
    Special folders, LIST, CREATE/RENAME/DELETE, subscriptions, STATUS,
    QUOTA, and names that try to leave the mailbox.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_specialFolders(self) -> None:
        """
        The first login creates Sent, Drafts, Trash and Junk, listed with
        their RFC 6154 attributes and subscribed.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b'a LIST "" *'),
                         b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
                         b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
                         b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
                         b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
                         b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
                         b"a OK LIST completed\r\n")
        self.assertEqual(self.send(proto, transport, b'b LSUB "" *').count(b"* LSUB () "), 4)
        self.assertEqual(self.send(proto, transport, b'c LIST (SPECIAL-USE) "" "S*"'),
                         b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\nc OK LIST completed\r\n')
        self.assertTrue(os.path.isdir(os.path.join(self.inbox, ".Junk", "cur")))

    def test_hierarchyAndWildcards(self) -> None:
        """
        CREATE makes parents; C{%} stops at the separator, C{*} does not;
        the reference is prefixed; an empty pattern gives the separator;
        names are modified UTF-7 on the wire.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"a CREATE work/2024/q1/"), b"a OK CREATE completed\r\n")
        self.assertEqual(self.send(proto, transport, b'b LIST "" "w%"'),
                         b'* LIST (\\HasChildren) "/" "work"\r\nb OK LIST completed\r\n')
        self.assertEqual(self.send(proto, transport, b'c LIST "work/" "*"'),
                         b'* LIST (\\HasChildren) "/" "work/2024"\r\n'
                         b'* LIST (\\HasNoChildren) "/" "work/2024/q1"\r\nc OK LIST completed\r\n')
        self.assertEqual(self.send(proto, transport, b'd LIST "" ""'),
                         b'* LIST (\\Noselect) "/" ""\r\nd OK LIST completed\r\n')
        self.assertEqual(self.send(proto, transport, b"e CREATE &AOk-t&AOk-"), b"e OK CREATE completed\r\n")
        self.assertTrue(os.path.isdir(os.path.join(self.inbox, ".&AOk-t&AOk-")))
        self.assertIn(b'"/" "&AOk-t&AOk-"', self.send(proto, transport, b'f LIST "" "&AOk-*"'))
        self.assertEqual(self.send(proto, transport, b'g LIST "" inbox'),
                         b'* LIST (\\HasNoChildren) "/" "INBOX"\r\ng OK LIST completed\r\n')

    def test_createRenameDeleteSubscribe(self) -> None:
        """
        Folders are created, renamed and deleted as Maildir++ directories;
        errors carry RFC 5530 codes; subscriptions are kept (and outlive
        their folder), but only an existing folder can be subscribed to
        (issue 20, as Dovecot does).
        """
        proto, transport = self.login()
        self.send(proto, transport, b"a CREATE Projects")
        self.assertEqual(self.send(proto, transport, b"b CREATE projects/x", b"c CREATE Projects"),
                         b"b OK CREATE completed\r\nc NO [ALREADYEXISTS] Mailbox exists already\r\n")
        self.assertEqual(self.send(proto, transport, b"d DELETE projects"),
                         b"d NO [INUSE] Mailbox has child mailboxes\r\n")
        self.assertEqual(self.send(proto, transport, b"e RENAME Projects Archive"), b"e OK RENAME completed\r\n")
        self.assertTrue(os.path.isdir(os.path.join(self.inbox, ".Archive")))
        self.assertFalse(os.path.exists(os.path.join(self.inbox, ".Projects")))
        self.assertEqual(self.send(proto, transport, b"f DELETE Archive", b"g DELETE nothing", b"h DELETE INBOX"),
                         b"f OK DELETE completed\r\ng NO [NONEXISTENT] No such mailbox\r\n"
                         b"h NO [CANNOT] INBOX cannot be deleted\r\n")
        self.assertEqual(self.send(proto, transport, b"i0 SUBSCRIBE gone", b"i1 CREATE gone"),
                         b"i0 NO [NONEXISTENT] No such mailbox\r\ni1 OK CREATE completed\r\n")
        self.assertEqual(self.send(proto, transport, b"i SUBSCRIBE gone", b"i2 SUBSCRIBE projects",
                                   b"i3 DELETE gone", b'j LSUB "" *o*'),
                         b"i OK SUBSCRIBE completed\r\ni2 OK SUBSCRIBE completed\r\ni3 OK DELETE completed\r\n"
                         b'* LSUB (\\Noselect) "/" "gone"\r\n* LSUB () "/" "projects"\r\nj OK LSUB completed\r\n')
        self.send(proto, transport, b"k UNSUBSCRIBE gone")
        self.assertEqual(self.send(proto, transport, b'l LSUB "" g*'), b"l OK LSUB completed\r\n")

    def test_deleteSelected(self) -> None:
        """
        Deleting the selected folder deselects it.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"a CREATE tmp", b"b SELECT tmp")
        self.assertEqual(self.send(proto, transport, b"c DELETE tmp"),
                         b"* OK [CLOSED] Selected mailbox deleted\r\nc OK DELETE completed\r\n")
        self.assertEqual(self.send(proto, transport, b"d FETCH 1 FLAGS"),
                         b"d BAD Command not valid in this state\r\n")

    def test_traversalRefusedAndLogged(self) -> None:
        """
        Names that would leave the mailbox (or hold control characters)
        are refused with NO, and logged with the account, the name and the
        reason; nothing outside the mailbox is created.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.login()
        attempts = [b"../bob", b'"../../bob/INBOX"', b"/etc", b'"INBOX/../x"', b".hidden", b'"a/./b"']
        for name in attempts:
            for command in (b"SELECT ", b"CREATE ", b"STATUS ", b"GETQUOTAROOT "):
                suffix = b" (MESSAGES)" if command == b"STATUS " else b""
                reply = self.send(proto, transport, b"t " + command + name + suffix)
                self.assertTrue(reply.startswith(b"t NO [CANNOT] Invalid mailbox name"), reply)
        self.assertEqual(self.send(proto, transport, b"u SELECT {3}"), b"+ Ready for 3 octets of text\r\n")
        self.assertTrue(self.send(proto, transport, b"a\x00b").startswith(b"u NO [CANNOT]"))
        refused = [e for e in events if e.get("log_format", "").startswith("IMAP refused folder name")]
        self.assertEqual({e["attemptedName"] for e in refused},
                         {"../bob", "../../bob/INBOX", "/etc", "INBOX/../x", ".hidden", "a/./b", "a\x00b"})
        self.assertTrue(all(e["account"] == "alice@example.test" and e["reason"] for e in refused))
        self.assertEqual(sorted(os.listdir(os.path.join(self.dataDir, "mail", "example.test"))), ["alice"])
        self.assertEqual(self.send(proto, transport, b"v COPY 1 ../bob"), b"v BAD Command not valid in this state\r\n")

    def test_tildeRefused(self) -> None:
        """
        C{CREATE ~/name} and C{RENAME INBOX ~/name} (issue 20), and every
        other command that takes a mailbox name, answer C{NO [CANNOT]}
        with the reason, each with one log line naming the account and the
        name; nothing is created or moved, and the INBOX keeps its messages.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.selected()

        def tree() -> set[str]:
            return {os.path.join(d, f) for d, ds, fs in os.walk(self.dataDir) for f in ds + fs}

        before = tree()
        commands = [(b"CREATE ~/name", "~/name"), (b"RENAME INBOX ~/name", "~/name"), (b'RENAME INBOX "~"', "~"),
                    (b"RENAME Sent ~/name", "~/name"), (b"RENAME ~/name Sent", "~/name"), (b"CREATE ~/", "~/"),
                    (b"SELECT ~/name", "~/name"), (b"EXAMINE ~", "~"), (b"STATUS ~/name (MESSAGES)", "~/name"),
                    (b"APPEND ~/name {5}", "~/name"), (b"SUBSCRIBE ~/name", "~/name"),
                    (b"UNSUBSCRIBE ~/name", "~/name"), (b"DELETE ~/name", "~/name"),
                    (b"GETQUOTAROOT ~/name", "~/name"), (b"COPY 1 ~/name", "~/name"), (b"MOVE 1 ~/name", "~/name"),
                    (b"UID COPY 1:* ~/name", "~/name")]
        reason = b"[CANNOT] Invalid mailbox name: the folder name starts with '~' (it reads as a path)\r\n"
        for i, (command, _) in enumerate(commands):
            tag = b"t%d" % (i,)
            self.assertEqual(self.send(proto, transport, tag + b" " + command), tag + b" NO " + reason, command)
        self.assertEqual(tree(), before)
        self.assertEqual(self.send(proto, transport, b"u STATUS INBOX (MESSAGES)"),
                         b'* STATUS "INBOX" (MESSAGES 2)\r\nu OK STATUS completed\r\n')
        refused = [e for e in events if e.get("log_format", "").startswith("IMAP refused folder name")]
        self.assertEqual([(e["account"], e["attemptedName"]) for e in refused],
                         [("alice@example.test", name) for _, name in commands])

    def test_backslashName(self) -> None:
        """
        A backslash is an ordinary character in a folder name: the folder is
        created as C{.a\\b}, listed and selected under its name.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b'a CREATE "a\\\\b"'), b"a OK CREATE completed\r\n")
        self.assertTrue(os.path.isdir(os.path.join(self.inbox, ".a\\b", "cur")))
        self.assertEqual(self.send(proto, transport, b'b LIST "" "a\\\\*"'),
                         b'* LIST (\\HasNoChildren) "/" "a\\\\b"\r\nb OK LIST completed\r\n')
        self.assertIn(b"c OK [READ-WRITE] SELECT completed", self.send(proto, transport, b'c SELECT "a\\\\b"'))
        self.assertEqual(self.send(proto, transport, b'd RENAME "a\\\\b" "\\\\c\\\\"'),
                         b"d OK RENAME completed\r\n")
        self.assertTrue(os.path.isdir(os.path.join(self.inbox, ".\\c\\", "cur")))

    def test_badInput(self) -> None:
        """
        Malformed commands get BAD, never a traceback, and the session goes
        on.
        """
        proto, transport = self.selected()
        replies = self.send(proto, transport, b"", b"x", b"a(b NOOP", b"a NOSUCH", b"b FETCH", b"c FETCH x FLAGS",
                            b"d FETCH 1 (BODY[", b"e UID FROB 1", b"f LIST (", b'g SELECT "open',
                            b"h STORE 1 FLAGS (\\Bogus)", b"i SEARCH FROB", b"j FETCH 9 FLAGS", b"k STATUS INBOX (X)",
                            b"l APPEND INBOX (\\Seen)", b"m LOGIN a b", b"n COPY 1", b"o UID EXPUNGE")
        lines = replies.split(b"\r\n")[:-1]
        self.assertEqual(len(lines), 18, replies)
        self.assertTrue(all(b" BAD " in line for line in lines), replies)
        self.assertNotIn(b"Traceback", replies)
        self.assertEqual(self.send(proto, transport, b"z NOOP"), b"z OK NOOP completed\r\n")

    def test_status(self) -> None:
        """
        STATUS counts without selecting.
        """
        proto, transport = self.login()
        reply = self.send(proto, transport, b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UNSEEN UIDVALIDITY)")
        self.assertRegex(reply, rb'^\* STATUS "INBOX" \(MESSAGES 2 RECENT 1 UIDNEXT 3 UNSEEN 1 UIDVALIDITY \d+\)\r\n'
                                rb"a OK STATUS completed\r\n$")

    def test_quota(self) -> None:
        """
        GETQUOTAROOT and GETQUOTA report STORAGE in KiB under the root
        C{""}; the account's own quota wins over the default; SETQUOTA
        and other roots are refused.
        """
        proto, transport = self.login(factory=self.makeFactory(defaultQuotaBytes=10 * 1024 * 1024))
        used = (countMailbox(self.inbox)[0] + 1023) // 1024
        self.assertEqual(self.send(proto, transport, b"a GETQUOTAROOT INBOX"),
                         b'* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE %d 10240)\r\n'
                         b"a OK GETQUOTAROOT completed\r\n" % (used,))
        self.assertEqual(self.send(proto, transport, b'b GETQUOTA ""', b"c GETQUOTA other",
                                   b'd SETQUOTA "" (STORAGE 1)'),
                         b'* QUOTA "" (STORAGE %d 10240)\r\nb OK GETQUOTA completed\r\n'
                         b"c NO [NONEXISTENT] No such quota root\r\n"
                         b"d NO [NOPERM] Quotas cannot be changed over IMAP\r\n" % (used,))
        self.assertIn(b"QUOTA QUOTA=RES-STORAGE", self.send(proto, transport, b"e CAPABILITY"))
        self.users.setQuota("alice@example.test", 2048)
        proto, transport = self.login()
        self.assertIn(b'* QUOTA "" (STORAGE %d 2)\r\n' % (used,), self.send(proto, transport, b'f GETQUOTA ""'))

    def test_namespaceAndState(self) -> None:
        """
        NAMESPACE has one personal namespace; commands of another state
        are BAD.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"a SELECT INBOX"), b"a BAD Command not valid in this state\r\n")
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"b NAMESPACE"),
                         b'* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n')
        self.assertEqual(self.send(proto, transport, b"c FETCH 1 FLAGS"),
                         b"c BAD Command not valid in this state\r\n")
        self.assertEqual(self.send(proto, transport, b"d LOGOUT"),
                         b"* BYE QutEmail IMAP server logging out\r\nd OK LOGOUT completed\r\n")
        self.assertTrue(transport.disconnecting)
