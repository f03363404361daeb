# -*- test-case-name: tests.jmap.test_api -*-
"""
C{Email/set} and C{Email/import} (RFC 8621 §4.6, §4.8) on the Maildir++
folders, with the file operations IMAP uses:

  - keywords are IMAP flags in the file name (C{keywords/$seen} patches
    too), set with L{qutemail.access.imapstore.storeFlags};
  - a change of C{mailboxIds} moves the file to the other folder under
    the same unique name, so the email keeps its id (an email is in
    exactly one mailbox: more than one is refused);
  - destroy removes the file and takes it off the quota
    (L{qutemail.access.imapstore.expunge});
  - create (a draft, built with the standard library's C{email}) and
    import (an uploaded message) store through the APPEND path, sealed
    with a QKD key when the server encrypts at rest, checked against the
    quota (C{overQuota}).
"""

import email.message
import email.policy
import email.utils
import os
from typing import Any

from qutemail.access.imapseal import SealUnavailable
from qutemail.access.imapstore import (
    OverQuota, abortAppend, adoptAppend, beginAppend, checkQuota, closeAppend, expunge, finishAppend, locate,
    storeFlags, writeAppend,
)
from qutemail.access.keywords import KeywordLimit, ensureKeywords, isKeyword
from qutemail.access.uids import INFO_PREFIX, FolderMessage, keywordsIn, lettersOfFlags
from qutemail.durable import syncDirectory
from qutemail.jmap import ids
from qutemail.jmap.blob import readBlob
from qutemail.jmap.common import setArguments
from qutemail.jmap.dispatch import MAIL
from qutemail.jmap.email import parseUtcDate
from qutemail.jmap.errors import MethodError, SetError, invalidArguments
from qutemail.jmap.state import EmailEntry, flagsOf


async def appendMessage(context: Any, folderPath: str, data: bytes, flags: frozenset, mtime: float) -> str:
    """
    Store a message in a folder as IMAP APPEND does (sealed first when the
    server has a sealer).

    @return: its base name.
    @raise SetError: C{overQuota}, C{serverUnavailable} (cannot seal now).
    """
    account, runner = context.account, context.runner
    try:
        await runner.run(checkQuota, account.root, account.quotaBytes, len(data))
    except OverQuota:
        raise SetError("overQuota", "the account is over its quota") from None
    await runner.run(ensureKeywords, folderPath, keywordsIn(flags))
    sealer = account.sealer
    target = sealer.directory if sealer is not None else folderPath
    append = await runner.run(beginAppend, target, context.now(), account.hostname, len(data))
    try:
        await runner.run(writeAppend, append, data)
    except BaseException:
        await runner.run(abortAppend, append)
        raise
    if sealer is not None:
        await runner.run(closeAppend, append)
        try:
            sealed = await sealer.seal(append.tempPath, append.size, account.address)
        except SealUnavailable as e:
            raise SetError("serverUnavailable", f"cannot store it encrypted now: {e}") from None
        append = await runner.run(adoptAppend, folderPath, context.now(), account.hostname, sealed)
    try:
        await runner.run(finishAppend, append, folderPath, flags, mtime, account.root, account.quotaBytes,
                         context.now())
    except OverQuota:
        raise SetError("overQuota", "the account is over its quota") from None
    context.modified()
    return append.baseName


def moveFile(path: str, sourceFolder: str, baseName: str, targetFolder: str, flags: frozenset) -> str:
    """
    Move a message to another folder of the account under the same unique
    name, with its flags in the target's keyword letters.  Blocking.

    @return: its new path.
    @raise FileNotFoundError: it is gone.
    """
    if not os.path.exists(path):
        path = locate(sourceFolder, baseName)
        if path is None:
            raise FileNotFoundError(baseName)
    keywords = ensureKeywords(targetFolder, keywordsIn(flags))
    letters = lettersOfFlags(flags, "", keywords)
    target = os.path.join(targetFolder, "cur", baseName + INFO_PREFIX + letters)
    os.rename(path, target)
    syncDirectory(os.path.join(targetFolder, "cur"))
    syncDirectory(os.path.dirname(path))
    return target


def _keywords(value: Any) -> dict[str, bool]:
    """
    @return: a keywords argument, lower case.
    @raise SetError: C{invalidProperties}.
    """
    if not isinstance(value, dict) or not all(v is True for v in value.values()):
        raise SetError("invalidProperties", "keywords map keywords to true", properties=["keywords"])
    for keyword in value:
        if not isinstance(keyword, str) or not isKeyword(keyword):
            raise SetError("invalidProperties", f"bad keyword {keyword!r}", properties=["keywords"])
    return {k.lower(): True for k in value}


def _patched(entry: EmailEntry, props: dict, context: Any) -> tuple[dict[str, bool], set[str]]:
    """
    @return: an email's keywords and mailbox ids after an update (with
        C{keywords/...} and C{mailboxIds/...} patches).
    @raise SetError: C{invalidProperties}.
    """
    keywords, boxes = dict(entry.keywords), {entry.mailboxId}
    for key, value in props.items():
        if key == "keywords":
            keywords = _keywords(value)
        elif key.startswith("keywords/"):
            keyword = key.partition("/")[2].lower()
            if value is True:
                keywords.update(_keywords({keyword: True}))
            elif value is None:
                keywords.pop(keyword, None)
            else:
                raise SetError("invalidPatch", f"{key} is true or null")
        elif key == "mailboxIds":
            if not isinstance(value, dict):
                raise SetError("invalidProperties", "mailboxIds is an object", properties=["mailboxIds"])
            boxes = {context.resolveId(k) for k, v in value.items() if v is True}
        elif key.startswith("mailboxIds/"):
            boxId = context.resolveId(key.partition("/")[2])
            if value is True:
                boxes.add(boxId)
            elif value is None:
                boxes.discard(boxId)
            else:
                raise SetError("invalidPatch", f"{key} is true or null")
        else:
            raise SetError("invalidProperties", f"{key} cannot be changed", properties=[key])
    return keywords, boxes


async def updateEmail(context: Any, entry: EmailEntry, props: dict) -> None:
    """
    Apply one update.

    @raise SetError: the update is refused.
    """
    snapshot = await context.snapshot()
    keywords, boxes = _patched(entry, props, context)
    if len(boxes) != 1:
        raise SetError("invalidProperties", "an email is in exactly one mailbox here", properties=["mailboxIds"])
    target = snapshot.mailbox(boxes.pop())
    if target is None:
        raise SetError("invalidProperties", "no such mailbox", properties=["mailboxIds"])
    flags = flagsOf(keywords, frozenset(f for f in entry.flags if f == "\\Deleted"))
    path = entry.path
    try:
        if target.id != entry.mailboxId:
            path = await context.runner.run(moveFile, path, entry.folderPath, entry.baseName, target.path, flags)
        if flags != entry.flags:
            await context.runner.run(storeFlags, target.path, entry.baseName, path, flags)
    except FileNotFoundError:
        raise SetError("notFound") from None
    except KeywordLimit:
        raise SetError("invalidProperties", "the mailbox has no room for another keyword",
                       properties=["keywords"]) from None
    context.modified()


def buildDraft(props: dict, uploads: dict, address: str, hostname: str, now: float) -> bytes:
    """
    @return: a message made from an Email/set create (RFC 8621 §4.6),
        LF line ends.
    @raise SetError: C{invalidProperties}.
    """
    message = email.message.EmailMessage(policy=email.policy.default)

    def addresses(name: str) -> None:
        """
        Set an address field from its EmailAddress list.
        """
        value = props.get(name)
        if value:
            if not isinstance(value, list) or not all(isinstance(a, dict) and a.get("email") for a in value):
                raise SetError("invalidProperties", f"{name} is a list of EmailAddress", properties=[name])
            header = {"replyTo": "Reply-To"}.get(name, name.capitalize())
            message[header] = ", ".join(email.utils.formataddr((a.get("name") or "", a["email"])) for a in value)

    for name in ("from", "to", "cc", "bcc", "replyTo"):
        addresses(name)
    if "from" not in props:
        message["From"] = address
    if props.get("subject") is not None:
        message["Subject"] = str(props["subject"])
    message["Date"] = email.utils.formatdate(now, localtime=False)
    messageIds = props.get("messageId")
    message["Message-ID"] = (f"<{messageIds[0]}>" if isinstance(messageIds, list) and messageIds
                             else email.utils.make_msgid(domain=hostname))
    for name, header in (("inReplyTo", "In-Reply-To"), ("references", "References")):
        value = props.get(name)
        if isinstance(value, list) and value:
            message[header] = " ".join(f"<{v}>" for v in value)
    values = props.get("bodyValues") or {}

    def bodyText(kind: str) -> str | None:
        """
        @return: the text of the first part of C{textBody} or C{htmlBody}.
        """
        parts = props.get(kind) or []
        if not parts:
            return None
        partId = parts[0].get("partId") if isinstance(parts[0], dict) else None
        value = values.get(partId) if isinstance(values, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            raise SetError("invalidProperties", f"{kind} needs its bodyValues", properties=[kind, "bodyValues"])
        return value["value"]

    text, html = bodyText("textBody"), bodyText("htmlBody")
    message.set_content(text if text is not None else "")
    if html is not None:
        message.add_alternative(html, subtype="html")
    for attachment in props.get("attachments") or []:
        blobId = attachment.get("blobId") if isinstance(attachment, dict) else None
        if blobId not in uploads:
            raise SetError("blobNotFound", notFound=[blobId])
        data, mediaType = uploads[blobId]
        maintype, _, subtype = (attachment.get("type") or mediaType or "application/octet-stream").partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=attachment.get("name") or "attachment")
    return message.as_bytes(policy=email.policy.default)


# The JSON type of each property of an email to create, when given.
_CREATE_TYPES = {"mailboxIds": dict, "keywords": dict, "attachments": list, "textBody": list, "htmlBody": list,
                 "bodyValues": dict, "messageId": list, "inReplyTo": list, "references": list, "subject": str,
                 "receivedAt": str}


def _checkTypes(props: dict) -> None:
    """
    @raise SetError: C{invalidProperties}, naming each property of the
        wrong type.
    """
    wrong = sorted(name for name, kind in _CREATE_TYPES.items()
                   if props.get(name) is not None and not isinstance(props[name], kind))
    if wrong:
        raise SetError("invalidProperties", "wrong type: " + ", ".join(wrong), properties=wrong)


async def _create(context: Any, props: dict) -> dict:
    """
    Create one email (a draft) in its mailbox.

    @return: its id, blobId, threadId and size.
    """
    _checkTypes(props)
    snapshot = await context.snapshot()
    boxes = [context.resolveId(k) for k, v in (props.get("mailboxIds") or {}).items() if v is True]
    if len(boxes) != 1 or snapshot.mailbox(boxes[0]) is None:
        raise SetError("invalidProperties", "an email is created in exactly one mailbox", properties=["mailboxIds"])
    keywords = _keywords(props.get("keywords") or {})
    uploads = {}
    for attachment in props.get("attachments") or []:
        blobId = attachment.get("blobId") if isinstance(attachment, dict) else None
        blob = await readBlob(context, blobId) if isinstance(blobId, str) else None
        if blob is None:
            raise SetError("blobNotFound", notFound=[blobId])
        uploads[blobId] = blob
    data = buildDraft(props, uploads, context.address, context.services.hostname, context.now())
    if len(data) > context.limits.maxSizeUpload:
        raise SetError("tooLarge", "the message is over the size limit")
    received = props.get("receivedAt")
    mtime = parseUtcDate(received, "receivedAt") if received else context.now()
    baseName = await appendMessage(context, snapshot.mailbox(boxes[0]).path, data, flagsOf(keywords, frozenset()),
                                   mtime)
    return {"id": ids.emailId(baseName), "blobId": ids.messageBlobId(baseName), "threadId": ids.threadId(baseName),
            "size": len(data)}


async def destroyEmail(context: Any, entry: EmailEntry) -> None:
    """
    Remove one email.
    """
    message = FolderMessage(entry.uid, entry.baseName, entry.path, entry.flags, entry.receivedAt)
    await context.runner.run(expunge, entry.folderPath, [message], context.account.root, context.account.quotaBytes)
    context.modified()


async def emailSet(context: Any, args: dict) -> dict:
    """
    C{Email/set} (RFC 8621 §4.6).
    """
    create, update, destroy = setArguments(context, args)
    snapshot = await context.snapshot()
    oldState = snapshot.emailState
    if args.get("ifInState") not in (None, oldState):
        raise MethodError("stateMismatch", "the state has changed")
    result: dict = {"accountId": context.accountId, "oldState": oldState, "created": {}, "updated": {},
                    "destroyed": [], "notCreated": {}, "notUpdated": {}, "notDestroyed": {}}
    for creationId, props in create.items():
        try:
            created = await _create(context, props)
        except SetError as e:
            result["notCreated"][creationId] = e.asJSON()
            continue
        context.createdIds[creationId] = created["id"]
        result["created"][creationId] = created
    for emailId, props in update.items():
        entry = (await context.snapshot()).emailsById().get(context.resolveId(emailId))
        try:
            if entry is None:
                raise SetError("notFound")
            await updateEmail(context, entry, props)
        except SetError as e:
            result["notUpdated"][emailId] = e.asJSON()
            continue
        result["updated"][emailId] = None
    for emailId in destroy:
        entry = (await context.snapshot()).emailsById().get(emailId)
        if entry is None:
            result["notDestroyed"][emailId] = {"type": "notFound"}
            continue
        await destroyEmail(context, entry)
        result["destroyed"].append(emailId)
    result["newState"] = (await context.snapshot()).emailState
    return result


async def emailImport(context: Any, args: dict) -> dict:
    """
    C{Email/import} (RFC 8621 §4.8): store uploaded messages.
    """
    emails = args.get("emails")
    if not isinstance(emails, dict) or not all(isinstance(v, dict) for v in emails.values()):
        raise invalidArguments("emails is an object of EmailImport objects")
    if len(emails) > context.limits.maxObjectsInSet:
        raise MethodError("requestTooLarge", f"more than {context.limits.maxObjectsInSet} emails")
    snapshot = await context.snapshot()
    oldState = snapshot.emailState
    if args.get("ifInState") not in (None, oldState):
        raise MethodError("stateMismatch", "the state has changed")
    result: dict = {"accountId": context.accountId, "oldState": oldState, "created": {}, "notCreated": {}}
    for creationId, item in emails.items():
        try:
            blob = await readBlob(context, item.get("blobId")) if isinstance(item.get("blobId"), str) else None
            if blob is None:
                raise SetError("blobNotFound", notFound=[item.get("blobId")])
            boxes = [context.resolveId(k) for k, v in (item.get("mailboxIds") or {}).items() if v is True]
            box = snapshot.mailbox(boxes[0]) if len(boxes) == 1 else None
            if box is None:
                raise SetError("invalidProperties", "one existing mailbox is needed", properties=["mailboxIds"])
            keywords = _keywords(item.get("keywords") or {})
            received = item.get("receivedAt")
            mtime = parseUtcDate(received, "receivedAt") if received else context.now()
            baseName = await appendMessage(context, box.path, blob[0], flagsOf(keywords, frozenset()), mtime)
        except SetError as e:
            result["notCreated"][creationId] = e.asJSON()
            continue
        context.createdIds[creationId] = ids.emailId(baseName)
        result["created"][creationId] = {"id": ids.emailId(baseName), "blobId": ids.messageBlobId(baseName),
                                         "threadId": ids.threadId(baseName), "size": len(blob[0])}
    result["newState"] = (await context.snapshot()).emailState
    return result


METHODS = {
    "Email/set": (MAIL, emailSet),
    "Email/import": (MAIL, emailImport),
}
