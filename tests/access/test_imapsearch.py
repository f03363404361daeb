# -*- test-case-name: tests.access.test_imapsearch -*-
"""
Tests for the nesting limit of L{qutemail.access.imapsearch} and of the
wire parser, through sessions of L{qutemail.access.imapserver} (issue 20:
a deeply nested SEARCH logged a large traceback per command).
"""

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.imapsearch import MAX_SEARCH_DEPTH, parseKeys
from qutemail.access.imapwire import MAX_LIST_DEPTH, Atom, TokenReader, TooDeep
from tests.access.test_imapserver import SessionMixin


def _tokens(line: bytes) -> list:
    """
    @return: the tokens of one line of arguments.
    """
    reader = TokenReader()
    reader.feed(line)
    return reader.finish()


class SearchDepthTests(SessionMixin, SynchronousTestCase):
    """
    SEARCH keys nest at most L{MAX_SEARCH_DEPTH} levels.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_parseLimit(self) -> None:
        """
        Parentheses, NOT and OR each count as a level: L{MAX_SEARCH_DEPTH}
        levels parse, one more raises L{TooDeep}.
        """
        for depth, ok in ((MAX_SEARCH_DEPTH, True), (MAX_SEARCH_DEPTH + 1, False)):
            cases = [b"NOT " * depth + b"ALL", b"OR SEEN " * depth + b"ALL",
                     b"(" * min(depth, MAX_LIST_DEPTH) + b"ALL" + b")" * min(depth, MAX_LIST_DEPTH),
                     b"NOT (" * (depth // 2) + b"NOT " * (depth % 2) + b"ALL" + b")" * (depth // 2)]
            for line in cases:
                if ok:
                    self.assertEqual(len(parseKeys(_tokens(line))), 1, line)
                else:
                    self.assertRaises(TooDeep, parseKeys, _tokens(line))
        wide = b"OR SEEN SEEN " * 5000 + b"ALL"
        self.assertEqual(len(parseKeys(_tokens(wide))), 5001)

    def test_deepNestingBad(self) -> None:
        """
        A SEARCH nested deeper than the limit, even thousands of levels
        deep, is answered BAD with one info line in the log and no
        traceback; the session goes on.
        """
        proto, transport = self.selected()
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        nots = b"NOT " * 15_000 + b"ALL"
        parens = b"(" * 20_000 + b"ALL" + b")" * 20_000
        ors = b"OR ALL " * 9000 + b"ALL"
        literal = b"(" * (MAX_LIST_DEPTH - 1) + b" {1}"
        for criteria in (nots, ors, parens, b"(" * 60_000, b"NOT " * (MAX_SEARCH_DEPTH + 1) + b"SEEN"):
            reply = self.send(proto, transport, b"a SEARCH " + criteria)
            self.assertTrue(reply.startswith(b"a BAD Syntax error: ") and b"nested deeper than" in reply, reply)
        self.assertEqual(self.send(proto, transport, b"b SEARCH " + literal), b"+ Ready for 1 octets of text\r\n")
        self.assertTrue(self.send(proto, transport, b"x" + b"(" * 10 + b"ALL").startswith(b"b BAD Syntax error: "))
        self.assertEqual(self.send(proto, transport, b"c SEARCH " + b"NOT " * MAX_SEARCH_DEPTH + b"UNSEEN"),
                         b"* SEARCH 1\r\nc OK SEARCH completed\r\n")
        logged = [e for e in events if e["log_level"] >= LogLevel.info]
        self.assertEqual(len(logged), 6, logged)
        self.assertTrue(all(e["log_level"] == LogLevel.info and "log_failure" not in e for e in logged))
        self.assertEqual({(e["address"], e["reason"]) for e in logged},
                         {("alice@example.test", f"SEARCH nested deeper than {MAX_SEARCH_DEPTH} levels"),
                          ("alice@example.test", f"lists nested deeper than {MAX_LIST_DEPTH}")})
        self.assertNotIn(b"SERVERBUG", transport.value())

    def test_searchStillWorks(self) -> None:
        """
        Nesting within the limit searches as before.
        """
        proto, transport = self.selected()
        self.assertEqual(self.send(proto, transport, b"a SEARCH ((OR (SEEN) (NOT (NOT UNSEEN))))"),
                         b"* SEARCH 1 2\r\na OK SEARCH completed\r\n")
        self.assertEqual([k.op for k in parseKeys([Atom(b"NOT"), [Atom(b"SEEN")]])], ["not"])
