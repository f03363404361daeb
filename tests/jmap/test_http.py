# -*- test-case-name: tests.jmap.test_http -*-
"""
Unit tests of L{qutemail.jmap.http} without sockets: the root resource
(the webmail at C{/}), and the per-account concurrency limit.
"""

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from qutemail.jmap.context import Services
from qutemail.jmap.dispatch import Limits
from qutemail.jmap.http import APIResource, JMAPService, RootResource, SessionResource


class FakeAvatar:
    """
    An IMAP avatar as far as the service looks.
    """

    address = "alice@example.test"
    root = "/nonexistent"


class FakeAuthenticator:
    """
    Lets everyone in as alice.
    """

    async def authenticate(self, header, peer):
        """
        @return: the avatar and a logout.
        """
        return FakeAvatar(), lambda: None


def service(limits: Limits = Limits()) -> JMAPService:
    """
    @return: a service with the fake authenticator.
    """
    return JMAPService(FakeAuthenticator(), None, Services(None, Clock(), "/nonexistent", limits))


class RootTests(SynchronousTestCase):
    """
    L{RootResource}.
    """

    def test_webmailAtRoot(self):
        """
        C{/} and any other unknown path go to the webmail, with the path
        intact; the JMAP paths do not.
        """
        webmail = Resource()
        # A leaf, so that the walk stops there and shows the path it got.
        webmail.isLeaf = True
        root = RootResource(service(), webmail)
        for path, expected in ((b"/", webmail), (b"/index.html", webmail), (b"/js/app.js", webmail)):
            segments = path[1:].split(b"/")
            request = DummyRequest(segments)
            self.assertIs(getChildForRequest(root, request), expected, path)
            self.assertEqual(request.postpath, segments)
        self.assertIsInstance(getChildForRequest(root, DummyRequest([b"api", b""])), APIResource)
        self.assertIsInstance(getChildForRequest(root, DummyRequest([b".well-known", b"jmap"])), SessionResource)

    def test_noWebmail(self):
        """
        Without the webmail, C{/} is a 404.
        """
        root = RootResource(service(), None)
        request = DummyRequest([b""])
        child = getChildForRequest(root, request)
        child.render(request)
        self.assertEqual(request.responseCode, 404)


class ConcurrencyTests(SynchronousTestCase):
    """
    C{maxConcurrentRequests}.
    """

    def test_limit(self):
        """
        A request past the account's limit gets the limit problem while
        the others run; once one ends, another is taken.
        """
        jmap = service(Limits(maxConcurrentRequests=1))
        waiting = Deferred()

        async def slow(request, context):
            await waiting
            request.write(b"done")
            request.finish()

        first, second, third = DummyRequest([]), DummyRequest([]), DummyRequest([])
        jmap.serve(first, slow, counted="requests")
        jmap.serve(second, slow, counted="requests")
        self.assertEqual(second.responseCode, 400)
        body = json.loads(b"".join(second.written))
        self.assertEqual(body["limit"], "maxConcurrentRequests")
        waiting.callback(None)
        self.assertEqual(first.written, [b"done"])
        jmap.serve(third, lambda request, context: slow(request, context), counted="requests")
        self.assertEqual(third.written, [b"done"])
