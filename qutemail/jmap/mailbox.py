# -*- test-case-name: tests.jmap.test_api -*-
"""
C{Mailbox/get}, C{/changes}, C{/query} and C{/set} (RFC 8621 §2): the
account's Maildir++ folders, as IMAP LISTs them (the same names, the same
special folders with their roles).  One thread per email, so the thread
counts are the email counts.
"""

from typing import Any

from qutemail.access.imapstore import deleteFolder
from qutemail.jmap import ids
from qutemail.jmap.common import changes, getIds, getProperties, setArguments
from qutemail.jmap.dispatch import MAIL
from qutemail.jmap.errors import MethodError, SetError, invalidArguments
from qutemail.jmap.state import MailboxEntry
from qutemail.store.folders import INBOX, SEPARATOR, FolderError, FolderExists, InvalidFolderName, NoSuchFolder

PROPERTIES = ("id", "name", "parentId", "role", "sortOrder", "totalEmails", "unreadEmails", "totalThreads",
              "unreadThreads", "myRights", "isSubscribed")
_RIGHTS = dict.fromkeys(("mayReadItems", "mayAddItems", "mayRemoveItems", "maySetSeen", "maySetKeywords",
                         "mayCreateChild", "mayRename", "mayDelete", "maySubmit"), True)
_ORDER = {"inbox": 1, "drafts": 2, "sent": 3, "junk": 4, "trash": 5}


def mailboxObject(box: MailboxEntry, properties: tuple) -> dict:
    """
    @return: a Mailbox object.
    """
    rights = dict(_RIGHTS)
    if box.name == INBOX:
        rights.update(mayRename=False, mayDelete=False)
    values = {
        "id": box.id, "name": box.name.rpartition(SEPARATOR)[2], "parentId": box.parentId, "role": box.role,
        "sortOrder": _ORDER.get(box.role or "", 10), "totalEmails": box.total, "unreadEmails": box.unread,
        "totalThreads": box.total, "unreadThreads": box.unread, "myRights": rights, "isSubscribed": True,
    }
    return {p: values[p] for p in properties}


async def mailboxGet(context: Any, args: dict) -> dict:
    """
    C{Mailbox/get} (RFC 8620 §5.1).
    """
    wanted = getIds(context, args)
    properties = getProperties(args, PROPERTIES, PROPERTIES)
    snapshot = await context.snapshot()
    byId = {m.id: m for m in snapshot.mailboxes}
    found, notFound = [], []
    for boxId in wanted if wanted is not None else list(byId):
        box = byId.get(boxId)
        if box is None:
            notFound.append(boxId)
        else:
            found.append(mailboxObject(box, properties))
    return {"accountId": context.accountId, "state": snapshot.mailboxState, "list": found, "notFound": notFound}


async def mailboxChanges(context: Any, args: dict) -> dict:
    """
    C{Mailbox/changes} (RFC 8620 §5.2, RFC 8621 §2.2).
    """
    snapshot = await context.snapshot()
    current = {m.id: m.signature() for m in snapshot.mailboxes}
    return await changes(context, args, "mailbox", current, snapshot.mailboxState)


def _matches(box: MailboxEntry, condition: dict) -> bool:
    """
    @return: whether a mailbox matches a FilterCondition (RFC 8621 §2.3).
    """
    for key, value in condition.items():
        if key == "parentId" and box.parentId != value:
            return False
        if key == "role" and box.role != value:
            return False
        if key == "hasAnyRole" and (box.role is not None) != bool(value):
            return False
        if key == "name" and str(value).lower() not in box.name.rpartition(SEPARATOR)[2].lower():
            return False
        if key == "isSubscribed" and not value:
            return False
        if key not in ("parentId", "role", "hasAnyRole", "name", "isSubscribed"):
            raise invalidArguments(f"unsupported filter {key}")
    return True


def _filtered(box: MailboxEntry, filter_: Any) -> bool:
    """
    @return: whether a mailbox passes a filter (a condition or an operator).
    """
    if filter_ is None:
        return True
    if not isinstance(filter_, dict):
        raise invalidArguments("filter must be an object")
    if "operator" in filter_:
        results = [_filtered(box, f) for f in filter_.get("conditions", [])]
        op = filter_["operator"]
        if op == "AND":
            return all(results)
        if op == "OR":
            return any(results)
        if op == "NOT":
            return not any(results)
        raise invalidArguments(f"unknown operator {op}")
    return _matches(box, filter_)


async def mailboxQuery(context: Any, args: dict) -> dict:
    """
    C{Mailbox/query} (RFC 8621 §2.3): sorted by C{sortOrder} then
    C{name}, or as asked among those two.
    """
    snapshot = await context.snapshot()
    boxes = [b for b in snapshot.mailboxes if _filtered(b, args.get("filter"))]
    for comparator in reversed(args.get("sort") or [{"property": "sortOrder"}, {"property": "name"}]):
        prop = comparator.get("property") if isinstance(comparator, dict) else None
        if prop not in ("sortOrder", "name"):
            raise MethodError("unsupportedSort", f"cannot sort by {prop}")
        boxes.sort(key=lambda b: mailboxObject(b, (prop,))[prop], reverse=comparator.get("isAscending") is False)
    position = args.get("position") or 0
    limit = args.get("limit")
    page = boxes[position:] if limit is None else boxes[position:position + limit]
    result = {"accountId": context.accountId, "queryState": snapshot.mailboxState, "canCalculateChanges": False,
              "position": position, "ids": [b.id for b in page]}
    if args.get("calculateTotal"):
        result["total"] = len(boxes)
    return result


def _folderName(snapshot: Any, name: Any, parentId: Any) -> str:
    """
    @return: the IMAP name of a mailbox named C{name} under C{parentId}.
    @raise SetError: C{invalidProperties}.
    """
    if not isinstance(name, str) or not name or SEPARATOR in name:
        raise SetError("invalidProperties", "name must be a non-empty name without /", properties=["name"])
    if parentId is None:
        return name
    parent = snapshot.mailbox(parentId)
    if parent is None:
        raise SetError("invalidProperties", "no such parent", properties=["parentId"])
    return parent.name + SEPARATOR + name


async def mailboxSet(context: Any, args: dict) -> dict:
    """
    C{Mailbox/set} (RFC 8620 §5.3, RFC 8621 §2.5): create, rename or move,
    destroy (with C{onDestroyRemoveEmails}).
    """
    create, update, destroy = setArguments(context, args)
    snapshot = await context.snapshot()
    oldState = snapshot.mailboxState
    if args.get("ifInState") not in (None, oldState):
        raise MethodError("stateMismatch", "the state has changed")
    folders = context.account.folders
    result: dict = {"accountId": context.accountId, "oldState": oldState, "created": {}, "updated": {},
                    "destroyed": [], "notCreated": {}, "notUpdated": {}, "notDestroyed": {}}
    for creationId, props in create.items():
        try:
            name = _folderName(snapshot, props.get("name"), context.resolveId(props.get("parentId")))
            await context.runner.run(folders.create, name)
        except SetError as e:
            result["notCreated"][creationId] = e.asJSON()
            continue
        except (FolderExists, InvalidFolderName) as e:
            result["notCreated"][creationId] = {"type": "invalidProperties", "description": str(e),
                                                "properties": ["name"]}
            continue
        newId = ids.mailboxId(name)
        context.createdIds[creationId] = newId
        result["created"][creationId] = {"id": newId, "role": None, "sortOrder": 10, "totalEmails": 0,
                                         "unreadEmails": 0, "totalThreads": 0, "unreadThreads": 0,
                                         "myRights": dict(_RIGHTS), "isSubscribed": True}
        context.modified()
        snapshot = await context.snapshot()
    for boxId, props in update.items():
        box = snapshot.mailbox(boxId)
        try:
            if box is None:
                raise SetError("notFound")
            name = box.name.rpartition(SEPARATOR)[2]
            parentId = box.parentId
            name = props.get("name", name)
            parentId = context.resolveId(props.get("parentId", parentId))
            newName = _folderName(snapshot, name, parentId)
            if newName != box.name:
                if box.name == INBOX:
                    raise SetError("forbidden", "the inbox cannot be renamed")
                await context.runner.run(folders.rename, box.name, newName)
                context.modified()
        except SetError as e:
            result["notUpdated"][boxId] = e.asJSON()
            continue
        except FolderError as e:
            result["notUpdated"][boxId] = {"type": "invalidProperties", "description": str(e)}
            continue
        result["updated"][boxId] = None
    snapshot = await context.snapshot()
    for boxId in destroy:
        box = snapshot.mailbox(boxId)
        try:
            if box is None:
                raise SetError("notFound")
            if box.name == INBOX or box.role is not None:
                raise SetError("forbidden", "mailboxes with a role cannot be destroyed")
            if any(m.parentId == box.id for m in snapshot.mailboxes):
                raise SetError("mailboxHasChild")
            if box.total and not args.get("onDestroyRemoveEmails"):
                raise SetError("mailboxHasEmail")
            await context.runner.run(deleteFolder, context.account.root, box.name, context.account.quotaBytes)
        except SetError as e:
            result["notDestroyed"][boxId] = e.asJSON()
            continue
        except (NoSuchFolder, FolderError) as e:
            result["notDestroyed"][boxId] = {"type": "notFound", "description": str(e)}
            continue
        context.modified()
        result["destroyed"].append(boxId)
    result["newState"] = (await context.snapshot()).mailboxState
    return result


METHODS = {
    "Mailbox/get": (MAIL, mailboxGet),
    "Mailbox/changes": (MAIL, mailboxChanges),
    "Mailbox/query": (MAIL, mailboxQuery),
    "Mailbox/set": (MAIL, mailboxSet),
}
