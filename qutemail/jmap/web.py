# -*- test-case-name: tests.jmap.test_security -*-
"""
The HTTP side of the JMAP listener that every resource shares: the
request class that puts the security headers on every response
(a strict C{Content-Security-Policy}, C{X-Content-Type-Options:
nosniff}) and caps the body it keeps, and the helpers that write JSON
and RFC 7807 problem details.
"""

import re

from twisted.web.server import Request

from qutemail.jmap.errors import problem

CONTENT_SECURITY_POLICY = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           b"frame-ancestors 'none'")
DOWNLOAD_CONTENT_SECURITY_POLICY = b"default-src 'none'; sandbox; frame-ancestors 'none'"
_HOST = re.compile(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


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
    if request.finished or getattr(request, "_disconnected", False):
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


