# -*- test-case-name: tests.access.test_imapnegotiate -*-
"""
ID (RFC 2971) and ENABLE (RFC 5161), as a mixin of
L{qutemail.access.imapserver.IMAPServer}.

ID is valid in every state.  The server names itself and nothing more
(no version for a scanner to match); what the client says about itself
is logged at debug level, at most 30 pairs (the RFC's limit; more is
refused), each field and value cut short and with control characters
replaced, so the log never holds more than a few kilobytes of it.

ENABLE is valid once logged in.  None of the extensions that need it
(CONDSTORE, QRESYNC, UTF8=ACCEPT ...) is implemented, so every ENABLE is
answered with an empty C{* ENABLED} and C{OK}, as RFC 5161 §3.1 asks
for names the server does not know.
"""

from twisted.logger import Logger

from qutemail.access.imapwire import Atom, bad, formatList

# RFC 2971 §3.3: fields of at most 30 octets, values of at most 1024, and
# at most 30 pairs.
MAX_ID_PAIRS = 30
MAX_ID_FIELD_BYTES = 30
MAX_ID_VALUE_BYTES = 1024
# How much of a value the debug log keeps.
LOGGED_ID_VALUE_CHARS = 200
SERVER_ID = (b"name", b"QutEmail")
# Extensions ENABLE can turn on (RFC 5161): none yet.
ENABLEABLE: frozenset[bytes] = frozenset()


def _printable(value: bytes, limit: int) -> str:
    """
    @return: C{value} as text for the log: UTF-8 (bad bytes replaced),
        control characters as C{?}, at most C{limit} characters.
    """
    text = value.decode("utf-8", "replace")[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def parseClientId(tokens: list) -> dict[str, str | None]:
    """
    Read ID's argument (RFC 2971 §4): C{NIL}, or a list of field and
    value strings (a value may be C{NIL}).

    @param tokens: the command's tokens.
    @return: the fields, made printable for the log.
    @raise qutemail.access.imapwire.Refusal: C{BAD}, the argument is not
        one, or breaks the RFC's limits.
    """
    if len(tokens) != 1:
        raise bad(b"ID needs NIL or a list of fields and values")
    argument = tokens[0]
    if isinstance(argument, Atom) and argument.upper() == b"NIL":
        return {}
    if not isinstance(argument, list) or len(argument) % 2:
        raise bad(b"ID needs NIL or a list of fields and values")
    if len(argument) > 2 * MAX_ID_PAIRS:
        raise bad(b"ID takes at most 30 fields")
    fields: dict[str, str | None] = {}
    for field, value in zip(argument[::2], argument[1::2]):
        if not isinstance(field, bytes) or not isinstance(value, bytes):
            raise bad(b"ID fields and values are strings")
        if isinstance(field, Atom) and field.upper() == b"NIL":
            raise bad(b"An ID field cannot be NIL")
        if len(field) > MAX_ID_FIELD_BYTES or len(value) > MAX_ID_VALUE_BYTES:
            raise bad(b"ID field or value too long")
        isNil = isinstance(value, Atom) and value.upper() == b"NIL"
        fields[_printable(field, MAX_ID_FIELD_BYTES)] = None if isNil else _printable(value, LOGGED_ID_VALUE_CHARS)
    return fields


class NegotiationCommands:
    """
    ID and ENABLE (a mixin of the server).
    """

    _log = Logger()

    async def imap_ID(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        ID (RFC 2971): log what the client says, name the server.
        """
        tokens, _ = await self._arguments(rest)
        clientId = parseClientId(tokens)
        self._log.debug("IMAP client at {peer} identifies itself as {clientId}", peer=self._peer, clientId=clientId)
        self._untagged(b"ID " + formatList(SERVER_ID))
        self._tagged(tag, b"OK", b"ID completed")

    async def imap_ENABLE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        ENABLE capability... (RFC 5161): nothing to enable yet.
        """
        tokens, _ = await self._arguments(rest)
        if not tokens or not all(isinstance(t, Atom) and t for t in tokens):
            raise bad(b"ENABLE needs capability names")
        enabled = [bytes(t).upper() for t in tokens if bytes(t).upper() in ENABLEABLE]
        self._untagged(b"ENABLED" + b"".join(b" " + name for name in enabled))
        self._tagged(tag, b"OK", b"ENABLE completed")
