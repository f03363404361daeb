"""
Tests for L{qutemail.listener.address}: SMTP paths and ESMTP parameters.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.listener.address import MAX_PATH_OCTETS, PathError, parseParameters, parsePath, splitArgument

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
LDH = "abcdefghijklmnopqrstuvwxyz0123456789"


def atoms():
    """
    @return: a strategy for RFC 5321 atoms.
    """
    return st.text(ATEXT, min_size=1, max_size=8)


def dotStrings():
    """
    @return: a strategy for Dot-strings of at most 64 characters.
    """
    return st.lists(atoms(), min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 64)


def labels():
    """
    @return: a strategy for LDH labels (no leading or trailing hyphen).
    """
    inner = st.text(LDH + "-", max_size=10)
    return st.tuples(st.sampled_from(LDH), inner, st.sampled_from(LDH)).map(
        lambda t: t[0] + (t[1] + t[2] if t[1] or t[2] else "")
    )


def domains():
    """
    @return: a strategy for domain names of up to four labels.
    """
    return st.lists(labels(), min_size=1, max_size=4).map(".".join)


def addresses():
    """
    @return: a strategy for valid C{local@domain} mailboxes, domain in
        lower case, at most 254 octets.
    """
    return st.tuples(dotStrings(), domains()).map("@".join).filter(lambda a: len(a) <= MAX_PATH_OCTETS - 2)


class SplitArgumentTests(SynchronousTestCase):
    """
    L{splitArgument} separates the path from the parameters.
    """

    def test_pathAndParameters(self):
        """
        The path is the first word and the parameters the rest.
        """
        self.assertEqual(
            splitArgument(b"FROM:<a@b.test> SIZE=10 BODY=8BITMIME", b"FROM:"),
            (b"<a@b.test>", [b"SIZE=10", b"BODY=8BITMIME"]),
        )

    def test_prefixAnyCase(self):
        """
        The prefix is matched without regard to case.
        """
        self.assertEqual(splitArgument(b"to:<a@b.test>", b"TO:"), (b"<a@b.test>", []))
        self.assertEqual(splitArgument(b"From:<>", b"FROM:"), (b"<>", []))

    def test_spacesTolerated(self):
        """
        A space after the colon and runs of spaces between words are
        tolerated.
        """
        self.assertEqual(splitArgument(b"FROM: <a@b.test>   SIZE=1 ", b"FROM:"), (b"<a@b.test>", [b"SIZE=1"]))

    def test_missingPrefix(self):
        """
        An argument without the prefix is refused.
        """
        self.assertRaises(PathError, splitArgument, b"<a@b.test>", b"FROM:")
        self.assertRaises(PathError, splitArgument, b"TO:<a@b.test>", b"FROM:")
        self.assertRaises(PathError, splitArgument, b"", b"TO:")

    def test_missingPath(self):
        """
        A prefix with nothing after it is refused.
        """
        self.assertRaises(PathError, splitArgument, b"FROM:", b"FROM:")
        self.assertRaises(PathError, splitArgument, b"TO:   ", b"TO:")

    @given(st.binary(max_size=80), st.sampled_from([b"FROM:", b"TO:"]))
    def test_onlyPathError(self, text, prefix):
        """
        On any bytes, L{splitArgument} either raises L{PathError} or
        returns a non-empty path and parameters without spaces.
        """
        try:
            path, words = splitArgument(text, prefix)
        except PathError:
            return
        self.assertTrue(path)
        for word in [path] + words:
            self.assertNotIn(b" ", word)
            self.assertTrue(word)


class ParsePathTests(SynchronousTestCase):
    """
    L{parsePath} accepts RFC 5321 paths and returns the normal mailbox.
    """

    def test_good(self):
        """
        Bracketed and bare mailboxes, quoted local parts, address literals,
        trailing dots and source routes parse to C{local@domain}, with the
        domain lower-cased and the local part kept as sent.
        """
        cases = {
            b"<alice@example.test>": "alice@example.test",
            b"alice@example.test": "alice@example.test",
            b"<Alice.Smith@EXAMPLE.Test>": "Alice.Smith@example.test",
            b"<a+tag@example.test.>": "a+tag@example.test",
            b'<"john doe"@example.test>': '"john doe"@example.test',
            b'<"a\\"b"@example.test>': '"a\\"b"@example.test',
            b"<x@[192.0.2.1]>": "x@[192.0.2.1]",
            b"<@relay.test,@other.test:bob@example.test>": "bob@example.test",
            b"<!#$%&'*+/=?^_`{|}~-@x.test>": "!#$%&'*+/=?^_`{|}~-@x.test",
        }
        for path, expected in cases.items():
            self.assertEqual(parsePath(path, allowNull=False), expected, path)

    def test_nullPath(self):
        """
        C{<>} is the empty sender where allowed and refused elsewhere.
        """
        self.assertEqual(parsePath(b"<>", allowNull=True), "")
        self.assertRaises(PathError, parsePath, b"<>", allowNull=False)

    def test_bad(self):
        """
        Malformed paths are refused with L{PathError}.
        """
        bad = [
            b"", b"<", b"<a@b", b"a@b>", b"<<a@b.test>>", b"<a@@b.test>", b"<@b.test>",
            b"<a@>", b"<a>", b"<a.@b.test>", b"<.a@b.test>", b"<a..b@b.test>", b"<a b@c.test>",
            b"<a@-b.test>", b"<a@b-.test>", b"<a@b..test>", b"<a@b_c.test>", b"<a@[]>",
            b"<a@b.test> ", b"<\xc3\xa9@b.test>", b"<a@b.test\x00>", b"<a\r@b.test>",
            b"< >", b"<<>>", b"<@x.test:>",
        ]
        for path in bad:
            self.assertRaises(PathError, parsePath, path, allowNull=True)

    def test_trailingNewlineRefused(self):
        """
        A path followed by a line feed is malformed, not silently trimmed.
        """
        self.assertRaises(PathError, parsePath, b"<a@b.test>\n", allowNull=False)
        self.assertRaises(PathError, parsePath, b"a@b.test\n", allowNull=False)


    def test_localPartLimit(self):
        """
        A 64-octet local part is accepted and a 65-octet one refused.
        """
        self.assertEqual(parsePath(b"<" + b"a" * 64 + b"@b.test>", False), "a" * 64 + "@b.test")
        self.assertRaises(PathError, parsePath, b"<" + b"a" * 65 + b"@b.test>", False)

    def test_pathLimit(self):
        """
        A path of 256 octets (brackets included) is accepted, 257 refused.
        """
        domain = b".".join([b"d" * 60] * 3) + b"." + b"e" * 7
        path = b"<" + b"a" * (MAX_PATH_OCTETS - 3 - len(domain)) + b"@" + domain + b">"
        self.assertEqual(len(path), MAX_PATH_OCTETS)
        self.assertEqual(parsePath(path, False), path[1:-1].decode())
        longer = b"<a" + path[1:]
        self.assertRaises(PathError, parsePath, longer, False)

    @given(st.binary(max_size=300), st.booleans())
    def test_onlyPathError(self, path, allowNull):
        """
        On any bytes, L{parsePath} raises nothing but L{PathError}, and what
        it returns is ASCII with an C{@}, or empty for C{<>}.
        """
        try:
            result = parsePath(path, allowNull)
        except PathError:
            return
        self.assertIsInstance(result, str)
        if result:
            self.assertIn("@", result)
            result.encode("ascii")
        else:
            self.assertEqual((path, allowNull), (b"<>", True))

    @given(st.text(max_size=300), st.booleans())
    def test_onlyPathErrorText(self, text, allowNull):
        """
        On any UTF-8 text, L{parsePath} raises nothing but L{PathError}.
        """
        try:
            parsePath(text.encode("utf-8"), allowNull)
        except PathError:
            pass

    @given(addresses())
    def test_roundTrip(self, address):
        """
        A valid mailbox parses to itself, bracketed or bare, and the result
        parses to itself again.
        """
        self.assertEqual(parsePath(b"<%s>" % (address.encode(),), False), address)
        self.assertEqual(parsePath(address.encode(), False), address)
        self.assertEqual(parsePath(b"<%s>" % (address.encode(),), True), address)

    @given(addresses())
    def test_domainCaseFolded(self, address):
        """
        An upper-cased domain parses to the same lower-case domain, while
        the local part keeps its case.
        """
        local, _, domain = address.rpartition("@")
        self.assertEqual(parsePath(f"<{local}@{domain.upper()}>".encode(), False), address)


class ParseParametersTests(SynchronousTestCase):
    """
    L{parseParameters} reads C{KEYWORD} and C{KEYWORD=value} words.
    """

    def test_good(self):
        """
        Keywords are upper-cased; values are kept as sent, C{None} without
        C{=}.
        """
        self.assertEqual(
            parseParameters([b"size=1000", b"BODY=8BITMIME", b"SMTPUTF8", b"X-Foo=a+b"]),
            {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None, "X-FOO": "a+b"},
        )
        self.assertEqual(parseParameters([]), {})

    def test_bad(self):
        """
        Empty keywords or values, bad characters and C{=} in a value are
        refused.
        """
        for word in [b"", b"=1", b"SIZE=", b"-X=1", b"S_IZE=1", b"A=b=c", b"A=b c", b"A=\xff",
                     b"\xc3\xa9=1", b"A=\x7f", b"A=\x00"]:
            self.assertRaises(PathError, parseParameters, [word])

    def test_repeated(self):
        """
        A keyword given twice, in any case, is refused.
        """
        self.assertRaises(PathError, parseParameters, [b"SIZE=1", b"size=2"])
        self.assertRaises(PathError, parseParameters, [b"SMTPUTF8", b"SMTPUTF8"])

    def test_trailingNewlineRefused(self):
        """
        A keyword or value ending in a line feed is malformed.
        """
        self.assertRaises(PathError, parseParameters, [b"SIZE\n"])
        self.assertRaises(PathError, parseParameters, [b"SIZE=1\n"])


    @given(st.lists(st.binary(max_size=20), max_size=5))
    def test_onlyPathError(self, words):
        """
        On any words, L{parseParameters} raises nothing but L{PathError},
        and returns one entry per word, keyed by the upper-cased keyword.
        """
        try:
            params = parseParameters(words)
        except PathError:
            return
        self.assertEqual(list(params), [w.partition(b"=")[0].decode("ascii").upper() for w in words])

    @given(st.dictionaries(
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=6).flatmap(
            lambda head: st.text("abcdefXYZ0123456789-", max_size=6).map(lambda tail: head + tail)
        ),
        st.none() | st.text("".join(chr(c) for c in range(0x21, 0x7F) if c != 0x3D), min_size=1, max_size=10),
        max_size=5,
    ))
    def test_roundTrip(self, params):
        """
        Parameters written as words parse back to the same values, keyed in
        upper case.
        """
        if len({k.upper() for k in params}) != len(params):
            return
        words = [k.encode() if v is None else f"{k}={v}".encode() for k, v in params.items()]
        self.assertEqual(parseParameters(words), {k.upper(): v for k, v in params.items()})
