# -*- test-case-name: tests.access.test_imaploopback -*-
"""
End to end tests of L{qutemail.access.imapserver}: real listeners on
loopback with real TLS (STARTTLS and implicit), the thread-pool runner,
and Python's imaplib in a thread.
"""

import datetime
import imaplib
import os
import ssl
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from qutemail.access.fetchindex import ENVELOPE, FIELDS, INDEX_NAME, parseLines
from qutemail.access.imapaccount import imapPortal
from qutemail.access.imapselected import PREFETCH_MESSAGES
from qutemail.access.plainindex import WHOLE_READ_BYTES
from qutemail.access.imapserver import IMAPFactory
from qutemail.backends.memory import MemoryUserDirectory
from qutemail.blocking import BlockingRunner
from qutemail.tlsserver import ServerCredentials, contextFactory, generateSelfSigned
from qutemail.policy.throttle import AuthThrottle
from qutemail.store.deliveryprocess import DeliveryProcess
from tests.access.test_imapserver import ENCRYPTED_NAME, ORIGINAL, PLAIN, PLAIN_NAME, deliver, makeMailbox
from tests.integration.support import CLIENT_TIMEOUT, waitFor


def insecureContext() -> ssl.SSLContext:
    """
    A client context that accepts the test's self-signed certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def writeCredentials(directory: str) -> ServerCredentials:
    """
    A self-signed certificate and key in C{directory}.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate, key = generateSelfSigned("mail.example.test", now)
    paths = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    for path, data in zip(paths, (certificate, key)):
        with open(path, "wb") as f:
            f.write(data)
    return ServerCredentials(*paths)


def fetchedBody(client: imaplib.IMAP4, spec: bytes) -> bytes:
    """
    @return: the literal of a one-message FETCH.
    """
    status, data = client.fetch(spec.split(b" ", 1)[0].decode(), spec.split(b" ", 1)[1].decode())
    assert status == "OK", (status, data)
    return data[0][1]


class LoopbackTests(TestCase):
    """
    A plain listener (STARTTLS) and an implicit-TLS one, over Alice's
    mailbox.
    """

    def setUp(self) -> None:
        """
        The mailbox, the runner, and two listeners.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.vault, self.keyId, self.encrypted, self.inbox = makeMailbox(self, self.dataDir)
        self.tls = contextFactory(writeCredentials(self.dataDir), datetime.datetime.now(datetime.timezone.utc))
        self.runner = BlockingRunner(reactor)
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        self.users = MemoryUserDirectory()
        self.users.addUser("alice@example.test", b"pw-alice")
        self.sessions = []
        self.port = self.listen(False)
        self.tlsPort = self.listen(True)

    def listen(self, implicitTLS: bool, portal=None) -> int:
        """
        Start a listener with its own factory (and portal, unless given).

        @return: its port.
        """
        portal = portal or imapPortal(self.users, self.dataDir, self.vault, self.runner)
        factory = IMAPFactory(portal, self.runner, reactor, AuthThrottle(failureDelaySeconds=0.01), self.tls,
                              implicitTLS, pollSeconds=0.05, hostname="mail.example.test")
        build = factory.buildProtocol

        def recording(addr):
            """
            Build a session and remember it.
            """
            proto = build(addr)
            self.sessions.append(proto)
            return proto

        factory.buildProtocol = recording
        listening = TLSMemoryBIOFactory(self.tls, False, factory) if implicitTLS else factory
        port = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def imap(self, session, implicitTLS: bool = True, port: int | None = None):
        """
        Run C{session(client)} with a logged-in imaplib client in a thread,
        log out, and wait for the server side to close.
        """

        def run():
            """
            The client's side, in a thread.
            """
            if implicitTLS:
                client = imaplib.IMAP4_SSL("127.0.0.1", port or self.tlsPort, ssl_context=insecureContext(),
                                           timeout=CLIENT_TIMEOUT)
            else:
                client = imaplib.IMAP4("127.0.0.1", port or self.port, timeout=CLIENT_TIMEOUT)
                client.starttls(insecureContext())
            try:
                client.login("alice@example.test", "pw-alice")
                return session(client)
            finally:
                try:
                    client.logout()
                except (imaplib.IMAP4.error, OSError):
                    client.shutdown()

        try:
            return await deferToThread(run)
        finally:
            await waitFor(lambda: all(p._lost for p in self.sessions), timeout=10)

    async def test_loginDisabledBeforeSTARTTLS(self) -> None:
        """
        On the plain port LOGINDISABLED is offered and LOGIN refused; after
        STARTTLS login works, mail can be read, and a 2 MB message goes
        both ways.
        """

        def run():
            """
            The client's side, in a thread.
            """
            client = imaplib.IMAP4("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            try:
                capabilities = client.capabilities
                with self.assertRaises(imaplib.IMAP4.error) as caught:
                    client.login("alice@example.test", "pw-alice")
                return capabilities, str(caught.exception)
            finally:
                client.logout()

        capabilities, refusal = await deferToThread(run)
        await waitFor(lambda: all(p._lost for p in self.sessions), timeout=10)
        self.assertIn("LOGINDISABLED", capabilities)
        self.assertIn("STARTTLS", capabilities)
        self.assertIn("PRIVACYREQUIRED", refusal)

        big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 131072

        def session(client):
            """
            What the client does once logged in.
            """
            client.append("Drafts", None, None, big)
            client.select("INBOX")
            first = fetchedBody(client, b"1 (BODY.PEEK[])")
            client.select("Drafts")
            return first, fetchedBody(client, b"1 (BODY.PEEK[])")

        self.assertEqual(await self.imap(session, implicitTLS=False), (ORIGINAL, big))

    async def test_implicitTLSDecrypts(self) -> None:
        """
        Over implicit TLS, the special folders exist after the first login,
        and the encrypted message is fetched as its original while the
        file holds ciphertext.
        """

        def session(client):
            """
            What the client does once logged in.
            """
            listing = client.list()[1]
            client.select("INBOX")
            size = client.fetch("1", "(RFC822.SIZE)")[1][0]
            return listing, size, fetchedBody(client, b"1 (RFC822)")

        listing, size, body = await self.imap(session)
        self.assertIn(b'(\\HasNoChildren \\Sent) "/" "Sent"', listing)
        self.assertIn(b'(\\HasNoChildren \\Trash) "/" "Trash"', listing)
        self.assertIn(b"RFC822.SIZE %d" % (len(ORIGINAL),), size)
        self.assertEqual(body, ORIGINAL)
        with open(os.path.join(self.inbox, "cur", ENCRYPTED_NAME + ":2,S"), "rb") as f:
            stored = f.read()
        self.assertNotIn(b"the plan", stored)
        self.assertIn(b"multipart/encrypted", stored)

    async def test_fetchIndex(self) -> None:
        """
        A listing of structures is answered the same from the folder's
        fetch index as from the messages: the first session writes the
        index (plain mail only: nothing of the encrypted message), the
        next answers from it without reading the messages again.
        """
        deliver(self.inbox, "1700000003.M3Q3R0.host,S=3",
                b"From: \"Carol, C.\" <carol@remote.test>, dave@remote.test\nTo: alice@example.test\n"
                b"Subject: =?utf-8?q?caf=C3=A9?=\nContent-Type: multipart/mixed; boundary=B\n\n"
                b"--B\nContent-Type: text/plain\n\nhi\n--B\nContent-Type: image/png\n"
                b"Content-Transfer-Encoding: base64\n\niVBORw0K\n--B--\n", 1700000003, "cur")
        items = "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)"

        def session(client):
            client.select("INBOX")
            return client.fetch("1:*", items)[1]

        first = await self.imap(session)
        index = os.path.join(self.inbox, INDEX_NAME)
        with open(index, "rb") as f:
            entries = parseLines(f.read())
        self.assertEqual(sorted(entries), ["1700000002.M2Q2R0.host,S=2", "1700000003.M3Q3R0.host,S=3"])
        self.assertFalse(any(b"plan" in e[ENVELOPE] for e in entries.values()))
        self.assertEqual(os.stat(index).st_mode & 0o777, 0o600)
        # The content under a unique name never changes; were it to, the
        # index would still answer: proof that it is what answers.
        deliver(self.inbox, PLAIN_NAME + ":2,S", PLAIN.replace(b"from outside", b"changed"), 1700000002, "cur")
        second = await self.imap(session)

        def flat(response):
            # \\Recent is the first session's only.
            return b"".join(x if isinstance(x, bytes) else b"".join(x) for x in response).replace(b"\\Recent", b"")

        self.assertEqual(flat(second), flat(first))
        self.assertIn(b'"from outside"', flat(second))
        self.assertIn(b'(("Carol, C." NIL "carol" "remote.test")(NIL NIL "dave" "remote.test"))', flat(second))

    async def firstListing(self, port: int | None = None) -> list:
        """
        Deliver more messages than three indexing batches (two of them
        ones the delivery process leaves to the server: larger than it
        reads whole, and naming "encrypted"), list them for the first time
        over C{port} (the implicit-TLS listener by default) and check each
        envelope and the index; a second listing, from the index, must be
        the same.

        @return: the first listing.
        """
        count = 3 * PREFETCH_MESSAGES + 5
        special = {70: "X-Note: not encrypted\n", 140: "X-Big: " + "x" * WHOLE_READ_BYTES + "\n"}
        for i in range(count):
            deliver(self.inbox, f"1700001{i:03d}.M{i}Q{i}R0.host,S={i}",
                    f"From: Sender {i} <s{i}@remote.test>\nSubject: number {i}\n{special.get(i, '')}\n"
                    f"body {i}\n".encode(), 1700001000 + i, "cur")

        def session(client):
            client.select("INBOX")
            return client.fetch("1:*", "(UID ENVELOPE)")[1]

        first = await self.imap(session, port=port)
        subjects = [line for line in first if b'"number ' in line]
        self.assertEqual(len(subjects), count)
        for i, line in enumerate(subjects):
            self.assertIn(b'"number %d" (("Sender %d" NIL "s%d" "remote.test"))' % (i, i, i), line)
        with open(os.path.join(self.inbox, INDEX_NAME), "rb") as f:
            self.assertEqual(len(parseLines(f.read())), count + 1)
        self.assertEqual(await self.imap(session, port=port), first)
        return first

    async def test_firstListingInBatches(self) -> None:
        """
        A first listing of more messages than one indexing batch (the next
        batches indexed while one is answered) gives every message its own
        envelope, in order, writes an entry for each plain one, and a
        later listing from the index is the same.
        """
        await self.firstListing()

    def indexingChild(self) -> tuple[DeliveryProcess, list]:
        """
        A started delivery process that records the batches it is asked to
        index.

        @return: it, and the list of batch sizes it will fill.
        """
        asked: list[int] = []

        class Recording(DeliveryProcess):
            """
            The real delivery process, counting index batches.
            """

            def indexPlain(self, paths):
                asked.append(len(paths))
                return DeliveryProcess.indexPlain(self, paths)

        process = Recording(reactor)
        process.startService()
        self.addCleanup(lambda: process.stopService() if process.running else None)
        return process, asked

    async def test_firstListingThroughDeliveryProcess(self) -> None:
        """
        With the server's delivery process as its indexer, a first listing
        has some batches indexed there (another process, another core),
        with the same result as without.
        """
        process, asked = self.indexingChild()
        portal = imapPortal(self.users, self.dataDir, self.vault, self.runner, indexer=process)
        await self.firstListing(self.listen(True, portal))
        self.assertTrue(asked)
        self.assertGreater(sum(asked), PREFETCH_MESSAGES)

    async def test_firstListingIndexerGone(self) -> None:
        """
        When the delivery process cannot index (here: it is stopped), the
        batches are indexed in the server instead, and the listing is whole.
        """
        process, asked = self.indexingChild()
        await process.stopService()
        portal = imapPortal(self.users, self.dataDir, self.vault, self.runner, indexer=process)
        warnings: list[str] = []

        def observe(event):
            if event.get("log_level") == LogLevel.warn:
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await self.firstListing(self.listen(True, portal))
        self.assertTrue(asked)
        self.assertTrue(any("indexing in the delivery process failed" in w for w in warnings), warnings)

    async def test_searchFromIndex(self) -> None:
        """
        A SEARCH of the header fields the fetch index keeps is answered
        from it once a session has written it (plain mail only), gives the
        same results as from the messages, and a search of another field
        still reads the messages.
        """
        deliver(self.inbox, "1700000003.M3Q3R0.host,S=3",
                b"From: Carol <carol@remote.test>\nSubject: =?utf-8?q?caf=C3=A9?= menu\nX-Tag: blue\n\nhi\n",
                1700000003, "cur")
        searches = [("SUBJECT", "CAF\u00c9"), ("SUBJECT", "plan"), ("FROM", "remote.test"),
                    ("HEADER", "Message-ID", "m1@"), ("HEADER", "X-Tag", "blue"), ("OR", "FROM", "bob", "TO", "x")]

        def session(client):
            client.select("INBOX")
            return [client.uid("SEARCH", "CHARSET", "UTF-8", *[c.encode() for c in criteria])[1][0]
                    for criteria in searches]

        first = await self.imap(session)
        self.assertEqual(first, [b"3", b"1", b"2 3", b"1", b"3", b"1"])
        with open(os.path.join(self.inbox, INDEX_NAME), "rb") as f:
            entries = parseLines(f.read())
        self.assertEqual(sorted(entries), [PLAIN_NAME, "1700000003.M3Q3R0.host,S=3"])
        self.assertFalse(any(b"plan" in (e[FIELDS] or b"") for e in entries.values()))
        # Proof the index answers: a change under the same unique name
        # (which never happens) shows only for the field it does not keep.
        deliver(self.inbox, "1700000003.M3Q3R0.host,S=3",
                b"From: Dan <dan@elsewhere.test>\nSubject: tea\nX-Tag: red\n\nhi\n", 1700000003, "cur")
        second = await self.imap(session)
        self.assertEqual(second, [b"3", b"1", b"2 3", b"1", b"", b"1"])

    async def test_searchAcrossBatches(self) -> None:
        """
        A SEARCH over more messages than one batch, some of them indexed
        and some not (a batch holds both), finds the same messages as a
        later one answered wholly from the index.
        """
        count = 3 * PREFETCH_MESSAGES + 5
        for i in range(count):
            deliver(self.inbox, f"1700001{i:03d}.M{i}Q{i}R0.host,S={i}",
                    f"From: s{i}@remote.test\nSubject: number {i}\n\nbody {i}\n".encode(), 1700001000 + i, "cur")
        # The folder's two other messages come first.
        expected = " ".join(str(i + 3) for i in range(count) if str(i).startswith("1")).encode()

        def session(client):
            status, data = client.select("INBOX", readonly=True)
            self.assertEqual(int(data[0]), count + 2)
            client.fetch(f"3:{PREFETCH_MESSAGES + 40}", "(ENVELOPE)")
            return client.search(None, "SUBJECT", '"number 1"')[1][0]

        self.assertEqual(await self.imap(session), expected)
        with open(os.path.join(self.inbox, INDEX_NAME), "rb") as f:
            self.assertEqual(len(parseLines(f.read())), count + 1)
        self.assertEqual(await self.imap(session), expected)

    async def test_internalDatesWhenAsked(self) -> None:
        """
        SELECT lists the folder without a C{stat} of each file; a FETCH of
        INTERNALDATE and a SEARCH by date look then: each message has its
        file's time, one renamed by another session's flag change is found
        under its new name, and one expunged by another session is left
        out (the FETCH then says so).
        """
        names = [f"1700003{i:03d}.M{i}Q{i}R0.host,S={i}" for i in range(3)]
        paths = [deliver(self.inbox, name + ":2,S", b"Subject: t\n\nbody\n", when, "cur")
                 for name, when in zip(names, (1704153600, 1704240000, 1704326400))]

        def session(client):
            client.select("INBOX")
            # Another session sets a flag on the first and expunges the third.
            os.rename(paths[0], paths[0] + "F")
            os.remove(paths[2])
            status, _ = client.fetch("1:*", "(INTERNALDATE)")
            fetched = [line for line in client.response("FETCH")[1] if line]
            since = client.search(None, "SINCE", "2-Jan-2024")[1][0]
            before = client.search(None, "BEFORE", "3-Jan-2024")[1][0]
            return status, fetched, since, before

        status, fetched, since, before = await self.imap(session)
        self.assertEqual(status, "NO")
        self.assertEqual(fetched, [b'1 (INTERNALDATE "14-Nov-2023 22:13:21 +0000")',
                                   b'2 (INTERNALDATE "14-Nov-2023 22:13:22 +0000")',
                                   b'3 (INTERNALDATE "02-Jan-2024 00:00:00 +0000")',
                                   b'4 (INTERNALDATE "03-Jan-2024 00:00:00 +0000")'])
        self.assertEqual((since, before), (b"3 4", b"1 2 3"))

    async def test_manyBodies(self) -> None:
        """
        A FETCH of many whole messages, far past one batch of output, with
        the encrypted one (read from its file) among them and a message
        too large to be read in memory, sends every message whole and in
        order, as the messages are with CRLF line ends.
        """
        bodies = {}
        for n in range(3, 153):
            text = b"Subject: m%d\n\n" % (n,) + b"".join(b"line %d of %d\n" % (i, n) for i in range(150))
            if n == 80:
                text += b"x" * (5 * 1024 * 1024) + b"\n"
            name = "1700000%03d.M%dQ%dR0.host,S=%d" % (n, n, n, n)
            deliver(self.inbox, name + ":2,S", text, 1700000000 + n, "cur")
            bodies[name] = text.replace(b"\n", b"\r\n")

        def session(client):
            client.select("INBOX", readonly=True)
            status, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            return [item for item in data if isinstance(item, tuple)]

        fetched = await self.imap(session)
        self.assertEqual(len(fetched), 2 + len(bodies))
        self.assertEqual(fetched[0][1], ORIGINAL)
        self.assertEqual(fetched[1][1], PLAIN.replace(b"\n", b"\r\n"))
        self.assertEqual([item[1] for item in fetched[2:]], list(bodies.values()))
        self.assertEqual([int(item[0].split(b"UID ")[1].split()[0]) for item in fetched], list(range(1, 153)))

    async def test_keyGoneNotice(self) -> None:
        """
        A message whose key is gone is fetched as the notice.
        """
        await self.vault.erase(self.keyId)

        def session(client):
            """
            What the client does once logged in.
            """
            client.select("INBOX")
            return fetchedBody(client, b"1 (BODY.PEEK[])")

        body = await self.imap(session)
        self.assertIn(b"Subject: [QutEmail] unreadable message", body)
        self.assertNotIn(b"the plan", body)

    async def test_idleSeesDelivery(self) -> None:
        """
        A message delivered into C{new/} while the client idles is
        announced with EXISTS.
        """

        def session(client):
            """
            What the client does once logged in.
            """
            client.select("INBOX")
            tag = client._new_tag()
            client.send(tag + b" IDLE\r\n")
            self.assertTrue(client.readline().startswith(b"+ "))
            reactor.callFromThread(deliver, self.inbox, "1700000300.M3Q3R0.host,S=9", b"Subject: late\n\nhi\n",
                                   1700000300)
            lines = [client.readline()]
            while b"EXISTS" not in lines[-1]:
                lines.append(client.readline())
            client.send(b"DONE\r\n")
            while not lines[-1].startswith(tag):
                lines.append(client.readline())
            return lines

        lines = await self.imap(session)
        self.assertIn(b"* 3 EXISTS\r\n", lines)
        self.assertTrue(lines[-1].endswith(b"OK IDLE terminated\r\n"))

    async def test_appendThenFetch(self) -> None:
        """
        A message appended to Sent (sent in several reads, written through
        the thread pool) comes back identical, with its flags.
        """
        message = b"From: alice@example.test\r\nSubject: sent\r\n\r\n" + b"line of text\r\n" * 50000

        def session(client):
            """
            What the client does once logged in.
            """
            status, data = client.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(time.time()), message)
            client.select("Sent")
            return data, client.fetch("1", "(FLAGS)")[1][0], fetchedBody(client, b"1 (BODY[])")

        appended, flags, body = await self.imap(session)
        self.assertIn(b"[APPENDUID ", appended[0])
        self.assertIn(b"\\Seen", flags)
        self.assertEqual(body, message)

    async def test_uidsStableAcrossFactories(self) -> None:
        """
        Another listener with its own factory and portal (a restart) gives
        the same UIDs and UIDVALIDITY.
        """

        def session(client):
            """
            What the client does once logged in.
            """
            client.select("INBOX")
            return client.response("UIDVALIDITY"), client.uid("FETCH", "1:*", "(UID)")[1]

        first = await self.imap(session)
        other = self.listen(True, imapPortal(self.users, self.dataDir, self.vault, self.runner))
        self.assertEqual(await self.imap(session, port=other), first)
        self.assertEqual(first[1], [b"1 (UID 1)", b"2 (UID 2)"])
