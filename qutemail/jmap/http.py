# -*- test-case-name: tests.jmap.test_api,tests.jmap.test_http,tests.jmap.test_security -*-
"""
The JMAP listener (twisted.web, served over TLS): the service the
resources share (authentication, the method dispatcher, the limits on
requests in progress), the root resource, and the site.

  - C{/.well-known/jmap}, C{/api/}, C{/upload/}, C{/download/},
    C{/eventsource/}: see L{qutemail.jmap.resources};
  - C{/}: the webmail's static files (L{qutemail.webmail.resource}, when
    that package is there; 404 otherwise).

Every response carries the security headers of L{qutemail.jmap.web};
errors are RFC 7807 problem details, never a traceback.
"""

from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from qutemail.jmap.auth import NotAuthenticated
from qutemail.jmap.context import AccountContext
from qutemail.jmap.dispatch import CORE, MAIL, QUTEMAIL, SUBMISSION
from qutemail.jmap.errors import RequestError
from qutemail.jmap.resources import (
    APIResource, DownloadResource, EventSourceResource, SessionResource, UploadResource,
)
from qutemail.jmap.web import JMAPRequest, baseUrl, respond, respondProblem

_log = Logger()


@attrs.define(eq=False)
class JMAPService:
    """
    What the resources share: authentication, the method dispatcher, the
    services of every request, and the requests in progress per account.

    @ivar authenticator: the L{qutemail.jmap.auth.BasicAuthenticator}.
    @ivar dispatcher: the L{qutemail.jmap.dispatch.Dispatcher}.
    @ivar services: the L{qutemail.jmap.context.Services}.
    """

    authenticator: Any
    dispatcher: Any
    services: Any
    _inFlight: dict = attrs.field(factory=dict)
    streams: set = attrs.field(factory=set)

    def shutdown(self) -> None:
        """
        The listener stops: end the open EventSource streams (a client
        reconnects elsewhere or later).
        """
        for stream in list(self.streams):
            stream.end()

    def serve(self, request: Request, handler: Callable[[Request, Any], Any], counted: str | None = None) -> int:
        """
        Authenticate, then run C{handler(request, context)}; answer any
        failure without a traceback.

        @param counted: C{"requests"} or C{"uploads"}: count it against
            the account's concurrency limit of that kind.
        @return: C{NOT_DONE_YET}.
        """
        Deferred.fromCoroutine(self._serve(request, handler, counted)).addErrback(self._failed, request)
        return NOT_DONE_YET

    async def _serve(self, request: Request, handler: Callable[[Request, Any], Any], counted: str | None) -> None:
        """
        See L{serve}.
        """
        peer = getattr(request.getClientAddress(), "host", "")
        try:
            avatar, logout = await self.authenticator.authenticate(request.getHeader(b"authorization"), peer)
        except NotAuthenticated as e:
            titles = {401: "Unauthorized", 429: "Too Many Requests", 503: "Service Unavailable"}
            respondProblem(request, e.status, titles[e.status], e.detail)
            return
        context = AccountContext(avatar, self.services, peer)
        key = (counted, avatar.address)
        try:
            if counted is not None:
                limits = self.services.limits
                limit = limits.maxConcurrentRequests if counted == "requests" else limits.maxConcurrentUpload
                if self._inFlight.get(key, 0) >= limit:
                    name = "maxConcurrentRequests" if counted == "requests" else "maxConcurrentUpload"
                    raise RequestError("limit", f"too many {counted} at once", limit=name)
                self._inFlight[key] = self._inFlight.get(key, 0) + 1
            try:
                await handler(request, context)
            finally:
                if counted is not None:
                    self._inFlight[key] -= 1
                    if not self._inFlight[key]:
                        del self._inFlight[key]
        except RequestError as e:
            respond(request, e.status, e.problem(), b"application/problem+json")
        finally:
            context.notify()
            logout()

    def _failed(self, failure: Any, request: Request) -> None:
        """
        Log an unexpected failure and answer 500.
        """
        _log.failure("JMAP request {path} failed", failure, path=request.path.decode("ascii", "replace"))
        respondProblem(request, 500, "Internal Server Error", "the server could not do this; see its log")

    def sessionObject(self, request: Request, context: AccountContext) -> dict:
        """
        @return: the Session object (RFC 8620 §2).
        """
        limits = self.services.limits
        accountId = context.accountId
        base = baseUrl(request, self.services.hostname)
        return {
            "capabilities": {CORE: limits.asJSON(), MAIL: {}, SUBMISSION: {}, QUTEMAIL: {}},
            "accounts": {accountId: {
                "name": context.address, "isPersonal": True, "isReadOnly": False,
                "accountCapabilities": {
                    MAIL: {"maxMailboxesPerEmail": 1, "maxMailboxDepth": None, "maxSizeMailboxName": 200,
                           "maxSizeAttachmentsPerEmail": limits.maxSizeUpload,
                           "emailQuerySortOptions": ["receivedAt", "size"], "mayCreateTopLevelMailbox": True},
                    SUBMISSION: {"maxDelayedSend": 0, "submissionExtensions": {}},
                    QUTEMAIL: {},
                }}},
            "primaryAccounts": {CORE: accountId, MAIL: accountId, SUBMISSION: accountId, QUTEMAIL: accountId},
            "username": context.address,
            "apiUrl": base + "/api/",
            "downloadUrl": base + "/download/{accountId}/{blobId}/{name}?type={type}",
            "uploadUrl": base + "/upload/{accountId}/",
            "eventSourceUrl": base + "/eventsource/?types={types}&closeafter={closeafter}&ping={ping}",
            "state": context.sessionState,
        }


class RootResource(Resource):
    """
    The listener's root: the JMAP resources by name, the webmail for
    anything else.
    """

    def __init__(self, jmap: JMAPService, webmail: Any) -> None:
        """
        @param webmail: the webmail's resource, or C{None}: 404.
        """
        super().__init__()
        self.webmail = webmail
        wellKnown = Resource()
        wellKnown.putChild(b"jmap", SessionResource(jmap))
        self.putChild(b".well-known", wellKnown)
        self.putChild(b"api", APIResource(jmap))
        self.putChild(b"upload", UploadResource(jmap))
        self.putChild(b"download", DownloadResource(jmap))
        self.putChild(b"eventsource", EventSourceResource(jmap))

    def getChild(self, path: bytes, request: Request) -> Any:
        """
        Anything else is the webmail's.
        """
        if self.webmail is None:
            return Resource.getChild(self, path, request)
        request.postpath.insert(0, path)
        request.prepath.pop()
        return self.webmail


def loadWebmail() -> Any:
    """
    @return: the webmail's resource, or C{None} when it is not installed.
    """
    try:
        from qutemail.webmail.resource import webmailResource
    except ImportError:
        return None
    return webmailResource()


def jmapSite(jmap: JMAPService, reactor: Any, webmail: Any = None) -> Site:
    """
    @return: the site of the JMAP listener.
    """
    site = Site(RootResource(jmap, webmail), reactor=reactor)
    site.requestFactory = JMAPRequest
    site.maxBodyBytes = max(jmap.services.limits.maxSizeUpload, jmap.services.limits.maxSizeRequest)
    site.displayTracebacks = False
    site.jmap = jmap
    site.shutdown = jmap.shutdown
    return site
