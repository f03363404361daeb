# -*- test-case-name: tests.metrics.test_http -*-
"""
The metrics port: C{/metrics} (the Prometheus text exposition, made by
prometheus_client's own WSGI application in the reactor's thread pool)
and C{/healthz} (200 C{ok}, or 503 with one line per problem).
"""

from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data
from twisted.web.wsgi import WSGIResource


class HealthResource(Resource):
    """
    C{/healthz}.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, health: Any) -> None:
        """
        @param health: the L{qutemail.metrics.health.Health}.
        """
        Resource.__init__(self)
        self.health = health

    def render_GET(self, request: Any) -> Any:
        """
        Answer once the checks are done.
        """
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(problems: list[str]) -> None:
            if problems:
                request.setResponseCode(503)
            if not gone:
                request.write(("\n".join(problems) if problems else "ok").encode("utf-8") + b"\n")
                request.finish()

        def failed(failure: Any) -> None:
            self._log.failure("health check failed", failure)
            answer([f"health check failed: {failure.getErrorMessage()}"])

        self.health.problems().addCallbacks(answer, failed)
        return NOT_DONE_YET


class _Quiet(Site):
    """
    A site that does not log every scrape.
    """

    def log(self, request: Any) -> None:
        """
        Nothing.
        """


def metricsSite(reactor: Any, registry: Any, health: Any, stsPolicy: bytes | None = None) -> Site:
    """
    @param reactor: an C{IReactorThreads} (the exposition is made in its
        thread pool).
    @param registry: the registry to expose
        (L{qutemail.metrics.registry.scrapeRegistry}).
    @param health: the L{qutemail.metrics.health.Health}.
    @param stsPolicy: our MTA-STS policy body, served at
        C{/.well-known/mta-sts.txt} (L{qutemail.stspolicy.ownPolicy}), or
        C{None}.
    @return: the site of the metrics port.
    """
    from prometheus_client import make_wsgi_app

    root = Resource()
    root.putChild(b"metrics", WSGIResource(reactor, reactor.getThreadPool(), make_wsgi_app(registry)))
    root.putChild(b"healthz", HealthResource(health))
    if stsPolicy is not None:
        wellKnown = Resource()
        # RFC 8461 §3.3: served as text/plain.
        wellKnown.putChild(b"mta-sts.txt", Data(stsPolicy, "text/plain"))
        root.putChild(b".well-known", wellKnown)
    return _Quiet(root)
