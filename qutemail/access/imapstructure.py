# -*- test-case-name: tests.access.test_imapmime -*-
"""
What FETCH says about a message's structure (RFC 3501 §7.4.2): ENVELOPE,
BODY and BODYSTRUCTURE, header field selection, and which bytes a body
section (C{BODY[1.2.TEXT]} ...) stands for, all from a scanned
L{qutemail.access.imapmime.Entity}.  Pure computation on kept headers.
"""

import email.utils
import functools
import re
from typing import Any

from qutemail.access.imapmime import NOT_SPLIT, Entity, Mark
from qutemail.access.imapwire import Atom, formatList, formatValue

_FOLD = re.compile(r"\r?\n(?=[ \t])")
# Distinct address fields whose parse is kept (a few MB at most).
ADDRESS_CACHE_SIZE = 8192
# Distinct leaf types and parameters whose wire form is kept.
TYPE_CACHE_SIZE = 1024


class NoSuchSection(Exception):
    """
    A body section names a part the message does not have.
    """


def unfold(value: str) -> str:
    """
    @return: a header value with its folding line ends removed.
    """
    if "\n" not in value and "\r" not in value:
        return value
    return _FOLD.sub("", value).strip("\r\n")


def _raw(value: str | None) -> bytes | None:
    """
    @return: a header value as the bytes it was (8-bit kept), or C{None}.
    """
    if value is None:
        return None
    return unfold(str(value)).encode("utf-8", "surrogateescape")


def _addresses(value: str | None) -> Atom | None:
    """
    @return: an ENVELOPE address list (RFC 3501 §9, C{env-from} ...),
        already in its wire form, or C{None} when the field is missing or
        holds no address.
    """
    if value is None:
        return None
    return _parsedAddresses(unfold(str(value)))


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _parsedAddresses(value: str) -> Atom | None:
    """
    L{_addresses} of an unfolded value.  The standard library's address
    parser is slow, and a folder's messages name the same correspondents
    again and again (a FETCH of ENVELOPE over a folder parses and formats
    each field of each message), so results are kept, formatted.
    """
    result = []
    for name, address in email.utils.getaddresses([value]):
        if not address and not name:
            continue
        mailbox, at, host = address.rpartition("@")
        if not at:
            mailbox, host = address, None
        result.append((name or None, None, mailbox or None, host or None))
    # RFC 3501 §9 env-from and the others: "(" 1*address ")", no space
    # between the addresses.
    return Atom(b"(" + b"".join(formatList(a) for a in result) + b")") if result else None


# The fields an ENVELOPE shows, in its order, sender and reply-to given
# their fallback to from (RFC 3501 §7.4.2) in L{envelope}.
_ENVELOPE_FIELDS = ("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to", "message-id")
# The fields of a leaf's BODYSTRUCTURE after its type.
_LEAF_FIELDS = ("content-transfer-encoding", "content-id", "content-description")


def envelope(entity: Entity) -> list:
    """
    @return: a message's ENVELOPE fields, for L{formatList}.
    """
    # All at once (a first listing makes thousands of envelopes;
    # Entity.rawField lower-cases the name and finds the table again for
    # each).
    date, subject, from_, sender, replyTo, to, cc, bcc, inReplyTo, messageId = entity.firstValues(_ENVELOPE_FIELDS)
    return [
        _raw(date), _raw(subject),
        _addresses(from_), _addresses(sender or from_), _addresses(replyTo or from_),
        _addresses(to), _addresses(cc), _addresses(bcc),
        _raw(inReplyTo), _raw(messageId),
    ]


def _parameters(entity: Entity, header: str) -> list | None:
    """
    @return: a field's parameters as a flat C{[name, value, ...]} list
        (RFC 2231 values decoded), or C{None}.
    """
    if header == "content-type":
        split = entity.contentTypeParams()
        if split is not NOT_SPLIT:
            return list(split) if split is not None else None
    params = entity.headers().get_params(header=header)
    if not params:
        return None
    flat: list[str] = []
    for name, value in params[1:]:
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        flat += [name, str(value)]
    return flat or None


def _disposition(entity: Entity) -> list | None:
    """
    @return: the body disposition (C{("attachment" (params))}), or C{None}.
    """
    if "content-disposition" not in entity.fieldValues():
        return None
    params = entity.headers().get_params(header="content-disposition")
    if not params:
        return None
    return [params[0][0].lower(), _parameters(entity, "content-disposition")]


def _language(entity: Entity) -> Any:
    """
    @return: the body language: one string, a list, or C{None}.
    """
    value = entity.rawField("content-language")
    if value is None:
        return None
    tags = [t.strip() for t in unfold(str(value)).split(",") if t.strip()]
    return tags[0] if len(tags) == 1 else (tags or None)


def _field(entity: Entity, name: str) -> bytes | None:
    """
    @return: one field's raw value, or C{None}.
    """
    return _raw(entity.rawField(name))


# The fields a leaf's BODYSTRUCTURE extension data is made of (RFC 3501
# §7.4.2: body MD5, disposition, language, location), and what it is when
# a part has none of them, as most have.
_EXTENSION_FIELDS = frozenset(("content-md5", "content-disposition", "content-language", "content-location"))
_NO_EXTENSION = b"NIL NIL NIL NIL"


def _extension(entity: Entity) -> bytes:
    """
    @return: a leaf's BODYSTRUCTURE extension data, in wire form.
    """
    if _EXTENSION_FIELDS.isdisjoint(entity.fieldValues()):
        return _NO_EXTENSION
    return b" ".join(formatValue(v) for v in (
        _field(entity, "content-md5"), _disposition(entity), _language(entity), _field(entity, "content-location")))


@functools.lru_cache(maxsize=TYPE_CACHE_SIZE)
def _typeForm(mainType: str, subType: str, params: tuple[str, ...] | None) -> bytes:
    """
    @return: a leaf's type, subtype and parameters in wire form.  Kept:
        most parts of a folder have one of a few (C{"text" "plain"
        ("charset" "us-ascii")}), and a first listing formats thousands.
    """
    flat = list(params) if params is not None else None
    return b" ".join((formatValue(mainType), formatValue(subType), formatValue(flat)))


def structures(entity: Entity) -> tuple[bytes, bytes]:
    """
    An entity's C{BODY} and C{BODYSTRUCTURE} (RFC 3501 §7.4.2), in wire
    form, made in one pass: the first is the second without extension
    data, so the fields they share are read and formatted once (the fetch
    index keeps both for every message).

    @return: C{(BODY, BODYSTRUCTURE)}.
    """
    if entity.mainType == "multipart" and entity.parts:
        # RFC 3501 §9 body-type-mpart: the parts follow one another with
        # no space between them.
        forms = [structures(part) for part in entity.parts]
        subType = formatValue(entity.subType)
        extension = b" ".join(formatValue(v) for v in (
            _parameters(entity, "content-type"), _disposition(entity), _language(entity),
            _field(entity, "content-location")))
        return (b"(" + b"".join(f[0] for f in forms) + b" " + subType + b")",
                b"(" + b"".join(f[1] for f in forms) + b" " + subType + b" " + extension + b")")
    mainType, subType = entity.mainType, entity.subType
    params = _parameters(entity, "content-type")
    if mainType == "multipart":
        # A multipart without any part found is shown as the text it is.
        mainType, subType, params = "text", "plain", ["charset", "us-ascii"]
    elif params is None and (mainType, subType) == ("text", "plain"):
        params = ["charset", "us-ascii"]
    encoding, contentId, description = [_raw(v) for v in entity.firstValues(_LEAF_FIELDS)]
    shared = b" ".join((
        _typeForm(mainType, subType, tuple(params) if params is not None else None),
        formatValue(contentId), formatValue(description), formatValue(encoding or b"7bit"),
        b"%d" % (entity.bodySize,)))
    body = structure = shared
    if entity.message is not None:
        inner = structures(entity.message)
        innerEnvelope = formatList(envelope(entity.message))
        lines = formatValue(entity.bodyLines)
        body += b" " + innerEnvelope + b" " + inner[0] + b" " + lines
        structure += b" " + innerEnvelope + b" " + inner[1] + b" " + lines
    elif mainType == "text":
        lines = b" " + formatValue(entity.bodyLines)
        body += lines
        structure += lines
    structure += b" " + _extension(entity)
    return b"(" + body + b")", b"(" + structure + b")"


def headerFields(entity: Entity, names: list[bytes], negate: bool) -> bytes:
    """
    The header fields a C{HEADER.FIELDS} (or C{.NOT}) section asks for,
    as they are (folding kept), CRLF line ends, with the blank line.

    @param names: field names, any case.
    @param negate: give the fields not named instead.
    """
    wanted = {n.lower().strip() for n in names}
    out = bytearray()
    keep = False
    for line in entity.header.split(b"\n"):
        if not line:
            continue
        if line[:1] not in (b" ", b"\t"):
            name = line.partition(b":")[0].strip().lower()
            keep = (name in wanted) != negate
        if keep:
            out += line.rstrip(b"\r") + b"\r\n"
    return bytes(out) + b"\r\n"


def resolvePart(root: Entity, path: tuple[int, ...]) -> Entity:
    """
    Find the entity a section's part number names (RFC 3501 §6.4.5).

    @param path: 0-based part numbers (C{1.2} is C{(0, 1)}).
    @raise NoSuchSection: there is no such part.
    """
    node = root
    for index in path:
        container = node.message if node.message is not None else node
        if container.parts:
            if not 0 <= index < len(container.parts):
                raise NoSuchSection(index)
            node = container.parts[index]
        elif index == 0:
            node = container
        else:
            raise NoSuchSection(index)
    return node


def messageOf(root: Entity, node: Entity, path: tuple[int, ...]) -> Entity:
    """
    The message whose HEADER or TEXT a section names.

    @raise NoSuchSection: the part is not a message.
    """
    if not path:
        return root
    if node.message is not None:
        return node.message
    raise NoSuchSection(path)


def region(entity: Entity, what: str) -> tuple[Mark, Mark]:
    """
    @param what: C{"all"}, C{"header"} (with its blank line) or C{"body"}.
    @return: where that part of the entity starts and ends in the file.
    """
    if what == "header":
        return entity.start, entity.bodyStart
    if what == "body":
        return entity.bodyStart, entity.end
    return entity.start, entity.end
