"""
Tests for L{qutemail.address}: validation and normal form of local account
addresses.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.address import (
    MAX_LOCALPART_OCTETS,
    AccountAddress,
    AddressInvalid,
    isDomainName,
    parseAccountAddress,
)

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+=?^_`{|}~-"
LDH = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def localParts():
    """
    @return: a strategy for dot-atom local parts without C{/}, at most 64
        characters.
    """
    atom = st.text(ATEXT, min_size=1, max_size=10)
    return st.lists(atom, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= MAX_LOCALPART_OCTETS)


def domainNames():
    """
    @return: a strategy for LDH domain names.
    """
    label = st.tuples(st.sampled_from(LDH), st.text(LDH + "-", max_size=8), st.sampled_from(LDH)).map(
        lambda t: t[0] + (t[1] + t[2] if t[1] else "")
    )
    return st.lists(label, min_size=1, max_size=4).map(".".join)


class ParseAccountAddressTests(SynchronousTestCase):
    """
    L{parseAccountAddress} validates and lower-cases account addresses.
    """

    def test_normalised(self):
        """
        Local part and domain are lower-cased, surrounding whitespace and a
        trailing dot on the domain are dropped.
        """
        self.assertEqual(parseAccountAddress("Alice@Example.TEST"), AccountAddress("alice", "example.test"))
        self.assertEqual(parseAccountAddress("  bob.smith@example.test.\n"), AccountAddress("bob.smith", "example.test"))
        self.assertEqual(str(parseAccountAddress("a+b=c@x-y.example")), "a+b=c@x-y.example")

    def test_localDomains(self):
        """
        With C{domains}, only addresses in those domains are accepted.
        """
        self.assertEqual(parseAccountAddress("a@Example.test", ("example.test",)), AccountAddress("a", "example.test"))
        with self.assertRaises(AddressInvalid) as e:
            parseAccountAddress("a@other.test", ("example.test", "example.org"))
        self.assertIn("example.test, example.org", str(e.exception))

    def test_bad(self):
        """
        Malformed addresses are refused with L{AddressInvalid}.
        """
        bad = [
            "", "alice", "@example.test", "alice@", "a@b@example.test", ".a@example.test",
            "a.@example.test", "a..b@example.test", "a/b@example.test", "../x@example.test",
            "a b@example.test", '"a"@example.test', "a@-example.test", "a@example-.test",
            "a@exa_mple.test", "a@example..test", "a@.example.test", "a@[192.0.2.1]",
            "é@example.test", "a@exämple.test", "a" * 65 + "@example.test",
            "a@" + "b" * 64 + ".test", "a@" + ".".join(["b" * 63] * 4),
        ]
        for text in bad:
            self.assertRaises(AddressInvalid, parseAccountAddress, text)

    def test_notText(self):
        """
        Bytes and other non-text values are refused with L{AddressInvalid}.
        """
        for value in (b"a@example.test", None, 42):
            self.assertRaises(AddressInvalid, parseAccountAddress, value)

    def test_limits(self):
        """
        A 64-octet local part and a 63-octet label are accepted.
        """
        text = "a" * 64 + "@" + "b" * 63 + ".test"
        self.assertEqual(str(parseAccountAddress(text)), text)

    def test_newlineInLocalPartRefused(self):
        """
        A local part ending in a line feed is refused (it would become a
        mailbox directory name with a newline in it).
        """
        self.assertRaises(AddressInvalid, parseAccountAddress, "alice\n@example.test")


    def test_newlineInDomainRefused(self):
        """
        A domain label ending in a line feed is refused.
        """
        self.assertRaises(AddressInvalid, parseAccountAddress, "a@example\n.test")
        self.assertFalse(isDomainName("example\n.test"))


    def test_nonAsciiFoldingRefused(self):
        """
        A character that is not atext is refused even if it lower-cases to
        one (KELVIN SIGN lower-cases to ASCII C{k}).
        """
        self.assertRaises(AddressInvalid, parseAccountAddress, "\u212a@example.test")
        self.assertRaises(AddressInvalid, parseAccountAddress, "a@\u212a.test")


    def test_surrogateRefused(self):
        """
        Text with a lone surrogate (undecodable bytes read with
        C{surrogateescape}, e.g. a command-line argument) is refused with
        L{AddressInvalid}.
        """
        self.assertRaises(AddressInvalid, parseAccountAddress, "\udcff@example.test")


    @given(st.text(max_size=80), st.none() | st.just(("example.test",)))
    def test_onlyAddressInvalid(self, text, domains):
        """
        On any text, L{parseAccountAddress} raises nothing but
        L{AddressInvalid}, and an accepted address is in lower case and
        parses to itself again.
        """
        try:
            address = parseAccountAddress(text, domains)
        except AddressInvalid:
            return
        self.assertEqual(str(address), str(address).lower())
        self.assertEqual(parseAccountAddress(str(address), domains), address)

    @given(st.text(alphabet=st.characters(codec="ascii"), max_size=40).map(lambda s: s + "@example.test"))
    def test_onlyAddressInvalidAsciiLocal(self, text):
        """
        On any ASCII local part, L{parseAccountAddress} raises nothing but
        L{AddressInvalid}.
        """
        try:
            parseAccountAddress(text)
        except AddressInvalid:
            pass

    @given(localParts(), domainNames())
    def test_roundTrip(self, local, domain):
        """
        A valid address parses to its lower-case parts, in any case, and its
        string form parses to the same address.
        """
        address = parseAccountAddress(f"{local}@{domain}")
        self.assertEqual(address, AccountAddress(local.lower(), domain.lower()))
        self.assertEqual(parseAccountAddress(f"{local.upper()}@{domain.upper()}"), address)
        self.assertEqual(parseAccountAddress(str(address)), address)


class IsDomainNameTests(SynchronousTestCase):
    """
    L{isDomainName} checks LDH names.
    """

    def test_good(self):
        """
        LDH names of one or more labels are domain names.
        """
        for name in ["example", "example.test", "a-b.c9.test", "1.2.3.4", "x" * 63 + ".test"]:
            self.assertTrue(isDomainName(name), name)

    def test_bad(self):
        """
        Empty names or labels, hyphens at a label's edge, other characters,
        labels over 63 and names over 253 characters are not.
        """
        for name in ["", ".", "a.", ".a", "a..b", "-a.test", "a-.test", "a_b.test", "a b.test",
                     "x" * 64 + ".test", ".".join(["a" * 50] * 5) + "x"]:
            self.assertFalse(isDomainName(name), name)

    @given(domainNames())
    def test_generatedNames(self, name):
        """
        Every generated LDH name of at most 253 characters is a domain name.
        """
        self.assertEqual(isDomainName(name), len(name) <= 253)
