# -*- test-case-name: tests.webmail.test_resource -*-
"""
The webmail's four static files, served by the JMAP listener at C{/}.

The page is plain HTML, CSS and JavaScript: no build step, nothing fetched
from elsewhere.  It talks to the JMAP API with the user's credentials in an
C{Authorization} header on every request (never a cookie), so another site
cannot make the browser act for the user.  Every response carries a strict
Content-Security-Policy: only the page's own script and style run, no
inline script or style, nothing framed from elsewhere and the page itself
never framed.  A message's HTML, already cleaned by
L{qutemail.jmap.sanitise.sanitiseHtml}, is shown in an C{iframe} with an
empty C{sandbox} (no script, an opaque origin), under the same policy.
"""

from importlib.resources import files

import attrs
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

# The files the page is made of: name in the URL -> (file under static/,
# Content-Type).  Nothing else is served; there is no directory listing.
FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"push.js": ("push.js", b"text/javascript; charset=utf-8"),
    b"app.css": ("app.css", b"text/css; charset=utf-8"),
}

CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"frame-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    b"base-uri 'none'; form-action 'none'"
)

# Headers of every response, errors included.
SECURITY_HEADERS = (
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    # For browsers that predate frame-ancestors.
    (b"X-Frame-Options", b"DENY"),
    # The page must be fetched again after an upgrade, never a stale mix
    # of old HTML and new script.
    (b"Cache-Control", b"no-cache"),
)

_NOT_FOUND = b"Not found\n"


def _setSecurityHeaders(request: Request) -> None:
    """
    Put L{SECURITY_HEADERS} on a response.
    """
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


@attrs.define(eq=False)
class StaticFile(Resource):
    """
    One file of the page, held in memory (the four are a few kilobytes).

    @ivar body: the file's bytes.
    @ivar contentType: its C{Content-Type}.
    """

    body: bytes
    contentType: bytes
    isLeaf = True

    def __attrs_post_init__(self) -> None:
        """
        Set up L{Resource}'s own state.
        """
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        """
        Put the security headers on every answer, the 405 for a method
        other than C{GET} and C{HEAD} included.
        """
        _setSecurityHeaders(request)
        return Resource.render(self, request)

    def render_GET(self, request: Request) -> bytes:
        """
        @return: the file; twisted.web answers C{HEAD} from this too,
            without the body.
        """
        request.setHeader(b"Content-Type", self.contentType)
        return self.body


class NotFound(Resource):
    """
    A 404 with the security headers, for every path that is not one of the
    page's files.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        """
        @return: a short plain-text 404 for any method.
        """
        request.setResponseCode(404)
        _setSecurityHeaders(request)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return _NOT_FOUND


@attrs.define(eq=False)
class WebmailResource(Resource):
    """
    The page at C{/}: C{/} (or the resource's own path) is C{index.html},
    C{/app.js} and C{/push.js} the scripts, C{/app.css} the style, and every other path
    a 404, whatever C{..} or further segments it has.

    @ivar files: name in the URL -> its L{StaticFile}.
    """

    files: dict[bytes, StaticFile]

    def __attrs_post_init__(self) -> None:
        """
        Set up L{Resource}'s own state.
        """
        Resource.__init__(self)

    def getChild(self, name: bytes, request: Request) -> IResource:
        """
        @return: the file named by a last path segment, or L{NotFound}
            (also for a file's name followed by more segments, such as
            C{/app.js/x}).
        """
        found = self.files.get(name)
        if found is None or request.postpath:
            return NotFound()
        return found

    def render(self, request: Request) -> bytes:
        """
        The resource's own path (when mounted without a trailing slash) is
        the page.

        @return: C{index.html} for C{GET} and C{HEAD}; other methods get
            twisted.web's 405 through the file.
        """
        return self.files[b""].render(request)


def webmailResource() -> IResource:
    """
    Read the page's files from the package (at start-up, not import time)
    and build the resource that serves them.

    @return: the resource to put at C{/} of the JMAP listener.
    """
    static = files("qutemail.webmail") / "static"
    return WebmailResource(
        {name: StaticFile(static.joinpath(fileName).read_bytes(), contentType)
         for name, (fileName, contentType) in FILES.items()})
