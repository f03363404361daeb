# -*- test-case-name: tests.access.test_imapsession -*-
"""
Tests for the message commands of L{qutemail.access.imapserver}
(FETCH, SEARCH, STORE, EXPUNGE, COPY, MOVE, APPEND, IDLE) over
C{StringTransport}, with a clock and the inline runner.
"""

import os
import re

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access import imapfetch
from qutemail.store.mailbox import readUsage
from tests.access.test_imapserver import ENCRYPTED_NAME, ORIGINAL, PLAIN, SessionMixin, deliver

PLAIN_CRLF = PLAIN.replace(b"\n", b"\r\n")


def literal(reply: bytes, label: bytes) -> bytes:
    """
    @return: the data of the literal that follows C{label} in C{reply}.
    """
    match = re.search(re.escape(label) + rb" \{(\d+)\}\r\n", reply)
    assert match is not None, (label, reply)
    return reply[match.end():match.end() + int(match.group(1))]


class FetchTests(SessionMixin, SynchronousTestCase):
    """
    FETCH decrypts for the owner and streams sections.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_decrypted(self) -> None:
        """
        An encrypted message is fetched as its original, byte for byte,
        with its size, while the file holds ciphertext.
        """
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a FETCH 1 (RFC822.SIZE BODY.PEEK[])")
        self.assertTrue(reply.startswith(b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n" % ((len(ORIGINAL),) * 2)))
        self.assertEqual(literal(reply, b"BODY[]"), ORIGINAL)
        self.assertTrue(reply.endswith(b")\r\na OK FETCH completed\r\n"))
        with open(os.path.join(self.inbox, "cur", ENCRYPTED_NAME + ":2,"), "rb") as f:
            self.assertNotIn(b"the plan", f.read())

    def test_plainMessageCRLF(self) -> None:
        """
        A stored LF message is sent with CRLF line ends, and its size says
        so.
        """
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a FETCH 2 (RFC822.SIZE RFC822)")
        self.assertIn(b"RFC822.SIZE %d " % (len(PLAIN_CRLF),), reply)
        self.assertEqual(literal(reply, b"RFC822"), PLAIN_CRLF)

    def test_structureAndSections(self) -> None:
        """
        ENVELOPE, BODYSTRUCTURE, INTERNALDATE, header fields, partial text,
        part 1, and NIL for a part the message does not have.
        """
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a FETCH 1 (INTERNALDATE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS"
                                            b" (Subject)] BODY.PEEK[TEXT]<4.7> BODY.PEEK[1] BODY.PEEK[2] UID)")
        self.assertIn(b'INTERNALDATE "14-Nov-2023 22:13:21 +0000" ENVELOPE ("Tue, 14 Nov 2023 22:13:20 +0000"'
                      b' "private plan" (("Bob" NIL "bob" "example.test"))', reply)
        self.assertIn(b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 19 2 NIL NIL NIL NIL)',
                      reply)
        self.assertEqual(literal(reply, b"BODY[HEADER.FIELDS (SUBJECT)]"), b"Subject: private plan\r\n\r\n")
        self.assertEqual(literal(reply, b"BODY[TEXT]<4>"), b"plan\r\n.")
        self.assertEqual(literal(reply, b"BODY[1]"), b"the plan\r\n.dotted\r\n")
        self.assertIn(b"BODY[2] NIL UID 1)", reply)

    def test_seenFlag(self) -> None:
        """
        BODY[] sets \\Seen (in the file name too) and reports FLAGS;
        BODY.PEEK[] does not, nor does a read-only session.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"e EXAMINE INBOX")
        self.assertNotIn(b"FLAGS", self.send(proto, transport, b"f FETCH 1 BODY[]"))
        proto, transport = self.selected()
        self.assertNotIn(b"FLAGS", self.send(proto, transport, b"a FETCH 1 BODY.PEEK[]"))
        reply = self.send(proto, transport, b"b FETCH 1 BODY[HEADER]")
        self.assertIn(b" FLAGS (\\Seen \\Recent))\r\n", reply)
        self.assertEqual(os.listdir(os.path.join(self.inbox, "new")), [])
        self.assertIn(ENCRYPTED_NAME + ":2,S", os.listdir(os.path.join(self.inbox, "cur")))

    def test_keyGoneNotice(self) -> None:
        """
        A message whose key was erased is fetched as a short notice (and
        logged); the other messages are fetched as usual.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.successResultOf(self.vault.erase(self.keyId))
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a FETCH 1:* (BODY.PEEK[] ENVELOPE)")
        notice = literal(reply, b"* 1 FETCH (BODY[]")
        self.assertIn(b"Subject: [QutEmail] unreadable message", notice)
        self.assertIn(b"is no longer in the vault", notice)
        self.assertNotIn(b"the plan", reply)
        self.assertEqual(literal(reply, b"* 2 FETCH (BODY[]"), PLAIN_CRLF)
        self.assertTrue(reply.endswith(b"a OK FETCH completed\r\n"))
        self.assertTrue(any("shown as a notice" in e.get("log_format", "") and e["address"] == "alice@example.test"
                            for e in events))

    def test_partialFetchesInPieces(self) -> None:
        """
        Reading a message in pieces gives it whole, whatever the piece
        size and the file chunk size (the session resumes where the last
        piece ended); past the end gives an empty string.
        """
        proto, transport = self.selected()
        for chunk in (3, 5, 128 * 1024):
            self.patch(imapfetch, "CHUNK_BYTES", chunk)
            for seq, whole in ((1, ORIGINAL), (2, PLAIN_CRLF)):
                for size in (1, 7, 50):
                    pieces = b""
                    for start in range(0, len(whole) + size, size):
                        reply = self.send(proto, transport, b"a FETCH %d BODY.PEEK[]<%d.%d>" % (seq, start, size))
                        pieces += literal(reply, b"BODY[]<%d>" % (start,))
                    self.assertEqual(pieces, whole)
                reply = self.send(proto, transport, b"b FETCH %d BODY.PEEK[TEXT]<3.4>" % (seq,))
                self.assertEqual(literal(reply, b"BODY[TEXT]<3>"), whole.partition(b"\r\n\r\n")[2][3:7])

    def test_search(self) -> None:
        """
        SEARCH matches flags, headers and bodies of decrypted messages,
        sizes, dates, sets; UID SEARCH gives UIDs; unknown charsets and
        keys are refused.
        """
        proto, transport = self.selected()
        cases = [
            (b"SUBJECT PRIVATE", b"1"), (b"BODY plan", b"1"), (b"TEXT world", b"2"), (b"UNSEEN", b"1"),
            (b"SEEN", b"2"), (b"OR FROM bob FROM remote", b"1 2"), (b"NOT RECENT", b"2"),
            (b"LARGER 100", b"1"), (b"SMALLER 100", b"2"), (b"SINCE 1-Jan-2024", b""),
            (b"SENTON 14-Nov-2023", b"1 2"), (b"SENTBEFORE 14-Nov-2023", b""), (b"BEFORE 1-Jan-2024 2:*", b"2"),
            (b'HEADER Message-ID "<m1@"', b"1"), (b"CHARSET UTF-8 (FROM x DELETED)", b""), (b"UID 2", b"2"),
            (b"ALL", b"1 2"),
        ]
        for criteria, expected in cases:
            reply = self.send(proto, transport, b"s SEARCH " + criteria)
            self.assertEqual(reply, b"* SEARCH%s\r\ns OK SEARCH completed\r\n" % (b" " + expected if expected else b""),
                             criteria)
        self.assertEqual(self.send(proto, transport, b"u UID SEARCH BODY hello"),
                         b"* SEARCH 2\r\nu OK SEARCH completed\r\n")
        self.assertEqual(self.send(proto, transport, b"v SEARCH CHARSET KOI8-R ALL"),
                         b"v NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n")
        self.assertTrue(self.send(proto, transport, b"w SEARCH LARGER x").startswith(b"w BAD "))


class ChangeTests(SessionMixin, SynchronousTestCase):
    """
    STORE, EXPUNGE, COPY, MOVE, APPEND and IDLE, and what other sessions
    see of them.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_storeSeenElsewhere(self) -> None:
        """
        Flags stored in one session are in the file name, reported to
        another selected session at NOOP, and seen by a new session.
        """
        first, firstTransport = self.selected()
        second, secondTransport = self.selected()
        self.assertEqual(self.send(first, firstTransport, b"a STORE 2 +FLAGS (\\Flagged \\Answered)"),
                         b"* 2 FETCH (FLAGS (\\Answered \\Flagged \\Seen))\r\na OK STORE completed\r\n")
        self.assertIn("1700000002.M2Q2R0.host,S=2:2,FRS", os.listdir(os.path.join(self.inbox, "cur")))
        self.assertEqual(self.send(second, secondTransport, b"b NOOP"),
                         b"* 2 FETCH (FLAGS (\\Answered \\Flagged \\Seen))\r\nb OK NOOP completed\r\n")
        self.assertEqual(self.send(first, firstTransport, b"c UID STORE 2 -FLAGS.SILENT (\\Answered)"),
                         b"c OK STORE completed\r\n")
        third, thirdTransport = self.selected()
        self.assertIn(b"* 2 FETCH (FLAGS (\\Flagged \\Seen) UID 2)",
                      self.send(third, thirdTransport, b"d UID FETCH 2 FLAGS"))
        self.send(third, thirdTransport, b"e EXAMINE INBOX")
        self.assertEqual(self.send(third, thirdTransport, b"f STORE 1 +FLAGS (\\Seen)"),
                         b"f NO [READ-ONLY] Mailbox is read-only\r\n")

    def test_expunge(self) -> None:
        """
        EXPUNGE removes the messages marked \\Deleted, lowers the usage,
        and another session learns of it at NOOP; UID EXPUNGE removes only
        the UIDs given; CLOSE expunges silently.
        """
        before = readUsage(self.inbox)
        first, firstTransport = self.selected()
        second, secondTransport = self.selected()
        self.send(first, firstTransport, b"a STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.send(first, firstTransport, b"b UID EXPUNGE 2"),
                         b"* 2 EXPUNGE\r\nb OK EXPUNGE completed\r\n")
        self.assertEqual(readUsage(self.inbox), (before[0] - 2, before[1] - 1))
        self.assertEqual(self.send(second, secondTransport, b"c NOOP"),
                         b"* 2 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Deleted))\r\nc OK NOOP completed\r\n")
        self.assertEqual(self.send(first, firstTransport, b"d CLOSE"), b"d OK CLOSE completed\r\n")
        self.assertEqual(os.listdir(os.path.join(self.inbox, "cur")) + os.listdir(os.path.join(self.inbox, "new")),
                         [])
        self.assertEqual(self.send(second, secondTransport, b"e CHECK"), b"* 1 EXPUNGE\r\ne OK CHECK completed\r\n")

    def test_copyAndMove(self) -> None:
        """
        COPY and MOVE answer COPYUID; MOVE expunges from the source; the
        copy of an encrypted message still decrypts; a missing target is
        TRYCREATE.
        """
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a COPY 1:2 Trash")
        self.assertRegex(reply, rb"^a OK \[COPYUID \d+ 1:2 1:2\] COPY completed\r\n$")
        reply = self.send(proto, transport, b"b UID MOVE 1 Junk")
        self.assertRegex(reply, rb"^\* OK \[COPYUID \d+ 1 1\] Moved\r\n\* 1 EXPUNGE\r\nb OK MOVE completed\r\n$")
        self.assertEqual(self.send(proto, transport, b"c COPY 1 Nowhere"), b"c NO [TRYCREATE] No such mailbox\r\n")
        self.send(proto, transport, b"d SELECT Trash")
        reply = self.send(proto, transport, b"e FETCH 1:2 (FLAGS BODY.PEEK[])")
        self.assertEqual(literal(reply, b"* 1 FETCH (FLAGS (\\Recent) BODY[]"), ORIGINAL)
        self.assertIn(b"* 2 FETCH (FLAGS (\\Seen \\Recent) BODY[]", reply)
        self.send(proto, transport, b"f SELECT Junk")
        self.assertEqual(literal(self.send(proto, transport, b"g FETCH 1 BODY.PEEK[]"), b"BODY[]"), ORIGINAL)

    def test_copyOverQuota(self) -> None:
        """
        A COPY past the quota is refused, and nothing is copied.
        """
        proto, transport = self.login(factory=self.makeFactory(defaultQuotaBytes=4))
        self.send(proto, transport, b"a SELECT INBOX")
        self.assertEqual(self.send(proto, transport, b"b COPY 1:2 Trash"), b"b NO [OVERQUOTA] Quota exceeded\r\n")
        self.assertEqual(os.listdir(os.path.join(self.inbox, ".Trash", "cur")), [])

    def test_copyIntoSelected(self) -> None:
        """
        A copy into the selected folder is announced at once, C{\\Recent}
        (RFC 3501 §6.4.7).
        """
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a COPY 2 INBOX")
        self.assertRegex(reply, rb"^\* 3 EXISTS\r\n\* 2 RECENT\r\na OK \[COPYUID \d+ 2 3\] COPY completed\r\n$")

    def test_selectedFolderRenamedOrRemoved(self) -> None:
        """
        The selected folder renamed by its session stays selected; removed
        by another session, the session is told and closed.
        """
        proto, transport = self.login()
        self.send(proto, transport, b"a CREATE x", b"b COPY 1 x")
        self.send(proto, transport, b"c SELECT x")
        self.assertEqual(self.send(proto, transport, b"d RENAME x y", b"e NOOP"),
                         b"d OK RENAME completed\r\ne OK NOOP completed\r\n")
        other, otherTransport = self.login()
        self.send(other, otherTransport, b"f DELETE y")
        self.assertEqual(self.send(proto, transport, b"g NOOP"),
                         b"* BYE Selected mailbox was removed or rebuilt; please reconnect\r\n")
        self.assertTrue(transport.disconnecting)

    def test_appendThenFetch(self) -> None:
        """
        APPEND to Sent stores the message with its flags and date, answers
        APPENDUID, and it can be fetched back.
        """
        proto, transport = self.login()
        message = b"From: alice@example.test\r\nSubject: sent\r\n\r\nbye\r\n"
        self.assertEqual(self.send(proto, transport, b'a APPEND Sent (\\Seen) "14-Nov-2023 22:13:20 +0100" {%d}'
                                   % (len(message),)), b"+ Ready for literal data\r\n")
        reply = self.send(proto, transport, message)
        self.assertRegex(reply, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")
        self.send(proto, transport, b"b SELECT Sent")
        reply = self.send(proto, transport, b"c FETCH 1 (FLAGS INTERNALDATE BODY[])")
        self.assertIn(b'FLAGS (\\Seen \\Recent) INTERNALDATE "14-Nov-2023 21:13:20 +0000"', reply)
        self.assertEqual(literal(reply, b"BODY[]"), message)

    def test_appendToSelectedAnnounced(self) -> None:
        """
        A message appended to the selected folder is announced at once, and
        is C{\\Recent} in this session (RFC 3501 §6.3.11).
        """
        proto, transport = self.selected()
        self.send(proto, transport, b"a APPEND INBOX {3}")
        self.assertEqual(self.send(proto, transport, b"x\r\n"),
                         b"* 3 EXISTS\r\n* 2 RECENT\r\n" + re.search(rb"a OK .*\r\n", transport.value()).group())

    def test_appendRefused(self) -> None:
        """
        APPEND to a missing folder, of a message too large, or over the
        quota is refused before the message is sent.
        """
        proto, transport = self.login(factory=self.makeFactory(defaultQuotaBytes=100, maxAppendBytes=1000))
        self.assertEqual(self.send(proto, transport, b"a APPEND Nowhere {5}"), b"a NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual(self.send(proto, transport, b"b APPEND Sent {5000}"), b"b NO [TOOBIG] Message too large\r\n")
        self.assertEqual(self.send(proto, transport, b"c APPEND Sent {500}"), b"c NO [OVERQUOTA] Quota exceeded\r\n")
        self.assertEqual(os.listdir(os.path.join(self.inbox, ".Sent", "tmp")), [])

    def test_idleAnnouncesChanges(self) -> None:
        """
        During IDLE the selected folder is polled on the clock: a delivery
        is announced with EXISTS, a removal with EXPUNGE; polling stops at
        DONE and when the connection is lost.
        """
        proto, transport = self.selected()
        self.assertEqual(self.send(proto, transport, b"a IDLE"), b"+ idling\r\n")
        transport.clear()
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"")
        deliver(self.inbox, "1700000200.M3Q3R0.host,S=9", b"Subject: new\n\nfresh\n", 1700000200)
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"* 3 EXISTS\r\n* 2 RECENT\r\n")
        transport.clear()
        os.unlink(os.path.join(self.inbox, "cur", "1700000002.M2Q2R0.host,S=2:2,S"))
        self.clock.advance(2)
        self.assertEqual(transport.value(), b"* 2 EXPUNGE\r\n")
        self.assertEqual(self.send(proto, transport, b"DONE"), b"a OK IDLE terminated\r\n")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [self.clock.seconds() + 1800])
        self.send(proto, transport, b"b IDLE")
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_uidsSurviveRestart(self) -> None:
        """
        UIDs and UIDVALIDITY are the same with a new factory and portal.
        """
        proto, transport = self.selected()
        first = self.send(proto, transport, b"a UID FETCH 1:* UID", b"b STATUS INBOX (UIDVALIDITY)")
        other = self.makeFactory()
        proto, transport = self.selected(factory=other)
        self.assertEqual(self.send(proto, transport, b"a UID FETCH 1:* UID", b"b STATUS INBOX (UIDVALIDITY)"), first)
        self.assertIn(b"* 2 FETCH (UID 2)", first)

    def test_pipelinedCommandsInOrder(self) -> None:
        """
        Commands sent together are answered in order.
        """
        proto, transport = self.selected()
        reply = self.send(proto, transport, b"a NOOP", b"b FETCH 2 UID", b"c SEARCH SEEN", b"d NOOP")
        self.assertEqual(reply, b"a OK NOOP completed\r\n* 2 FETCH (UID 2)\r\nb OK FETCH completed\r\n"
                                b"* SEARCH 2\r\nc OK SEARCH completed\r\nd OK NOOP completed\r\n")
