# -*- test-case-name: tests.test_configvalues -*-
"""
Tests for L{qutemail.configvalues}.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.configvalues import (
    formatSize, parseDuration, parseDurationOrZero, parseKeySize, parseRoutes, parseSize,
)


class ParseSizeTests(SynchronousTestCase):
    """
    Tests for L{parseSize} and L{formatSize}.
    """

    def test_units(self) -> None:
        """
        Bare numbers are bytes; K, M, G and T are binary multiples, with or
        without B or iB, in any case, with optional whitespace.
        """
        cases = {
            "26214400": 26214400, "0": 0, "512B": 512, "512b": 512, "10k": 10240, "10K": 10240,
            "25M": 26214400, "25MB": 26214400, "25mib": 26214400, "1G": 2**30, "2T": 2**41,
            " 25 M ": 26214400,
        }
        self.assertEqual({text: parseSize(text) for text in cases}, cases)

    def test_bad(self) -> None:
        """
        Negative numbers, fractions, unknown units, other digits and empty
        text raise C{ValueError} naming the text.
        """
        for text in ["-1", "-25M", "1.5G", "25X", "M", "", "25 M B", "１２", "1_000", "+5", "0x10"]:
            error = self.assertRaises(ValueError, parseSize, text)
            self.assertIn(repr(text), str(error))

    def test_format(self) -> None:
        """
        L{formatSize} uses the largest unit that divides the size exactly.
        """
        self.assertEqual(
            [formatSize(n) for n in [0, 1, 1023, 1024, 1536, 26214400, 5 * 2**30, 3 * 2**40]],
            ["0", "1", "1023", "1K", "1536", "25M", "5G", "3T"],
        )

    def test_formatBad(self) -> None:
        """
        L{formatSize} refuses negative numbers and non-integers.
        """
        for n in [-1, 1.5, True]:
            self.assertRaises(ValueError, formatSize, n)

    @given(st.one_of(st.integers(min_value=0), st.integers(0, 2**20).map(lambda k: k * 2**30)))
    def test_roundTrip(self, n: int) -> None:
        """
        L{parseSize} turns L{formatSize}'s text back into the same number.
        """
        self.assertEqual(parseSize(formatSize(n)), n)

    @given(st.text())
    def test_onlyValueError(self, text: str) -> None:
        """
        On any text, L{parseSize} returns a non-negative int or raises
        C{ValueError}.
        """
        try:
            self.assertGreaterEqual(parseSize(text), 0)
        except ValueError:
            pass


class ParseDurationTests(SynchronousTestCase):
    """
    Tests for L{parseDuration}.
    """

    def test_units(self) -> None:
        """
        Bare numbers and C{s} are seconds; C{m}, C{h}, C{d}, C{w} are minutes,
        hours, days, weeks; decimals are allowed.
        """
        cases = {
            "300": 300.0, "30s": 30.0, "5m": 300.0, "5M": 300.0, "2h": 7200.0, "5d": 432000.0,
            "1w": 604800.0, "1.5h": 5400.0, " 10 m ": 600.0, "0.5": 0.5,
        }
        self.assertEqual({text: parseDuration(text) for text in cases}, cases)

    def test_bad(self) -> None:
        """
        Zero, negative, unknown units, empty text and overflowing numbers raise
        C{ValueError} naming the text.
        """
        for text in ["0", "0s", "0.0m", "-5m", "5y", "m", "", "5 m s", ".5", "1e3", "inf", "nan", "9" * 400]:
            error = self.assertRaises(ValueError, parseDuration, text)
            self.assertIn(repr(text), str(error))

    @given(st.text())
    def test_onlyValueError(self, text: str) -> None:
        """
        On any text, L{parseDuration} returns a finite positive float or raises
        C{ValueError}.
        """
        try:
            seconds = parseDuration(text)
        except ValueError:
            return
        self.assertTrue(0 < seconds < float("inf"))

    @given(st.integers(1, 10**6), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 604800)]))
    def test_multiples(self, count: int, unit: tuple[str, int]) -> None:
        """
        A whole number with a unit is that many units' seconds.
        """
        self.assertEqual(parseDuration(f"{count}{unit[0]}"), count * unit[1])


class ParseRoutesTests(SynchronousTestCase):
    """
    Tests for L{parseRoutes} (C{[relay] routes}).
    """

    def test_forms(self) -> None:
        """
        C{domain=host}, C{domain=host:port} and C{domain=[ipv6]:port}, the
        domain in lower case, port 25 by default.
        """
        self.assertEqual(parseRoutes("Branch.Example=127.0.0.1:2526, b.test=[::1]:26,\nc.test = mx.c.test"),
                         (("branch.example", "127.0.0.1", 2526), ("b.test", "::1", 26),
                          ("c.test", "mx.c.test", 25)))
        self.assertEqual(parseRoutes(""), ())

    def test_refused(self) -> None:
        """
        A missing target, a bad host or port, or a domain routed twice is
        refused with a message naming the item.
        """
        for text, expected in (("x.test", "not domain=host:port"), ("x.test=", "not domain=host:port"),
                               ("x.test=h:0", "not host, host:port"), ("x.test=h:99999", "not host, host:port"),
                               ("-x=h", "-x"), ("x.test=h, X.test=g", "two routes")):
            with self.assertRaises(ValueError) as caught:
                parseRoutes(text)
            self.assertIn(expected, str(caught.exception))


class ParseKeySizeTests(SynchronousTestCase):
    """
    Tests for L{parseKeySize} (C{[qkd] key_size}).
    """

    def test_range(self) -> None:
        """
        Multiples of 8 from 128 to 8192 bits.
        """
        self.assertEqual([parseKeySize(t) for t in ("128", "256", "512", "8192")], [128, 256, 512, 8192])
        for bad in ("120", "257", "8200", "x", ""):
            self.assertRaises(ValueError, parseKeySize, bad)


class ParseDurationOrZeroTests(SynchronousTestCase):
    """
    Tests for L{parseDurationOrZero} (C{[relay] delay_warning}).
    """

    def test_zeroOrDuration(self) -> None:
        """
        C{0} turns the feature off; anything else is a duration.
        """
        self.assertEqual([parseDurationOrZero(t) for t in ("0", " 0 ", "4h", "90s")], [0.0, 0.0, 14400.0, 90.0])
        for bad in ("", "-1", "0s", "x"):
            self.assertRaises(ValueError, parseDurationOrZero, bad)
