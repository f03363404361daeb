# -*- test-case-name: tests.test_address -*-
"""
Mailbox addresses of local accounts: validation and normal form.

An account address is a dot-atom local part (RFC 5322 §3.2.3) and a domain
name, both lower-cased.  The local part becomes a directory name under
C{mail/<domain>/}, so besides the dot-atom rules (no leading, trailing or
doubled dot) it may not contain C{/}.
"""

import re
from collections.abc import Iterable

import attrs

# RFC 5322 atext, less "/" (a path separator in the mailbox layout).
_ATEXT = r"[A-Za-z0-9!#$%&'*+=?^_`{|}~-]"
_LOCAL_RE = re.compile(rf"{_ATEXT}+(\.{_ATEXT}+)*")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

# RFC 5321 §4.5.3.1.1 and §4.5.3.1.2
MAX_LOCALPART_OCTETS = 64
MAX_DOMAIN_OCTETS = 255


class AddressInvalid(ValueError):
    """
    An address is malformed, or its domain is not one of ours.
    """


@attrs.frozen
class AccountAddress:
    """
    A normalised local account address.

    @ivar localpart: the lower-cased local part.
    @ivar domain: the lower-cased domain.
    """

    localpart: str
    domain: str

    def __str__(self) -> str:
        return f"{self.localpart}@{self.domain}"


def isDomainName(name: str) -> bool:
    """
    Say whether C{name} is a syntactically valid DNS host or domain name.

    @param name: the candidate, without a trailing dot.
    @return: C{True} when every label is LDH and the total length fits.
    """
    if not name or len(name) > 253:
        return False
    return name.isascii() and all(_LABEL_RE.fullmatch(label) for label in name.split("."))


def parseAccountAddress(text: str, domains: tuple[str, ...] | None = None) -> AccountAddress:
    """
    Validate and normalise an account address.

    @param text: the address as typed, C{local@domain}.
    @param domains: the local domains, lower-cased; when given, the domain
        must be one of them.
    @return: the normal form.
    @raise AddressInvalid: with a one-line reason.
    """
    if not isinstance(text, str) or text.count("@") != 1:
        raise AddressInvalid(f"{text!r} is not an address of the form local@domain")
    local, _, domain = text.strip().rpartition("@")
    domain = domain.rstrip(".")
    # Validate before lower-casing: str.lower() maps some non-ASCII letters
    # (the Kelvin sign) to ASCII ones.  Without SMTPUTF8, addresses are ASCII.
    if (
        not local
        or not local.isascii()
        or len(local) > MAX_LOCALPART_OCTETS
        or not _LOCAL_RE.fullmatch(local)
    ):
        raise AddressInvalid(f"{text!r}: invalid local part {local!r}")
    local = local.lower()
    if not isDomainName(domain):
        raise AddressInvalid(f"{text!r}: invalid domain {domain!r}")
    domain = domain.lower()
    if domains is not None and domain not in domains:
        raise AddressInvalid(
            f"{text!r}: domain {domain!r} is not a local domain ({', '.join(domains)})"
        )
    return AccountAddress(local, domain)


def domainOf(address: str) -> str:
    """
    @return: the domain of an address, lower case, without a final dot
        (C{""} when it has none).
    """
    return address.rpartition("@")[2].lower().rstrip(".")


def isInternalSender(authenticated: str | None, sender: str, domains: Iterable[str]) -> bool:
    """
    The one rule for "is this our own users' mail" (internal mail, which
    needs a QKD key at rest): the sender authenticated, and the envelope
    sender's domain is one of ours.

    @param domains: our domains (any case, a final dot allowed).
    @return: C{False} for the null sender.
    """
    if not authenticated or "@" not in sender:
        return False
    return isLocalAddress(sender, {d.lower().rstrip(".") for d in domains})


def isLocalAddress(address: str, domains: tuple[str, ...] | frozenset[str]) -> bool:
    """
    The one rule for "is this one of our addresses": its domain is one of
    ours.

    @param address: the address.
    @param domains: our domains, lower case, without a final dot (as
        C{[server] domains} gives them).
    @return: whether the address's domain is among them.
    """
    return domainOf(address) in domains
