"""
Tests for L{qutemail.policy.authresults}: writing our
C{Authentication-Results} field and removing forged ones.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.policy.authresults import (
    authenticationResults, comment, isSpoofedAuthResults, quotedValue, stripSpoofed,
)

OURS = "mx.example.test"
PARTS = ["spf=pass smtp.mailfrom=a.test", "dkim=pass header.d=a.test header.s=sel",
         "dmarc=pass (p=reject) header.from=a.test"]


class AuthenticationResultsTests(SynchronousTestCase):
    """
    L{authenticationResults} writes the field of RFC 8601 §2.2.
    """

    def test_exactBytesCRLF(self):
        """
        With CRLF line ends, each result is on its own folded line, all but
        the last ending in C{;}.
        """
        self.assertEqual(
            authenticationResults(OURS, PARTS, lineEnd=b"\r\n"),
            b"Authentication-Results: mx.example.test;\r\n"
            b"\tspf=pass smtp.mailfrom=a.test;\r\n"
            b"\tdkim=pass header.d=a.test header.s=sel;\r\n"
            b"\tdmarc=pass (p=reject) header.from=a.test\r\n")

    def test_exactBytesLF(self):
        """
        LF line ends are the default, as the spool and Maildir keep them.
        """
        self.assertEqual(
            authenticationResults(OURS, PARTS[:1]),
            b"Authentication-Results: mx.example.test;\n\tspf=pass smtp.mailfrom=a.test\n")

    def test_none(self):
        """
        Without results the field says C{none} (RFC 8601 §2.2 no-result).
        """
        self.assertEqual(authenticationResults(OURS, []), b"Authentication-Results: mx.example.test; none\n")

    def test_longPartFolded(self):
        """
        A result longer than a line is folded before one of its own spaces,
        so unfolding gives it back unchanged.
        """
        part = "dkim=fail reason=\"" + " ".join(["word"] * 30) + "\" header.d=a.test"
        field = authenticationResults(OURS, [part])
        lines = field.split(b"\n")[:-1]
        self.assertGreater(len(lines), 2)
        for line in lines:
            self.assertLessEqual(len(line.expandtabs(1)), 78)
        for line in lines[1:]:
            self.assertIn(line[:1], (b" ", b"\t"))
        unfolded = field.replace(b"\n", b"")
        self.assertEqual(unfolded, b"Authentication-Results: mx.example.test;\t" + part.encode("ascii"))

    def test_badInput(self):
        """
        An id with white space, or a result with a line break (which would
        add a field of its own), is refused.
        """
        self.assertRaises(ValueError, authenticationResults, "mx example", PARTS)
        self.assertRaises(ValueError, authenticationResults, "", PARTS)
        self.assertRaises(ValueError, authenticationResults, OURS, ["spf=pass\nX-Evil: 1"])
        self.assertRaises(ValueError, authenticationResults, OURS, [" "])

    def test_quotedValueAndComment(self):
        """
        A token stays as it is, anything else becomes a quoted-string; a
        comment escapes its parentheses; control characters become spaces.
        """
        self.assertEqual(quotedValue("a.test"), "a.test")
        self.assertEqual(quotedValue('body "hash" a\\b'), '"body \\"hash\\" a\\\\b"')
        self.assertEqual(quotedValue("a\r\nb"), '"a  b"')
        self.assertEqual(comment("p=reject (x)"), "(p=reject \\(x\\))")

    @given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                            max_size=200).filter(str.strip), max_size=4))
    def test_roundTrip(self, parts):
        """
        Every field we write is recognised as ours, and the results come
        back when it is unfolded.
        """
        field = authenticationResults(OURS, parts)
        self.assertTrue(field.endswith(b"\n"))
        self.assertTrue(isSpoofedAuthResults(field, OURS))
        unfolded = field.replace(b"\n", b"").decode("ascii")
        for part in parts:
            self.assertIn(part.strip(), unfolded)


class IsSpoofedTests(SynchronousTestCase):
    """
    L{isSpoofedAuthResults} recognises fields claiming our id (RFC 8601
    §5), and only those.
    """

    def test_plain(self):
        """
        A field with our id, in any case of name and id, is ours.
        """
        self.assertTrue(isSpoofedAuthResults(b"Authentication-Results: mx.example.test; spf=pass\n", OURS))
        self.assertTrue(isSpoofedAuthResults(b"authentication-results: MX.Example.TEST; none\r\n", OURS))
        self.assertTrue(isSpoofedAuthResults(b"AUTHENTICATION-RESULTS:mx.example.test;dkim=pass", OURS))

    def test_versionCommentsFolding(self):
        """
        A version after the id, comments before or after it and folding
        anywhere do not hide our id.
        """
        for field in [
            b"Authentication-Results: mx.example.test 1; spf=pass\n",
            b"Authentication-Results: (forged (nested) \\) comment) mx.example.test; none\n",
            b"Authentication-Results:\n\tmx.example.test\n\t1;\n\tdkim=pass\n",
            b"Authentication-Results: mx.example.test(c); spf=pass\n",
            b"Authentication-Results: \"mx.example.test\"; spf=pass\n",
            b"Authentication-Results: mx.example.test.; spf=pass\n",
            b"Authentication-Results :  mx.example.test; spf=pass\n",
        ]:
            self.assertTrue(isSpoofedAuthResults(field, OURS), field)

    def test_others(self):
        """
        Fields of other servers, look-alike ids and other field names are
        not ours.
        """
        for field in [
            b"Authentication-Results: mx.other.test; spf=pass\n",
            b"Authentication-Results: mx.example.test.evil; spf=pass\n",
            b"Authentication-Results: evil.mx.example.test; spf=pass\n",
            b"Authentication-Results: (mx.example.test) other.test; spf=pass\n",
            b"ARC-Authentication-Results: i=1; mx.example.test; spf=pass\n",
            b"X-Authentication-Results: mx.example.test; spf=pass\n",
            b"Subject: Authentication-Results: mx.example.test\n",
            b"Authentication-Results: ; spf=pass\n",
            b"Authentication-Results: (unclosed mx.example.test\n",
            b"Authentication-Results: \"mx.example.test\n",
        ]:
            self.assertFalse(isSpoofedAuthResults(field, OURS), field)


class StripSpoofedTests(SynchronousTestCase):
    """
    L{stripSpoofed} removes our forged fields and keeps everything else
    byte for byte.
    """

    def test_removesFoldedAndKeepsOthers(self):
        """
        Our fields go with their continuation lines; another server's field,
        the other fields and the body stay as they were.
        """
        block = (b"Received: from a\n\tby b\n"
                 b"Authentication-Results: mx.example.test;\n\tspf=pass\n\tsmtp.mailfrom=evil.test\n"
                 b"Authentication-Results: mx.other.test; dkim=pass\n"
                 b"authentication-results: (x) MX.EXAMPLE.TEST 1; none\n"
                 b"Subject: hi\n"
                 b"\n"
                 b"Authentication-Results: mx.example.test; in the body\n")
        self.assertEqual(stripSpoofed(block, OURS),
                         b"Received: from a\n\tby b\n"
                         b"Authentication-Results: mx.other.test; dkim=pass\n"
                         b"Subject: hi\n"
                         b"\n"
                         b"Authentication-Results: mx.example.test; in the body\n")

    def test_crlf(self):
        """
        CRLF blocks are handled the same way, and a last field without a
        line end is looked at too.
        """
        block = (b"From: a@a.test\r\n"
                 b"Authentication-Results: mx.example.test;\r\n spf=fail\r\n"
                 b"To: b@b.test\r\n"
                 b"Authentication-Results: mx.example.test; none")
        self.assertEqual(stripSpoofed(block, OURS), b"From: a@a.test\r\nTo: b@b.test\r\n")

    def test_nothingToDo(self):
        """
        A block without our fields comes back identical, odd bytes and all.
        """
        block = b"X-A: 1\r\nX-B:\t2 \n continued\rstill\nAuthentication-Results: other.test; none\n"
        self.assertEqual(stripSpoofed(block, OURS), block)
        self.assertEqual(stripSpoofed(b"", OURS), b"")

    @given(st.lists(st.sampled_from([
        b"X-A: 1\n", b"Authentication-Results: mx.example.test; spf=pass\n", b"\tcontinued\n",
        b"Authentication-Results: other.test; none\n", b"Subject: hello\r\n", b" folded\r\n",
    ]), max_size=12))
    def test_neverAddsAndIdempotent(self, lines):
        """
        Stripping keeps the other lines in order, and stripping again
        changes nothing.
        """
        block = b"".join(lines)
        once = stripSpoofed(block, OURS)
        self.assertEqual(stripSpoofed(once, OURS), once)
        self.assertNotIn(b"mx.example.test", once)
        self.assertEqual(once.count(b"other.test"), block.count(b"other.test"))
