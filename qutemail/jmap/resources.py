# -*- test-case-name: tests.jmap.test_api,tests.jmap.test_blob,tests.jmap.test_push -*-
"""
The JMAP resources (RFC 8620): the Session object at
C{/.well-known/jmap} (§2), the API endpoint C{/api/} (JSON POSTs only,
§3), C{/upload/{accountId}/} and C{/download/{accountId}/{blobId}/{name}}
(§6), and C{/eventsource/} (§7.3).  Each authenticates through the
L{qutemail.jmap.http.JMAPService} it is given.
"""

import json
import re
import urllib.parse
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from qutemail.jmap import ids
from qutemail.jmap.blob import readBlob, storeUpload, uploadDirectory
from qutemail.jmap.context import AccountContext
from qutemail.jmap.dispatch import parseRequest
from qutemail.jmap.errors import RequestError
from qutemail.jmap.push import StateStream, parseTypes
from qutemail.jmap.web import DOWNLOAD_CONTENT_SECURITY_POLICY, respond, respondProblem

_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+\-]+/[A-Za-z0-9!#$&^_.+\-]+")


class _JMAPResource(Resource):
    """
    A resource of the JMAP listener: a leaf, serving through the
    L{qutemail.jmap.http.JMAPService}.
    """

    isLeaf = True

    def __init__(self, jmap: Any) -> None:
        """
        @param jmap: the L{qutemail.jmap.http.JMAPService}.
        """
        super().__init__()
        self.jmap = jmap


class SessionResource(_JMAPResource):
    """
    C{/.well-known/jmap}.
    """

    def render_GET(self, request: Request) -> int:
        """
        The Session object.
        """
        async def handle(request: Request, context: AccountContext) -> None:
            """
            Answer with the Session object.
            """
            respond(request, 200, json.dumps(self.jmap.sessionObject(request, context)).encode())

        return self.jmap.serve(request, handle)


class APIResource(_JMAPResource):
    """
    C{/api/}: JSON POSTs of JMAP requests.
    """

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


class UploadResource(_JMAPResource):
    """
    C{/upload/{accountId}/}.
    """

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
        blobId = await context.runner.run(storeUpload, uploadDirectory(context), request.content, size, mediaType,
                                         context.now())
        respond(request, 201, json.dumps({"accountId": context.accountId, "blobId": blobId, "type": mediaType,
                                          "size": size}).encode())


class DownloadResource(_JMAPResource):
    """
    C{/download/{accountId}/{blobId}/{name}?type=}.
    """

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
        # A blob is never a page of ours: nothing in it may run or load,
        # whatever type the client asked for.
        request.setHeader(b"Content-Security-Policy", DOWNLOAD_CONTENT_SECURITY_POLICY)
        request.setHeader(b"Content-Disposition",
                          b"attachment; filename*=UTF-8''" + urllib.parse.quote(name, safe="").encode("ascii"))
        respond(request, 200, data, mediaType.encode("ascii"))


class EventSourceResource(_JMAPResource):
    """
    C{/eventsource/?types=&closeafter=&ping=}.
    """

    def render_GET(self, request: Request) -> int:
        """
        Open a push stream.
        """
        return self.jmap.serve(request, self._handle, counted="streams")

    async def _handle(self, request: Request, context: AccountContext) -> None:
        """
        See L{render_GET}; returns when the stream ends.
        """
        def arg(name: bytes) -> str:
            """
            @return: a query argument as text (C{""} when absent).
            """
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


