# -*- test-case-name: tests.jmap.test_api -*-
"""
C{Email/get}, C{Email/changes} and C{Email/query} (RFC 8621 §4.2-4.4) over
the account's folders: each email is one Maildir file (one mailbox), its
keywords its IMAP flags.  A message is read (decrypted for its owner)
only when a property or a filter needs more than the file's name and
time.

Server extension properties: C{qutemailQkd} (C{null}, or the QKD key id
and C{"at-rest"} or C{"inter-site"}) and C{qutemailSafeHtml} (the HTML
body, sanitised by L{qutemail.jmap.sanitise}).
"""

import datetime
import re
from typing import Any

from twisted.logger import Logger

from qutemail.jmap.common import changes, getIds, getProperties, positiveInt
from qutemail.jmap.dispatch import MAIL
from qutemail.jmap import ids
from qutemail.jmap.errors import MethodError, invalidArguments
from qutemail.jmap.parse import (
    DEFAULT_BODY_PROPERTIES, bodyValue, headerValue, parseHeaderProperty, partObject, preview,
)
from qutemail.jmap.state import EmailEntry

_log = Logger()

# Known without reading the message.
META = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt")
CONVENIENCE = {
    "messageId": "header:Message-ID:asMessageIds", "inReplyTo": "header:In-Reply-To:asMessageIds",
    "references": "header:References:asMessageIds", "sender": "header:Sender:asAddresses",
    "from": "header:From:asAddresses", "to": "header:To:asAddresses", "cc": "header:Cc:asAddresses",
    "bcc": "header:Bcc:asAddresses", "replyTo": "header:Reply-To:asAddresses", "subject": "header:Subject:asText",
    "sentAt": "header:Date:asDate",
}
BODY = ("headers", "bodyStructure", "bodyValues", "textBody", "htmlBody", "attachments", "hasAttachment",
        "preview", "qutemailQkd", "qutemailSafeHtml")
PROPERTIES = META + tuple(CONVENIENCE) + BODY
DEFAULT = META + tuple(CONVENIENCE) + ("hasAttachment", "preview", "bodyValues", "textBody", "htmlBody",
                                       "attachments", "qutemailQkd")
BODY_PROPERTIES = DEFAULT_BODY_PROPERTIES + ("headers", "subParts")


def utcDate(seconds: float) -> str:
    """
    @return: an RFC 3339 UTC date (C{Z}), whole seconds.
    """
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parseUtcDate(value: Any, name: str) -> float:
    """
    @return: the POSIX time of an RFC 3339 date argument.
    @raise MethodError: C{invalidArguments}.
    """
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise invalidArguments(f"{name} must be a UTCDate") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def safeHtml(parsed: Any) -> str | None:
    """
    @return: the HTML body, sanitised, or C{None} without one (or without
        the sanitiser, which comes with the webmail).
    """
    try:
        from qutemail.jmap.sanitise import sanitiseHtml  # the webmail's module
    except ImportError:
        _log.warn("qutemailSafeHtml asked for, but qutemail.jmap.sanitise is not installed")
        return None

    parts = [p for p in parsed.htmlBody if p.type == "text/html"]
    if not parts:
        return None
    return sanitiseHtml("".join(p.text()[0] for p in parts))


async def emailObject(context: Any, entry: EmailEntry, properties: tuple, args: dict) -> dict:
    """
    @return: one Email object with the properties asked for.
    """
    out: dict = {}
    meta = {
        "id": entry.id, "blobId": ids.messageBlobId(entry.baseName), "threadId": ids.threadId(entry.baseName),
        "mailboxIds": {entry.mailboxId: True}, "keywords": entry.keywords, "size": entry.size,
        "receivedAt": utcDate(entry.receivedAt),
    }
    if all(p in meta for p in properties):
        return {p: meta[p] for p in properties}
    parsed, qkd, _ = await context.parsed(entry)
    bodyProps = getProperties(args, BODY_PROPERTIES, DEFAULT_BODY_PROPERTIES, "bodyProperties")
    maxBytes = positiveInt(args, "maxBodyValueBytes", 0) or 0
    for prop in properties:
        if prop in meta:
            out[prop] = meta[prop]
        elif prop in CONVENIENCE:
            out[prop] = headerValue(parsed.message, CONVENIENCE[prop])
        elif prop.startswith("header:"):
            out[prop] = headerValue(parsed.message, prop)
        elif prop == "headers":
            out[prop] = partObject(parsed, entry.baseName, parsed.root, ("headers",), False)["headers"]
        elif prop == "bodyStructure":
            out[prop] = partObject(parsed, entry.baseName, parsed.root, bodyProps, True)
        elif prop in ("textBody", "htmlBody", "attachments"):
            out[prop] = [partObject(parsed, entry.baseName, p, bodyProps, False) for p in getattr(parsed, prop)]
        elif prop == "hasAttachment":
            out[prop] = bool(parsed.attachments)
        elif prop == "preview":
            out[prop] = preview(parsed)
        elif prop == "qutemailQkd":
            out[prop] = qkd
        elif prop == "qutemailSafeHtml":
            out[prop] = safeHtml(parsed)
        elif prop == "bodyValues":
            wanted = []
            if args.get("fetchAllBodyValues"):
                wanted = list(parsed.textBody) + list(parsed.htmlBody)
            else:
                if args.get("fetchTextBodyValues"):
                    wanted += parsed.textBody
                if args.get("fetchHTMLBodyValues"):
                    wanted += parsed.htmlBody
            out[prop] = {p.partId: bodyValue(p, maxBytes) for p in wanted if p.type.startswith("text/")}
    return out


async def emailGet(context: Any, args: dict) -> dict:
    """
    C{Email/get} (RFC 8621 §4.2).
    """
    wanted = getIds(context, args)
    properties = getProperties(args, PROPERTIES, DEFAULT)
    for prop in properties:
        if prop.startswith("header:") and parseHeaderProperty(prop) is None:
            raise invalidArguments(f"bad header property {prop}")
    snapshot = await context.snapshot()
    byId = snapshot.emailsById()
    if wanted is None:
        if len(byId) > context.limits.maxObjectsInGet:
            raise MethodError("requestTooLarge", "ask for ids: there are too many emails")
        wanted = list(byId)
    if any(p not in META for p in properties):
        await context.prefetch([byId[i] for i in wanted if i in byId])
    found, notFound = [], []
    for emailId in wanted:
        entry = byId.get(emailId)
        if entry is None:
            notFound.append(emailId)
            continue
        try:
            found.append(await emailObject(context, entry, properties, args))
        except FileNotFoundError:
            notFound.append(emailId)
    return {"accountId": context.accountId, "state": snapshot.emailState, "list": found, "notFound": notFound}


async def emailChanges(context: Any, args: dict) -> dict:
    """
    C{Email/changes} (RFC 8620 §5.2).
    """
    snapshot = await context.snapshot()
    current = {e.id: e.signature() for e in snapshot.emails}
    return await changes(context, args, "email", current, snapshot.emailState)


async def _textMatch(context: Any, entry: EmailEntry, key: str, value: str) -> bool:
    """
    @return: whether a text condition (C{text}, C{from}, C{to}, C{cc},
        C{bcc}, C{subject}, C{body}) matches, ignoring case.
    """
    try:
        parsed, _, _ = await context.parsed(entry)
    except FileNotFoundError:
        return False
    needle = value.lower()
    message = parsed.message
    headers = {"from": ["From"], "to": ["To"], "cc": ["Cc"], "bcc": ["Bcc"], "subject": ["Subject"],
               "text": ["From", "To", "Cc", "Bcc", "Subject"], "body": []}[key]
    for name in headers:
        for value_ in headerValue(message, f"header:{name}:asText:all"):
            if needle in (value_ or "").lower():
                return True
    if key in ("text", "body"):
        for part in list(parsed.textBody) + list(parsed.htmlBody):
            if part.type.startswith("text/") and needle in part.text()[0].lower():
                return True
    return False


_TEXT_KEYS = ("text", "from", "to", "cc", "bcc", "subject", "body")
_KEYWORD_KEYS = ("hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword", "notKeyword",
                 "noneInThreadHaveKeyword")
# A FilterOperator nested deeper than this is refused (a client needs a few).
MAX_FILTER_DEPTH = 16


async def _condition(context: Any, entry: EmailEntry, condition: dict) -> bool:
    """
    @return: whether an email matches a FilterCondition (RFC 8621 §4.4.1)
        that L{checkFilter} has passed.
    """
    for key, value in condition.items():
        if key == "inMailbox":
            if entry.mailboxId != context.resolveId(value):
                return False
        elif key == "inMailboxOtherThan":
            if entry.mailboxId in [context.resolveId(v) for v in value or []]:
                return False
        elif key == "before":
            if not entry.receivedAt < parseUtcDate(value, key):
                return False
        elif key == "after":
            if not entry.receivedAt >= parseUtcDate(value, key):
                return False
        elif key == "minSize":
            if entry.size < value:
                return False
        elif key == "maxSize":
            if entry.size >= value:
                return False
        elif key in ("hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword"):
            if str(value).lower() not in entry.keywords:
                return False
        elif key in ("notKeyword", "noneInThreadHaveKeyword"):
            if str(value).lower() in entry.keywords:
                return False
        elif key in _TEXT_KEYS:
            if not await _textMatch(context, entry, key, value):
                return False
    return True


def checkFilter(filter_: Any, depth: int = 0) -> None:
    """
    Check a whole filter before any email is looked at, so that a bad one
    is refused however many emails there are (none included).

    @raise MethodError: C{invalidArguments} for a malformed operator or a
        value of the wrong type, C{unsupportedFilter} for an unknown
        condition.
    """
    if filter_ is None:
        return
    if not isinstance(filter_, dict):
        raise invalidArguments("filter must be an object")
    if depth > MAX_FILTER_DEPTH:
        raise invalidArguments(f"filter operators nest at most {MAX_FILTER_DEPTH} deep")
    if "operator" in filter_:
        op, conditions = filter_.get("operator"), filter_.get("conditions")
        if op not in ("AND", "OR", "NOT") or not isinstance(conditions, list):
            raise invalidArguments("a FilterOperator has operator AND, OR or NOT and a list of conditions")
        for condition in conditions:
            checkFilter(condition, depth + 1)
        return
    for key, value in filter_.items():
        if key in ("before", "after"):
            parseUtcDate(value, key)
        elif key in ("minSize", "maxSize"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalidArguments(f"{key} must be an UnsignedInt")
        elif key == "inMailboxOtherThan":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise invalidArguments(f"{key} must be a list of ids")
        elif key in ("inMailbox",) + _TEXT_KEYS + _KEYWORD_KEYS:
            if not isinstance(value, str):
                raise invalidArguments(f"{key} must be a string")
        else:
            raise MethodError("unsupportedFilter", f"cannot filter by {key}")


async def matches(context: Any, entry: EmailEntry, filter_: Any) -> bool:
    """
    @param filter_: a filter L{checkFilter} has passed.
    @return: whether an email passes it (conditions and operators).
    """
    if filter_ is None:
        return True
    if "operator" in filter_:
        op, conditions = filter_["operator"], filter_["conditions"]
        results = [await matches(context, entry, c) for c in conditions]
        return all(results) if op == "AND" else any(results) if op == "OR" else not any(results)
    return await _condition(context, entry, filter_)


def _needsReading(filter_: Any) -> bool:
    """
    @return: whether a filter has a condition on the messages' contents.
    """
    if isinstance(filter_, dict):
        if "operator" in filter_:
            return any(_needsReading(c) for c in filter_.get("conditions") or [])
        return any(k in filter_ for k in _TEXT_KEYS)
    return False


_SORT_KEYS = {"receivedAt": lambda e: (e.receivedAt, e.uid), "size": lambda e: e.size, "id": lambda e: e.id}


async def emailQuery(context: Any, args: dict) -> dict:
    """
    C{Email/query} (RFC 8621 §4.4): filtered, sorted by C{receivedAt}
    (or C{size}), paged by C{position} or C{anchor} and C{limit}.
    """
    checkFilter(args.get("filter"))
    snapshot = await context.snapshot()
    if _needsReading(args.get("filter")):
        await context.prefetch(list(snapshot.emails))
    emails = [e for e in snapshot.emails if await matches(context, e, args.get("filter"))]
    sort = args.get("sort") or [{"property": "receivedAt", "isAscending": False}]
    if not isinstance(sort, list):
        raise invalidArguments("sort must be a list")
    for comparator in reversed(sort):
        prop = comparator.get("property") if isinstance(comparator, dict) else None
        if prop not in _SORT_KEYS:
            raise MethodError("unsupportedSort", f"cannot sort by {prop}")
        emails.sort(key=_SORT_KEYS[prop], reverse=comparator.get("isAscending", True) is False)
    position = args.get("position") or 0
    if not isinstance(position, int) or isinstance(position, bool):
        raise invalidArguments("position must be an integer")
    limit = positiveInt(args, "limit", None)
    anchor = args.get("anchor")
    if anchor is not None:
        index = next((i for i, e in enumerate(emails) if e.id == anchor), None)
        if index is None:
            raise MethodError("anchorNotFound")
        position = max(0, index + int(args.get("anchorOffset") or 0))
    elif position < 0:
        position = max(0, len(emails) + position)
    page = emails[position:] if limit is None else emails[position:position + limit]
    result = {"accountId": context.accountId, "queryState": snapshot.emailState, "canCalculateChanges": False,
              "position": position, "ids": [e.id for e in page], "collapseThreads": False}
    if args.get("calculateTotal"):
        result["total"] = len(emails)
    if limit is not None:
        result["limit"] = limit
    return result


async def threadGet(context: Any, args: dict) -> dict:
    """
    C{Thread/get} (RFC 8621 §3.1): one thread per email.
    """
    wanted = getIds(context, args)
    snapshot = await context.snapshot()
    byThread = {ids.threadId(e.baseName): e for e in snapshot.emails}
    found, notFound = [], []
    for threadId in wanted if wanted is not None else list(byThread)[:context.limits.maxObjectsInGet]:
        entry = byThread.get(threadId)
        if entry is None:
            notFound.append(threadId)
        else:
            found.append({"id": threadId, "emailIds": [entry.id]})
    return {"accountId": context.accountId, "state": snapshot.emailState, "list": found, "notFound": notFound}


async def threadChanges(context: Any, args: dict) -> dict:
    """
    C{Thread/changes}: the emails' changes, as threads.
    """
    result = await emailChanges(context, args)
    snapshot = await context.snapshot()
    names = {e.id: e.baseName for e in snapshot.emails}
    for key in ("created", "updated"):
        result[key] = [ids.threadId(names[i]) for i in result[key] if i in names]
    result["updated"] = []
    result["destroyed"] = ["t" + i[1:] for i in result["destroyed"] if re.fullmatch(r"e[0-9a-f]{24}", i)]
    return result


METHODS = {
    "Email/get": (MAIL, emailGet),
    "Email/changes": (MAIL, emailChanges),
    "Email/query": (MAIL, emailQuery),
    "Thread/get": (MAIL, threadGet),
    "Thread/changes": (MAIL, threadChanges),
}
