"""
Unit tests of the SMTP listener over a L{StringTransport}, with the memory
user directory, an inline runner and a L{Clock}.
"""

import os

from hypothesis import given, strategies as st
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.support import QueuedRunner, buildStack, connect, converse

EHLO_REPLY = (
    b"250-mail.example.test Hello 192.0.2.7\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1048576\r\n"
    b"250-8BITMIME\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
ENVELOPE_REPLIES = EHLO_REPLY + (
    b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
)


class SessionTestsMixin:
    """
    Builds a stack and a session for each test.
    """

    def setUp(self):
        """
        A fresh stack under a temporary directory.
        """
        self.stack = buildStack(self.mktemp())
        self.proto, self.transport = connect(self.stack.factory)

    def send(self, data: bytes) -> bytes:
        """
        Send bytes, return the replies.
        """
        return converse(self.proto, self.transport, data)

    def queuedReply(self) -> bytes:
        """
        The 250 the last accepted message got.
        """
        return b"250 2.0.0 Ok: queued as %s\r\n" % (self.lastQueueId().encode(),)

    def lastQueueId(self) -> str:
        """
        The queue id of the message being or last received.
        """
        return self.proto._queueId


class GreetingTests(SessionTestsMixin, SynchronousTestCase):
    """
    Greeting, EHLO and command errors.
    """

    def test_greeting(self):
        """
        The server greets with 220 and its host name.
        """
        self.assertEqual(self.transport.value(), b"220 mail.example.test ESMTP QutEmail\r\n")

    def test_ehloExtensions(self):
        """
        EHLO advertises PIPELINING, SIZE with the limit, 8BITMIME and
        ENHANCEDSTATUSCODES, and no AUTH on the MTA port.
        """
        self.assertEqual(self.send(b"EHLO client.test\r\n"), EHLO_REPLY)

    def test_garbageCommand(self):
        """
        An unknown command gets 500 5.5.2 and the session goes on.
        """
        self.assertEqual(
            self.send(b"XYZZY plugh\r\nNOOP\r\n"),
            b"500 5.5.2 Command unrecognized\r\n250 2.0.0 OK\r\n",
        )

    def test_binaryGarbage(self):
        """
        A line of non-ASCII bytes and a NUL byte get 500 and the session
        goes on.
        """
        self.assertEqual(
            self.send(b"\xff\xfe\r\nNO\x00OP\r\nNOOP\r\n"),
            b"500 5.5.2 Command unrecognized\r\n500 5.5.2 Syntax error, command unrecognized\r\n250 2.0.0 OK\r\n",
        )

    def test_mailBeforeHelo(self):
        """
        MAIL before HELO/EHLO is refused with 503 5.5.1.
        """
        self.assertEqual(self.send(b"MAIL FROM:<a@b.test>\r\n"), b"503 5.5.1 Send HELO or EHLO first\r\n")

    def test_overlongCommand(self):
        """
        A command line over 512 octets gets 500 5.5.2 and the session goes
        on, even when the line arrives in pieces.
        """
        self.send(b"EHLO client.test\r\n")
        self.assertEqual(self.send(b"NOOP " + b"x" * 600), b"")
        self.assertEqual(
            self.send(b"x" * 600 + b"\r\nNOOP\r\n"),
            b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n",
        )

    def test_commandJustUnderLimit(self):
        """
        A 512-octet command line (CRLF included) is accepted.
        """
        line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
        self.assertEqual(len(line), 512)
        self.assertEqual(self.send(line), b"250 2.0.0 OK\r\n")

    def test_tooManyErrors(self):
        """
        Twenty errors in a session end it with 421 4.7.0.
        """
        replies = self.send(b"BOGUS\r\n" * 25)
        self.assertEqual(replies.count(b"500 5.5.2"), 19)
        self.assertTrue(replies.endswith(b"421 4.7.0 Too many errors, closing connection\r\n"))
        self.assertTrue(self.transport.disconnecting)

    def test_idleTimeout(self):
        """
        A session idle for the timeout gets 421 4.4.2 and is closed.
        """
        self.transport.clear()
        self.stack.clock.advance(299)
        self.assertEqual(self.transport.value(), b"")
        self.stack.clock.advance(2)
        self.assertEqual(self.transport.value(), b"421 4.4.2 Idle timeout, closing connection\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_quit(self):
        """
        QUIT gets 221 2.0.0 and closes the connection.
        """
        self.assertEqual(self.send(b"QUIT\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(self.transport.disconnecting)


class EnvelopeTests(SessionTestsMixin, SynchronousTestCase):
    """
    MAIL and RCPT.
    """

    def test_sizeOverLimit(self):
        """
        MAIL with a declared SIZE over the limit gets 552 5.3.4.
        """
        self.send(b"EHLO client.test\r\n")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@remote.test> SIZE=1048577\r\n"),
            b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        )
        self.assertEqual(self.send(b"MAIL FROM:<a@remote.test> SIZE=1048576\r\n"), b"250 2.1.0 Sender OK\r\n")

    def test_unknownParameter(self):
        """
        An unknown MAIL parameter gets 555 5.5.4.
        """
        self.send(b"EHLO client.test\r\n")
        self.assertEqual(
            self.send(b"MAIL FROM:<a@remote.test> SMTPUTF8\r\n"),
            b"555 5.5.4 MAIL FROM/RCPT TO parameter not recognized or not implemented\r\n",
        )

    def test_badSenderSyntax(self):
        """
        A malformed reverse path gets 501 5.1.7.
        """
        self.send(b"EHLO client.test\r\n")
        self.assertEqual(self.send(b"MAIL FROM:<a@@b>\r\n"), b"501 5.1.7 Bad sender address syntax\r\n")

    def test_unknownLocalUser(self):
        """
        RCPT to an unknown local user gets 550 5.1.1.
        """
        self.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<nobody@example.test>\r\n"), b"550 5.1.1 No such user here\r\n")

    def test_noRelay(self):
        """
        RCPT to another domain without authentication gets 554 5.7.1.
        """
        self.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<x@elsewhere.test>\r\n"), b"554 5.7.1 Relay access denied\r\n")

    def test_recipientCaseNormalised(self):
        """
        Recipient addresses are matched without regard to case.
        """
        self.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send(b"RCPT TO:<ALICE@Example.TEST>\r\n"), b"250 2.1.5 Recipient OK\r\n")

    def test_maxRecipients(self):
        """
        Recipients past C{max_recipients} get 452 4.5.3.
        """
        for i in range(10):
            self.stack.users.addUser(f"u{i}@example.test", b"pw")
        self.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n")
        replies = self.send(b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(10)) + b"RCPT TO:<alice@example.test>\r\n")
        self.assertEqual(replies, b"250 2.1.5 Recipient OK\r\n" * 10 + b"452 4.5.3 Too many recipients\r\n")

    def test_dataWithoutRecipients(self):
        """
        DATA without an accepted recipient gets 503 5.5.1.
        """
        self.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(self.send(b"DATA\r\n"), b"503 5.5.1 Need RCPT before DATA\r\n")

    def test_mailboxFullAtRcpt(self):
        """
        RCPT to a mailbox already over its quota gets 452 4.2.2.
        """
        self.send(ENVELOPE + b"Subject: x\r\n\r\n" + b"y" * 200 + b"\r\n.\r\n")
        self.assertEqual(len(self.stack.newFiles("alice@example.test")), 1)
        self.stack.users.setQuota("alice@example.test", 100)
        self.assertEqual(
            self.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"),
            b"250 2.1.0 Sender OK\r\n452 4.2.2 Mailbox full\r\n",
        )


class DataTests(SessionTestsMixin, SynchronousTestCase):
    """
    DATA: framing, limits, storage.
    """

    def test_pipelinedTransaction(self):
        """
        A whole pipelined transaction in one write gets its replies in order
        and the message lands in the Maildir with a Received header, the
        dot-stuffing undone and LF line ends.
        """
        replies = self.send(ENVELOPE + b"Subject: hi\r\n\r\nline\r\n..dot\r\n.\r\nQUIT\r\n")
        self.assertEqual(replies, ENVELOPE_REPLIES + self.queuedReply() + b"221 2.0.0 Bye\r\n")
        [stored] = self.stack.newFiles("alice@example.test")
        self.assertTrue(stored.startswith(b"Return-Path: <sender@remote.test>\nReceived: from client.test ([192.0.2.7])\n"))
        self.assertTrue(stored.endswith(b"\nSubject: hi\n\nline\n.dot\n"))

    def test_twoRecipientsOneWrite(self):
        """
        A message to two local users is stored once in each mailbox, and
        the journal holds it once.
        """
        self.send(b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        self.send(b"Subject: two\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(len(self.stack.newFiles("alice@example.test")), 1)
        self.assertEqual(len(self.stack.newFiles("bob@example.test")), 1)
        journal = os.path.join(self.stack.dataDir, "queue", "journal")
        [segment] = os.listdir(journal)
        with open(os.path.join(journal, segment), "rb") as f:
            self.assertEqual(f.read().count(b"Subject: two"), 1)

    def test_endMarkerSplitAcrossWrites(self):
        """
        The final CRLF.CRLF is found when it arrives one byte at a time.
        """
        self.send(ENVELOPE + b"Subject: s\r\n\r\nbody")
        out = b""
        for byte in b"\r\n.\r\n":
            out += self.send(bytes([byte]))
        self.assertEqual(out, self.queuedReply())

    def test_emptyBody(self):
        """
        A message with no body at all (the dot right after 354) is accepted.
        """
        self.send(ENVELOPE)
        self.assertEqual(self.send(b".\r\n"), self.queuedReply())

    def test_bareLineFeedRefused(self):
        """
        A bare LF in the body fails the message with 554 5.6.0 and nothing
        is stored; LF.LF does not end the data (no smuggling).
        """
        self.send(ENVELOPE)
        replies = self.send(b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x.test>\r\n.\r\nNOOP\r\n")
        self.assertEqual(
            replies,
            b"554 5.6.0 Bare CR or LF in message data is not allowed\r\n250 2.0.0 OK\r\n",
        )
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])

    def test_overlongDataLine(self):
        """
        A body line over 1000 octets fails the message with 554 5.6.0 at the
        final dot, nothing is stored, and the session goes on.
        """
        self.send(ENVELOPE)
        replies = self.send(b"Subject: x\r\n\r\n" + b"a" * 5000 + b"\r\n.\r\nNOOP\r\n")
        self.assertEqual(replies, b"554 5.6.0 Message has a line longer than 1000 octets\r\n250 2.0.0 OK\r\n")
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])

    def test_lineLengthBoundary(self):
        """
        A 1000-octet line (998 and CRLF) is accepted, as first line of a
        chunk or after others; 1001 octets fail the message.
        """
        for prefix in (b"", b"Subject: x\r\n\r\n"):
            self.send(ENVELOPE)
            self.assertEqual(self.send(prefix + b"a" * 998 + b"\r\n.\r\n"), self.queuedReply())
            self.send(ENVELOPE)
            self.assertEqual(
                self.send(prefix + b"a" * 999 + b"\r\n.\r\n"),
                b"554 5.6.0 Message has a line longer than 1000 octets\r\n",
            )

    def test_overlongLineEndingInDot(self):
        """
        An over-long line that arrives in pieces, one of which ends in a dot,
        does not end the data early.
        """
        self.send(ENVELOPE)
        self.assertEqual(self.send(b"a" * 1500 + b"."), b"")
        self.assertEqual(self.send(b"\r\nQUIT\r\n"), b"")
        self.assertEqual(
            self.send(b".\r\n"),
            b"554 5.6.0 Message has a line longer than 1000 octets\r\n",
        )

    def test_messageTooBig(self):
        """
        A body over the size limit gets 552 5.3.4 at the final dot and
        nothing is stored.
        """
        self.send(ENVELOPE)
        line = b"x" * 998 + b"\r\n"
        replies = self.send(line * 1100 + b".\r\n")
        self.assertEqual(replies, b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])

    def test_storeFailureIsTemporary(self):
        """
        When the journal cannot be written the client gets 451 4.3.0, not
        Twisted's 550.
        """
        journalDir = os.path.join(self.stack.dataDir, "queue", "journal")

        def broken(*args):
            raise OSError(5, "Input/output error")

        self.stack.journal._writeBatch = broken
        self.send(ENVELOPE)
        self.assertEqual(
            self.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"),
            b"451 4.3.0 Local error in processing, try again later\r\n",
        )
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])
        self.assertTrue(os.path.isdir(journalDir))

    def test_diskFullIsTemporary(self):
        """
        ENOSPC while spooling gets 452 4.3.1.
        """

        def full(*args):
            raise OSError(28, "No space left on device")

        self.stack.journal._writeBatch = full
        self.send(ENVELOPE)
        self.assertEqual(
            self.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"),
            b"452 4.3.1 Insufficient system storage, try again later\r\n",
        )
        self.flushLoggedErrors(OSError)

    def test_rsetAfterData(self):
        """
        After a message, a new transaction can start on the same session.
        """
        self.send(ENVELOPE + b"Subject: 1\r\n\r\n.\r\n")
        replies = self.send(ENVELOPE[len(b"EHLO client.test\r\n"):] + b"Subject: 2\r\n\r\n.\r\n")
        self.assertTrue(replies.endswith(self.queuedReply()))
        self.assertEqual(len(self.stack.newFiles("alice@example.test")), 2)


class ChunkingTests(SynchronousTestCase):
    """
    The same input split at any points gives the same replies.
    """

    @given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=20))
    def test_splitInput(self, cuts):
        """
        Splitting a session's input into arbitrary chunks does not change
        the replies or what is stored, as long as no chunk runs past a
        command the client must wait for (RFC 2920 §3.1: EHLO, DATA).
        """
        data = (
            ENVELOPE
            + b"Subject: chunks\r\n\r\n..leading dot\r\nplain\r\n"
            + b"z" * 900 + b"\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"
        )
        stack = buildStack(self.mktemp())
        proto, transport = connect(stack.factory)
        transport.clear()
        ends = sorted({data.index(b"EHLO client.test\r\n") + 18}
                      | {i + 6 for i in range(len(data)) if data.startswith(b"DATA\r\n", i)})
        points, pos = set(ends), 0
        for cut in cuts:
            pos += cut
            points.add(min(pos, len(data)))
        start = 0
        for point in sorted(points) + [len(data)]:
            if point > start:
                proto.dataReceived(data[start:point])
                start = point
        replies = transport.value()
        self.assertEqual(replies.count(b"250 2.0.0 Ok: queued as"), 2)
        self.assertTrue(replies.endswith(b"221 2.0.0 Bye\r\n"))
        [stored] = stack.newFiles("alice@example.test")
        self.assertIn(b"\n.leading dot\nplain\n", stored)
        self.assertEqual(len(stack.newFiles("bob@example.test")), 1)


class ShutdownTests(SessionTestsMixin, SynchronousTestCase):
    """
    What open sessions get when the server stops.
    """

    def test_idleSessionClosed(self):
        """
        An idle session gets 421 4.3.2 and is closed.
        """
        self.send(b"EHLO client.test\r\n")
        self.transport.clear()
        self.stack.factory.shutdown()
        self.assertEqual(self.transport.value(), b"421 4.3.2 Service shutting down, try again later\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_unfinishedDataAbandoned(self):
        """
        A message whose final dot has not arrived is abandoned (421, nothing
        stored): it was never acknowledged, so the client sends it again.
        """
        self.send(ENVELOPE + b"Subject: half\r\n\r\nsome")
        self.transport.clear()
        self.stack.factory.shutdown()
        self.assertEqual(self.transport.value(), b"421 4.3.2 Service shutting down, try again later\r\n")
        self.proto.connectionLost(None)
        self.assertEqual(self.stack.newFiles("alice@example.test"), [])
        self.assertEqual(os.listdir(os.path.join(self.stack.dataDir, "queue", "large")), [])

    def test_commitInProgressFinishes(self):
        """
        A message being committed when the server stops still gets its 250
        (it is on disk), then the 421.
        """
        
        runner = QueuedRunner()
        # Only the journal waits for the test; everything else is inline.
        self.stack.journal._runner = runner
        self.send(ENVELOPE + b"Subject: s\r\n\r\nbody\r\n.\r\n")
        self.transport.clear()
        self.stack.factory.shutdown()
        self.assertEqual(self.transport.value(), b"")
        runner.runNext()
        self.assertEqual(
            self.transport.value(),
            self.queuedReply() + b"421 4.3.2 Service shutting down, try again later\r\n",
        )


class LoggingTests(SessionTestsMixin, SynchronousTestCase):
    """
    One structured log line per connection and one per message.
    """

    def test_messageAndConnectionLines(self):
        """
        A delivered message logs one event with its queue id, sender,
        recipients, size and result; closing the session logs one event with
        the peer and the message count.  No event carries the body.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.send(ENVELOPE + b"Subject: logged\r\n\r\nsecret body\r\n.\r\nQUIT\r\n")
        self.proto.connectionLost(None)
        routed = [e for e in events if e.get("queueId") == self.lastQueueId() and "result" in e]
        self.assertEqual(len(routed), 1)
        [event] = routed
        self.assertEqual(event["sender"], "sender@remote.test")
        self.assertEqual(event["recipients"], ["alice@example.test"])
        self.assertEqual(event["result"], "alice@example.test: delivered")
        self.assertGreater(event["size"], 0)
        [session] = [e for e in events if "messages" in e]
        self.assertEqual((session["peer"], session["messages"]), ("192.0.2.7", 1))
        for e in events:
            self.assertNotIn("secret body", formatEvent(e))


class LimitTests(SynchronousTestCase):
    """
    Message rate and connection limits from C{[limits]}.
    """

    def test_messagesPerHour(self):
        """
        The 101st MAIL in an hour from one IP gets 451 4.7.0 naming the
        limit; another IP is not affected; an hour later it is allowed.
        """
        stack = buildStack(self.mktemp(), messagesPerHour=100)
        proto, transport = connect(stack.factory)
        converse(proto, transport, b"EHLO c.test\r\n")
        for i in range(100):
            self.assertEqual(converse(proto, transport, b"MAIL FROM:<a@remote.test>\r\nRSET\r\n"),
                             b"250 2.1.0 Sender OK\r\n250 2.0.0 Reset state\r\n")
        self.assertEqual(converse(proto, transport, b"MAIL FROM:<a@remote.test>\r\n"),
                         b"451 4.7.0 Rate limit of 100 messages per hour exceeded, try again later\r\n")
        other, otherTransport = connect(stack.factory, host="198.51.100.9")
        self.assertEqual(converse(other, otherTransport, b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n")[-21:],
                         b"250 2.1.0 Sender OK\r\n")
        stack.clock.advance(3600)
        proto, transport = connect(stack.factory)
        self.assertEqual(converse(proto, transport, b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\n")[-21:],
                         b"250 2.1.0 Sender OK\r\n")

    def test_connectionsPerIp(self):
        """
        Past C{connections_per_ip} concurrent sessions, a new one from that
        IP gets 421 4.7.0 and is closed; when one ends, another is admitted.
        """
        stack = buildStack(self.mktemp(), connectionsPerIp=2)
        first = connect(stack.factory)
        connect(stack.factory)
        proto, transport = connect(stack.factory)
        self.assertEqual(transport.value(), b"421 4.7.0 Too many connections from your address\r\n")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        first[0].connectionLost(None)
        proto, transport = connect(stack.factory)
        self.assertEqual(transport.value(), b"220 mail.example.test ESMTP QutEmail\r\n")
