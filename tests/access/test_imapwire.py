# -*- test-case-name: tests.access.test_imapwire -*-
"""
Tests for L{qutemail.access.imapwire}.
"""

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.imapwire import (
    MAX_LIST_DEPTH, Atom, CRLFConverter, ParseError, TokenReader, TooDeep, convertedSize, formatInternalDate,
    SequenceMembership, formatList, inSequenceSet, parseDate, parseDateTime, parseSequenceSet, string,
)


class TokenReaderTests(SynchronousTestCase):
    """
    L{TokenReader} reads command arguments.
    """

    def read(self, *lines: bytes, literals: tuple = ()) -> list:
        """
        @return: the tokens of C{lines}, feeding C{literals} in between.
        """
        reader = TokenReader()
        literals = list(literals)
        for line in lines:
            size = reader.feed(line)
            if size is not None:
                data = literals.pop(0)
                self.assertEqual(size, len(data))
                reader.literal(data)
        return reader.finish()

    def test_atomsStringsLists(self) -> None:
        """
        Atoms, quoted strings (with escapes) and nested lists are read;
        atoms are L{Atom}s, strings plain bytes.
        """
        tokens = self.read(b'INBOX "a \\"b\\" \\\\c" (\\Seen (x)) 1:*')
        self.assertEqual(tokens, [b"INBOX", b'a "b" \\c', [b"\\Seen", [b"x"]], b"1:*"])
        self.assertIsInstance(tokens[0], Atom)
        self.assertNotIsInstance(tokens[1], Atom)

    def test_literal(self) -> None:
        """
        A literal at the end of a line is read by the caller; the line
        after it goes on, inside an open list too.
        """
        tokens = self.read(b"OR (SUBJECT {3}", b" FROM x) ALL", literals=(b"a\x00b",))
        self.assertEqual(tokens, [b"OR", [b"SUBJECT", b"a\x00b", b"FROM", b"x"], b"ALL"])

    def test_errors(self) -> None:
        """
        Bad syntax is L{ParseError}.
        """
        for line in (b'"open', b'"bad \\x"', b"a)", b"{3+}", b"{3} x", b"a\x01b"):
            self.assertRaises(ParseError, TokenReader().feed, line)
        reader = TokenReader()
        reader.feed(b"(a")
        self.assertRaises(ParseError, reader.finish)

    def test_depthLimit(self) -> None:
        """
        Lists nest at most L{MAX_LIST_DEPTH} deep (issue 20): 100000
        C{(} raise L{TooDeep}, a L{ParseError}, at once, and so does a
        nesting built over several lines (literals in between).
        """
        deepest = b"(" * MAX_LIST_DEPTH + b"x" + b")" * MAX_LIST_DEPTH
        tokens = self.read(deepest)
        for _ in range(MAX_LIST_DEPTH):
            [tokens] = tokens
        self.assertEqual(tokens, [Atom(b"x")])
        self.assertRaises(TooDeep, TokenReader().feed, b"(" * 100_000)
        self.assertTrue(issubclass(TooDeep, ParseError))
        reader = TokenReader()
        self.assertEqual(reader.feed(b"(" * MAX_LIST_DEPTH + b" {1}"), 1)
        reader.literal(b"y")
        self.assertRaises(TooDeep, reader.feed, b" (z)")


class FormatTests(SynchronousTestCase):
    """
    Output syntax.
    """

    def test_formatList(self) -> None:
        """
        NIL, numbers, atoms, strings (quoted or literal) and lists.
        """
        self.assertEqual(formatList([None, 3, Atom(b"\\Seen"), b'a"b', "caf\xe9", [b"x\r\ny"]]),
                         b'(NIL 3 \\Seen "a\\"b" {5}\r\ncaf\xc3\xa9 ({4}\r\nx\r\ny))')

    def test_string(self) -> None:
        """
        Strings with CR, LF, NUL or 8-bit bytes, or long ones, are literals.
        """
        self.assertEqual(string(b"abc"), b'"abc"')
        self.assertEqual(string(b"\x80"), b"{1}\r\n\x80")
        self.assertTrue(string(b"x" * 2000).startswith(b"{2000}\r\n"))

    def test_dates(self) -> None:
        """
        INTERNALDATE is UTC; APPEND date-times and SEARCH dates parse.
        """
        self.assertEqual(formatInternalDate(0), b'"01-Jan-1970 00:00:00 +0000"')
        self.assertEqual(parseDateTime(b" 2-Jan-1970 01:00:00 +0100"), 86400.0)
        self.assertEqual(parseDateTime(b"01-Jan-1970 00:00:00 -0001"), 60.0)
        self.assertEqual(parseDate(b"1-Feb-1994").isoformat(), "1994-02-01")
        for bad in (b"32-Jan-1970 00:00:00 +0000", b"1-Foo-1970 00:00:00 +0000", b"yesterday"):
            self.assertRaises(ParseError, parseDateTime, bad)
        self.assertRaises(ParseError, parseDate, b"1-Feb")


class SequenceSetTests(SynchronousTestCase):
    """
    Sequence sets.
    """

    def test_parseAndMatch(self) -> None:
        """
        Numbers, ranges either way round and C{*} (the largest).
        """
        ranges = parseSequenceSet(b"2,4:3,7:*")
        self.assertEqual([n for n in range(1, 11) if inSequenceSet(ranges, n, 9)], [2, 3, 4, 7, 8, 9])
        self.assertTrue(inSequenceSet(parseSequenceSet(b"100:*"), 5, 5))
        for bad in (b"", b"0", b"1:", b"a", b"1,,2", b"99999999999"):
            self.assertRaises(ParseError, parseSequenceSet, bad)


class CRLFConverterTests(SynchronousTestCase):
    """
    L{CRLFConverter} turns bare LFs into CRLF, however the input is split.
    """

    @given(st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b"\n\n", b"\r\r"]), max_size=30),
           st.integers(min_value=1, max_value=7))
    def test_anyChunking(self, pieces: list, size: int) -> None:
        """
        The output is the same whatever the chunk size, has no bare LF,
        and is as long as L{convertedSize} says.
        """
        data = b"".join(pieces)
        converter = CRLFConverter()
        out = b"".join(converter.feed(data[i:i + size]) for i in range(0, len(data), size))
        self.assertEqual(out, CRLFConverter().feed(data))
        self.assertEqual(len(out), convertedSize(data))
        self.assertEqual(out.replace(b"\r\n", b"").count(b"\n"), 0)
        self.assertEqual(out.replace(b"\r\n", b"\n"), data.replace(b"\r\n", b"\n"))
        # Exactly the bare LFs, and nothing else, gain a CR.
        self.assertEqual(out, re.sub(rb"(?<!\r)\n", b"\r\n", data))


class SequenceMembershipTests(SynchronousTestCase):
    """
    L{SequenceMembership} answers as L{inSequenceSet} does.
    """

    @given(st.lists(st.tuples(st.one_of(st.none(), st.integers(1, 60)), st.one_of(st.none(), st.integers(1, 60))),
                    min_size=1, max_size=12),
           st.integers(0, 60))
    def test_sameAnswers(self, ranges, largest):
        """
        For any ranges (high end first, C{*} anywhere) and any C{*}, every
        number is in the set for both or for neither.
        """
        members = SequenceMembership(ranges, largest)
        for number in range(0, 70):
            self.assertEqual(number in members, inSequenceSet(ranges, number, largest), (ranges, largest, number))
