# -*- test-case-name: tests.jmap.test_api -*-
"""
The JMAP listener's resources (twisted.web, served over TLS):

  - C{/.well-known/jmap}: the Session object (RFC 8620 §2);
  - C{/api/}: the API endpoint (JSON POSTs only, §3);
  - C{/upload/{accountId}/} and C{/download/{accountId}/{blobId}/{name}}
    (§6);
  - C{/eventsource/} (§7.3);
  - C{/}: the webmail's static files (L{qutemail.webmail.resource}, when
    that package is there; 404 otherwise).

Every response carries a strict C{Content-Security-Policy} and
C{X-Content-Type-Options: nosniff}, errors and 401s included; errors are
RFC 7807 problem details, never a traceback.
"""

import json
import re
import urllib.parse
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from qutemail.jmap import ids
from qutemail.jmap.auth import NotAuthenticated
from qutemail.jmap.blob import readBlob, storeUpload, uploadDirectory
from qutemail.jmap.context import AccountContext
from qutemail.jmap.dispatch import CORE, MAIL, QUTEMAIL, SUBMISSION, parseRequest
from qutemail.jmap.errors import RequestError, problem
from qutemail.jmap.push import StateStream, parseTypes

CONTENT_SECURITY_POLICY = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           b"frame-ancestors 'none'")
_HOST = re.compile(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+")

_log = Logger()


class JMAPRequest(Request):
    """
    A request that carries the security headers from the start, and keeps
    no more of a body than the site allows (the rest is dropped and the
    request marked C{tooLarge}).
    """

    tooLarge = False
    _received = 0

    def process(self) -> None:
        """
        Set the headers every response has, then handle the request.
        """
        self.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        self.setHeader(b"X-Frame-Options", b"DENY")
        self.setHeader(b"Referrer-Policy", b"no-referrer")
        Request.process(self)

    def handleContentChunk(self, data: bytes) -> None:
        """
        Keep body bytes up to the site's limit.
        """
        self._received += len(data)
        if self._received > self.channel.site.maxBodyBytes:
            self.tooLarge = True
            return
        Request.handleContentChunk(self, data)


def respond(request: Request, status: int, body: bytes, contentType: bytes = b"application/json") -> None:
    """
    Write a whole response (unless the client has gone).
    """
    if request.finished or request._disconnected:
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", contentType)
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


def respondProblem(request: Request, status: int, title: str, detail: str) -> None:
    """
    Answer with RFC 7807 problem details.
    """
    if status == 401:
        request.setHeader(b"WWW-Authenticate", b'Basic realm="QutEmail JMAP", charset="UTF-8"')
    respond(request, status, problem(status, title, detail), b"application/problem+json")


def baseUrl(request: Request, hostname: str) -> str:
    """
    @return: C{https://host[:port]} as the client named us (its C{Host}
        header when it is a plain host name), else our hostname.
    """
    host = request.getHeader(b"host") or b""
    if not _HOST.fullmatch(host):
        host = hostname.encode("ascii")
    return "https://" + host.decode("ascii")


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


class SessionResource(Resource):
    """
    C{/.well-known/jmap}.
    """

    isLeaf = True

    def __init__(self, jmap: JMAPService) -> None:
        super().__init__()
        self.jmap = jmap

    def render_GET(self, request: Request) -> int:
        """
        The Session object.
        """
        async def handle(request: Request, context: AccountContext) -> None:
            respond(request, 200, json.dumps(self.jmap.sessionObject(request, context)).encode())

        return self.jmap.serve(request, handle)


class APIResource(Resource):
    """
    C{/api/}: JSON POSTs of JMAP requests.
    """

    isLeaf = True

    def __init__(self, jmap: JMAPService) -> None:
        super().__init__()
        self.jmap = jmap

    def render_POST(self, request: Request) -> int:
        """
        Run a JMAP request.
        """
        return self.jmap.serve(request, self._handle, counted="requests")

    async def _handle(self, request: Request, context: AccountContext) -> None:
        """
        Parse, dispatch, answer.
        """
        limits = self.jmap.services.limits
        if request.tooLarge:
            raise RequestError("limit", f"the request is over {limits.maxSizeRequest} bytes", limit="maxSizeRequest")
        contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if contentType != b"application/json":
            # Only JSON: a form or a plain-text POST from another site's page
            # never gets here (CSRF).
            raise RequestError("notJSON", "the request must be application/json")
        request.content.seek(0)
        body = request.content.read(limits.maxSizeRequest + 1)
        using, calls, createdIds = parseRequest(body, limits)
        response = await self.jmap.dispatcher.run(context, using, calls, createdIds)
        respond(request, 200, json.dumps(response).encode())


class UploadResource(Resource):
    """
    C{/upload/{accountId}/}.
    """

    isLeaf = True

    def __init__(self, jmap: JMAPService) -> None:
        super().__init__()
        self.jmap = jmap

    def render_POST(self, request: Request) -> int:
        """
        Store an upload.
        """
        return self.jmap.serve(request, self._handle, counted="uploads")

    async def _handle(self, request: Request, context: AccountContext) -> None:
        """
        See L{render_POST}.
        """
        path = [p.decode("utf-8", "replace") for p in request.postpath if p]
        if len(path) != 1 or path[0] != context.accountId:
            respondProblem(request, 404, "Not Found", "no such account")
            return
        limits = self.jmap.services.limits
        size = request.content.seek(0, 2)
        if request.tooLarge or size > limits.maxSizeUpload:
            respond(request, 413, RequestError("limit", f"uploads are at most {limits.maxSizeUpload} bytes",
                                               413, "maxSizeUpload").problem(), b"application/problem+json")
            return
        mediaType = (request.getHeader(b"content-type") or b"").decode("latin-1").split(";")[0].strip()
        if not _MEDIA_TYPE.fullmatch(mediaType):
            mediaType = "application/octet-stream"
        blobId = await context.runner.run(storeUpload, uploadDirectory(context), request.content, size, mediaType)
        respond(request, 201, json.dumps({"accountId": context.accountId, "blobId": blobId, "type": mediaType,
                                          "size": size}).encode())


class DownloadResource(Resource):
    """
    C{/download/{accountId}/{blobId}/{name}?type=}.
    """

    isLeaf = True

    def __init__(self, jmap: JMAPService) -> None:
        super().__init__()
        self.jmap = jmap

    def render_GET(self, request: Request) -> int:
        """
        Send a blob, byte for byte.
        """
        return self.jmap.serve(request, self._handle)

    async def _handle(self, request: Request, context: AccountContext) -> None:
        """
        See L{render_GET}.
        """
        path = [urllib.parse.unquote(p.decode("utf-8", "replace")) for p in request.postpath]
        if len(path) < 2 or path[0] != context.accountId or not ids.isId(path[1]):
            respondProblem(request, 404, "Not Found", "no such blob")
            return
        blob = await readBlob(context, path[1])
        if blob is None:
            respondProblem(request, 404, "Not Found", "no such blob")
            return
        data, mediaType = blob
        asked = (request.args.get(b"type") or [b""])[0].decode("latin-1")
        if _MEDIA_TYPE.fullmatch(asked.split(";")[0].strip()):
            mediaType = asked.split(";")[0].strip()
        name = path[2] if len(path) > 2 and path[2] else "blob"
        request.setHeader(b"Content-Disposition",
                          b"attachment; filename*=UTF-8''" + urllib.parse.quote(name, safe="").encode("ascii"))
        respond(request, 200, data, mediaType.encode("ascii"))


class EventSourceResource(Resource):
    """
    C{/eventsource/?types=&closeafter=&ping=}.
    """

    isLeaf = True

    def __init__(self, jmap: JMAPService) -> None:
        super().__init__()
        self.jmap = jmap

    def render_GET(self, request: Request) -> int:
        """
        Open a push stream.
        """
        return self.jmap.serve(request, self._handle)

    async def _handle(self, request: Request, context: AccountContext) -> None:
        """
        See L{render_GET}; returns when the stream ends.
        """
        def arg(name: bytes) -> str:
            return (request.args.get(name) or [b""])[0].decode("utf-8", "replace")

        ping = arg(b"ping")
        if (ping and not ping.isdigit()) or arg(b"closeafter") not in ("", "no", "state"):
            respondProblem(request, 400, "Bad Request", "ping is a number, closeafter state or no")
            return
        services = self.jmap.services
        stream = StateStream(request, lambda: AccountContext(context.account, services, context.peer),
                             services.notifier, services.clock, parseTypes(arg(b"types")),
                             arg(b"closeafter") == "state", int(ping or 0))
        self.jmap.streams.add(stream)
        try:
            await stream.start()
            await stream.done
        finally:
            self.jmap.streams.discard(stream)


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
