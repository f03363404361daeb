"""
Tests for L{qutemail.webmail.resource}: the page's four files, with the
security headers, over a real loopback socket, and nothing else.
"""

import configparser
import fnmatch
import http.client
import os
import re

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

import qutemail
from qutemail.webmail import resource
from qutemail.webmail.resource import CONTENT_SECURITY_POLICY, webmailResource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(qutemail.__file__)))
STATIC = os.path.join(os.path.dirname(os.path.abspath(resource.__file__)), "static")


def staticBytes(name: str) -> bytes:
    """
    @return: the bytes of a file under C{qutemail/webmail/static/}.
    """
    with open(os.path.join(STATIC, name), "rb") as f:
        return f.read()


class WebmailResourceTests(TestCase):
    """
    L{webmailResource} behind a twisted.web L{Site} on 127.0.0.1.
    """

    async def setUp(self):
        """
        Serve the resource on a free loopback port.
        """
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        site = Site(webmailResource())
        # A new connection per request; none left open for tearDown.
        site.timeOut = None
        self.listening = await endpoint.listen(site)
        self.addCleanup(self.listening.stopListening)
        self.port = self.listening.getHost().port

    def request(self, method: str, path: str):
        """
        Send one request with C{http.client} in a thread, the path exactly
        as given (no client-side clean-up of C{..}).

        @return: a Deferred firing with C{(status, headers, body)}; the
            header names lower-cased.
        """

        def run():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.putrequest(method, path, skip_accept_encoding=True)
                connection.putheader("Connection", "close")
                connection.endheaders()
                response = connection.getresponse()
                body = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, body
            finally:
                connection.close()

        return deferToThread(run)

    def assertSecurityHeaders(self, headers: dict) -> None:
        """
        The response has the strict CSP, C{nosniff} and no referrer.
        """
        self.assertEqual(headers["content-security-policy"], CONTENT_SECURITY_POLICY.decode())
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(headers["referrer-policy"], "no-referrer")

    async def test_index(self):
        """
        C{/} is C{index.html} as HTML, with the security headers.
        """
        status, headers, body = await self.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertSecurityHeaders(headers)
        self.assertEqual(body, staticBytes("index.html"))

    async def test_scripts(self):
        """
        C{/app.js} and C{/push.js} are the scripts, as JavaScript, with the
        security headers.
        """
        for name in ("app.js", "push.js"):
            status, headers, body = await self.request("GET", "/" + name)
            self.assertEqual(status, 200, name)
            self.assertEqual(headers["content-type"], "text/javascript; charset=utf-8")
            self.assertSecurityHeaders(headers)
            self.assertEqual(body, staticBytes(name))

    async def test_stylesheet(self):
        """
        C{/app.css} is the style sheet, as CSS, with the security headers.
        """
        status, headers, body = await self.request("GET", "/app.css")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/css; charset=utf-8")
        self.assertSecurityHeaders(headers)
        self.assertEqual(body, staticBytes("app.css"))

    async def test_head(self):
        """
        C{HEAD} gets the headers and length of C{GET}, and no body.
        """
        status, headers, body = await self.request("HEAD", "/app.js")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(int(headers["content-length"]), len(staticBytes("app.js")))
        self.assertSecurityHeaders(headers)
        self.assertEqual(body, b"")

    async def test_otherPathsNotFound(self):
        """
        Every other path is a 404 with the security headers: other files of
        the package, the static directory and its files by their real path,
        traversal with C{..} (plain and percent-encoded), and a file's name
        followed by more segments.
        """
        for path in ("/index.html.bak", "/static/", "/static/index.html", "/static/app.js", "/resource.py",
                     "/__init__.py", "/../../setup.cfg", "/static/../resource.py", "/%2e%2e/%2e%2e/setup.cfg",
                     "/..%2fresource.py", "/app.js/", "/app.js/x", "//app.js", "/./app.js", "/APP.JS",
                     "/.well-known/jmap", "/favicon.ico"):
            status, headers, body = await self.request("GET", path)
            self.assertEqual(status, 404, path)
            self.assertSecurityHeaders(headers)
            self.assertEqual(body, b"Not found\n", path)

    async def test_noDirectoryListing(self):
        """
        No answer names the files of the package directory.
        """
        for path in ("/static/", "/static", "/./", "/.."):
            _, _, body = await self.request("GET", path)
            for name in (b"resource.py", b"__init__.py", b"static", b"app.css"):
                self.assertNotIn(name, body, path)

    async def test_otherMethods(self):
        """
        C{POST} to a file is refused with 405, still with the security
        headers.
        """
        status, headers, _ = await self.request("POST", "/")
        self.assertEqual(status, 405)
        self.assertSecurityHeaders(headers)


class StaticFilesTests(SynchronousTestCase):
    """
    The page keeps to what its policy allows, and a plain install carries
    it.
    """

    def test_noInlineScriptOrStyle(self):
        """
        C{index.html} has no inline script, no C{style} element or
        attribute and no C{on*=} handler (the policy would block them),
        and loads only its own script and style sheet by relative URL (and
        an empty C{data:} icon, so no favicon request).
        """
        html = staticBytes("index.html").decode("utf-8")
        self.assertEqual(re.findall(r"<script\b[^>]*>", html),
                         ['<script src="push.js" defer>', '<script src="app.js" defer>'])
        self.assertIn("</script>", html)
        self.assertNotRegex(html, r"<script[^>]*>[^<]")
        self.assertNotRegex(html, r"(?i)<style\b|\sstyle=|\son\w+=")
        self.assertEqual(re.findall(r'(?:src|href)="([^"]*)"', html), ["data:,", "app.css", "push.js", "app.js"])

    def test_scriptNeverWritesHtml(self):
        """
        The script never parses a string as markup (C{innerHTML},
        C{outerHTML}, C{insertAdjacentHTML}, C{document.write}), never
        evaluates one, and keeps the credentials out of storage and
        cookies.
        """
        # The code without its whole-line comments (which name what it
        # does not do).
        js = "\n".join(line for name in ("app.js", "push.js")
                       for line in staticBytes(name).decode("utf-8").splitlines()
                       if not line.lstrip().startswith("//"))
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                          "new Function", "localStorage", "sessionStorage", "document.cookie", "indexedDB"):
            self.assertFalse(forbidden in js, forbidden)
        self.assertIn('credentials: "omit"', js)
        self.assertIn('setAttribute("sandbox", "")', js)

    def test_nothingFromElsewhere(self):
        """
        No static file names another origin (nothing is fetched at run
        time from anywhere but the server itself).
        """
        for name in ("index.html", "app.js", "push.js", "app.css"):
            self.assertNotRegex(staticBytes(name).decode("utf-8"), r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", name)

    def test_packageData(self):
        """
        C{setup.cfg} lists the webmail package and its static files as
        package data, so a plain (not editable) install carries the page.
        """
        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        self.assertIn("qutemail.webmail", parser["options"]["packages"].split())
        patterns = parser["options.package_data"]["qutemail.webmail"].split()
        for name in sorted(os.listdir(STATIC)):
            self.assertTrue(any(fnmatch.fnmatch("static/" + name, p) for p in patterns), name)
