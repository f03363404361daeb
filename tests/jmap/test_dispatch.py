# -*- test-case-name: tests.jmap.test_dispatch -*-
"""
Unit tests of L{qutemail.jmap.dispatch}: request parsing, JSON Pointer
with C{*}, result references, and method errors (no sockets).
"""

import json

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.jmap.dispatch import CORE, MAIL, Dispatcher, Limits, evaluatePointer, parseRequest, resolveReferences
from qutemail.jmap.errors import MethodError, RequestError


class ParseRequestTests(SynchronousTestCase):
    """
    L{parseRequest}.
    """

    def test_good(self):
        """
        A request gives its using, calls and createdIds.
        """
        body = json.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"a": 1}, "c"]],
                           "createdIds": {"k": "e1"}}).encode()
        self.assertEqual(parseRequest(body, Limits()), ([CORE], [["Core/echo", {"a": 1}, "c"]], {"k": "e1"}))

    def test_errors(self):
        """
        Each malformed request is its request-level error.
        """
        cases = [(b"\xff", "notJSON"), (b"{", "notJSON"), (b"[]", "notRequest"),
                 (b'{"using": [], "methodCalls": [["x", {}, 1]]}', "notRequest"),
                 (b'{"using": ["urn:nope"], "methodCalls": []}', "unknownCapability"),
                 (json.dumps({"using": [], "methodCalls": [["x", {}, "c"]] * 3}).encode(), "limit")]
        for body, kind in cases:
            error = self.assertRaises(RequestError, parseRequest, body, Limits(maxCallsInRequest=2))
            self.assertEqual(error.type, kind, body)
            self.assertEqual(json.loads(error.problem())["type"], "urn:ietf:params:jmap:error:" + kind)
        error = self.assertRaises(RequestError, parseRequest, b" " * 11, Limits(maxSizeRequest=10))
        self.assertEqual((error.type, error.limit), ("limit", "maxSizeRequest"))


class PointerTests(SynchronousTestCase):
    """
    L{evaluatePointer} and L{resolveReferences}.
    """

    def test_pointer(self):
        """
        Plain paths, escapes, and C{*} mapping and flattening over arrays.
        """
        value = {"list": [{"id": "a", "ids": ["1", "2"]}, {"id": "b", "ids": ["3"]}], "x/y": {"~": 5}}
        self.assertEqual(evaluatePointer(value, "/list/1/id"), "b")
        self.assertEqual(evaluatePointer(value, "/list/*/id"), ["a", "b"])
        self.assertEqual(evaluatePointer(value, "/list/*/ids"), ["1", "2", "3"])
        self.assertEqual(evaluatePointer(value, "/x~1y/~0"), 5)
        for bad in ("/nope", "/list/9", "list", "/list/*/nope"):
            self.assertRaises(KeyError, evaluatePointer, value, bad)

    def test_references(self):
        """
        A C{#} argument is replaced by what it points at; a bad one is
        invalidResultReference, and one given both ways invalidArguments.
        """
        responses = [["Email/query", {"ids": ["e1", "e2"]}, "q"]]
        ref = {"resultOf": "q", "name": "Email/query", "path": "/ids"}
        self.assertEqual(resolveReferences({"#ids": ref, "a": 1}, responses), {"ids": ["e1", "e2"], "a": 1})
        for args in ({"#ids": dict(ref, resultOf="zz")}, {"#ids": dict(ref, name="Email/get")},
                     {"#ids": dict(ref, path="/nope")}, {"#ids": "x"}):
            error = self.assertRaises(MethodError, resolveReferences, args, responses)
            self.assertEqual(error.type, "invalidResultReference")
        error = self.assertRaises(MethodError, resolveReferences, {"#ids": ref, "ids": []}, responses)
        self.assertEqual(error.type, "invalidArguments")


class FakeContext:
    """
    Just what the dispatcher reads of a request's context.
    """

    accountId = "a1"
    address = "alice@example.test"
    sessionState = "s0"
    createdIds: dict = {}


class DispatcherTests(SynchronousTestCase):
    """
    L{Dispatcher.run}.
    """

    def dispatch(self, calls, methods):
        """
        @return: the response of a request to a dispatcher with C{methods}.
        """
        d = Deferred.fromCoroutine(Dispatcher(methods).run(FakeContext(), [CORE, MAIL], calls, {}))
        return self.successResultOf(d)["methodResponses"]

    def test_errorsAndOrder(self):
        """
        Calls run in order; unknown methods, foreign accounts, a raised
        MethodError and an unexpected exception each answer their own
        call only (the last as serverFail, logged, without a traceback).
        """
        async def echo(context, args):
            return {"echo": args.get("v")}

        async def refuse(context, args):
            raise MethodError("notFound")

        async def crash(context, args):
            raise ZeroDivisionError("secret detail")

        methods = {"Core/echo": (CORE, echo), "X/refuse": (MAIL, refuse), "X/crash": (MAIL, crash),
                   "Y/other": ("urn:other", echo)}
        responses = self.dispatch([
            ["Core/echo", {"accountId": "a1", "v": 1}, "1"],
            ["Nope/nope", {"accountId": "a1"}, "2"],
            ["Core/echo", {"accountId": "a2"}, "3"],
            ["Core/echo", {"accountId": "not an id!"}, "4"],
            ["X/refuse", {"accountId": "a1"}, "5"],
            ["X/crash", {"accountId": "a1"}, "6"],
            ["Y/other", {"accountId": "a1"}, "7"],
            ["Core/echo", {"accountId": "a1", "#v": {"resultOf": "1", "name": "Core/echo", "path": "/echo"}}, "8"],
        ], methods)
        kinds = [(r[0], r[1].get("type"), r[2]) for r in responses]
        self.assertEqual(kinds, [("Core/echo", None, "1"), ("error", "unknownMethod", "2"),
                                 ("error", "forbidden", "3"), ("error", "accountNotFound", "4"),
                                 ("error", "notFound", "5"), ("error", "serverFail", "6"),
                                 ("error", "unknownMethod", "7"), ("Core/echo", None, "8")])
        self.assertEqual(responses[-1][1], {"echo": 1})
        self.assertNotIn("secret detail", json.dumps(responses))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
