# -*- test-case-name: tests.jmap.test_api -*-
"""
What the standard methods (RFC 8620 §5: /get, /changes, /set) share:
argument checks, the C{ids} and C{properties} of a /get, and the
bookkeeping of a /changes.
"""

from typing import Any

from qutemail.jmap import ids
from qutemail.jmap.errors import MethodError, invalidArguments
from qutemail.jmap.state import CannotCalculateChanges, changesSince


def getIds(context: Any, args: dict) -> list[str] | None:
    """
    @return: the C{ids} of a /get (C{None}: all), creation ids resolved.
    @raise MethodError: C{invalidArguments}, or C{requestTooLarge} past
        C{maxObjectsInGet}.
    """
    wanted = args.get("ids")
    if wanted is None:
        return None
    if not isinstance(wanted, list) or not all(isinstance(i, str) for i in wanted):
        raise invalidArguments("ids must be a list of ids or null")
    if len(wanted) > context.limits.maxObjectsInGet:
        raise MethodError("requestTooLarge", f"more than {context.limits.maxObjectsInGet} ids")
    return [context.resolveId(i) for i in wanted]


def getProperties(args: dict, known: tuple, default: tuple, key: str = "properties") -> tuple:
    """
    @return: the properties asked for (C{id} always), or C{default}.
    @raise MethodError: C{invalidArguments} for an unknown one.
    """
    props = args.get(key)
    if props is None:
        return default
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        raise invalidArguments(f"{key} must be a list of names")
    unknown = [p for p in props if p not in known and not p.startswith("header:")]
    if unknown:
        raise invalidArguments(f"unknown property {unknown[0]}")
    return tuple(dict.fromkeys((["id"] if key == "properties" else []) + props))


def positiveInt(args: dict, name: str, default: int | None) -> int | None:
    """
    @return: a non-negative integer argument.
    @raise MethodError: C{invalidArguments}.
    """
    value = args.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalidArguments(f"{name} must be a non-negative integer")
    return value


async def changes(context: Any, args: dict, kind: str, current: dict[str, str], newState: str) -> dict:
    """
    A /changes response (RFC 8620 §5.2) from the kept states.

    @param kind: C{"email"} or C{"mailbox"}.
    @param current: the signatures by id now.
    @raise MethodError: C{cannotCalculateChanges}, C{invalidArguments}.
    """
    since = args.get("sinceState")
    if not isinstance(since, str):
        raise invalidArguments("sinceState is required")
    maxChanges = positiveInt(args, "maxChanges", None)
    if maxChanges == 0:
        raise invalidArguments("maxChanges must be positive")
    try:
        created, updated, destroyed, countsOnly = await context.runner.run(
            changesSince, context.stateDirectory, kind, since, current)
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges", "that state is not known (any more)") from None
    if maxChanges is not None and len(created) + len(updated) + len(destroyed) > maxChanges:
        raise MethodError("cannotCalculateChanges", f"more than {maxChanges} changes; start over")
    result = {"accountId": context.accountId, "oldState": since, "newState": newState, "hasMoreChanges": False,
              "created": created, "updated": updated, "destroyed": destroyed}
    if kind == "mailbox":
        result["updatedProperties"] = (["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
                                       if updated and countsOnly else None)
    return result


def setArguments(context: Any, args: dict) -> tuple[dict, dict, list]:
    """
    @return: C{(create, update, destroy)} of a /set.
    @raise MethodError: C{invalidArguments}, C{stateMismatch},
        C{requestTooLarge}.
    """
    create, update, destroy = args.get("create") or {}, args.get("update") or {}, args.get("destroy") or []
    if not isinstance(create, dict) or not isinstance(update, dict) or not isinstance(destroy, list):
        raise invalidArguments("create and update are objects, destroy a list")
    if len(create) + len(update) + len(destroy) > context.limits.maxObjectsInSet:
        raise MethodError("requestTooLarge", f"more than {context.limits.maxObjectsInSet} objects")
    if not all(isinstance(v, dict) for v in list(create.values()) + list(update.values())):
        raise invalidArguments("each create and update is an object")
    if not all(ids.isId(k) for k in create):
        raise invalidArguments("creation ids are ids")
    return create, update, [context.resolveId(i) for i in destroy if isinstance(i, str)]
