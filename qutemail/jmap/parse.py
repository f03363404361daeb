# -*- test-case-name: tests.jmap.test_parse -*-
"""
An RFC 5322 message as the JMAP Email object shows it (RFC 8621 §4.1):
the header forms (§4.1.2), the body parts and their ids, the
C{textBody}/C{htmlBody}/C{attachments} lists by the algorithm of §4.1.4,
body values and the preview.  Parsing is the standard library's
(C{email} with its default policy); nothing here touches the disk.
"""

import datetime
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import re
from typing import Any

import attrs

from qutemail.jmap import ids

# RFC 8621 §4.1.4: the default properties of EmailBodyPart objects.
DEFAULT_BODY_PROPERTIES = ("partId", "blobId", "size", "name", "type", "charset", "disposition", "cid",
                           "language", "location")
PREVIEW_CHARACTERS = 256
_INLINE_MEDIA = ("image/", "audio/", "video/")
_ANGLE = re.compile(r"<([^<>\s]+)>")
_FORMS = ("asRaw", "asText", "asAddresses", "asGroupedAddresses", "asMessageIds", "asDate", "asURLs")


def parseBytes(data: bytes) -> email.message.EmailMessage:
    """
    @return: the message, parsed with the default policy.
    """
    return email.parser.BytesParser(policy=email.policy.default).parsebytes(data)


@attrs.define
class Part:
    """
    One MIME part and what JMAP says of it.

    @ivar message: the part (or the whole message).
    @ivar partId: its id (leaves only).
    @ivar subParts: its parts, for a multipart.
    """

    message: Any
    partId: str | None
    subParts: list = attrs.field(factory=list)

    @property
    def type(self) -> str:
        """
        @return: its media type, lower case.
        """
        return self.message.get_content_type()

    @property
    def name(self) -> str | None:
        """
        @return: its file name, or C{None}.
        """
        try:
            return self.message.get_filename()
        except (ValueError, LookupError):
            return None

    @property
    def disposition(self) -> str | None:
        """
        @return: its C{Content-Disposition} value, or C{None}.
        """
        return self.message.get_content_disposition()

    def content(self) -> bytes:
        """
        @return: its decoded content (transfer encoding undone).
        """
        if self.type.startswith("message/"):
            payload = self.message.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0].as_bytes(policy=email.policy.SMTP.clone(linesep="\n"))
        data = self.message.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""

    def text(self) -> tuple[str, bool]:
        """
        @return: its content as text, and whether decoding it was a problem.
        """
        data = self.content()
        charset = self.message.get_content_charset() or "us-ascii"
        try:
            return data.decode(charset), False
        except (LookupError, UnicodeDecodeError):
            return data.decode("utf-8", "replace"), True


@attrs.define
class ParsedEmail:
    """
    A message broken down for JMAP.

    @ivar message: the parsed message.
    @ivar size: its size in bytes.
    @ivar root: its part tree.
    @ivar parts: the leaf parts by part id.
    @ivar textBody: the parts of C{textBody}.
    @ivar htmlBody: the parts of C{htmlBody}.
    @ivar attachments: the parts of C{attachments}.
    """

    message: Any
    size: int
    root: Part
    parts: dict
    textBody: list
    htmlBody: list
    attachments: list


def breakDown(data: bytes) -> ParsedEmail:
    """
    Parse a message and sort its parts (RFC 8621 §4.1.4).
    """
    message = parseBytes(data)
    parts: dict[str, Part] = {}
    root = _tree(message, parts)
    text: list | None = []
    html: list | None = []
    attachments: list = []
    children = root.subParts if root.partId is None else [root]
    subtype = root.type.split("/")[1] if root.partId is None else "mixed"
    _sort(children, subtype, subtype == "alternative", html, text, attachments)
    return ParsedEmail(message, len(data), root, parts, text, html, attachments)


def _tree(message: Any, parts: dict) -> Part:
    """
    @return: the part tree, numbering the leaves in order.
    """
    if message.get_content_maintype() == "multipart":
        node = Part(message, None)
        payload = message.get_payload()
        for child in payload if isinstance(payload, list) else []:
            node.subParts.append(_tree(child, parts))
        return node
    partId = str(len(parts) + 1)
    node = Part(message, partId)
    parts[partId] = node
    return node


def _sort(parts: list, multipartType: str, inAlternative: bool, html: list | None, text: list | None,
          attachments: list) -> None:
    """
    The C{parseStructure} algorithm of RFC 8621 §4.1.4 (C{None} stands
    for its C{null} lists).
    """
    textLength = len(text) if text is not None else -1
    htmlLength = len(html) if html is not None else -1
    for i, part in enumerate(parts):
        isInlineMedia = part.type.startswith(_INLINE_MEDIA)
        isInline = (part.disposition != "attachment"
                    and (part.type in ("text/plain", "text/html") or isInlineMedia)
                    and (i == 0 or (multipartType != "related" and (isInlineMedia or not part.name))))
        if part.partId is None:
            sub = part.type.split("/")[1]
            _sort(part.subParts, sub, inAlternative or sub == "alternative", html, text, attachments)
        elif isInline:
            if multipartType == "alternative":
                if part.type == "text/plain" and text is not None:
                    text.append(part)
                elif part.type == "text/html" and html is not None:
                    html.append(part)
                else:
                    attachments.append(part)
                continue
            partText, partHtml = text, html
            if inAlternative:
                if part.type == "text/plain":
                    partHtml = None
                if part.type == "text/html":
                    partText = None
            if partText is not None:
                partText.append(part)
            if partHtml is not None:
                partHtml.append(part)
            if (partText is None or partHtml is None) and isInlineMedia:
                attachments.append(part)
        else:
            attachments.append(part)
    if multipartType == "alternative" and text is not None and html is not None:
        if textLength == len(text) and htmlLength != len(html):
            text.extend(html[htmlLength:])
        if htmlLength == len(html) and textLength != len(text):
            html.extend(text[textLength:])


def rawHeaders(message: Any) -> list[tuple[str, str]]:
    """
    @return: the header fields as they are, C{(name, raw value)}.
    """
    return [(name, value) for name, value in message.raw_items()]


def decodeText(raw: str) -> str:
    """
    @return: a header value unfolded, RFC 2047 decoded and trimmed.
    """
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", raw)
    try:
        text = str(email.header.make_header(email.header.decode_header(unfolded)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        text = unfolded
    return re.sub(r"[ \t]+", " ", text).strip()


def addresses(raw: str) -> list[dict]:
    """
    @return: EmailAddress objects (RFC 8621 §4.1.2.3).
    """
    out = []
    for name, address in email.utils.getaddresses([re.sub(r"\r?\n(?=[ \t])", "", raw)]):
        if not address and not name:
            continue
        out.append({"name": decodeText(name) or None, "email": address})
    return out


def asDate(raw: str) -> str | None:
    """
    @return: a C{Date}-like value as an RFC 3339 date, or C{None}.
    """
    try:
        parsed = email.utils.parsedate_to_datetime(decodeText(raw))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=datetime.timezone.utc).isoformat()
    return parsed.isoformat()


def headerForm(raw: str, form: str) -> Any:
    """
    @return: one header value in a parsed form (RFC 8621 §4.1.2).
    """
    if form == "asRaw":
        return raw if raw.startswith((" ", "\t")) else " " + raw
    if form == "asText":
        return decodeText(raw)
    if form == "asAddresses":
        return addresses(raw)
    if form == "asGroupedAddresses":
        return [{"name": None, "addresses": addresses(raw)}]
    if form == "asMessageIds":
        found = _ANGLE.findall(raw)
        return found or None
    if form == "asDate":
        return asDate(raw)
    if form == "asURLs":
        return _ANGLE.findall(raw) or None
    raise ValueError(form)


def parseHeaderProperty(prop: str) -> tuple[str, str, bool] | None:
    """
    @return: C{(name, form, all)} of a C{header:Name[:asForm][:all]}
        property, or C{None} when it is not one.
    """
    pieces = prop.split(":")
    if pieces[0] != "header" or len(pieces) < 2 or not pieces[1] or len(pieces) > 4:
        return None
    name, rest = pieces[1], pieces[2:]
    wantAll = bool(rest) and rest[-1] == "all"
    if wantAll:
        rest = rest[:-1]
    form = rest[0] if rest else "asRaw"
    if form not in _FORMS or len(rest) > 1:
        return None
    return name, form, wantAll


def headerValue(message: Any, prop: str) -> Any:
    """
    @return: the value of a C{header:} property for a message or part.
    @raise ValueError: C{prop} is not a header property.
    """
    parsed = parseHeaderProperty(prop)
    if parsed is None:
        raise ValueError(prop)
    name, form, wantAll = parsed
    values = [headerForm(v, form) for n, v in rawHeaders(message) if n.lower() == name.lower()]
    if wantAll:
        return values
    return values[-1] if values else None


def partObject(email_: ParsedEmail, baseName: str, part: Part, properties: tuple, nested: bool) -> dict:
    """
    @return: an EmailBodyPart object (RFC 8621 §4.1.4).
    @param nested: give C{subParts} (for C{bodyStructure}).
    """
    out: dict = {}
    message = part.message
    for prop in properties:
        if prop == "partId":
            out[prop] = part.partId
        elif prop == "blobId":
            out[prop] = ids.partBlobId(baseName, part.partId) if part.partId else None
        elif prop == "size":
            out[prop] = len(part.content()) if part.partId else 0
        elif prop == "headers":
            out[prop] = [{"name": n, "value": headerForm(v, "asRaw")} for n, v in rawHeaders(message)]
        elif prop == "name":
            out[prop] = part.name
        elif prop == "type":
            out[prop] = part.type
        elif prop == "charset":
            out[prop] = message.get_content_charset() or ("us-ascii" if part.type.startswith("text/") else None)
        elif prop == "disposition":
            out[prop] = part.disposition
        elif prop == "cid":
            cid = message.get("Content-ID")
            out[prop] = str(cid).strip().strip("<>") if cid else None
        elif prop == "language":
            value = message.get("Content-Language")
            out[prop] = [v.strip() for v in str(value).split(",")] if value else None
        elif prop == "location":
            value = message.get("Content-Location")
            out[prop] = str(value).strip() if value else None
        elif prop.startswith("header:"):
            out[prop] = headerValue(message, prop)
    if nested and part.partId is None:
        out["subParts"] = [partObject(email_, baseName, p, properties, True) for p in part.subParts]
    return out


def bodyValue(part: Part, maxBytes: int) -> dict:
    """
    @return: an EmailBodyValue (RFC 8621 §4.1.4), truncated to C{maxBytes}
        of UTF-8 (0: whole), never inside a character.
    """
    text, problem = part.text()
    truncated = False
    if maxBytes and len(text.encode("utf-8")) > maxBytes:
        text = text.encode("utf-8")[:maxBytes].decode("utf-8", "ignore")
        truncated = True
    return {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}


def preview(parsed: ParsedEmail) -> str:
    """
    @return: up to L{PREVIEW_CHARACTERS} of the text body, whitespace
        collapsed (HTML tags dropped when there is no plain text).
    """
    for part in parsed.textBody:
        if part.type.startswith("text/"):
            text = part.text()[0]
            if part.type == "text/html":
                text = re.sub(r"<[^>]*>", " ", text)
            return re.sub(r"\s+", " ", text).strip()[:PREVIEW_CHARACTERS]
    return ""
