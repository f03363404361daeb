# -*- test-case-name: tests.access.test_imapkeywords -*-
"""
IMAP keywords and C{\\Recent} for appended and copied messages (issue 20,
found by imapclient's live tests), over C{StringTransport} sessions of
L{qutemail.access.imapserver} with a clock and the inline runner.
"""

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.keywords import KEYWORDS_FILE, MAX_KEYWORDS
from tests.access.test_imapserver import SessionMixin

SYSTEM = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded"


def _read(path: str) -> bytes:
    """
    @return: a file's contents.
    """
    with open(path, "rb") as f:
        return f.read()


class KeywordSessionTests(SessionMixin, SynchronousTestCase):
    """
    APPEND and STORE keep any keyword, the way Dovecot keeps them on disk.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def append(self, proto, transport, command: bytes, message: bytes = b"Subject: k\r\n\r\nbody\r\n") -> bytes:
        """
        @return: the answer to an APPEND of C{message}.
        """
        ready = self.send(proto, transport, command + b" {%d}" % (len(message),))
        if not ready.startswith(b"+ "):
            return ready
        return self.send(proto, transport, message)

    def test_appendKeepsKeywords(self) -> None:
        """
        APPEND with C{$Junk $label1 $MDNSent} keeps them: FETCH FLAGS
        shows them, the file name carries Dovecot's letters after the
        system ones, and C{dovecot-keywords} maps the letters.
        """
        proto, transport = self.login()
        reply = self.append(proto, transport, b"a APPEND Sent (\\Seen $label1 $Junk $MDNSent)")
        self.assertRegex(reply, rb"^a OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")
        sent = os.path.join(self.inbox, ".Sent")
        self.assertEqual(_read(os.path.join(sent, KEYWORDS_FILE)), b"0 $Junk\n1 $label1\n2 $MDNSent\n")
        [name] = os.listdir(os.path.join(sent, "new"))
        self.assertTrue(name.endswith(":2,Sabc"), name)
        self.send(proto, transport, b"b SELECT Sent")
        self.assertEqual(self.send(proto, transport, b"c FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS ($Junk $MDNSent $label1 \\Seen \\Recent))\r\nc OK FETCH completed\r\n")

    def test_storeKeywords(self) -> None:
        """
        STORE +FLAGS, -FLAGS and FLAGS set and clear keywords (in any
        case, spelt as first given); a keyword new to the folder is first
        announced with FLAGS and PERMANENTFLAGS; SEARCH KEYWORD finds them.
        """
        proto, transport = self.selected()
        self.assertEqual(self.send(proto, transport, b"a STORE 1:2 +FLAGS ($NotJunk $label1)"),
                         b"* FLAGS (" + SYSTEM + b" $label1 $NotJunk)\r\n"
                         b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $label1 $NotJunk \\*)] Flags stored\r\n"
                         b"* 1 FETCH (FLAGS ($NotJunk $label1 \\Recent))\r\n"
                         b"* 2 FETCH (FLAGS ($NotJunk $label1 \\Seen))\r\n"
                         b"a OK STORE completed\r\n")
        self.assertEqual(self.send(proto, transport, b"b STORE 2 -FLAGS ($NOTJUNK)"),
                         b"* 2 FETCH (FLAGS ($label1 \\Seen))\r\nb OK STORE completed\r\n")
        self.assertEqual(self.send(proto, transport, b"c STORE 1 FLAGS (\\Flagged $notjunk)"),
                         b"* 1 FETCH (FLAGS ($NotJunk \\Flagged \\Recent))\r\nc OK STORE completed\r\n")
        self.assertEqual(self.send(proto, transport, b"d SEARCH KEYWORD $notjunk", b"e SEARCH UNKEYWORD $label1",
                                   b"f SEARCH OR KEYWORD $label1 KEYWORD $NotJunk"),
                         b"* SEARCH 1\r\nd OK SEARCH completed\r\n* SEARCH 1\r\ne OK SEARCH completed\r\n"
                         b"* SEARCH 1 2\r\nf OK SEARCH completed\r\n")
        self.assertEqual(sorted(os.listdir(os.path.join(self.inbox, "cur"))),
                         ["1700000001.M1Q1R0.host,S=1:2,Fb", "1700000002.M2Q2R0.host,S=2:2,Sa"])
        self.assertEqual(self.send(proto, transport, b"g STORE 1 -FLAGS (never-set)"),
                         b"* 1 FETCH (FLAGS ($NotJunk \\Flagged \\Recent))\r\ng OK STORE completed\r\n")
        self.assertEqual(_read(os.path.join(self.inbox, KEYWORDS_FILE)), b"0 $label1\n1 $NotJunk\n")

    def test_otherSessionsLearnKeywords(self) -> None:
        """
        Another session sees the new keyword at its next NOOP, FLAGS and
        PERMANENTFLAGS first; a new session gets them at SELECT, and
        EXAMINE has no PERMANENTFLAGS.
        """
        first, firstTransport = self.selected()
        second, secondTransport = self.selected()
        self.send(first, firstTransport, b"a STORE 2 +FLAGS.SILENT ($Junk)")
        self.assertEqual(self.send(second, secondTransport, b"b NOOP"),
                         b"* FLAGS (" + SYSTEM + b" $Junk)\r\n"
                         b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Junk \\*)] Flags stored\r\n"
                         b"* 2 FETCH (FLAGS ($Junk \\Seen))\r\nb OK NOOP completed\r\n")
        third, thirdTransport = self.login()
        self.assertIn(b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Junk \\*)] Flags stored\r\n",
                      self.send(third, thirdTransport, b"c SELECT INBOX"))
        examined = self.send(third, thirdTransport, b"d EXAMINE INBOX")
        self.assertIn(b"* FLAGS (" + SYSTEM + b" $Junk)\r\n* OK [PERMANENTFLAGS ()] Flags stored\r\n", examined)

    def test_keywordLimit(self) -> None:
        """
        A folder holds 26 keywords (Dovecot's letters a to z): then
        PERMANENTFLAGS no longer has C{\\*}, and STORE, APPEND, COPY or
        MOVE of a 27th is refused with C{NO [LIMIT]} before anything
        changes (APPEND before the message is sent); known keywords still
        work.
        """
        proto, transport = self.selected()
        names = b" ".join(b"k%02d" % (i,) for i in range(MAX_KEYWORDS - 1))
        self.assertTrue(self.send(proto, transport, b"a STORE 1 +FLAGS.SILENT (" + names + b")").endswith(
            b"a OK STORE completed\r\n"))
        reply = self.send(proto, transport, b"b STORE 2 +FLAGS.SILENT (last more)")
        self.assertEqual(reply, b"b NO [LIMIT] No room for another keyword in this mailbox (26 at most)\r\n")
        reply = self.send(proto, transport, b"c STORE 2 +FLAGS.SILENT (last)")
        self.assertIn(b" k24 last)] Flags stored\r\n", reply)
        self.assertTrue(reply.endswith(b"c OK STORE completed\r\n"))
        self.assertEqual(self.send(proto, transport, b"d STORE 2 +FLAGS (more)"),
                         b"d NO [LIMIT] No room for another keyword in this mailbox (26 at most)\r\n")
        self.assertEqual(self.send(proto, transport, b"e APPEND INBOX (more) {5}"),
                         b"e NO [LIMIT] No room for another keyword in this mailbox (26 at most)\r\n")
        self.assertEqual(self.send(proto, transport, b"f STORE 2 FLAGS (K00)"),
                         b"* 2 FETCH (FLAGS (k00))\r\nf OK STORE completed\r\n")
        selected = self.send(proto, transport, b"g SELECT INBOX")
        self.assertNotIn(b"\\*", selected)
        self.assertIn(b" k24 last)] Flags stored\r\n", selected)
        trash = os.path.join(self.inbox, ".Trash")
        with open(os.path.join(trash, KEYWORDS_FILE), "wb") as f:
            f.write(b"".join(b"%d other%d\n" % (i, i) for i in range(MAX_KEYWORDS - 1)))
        self.assertEqual(self.send(proto, transport, b"h COPY 1:2 Trash", b"i MOVE 1 Trash"),
                         b"h NO [LIMIT] No room for another keyword in this mailbox (26 at most)\r\n"
                         b"i NO [LIMIT] No room for another keyword in this mailbox (26 at most)\r\n")
        self.assertEqual(os.listdir(os.path.join(trash, "new")) + os.listdir(os.path.join(trash, "cur")), [])
        self.assertRegex(self.send(proto, transport, b"j COPY 2 Trash"), rb"^j OK \[COPYUID ")

    def test_badKeywords(self) -> None:
        """
        Flags that are not atoms, C{\\*} and unknown system flags are BAD.
        """
        proto, transport = self.selected()
        for flags in (b"(\\*)", b"(\\Junk)", b"(a]b)", b"(a%b)", b"(x" + b"y" * 100 + b")", b'("quoted")'):
            self.assertTrue(self.send(proto, transport, b"a STORE 1 +FLAGS " + flags).startswith(b"a BAD "), flags)
        self.assertFalse(os.path.exists(os.path.join(self.inbox, KEYWORDS_FILE)))

    def test_copyUsesTargetLetters(self) -> None:
        """
        COPY and MOVE keep keywords under the target folder's letters,
        whatever the source's are.  (The message appended while Archive
        was selected is no longer C{\\Recent}: that session saw it.)
        """
        proto, transport = self.selected()
        self.send(proto, transport, b"a CREATE Archive", b"b SELECT Archive")
        self.append(proto, transport, b"c APPEND Archive (\\Flagged $label2)")
        self.send(proto, transport, b"d SELECT INBOX", b"e STORE 2 +FLAGS.SILENT ($label1 $label2)")
        self.assertRegex(self.send(proto, transport, b"f COPY 2 Archive"), rb"^f OK \[COPYUID \d+ 2 2\] ")
        archive = os.path.join(self.inbox, ".Archive")
        self.assertEqual(_read(os.path.join(archive, KEYWORDS_FILE)), b"0 $label2\n1 $label1\n")
        self.assertEqual(_read(os.path.join(self.inbox, KEYWORDS_FILE)), b"0 $label1\n1 $label2\n")
        self.assertTrue(any(n.endswith(":2,Sab") for n in os.listdir(os.path.join(archive, "new"))))
        self.assertRegex(self.send(proto, transport, b"g UID MOVE 2 Trash"), rb"\* 2 EXPUNGE\r\ng OK MOVE")
        self.send(proto, transport, b"h SELECT Archive")
        self.assertEqual(self.send(proto, transport, b"i FETCH 1:2 FLAGS"),
                         b"* 1 FETCH (FLAGS ($label2 \\Flagged))\r\n"
                         b"* 2 FETCH (FLAGS ($label1 $label2 \\Seen \\Recent))\r\ni OK FETCH completed\r\n")
        self.send(proto, transport, b"j SELECT Trash")
        self.assertEqual(self.send(proto, transport, b"k FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS ($label1 $label2 \\Seen \\Recent))\r\nk OK FETCH completed\r\n")

    def test_renameInboxKeepsKeywords(self) -> None:
        """
        Renaming the INBOX moves its messages with their keywords into
        the new folder.
        """
        proto, transport = self.selected()
        self.send(proto, transport, b"a STORE 2 +FLAGS.SILENT ($Junk)", b"b UNSELECT")
        self.assertEqual(self.send(proto, transport, b"c RENAME INBOX Old"), b"c OK RENAME completed\r\n")
        self.send(proto, transport, b"d SELECT Old")
        self.assertIn(b"* 2 FETCH (FLAGS ($Junk \\Seen) UID 2)", self.send(proto, transport, b"e UID FETCH 2 FLAGS"))


class RecentTests(SessionMixin, SynchronousTestCase):
    """
    Appended and copied messages are C{\\Recent} (RFC 3501 §6.3.11,
    §6.4.7) for the first session to see them.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_statusRecentAfterAppend(self) -> None:
        """
        STATUS (RECENT) counts a message appended to a folder nobody has
        selected, with or without flags; the first SELECT sees it
        C{\\Recent}, the next one no longer.
        """
        proto, transport = self.login()
        for tag, flags in ((b"a", b""), (b"b", b" (\\Seen $Junk)")):
            self.send(proto, transport, tag + b" APPEND Drafts" + flags + b" {3}")
            self.assertRegex(self.send(proto, transport, b"x\r\n"), tag + rb" OK \[APPENDUID ")
        self.assertEqual(self.send(proto, transport, b"c STATUS Drafts (MESSAGES RECENT UNSEEN)"),
                         b'* STATUS "Drafts" (MESSAGES 2 RECENT 2 UNSEEN 1)\r\nc OK STATUS completed\r\n')
        self.assertIn(b"* 2 RECENT\r\n", self.send(proto, transport, b"d SELECT Drafts"))
        other, otherTransport = self.login()
        self.assertIn(b"* 0 RECENT\r\n", self.send(other, otherTransport, b"e SELECT Drafts"))
        self.assertEqual(self.send(other, otherTransport, b"f STATUS Drafts (RECENT)"),
                         b'* STATUS "Drafts" (RECENT 0)\r\nf OK STATUS completed\r\n')

    def test_statusRecentAfterCopy(self) -> None:
        """
        Copied messages are C{\\Recent} in the target; the source's are
        not changed.
        """
        proto, transport = self.selected()
        self.assertEqual(self.send(proto, transport, b"a FETCH 2 FLAGS"),
                         b"* 2 FETCH (FLAGS (\\Seen))\r\na OK FETCH completed\r\n")
        self.assertRegex(self.send(proto, transport, b"b COPY 1:2 Trash"), rb"^b OK \[COPYUID ")
        self.assertEqual(self.send(proto, transport, b"c STATUS Trash (MESSAGES RECENT UNSEEN)"),
                         b'* STATUS "Trash" (MESSAGES 2 RECENT 2 UNSEEN 1)\r\nc OK STATUS completed\r\n')
        reply = self.send(proto, transport, b"d SELECT Trash", b"e FETCH 1:2 FLAGS")
        self.assertTrue(re.search(rb"\* 1 FETCH \(FLAGS \(\\Recent\)\)\r\n\* 2 FETCH \(FLAGS \(\\Seen \\Recent\)\)",
                                  reply), reply)
