# -*- test-case-name: tests.jmap.test_dispatch -*-
"""
The JMAP API request (RFC 8620 §3): parse it, check its capabilities and
limits, run its method calls in order, with result references
(§3.7: C{#}-prefixed arguments naming an earlier call's result and a JSON
Pointer into it, C{*} mapping over arrays), and build the response.

A method that raises L{MethodError} gets that error as its response; any
other exception is logged and answered C{serverFail}, never with a
traceback.  A whole request that cannot be run raises L{RequestError}
(answered as RFC 7807 problem details by the HTTP layer).
"""

import json
from typing import Any, Awaitable, Callable

import attrs
from twisted.logger import Logger

from qutemail.jmap import ids
from qutemail.jmap.errors import MethodError, RequestError

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"
# Our extension: qutemailQkd and qutemailSafeHtml on Email objects.
QUTEMAIL = "https://qutemail.example/jmap/qkd"
CAPABILITIES = (CORE, MAIL, SUBMISSION, QUTEMAIL)

_log = Logger()

Method = Callable[[Any, dict], Awaitable[Any]]


@attrs.frozen
class Limits:
    """
    The core capability's limits (RFC 8620 §2), all enforced.

    @ivar maxSizeUpload: bytes of one upload (C{[smtp] max_message_size}).
    @ivar maxConcurrentUpload: uploads in progress per account.
    @ivar maxSizeRequest: bytes of one API request.
    @ivar maxConcurrentRequests: API requests in progress per account.
    @ivar maxCallsInRequest: method calls in one request.
    @ivar maxObjectsInGet: ids in one /get.
    @ivar maxObjectsInSet: objects in one /set.
    """

    maxSizeUpload: int = 25 * 2**20
    maxConcurrentUpload: int = 4
    maxSizeRequest: int = 10 * 2**20
    maxConcurrentRequests: int = 4
    maxCallsInRequest: int = 16
    maxObjectsInGet: int = 500
    maxObjectsInSet: int = 500

    def asJSON(self) -> dict:
        """
        @return: the core capability object.
        """
        return {**attrs.asdict(self), "collationAlgorithms": ["i;ascii-casemap", "i;unicode-casemap"]}


def parseRequest(body: bytes, limits: Limits) -> tuple[list[str], list[list], dict]:
    """
    Read a request object (RFC 8620 §3.3).

    @return: C{(using, methodCalls, createdIds)}.
    @raise RequestError: C{notJSON}, C{notRequest}, C{unknownCapability} or
        C{limit} (C{maxSizeRequest}, C{maxCallsInRequest}).
    """
    if len(body) > limits.maxSizeRequest:
        raise RequestError("limit", f"the request is over {limits.maxSizeRequest} bytes", limit="maxSizeRequest")
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("notJSON", "the request body is not JSON (UTF-8)") from None
    if not isinstance(request, dict):
        raise RequestError("notRequest", "the request is not a JSON object")
    using, calls = request.get("using"), request.get("methodCalls")
    createdIds = request.get("createdIds", {})
    if (not isinstance(using, list) or not all(isinstance(u, str) for u in using)
            or not isinstance(calls, list) or not isinstance(createdIds, dict)):
        raise RequestError("notRequest", "using must be a list of strings and methodCalls a list")
    for call in calls:
        if (not isinstance(call, list) or len(call) != 3 or not isinstance(call[0], str)
                or not isinstance(call[1], dict) or not isinstance(call[2], str)):
            raise RequestError("notRequest", "each method call is [name, arguments, callId]")
    unknown = [u for u in using if u not in CAPABILITIES]
    if unknown:
        raise RequestError("unknownCapability", f"unknown capability {unknown[0]}")
    if len(calls) > limits.maxCallsInRequest:
        raise RequestError("limit", f"more than {limits.maxCallsInRequest} method calls",
                           limit="maxCallsInRequest")
    return using, calls, createdIds


def evaluatePointer(value: Any, path: str) -> Any:
    """
    Evaluate a JSON Pointer (RFC 6901) with JMAP's C{*} (RFC 8620 §3.7):
    over an array, C{*} applies the rest of the path to each item and
    flattens the arrays that gives.

    @raise KeyError: the path does not resolve.
    """
    if path == "":
        return value
    if not path.startswith("/"):
        raise KeyError(path)
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]
    return _walk(value, tokens)


def _walk(value: Any, tokens: list[str]) -> Any:
    """
    See L{evaluatePointer}.
    """
    if not tokens:
        return value
    token, rest = tokens[0], tokens[1:]
    if isinstance(value, list):
        if token == "*":
            out = []
            for item in value:
                found = _walk(item, rest)
                if isinstance(found, list):
                    out.extend(found)
                else:
                    out.append(found)
            return out
        if not token.isdigit() or int(token) >= len(value):
            raise KeyError(token)
        return _walk(value[int(token)], rest)
    if isinstance(value, dict) and token in value:
        return _walk(value[token], rest)
    raise KeyError(token)


def resolveReferences(args: dict, responses: list[list]) -> dict:
    """
    Replace C{#name} arguments by what their result reference points at.

    @param responses: the responses so far, C{[name, arguments, callId]}.
    @raise MethodError: C{invalidArguments} (a name given both ways),
        C{invalidResultReference}.
    """
    out = dict(args)
    for key, value in args.items():
        if not key.startswith("#"):
            continue
        name = key[1:]
        if name in args:
            raise MethodError("invalidArguments", f"{name} is given both plainly and as a reference")
        if (not isinstance(value, dict) or not isinstance(value.get("resultOf"), str)
                or not isinstance(value.get("name"), str) or not isinstance(value.get("path"), str)):
            raise MethodError("invalidResultReference", f"{key} is not a ResultReference")
        source = next((r for r in responses if r[2] == value["resultOf"]), None)
        if source is None or source[0] != value["name"]:
            raise MethodError("invalidResultReference", f"no {value['name']} response for {value['resultOf']}")
        try:
            out[name] = evaluatePointer(source[1], value["path"])
        except KeyError:
            raise MethodError("invalidResultReference", f"{value['path']} does not resolve") from None
        del out[key]
    return out


@attrs.define
class Dispatcher:
    """
    Runs the method calls of requests.

    @ivar methods: by name, C{(capability, coroutine function(context,
        arguments))}; a method returns its arguments, or a list of
        C{(name, arguments)} when it answers with more than one response
        (C{EmailSubmission/set} and its implicit C{Email/set}).
    """

    methods: dict

    async def run(self, context: Any, using: list[str], calls: list[list], createdIds: dict) -> dict:
        """
        Run a parsed request for one account.

        @return: the response object.
        """
        context.createdIds = dict(createdIds)
        responses: list[list] = []
        for name, args, callId in calls:
            for responseName, responseArgs in await self._call(context, using, name, args, callId, responses):
                responses.append([responseName, responseArgs, callId])
        result = {"methodResponses": responses, "sessionState": context.sessionState}
        if createdIds or context.createdIds:
            result["createdIds"] = context.createdIds
        return result

    async def _call(self, context: Any, using: list[str], name: str, args: dict, callId: str,
                    responses: list[list]) -> list[tuple[str, dict]]:
        """
        Run one method call.

        @return: its responses.
        """
        try:
            entry = self.methods.get(name)
            if entry is None or entry[0] not in using:
                raise MethodError("unknownMethod", f"{name} is not supported here (or not in using)")
            args = resolveReferences(args, responses)
            accountId = args.get("accountId")
            if not isinstance(accountId, str):
                raise MethodError("invalidArguments", "accountId is required")
            if accountId != context.accountId:
                if ids.isId(accountId):
                    # Another account's id, or none at all: the same answer,
                    # so the error says nothing about which exist.
                    raise MethodError("forbidden", "this account is not yours")
                raise MethodError("accountNotFound")
            result = await entry[1](context, args)
        except MethodError as e:
            return [("error", e.asJSON())]
        except Exception:
            _log.failure("JMAP {method} failed for {account}", method=name, account=context.address)
            return [("error", {"type": "serverFail", "description": "the server could not do this; see its log"})]
        if isinstance(result, list):
            return result
        return [(name, result)]
