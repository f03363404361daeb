# -*- test-case-name: tests.jmap.test_dispatch -*-
"""
The errors of JMAP (RFC 8620 §3.6): request-level ones, answered as
RFC 7807 problem details with an HTTP status, and method-level ones,
answered as an C{"error"} response in place of the method's.  SetErrors
(§5.3) are per object and go in C{notCreated}/C{notUpdated}/
C{notDestroyed}.
"""

import json

CAPABILITY_PREFIX = "urn:ietf:params:jmap:error:"


class RequestError(Exception):
    """
    The whole request is refused (RFC 8620 §3.6.1).

    @ivar type: the short error type (C{unknownCapability}, C{notJSON},
        C{notRequest}, C{limit}).
    @ivar status: the HTTP status.
    @ivar detail: a sentence for the person reading it.
    @ivar limit: for C{limit}, the name of the limit.
    """

    def __init__(self, type: str, detail: str, status: int = 400, limit: str | None = None) -> None:
        super().__init__(detail)
        self.type = type
        self.status = status
        self.detail = detail
        self.limit = limit

    def problem(self) -> bytes:
        """
        @return: the RFC 7807 problem details, as JSON bytes.
        """
        body = {"type": CAPABILITY_PREFIX + self.type, "status": self.status, "detail": self.detail}
        if self.limit is not None:
            body["limit"] = self.limit
        return json.dumps(body).encode("utf-8")


def problem(status: int, title: str, detail: str) -> bytes:
    """
    @return: RFC 7807 problem details for an HTTP error that is not one of
        JMAP's own (401, 404, 413, 429).
    """
    return json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()


class _ErrorObject(Exception):
    """
    An error that JMAP answers with an object: its type, an optional
    description and any more members.

    @ivar type: the error type.
    @ivar description: for the developer, or C{None}.
    @ivar extra: more members of the error object.
    """

    def __init__(self, type: str, description: str | None = None, **extra: object) -> None:
        super().__init__(description or type)
        self.type = type
        self.description = description
        self.extra = extra

    def asJSON(self) -> dict:
        """
        @return: the error object.
        """
        body: dict = {"type": self.type, **self.extra}
        if self.description:
            body["description"] = self.description
        return body


class MethodError(_ErrorObject):
    """
    One method call fails (RFC 8620 §3.6.2): C{unknownMethod},
    C{invalidArguments} ...
    """


class SetError(_ErrorObject):
    """
    One object of a /set or /import cannot be created, updated or destroyed
    (RFC 8620 §5.3, RFC 8621 §4.6, §4.8, §7.5): C{notFound},
    C{invalidProperties}, C{overQuota}, C{forbiddenFrom} ...
    """


def invalidArguments(description: str) -> MethodError:
    """
    @return: an C{invalidArguments} error.
    """
    return MethodError("invalidArguments", description)
