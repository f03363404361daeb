# -*- test-case-name: tests.integration.test_metrics -*-
"""
The metrics of a server, built at start-up: the one L{Metrics} of each
process (in prometheus_client's multiprocess mode when C{[metrics] port}
is set, so extra SMTP workers add up), and in the main process the HTTP
port serving C{/metrics} and C{/healthz}.
"""

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString

from qutemail.metrics.health import Health
from qutemail.metrics.http import metricsSite
from qutemail.metrics.registry import Metrics, enableMultiprocess, scrapeRegistry
from qutemail.portservice import PortService
from qutemail.stspolicy import ownPolicy


def metricsDirectory(dataDir: str) -> str:
    """
    @return: where the processes write their values (C{data_dir/metrics}).
    """
    return os.path.join(dataDir, "metrics")


def buildMetrics(config: Any, workerIndex: int) -> Metrics | None:
    """
    The process's metrics, or C{None} when C{[metrics] port} is 0.  The
    main process starts the value files afresh; a worker adds its own.
    """
    if not config.metrics.port:
        return None
    enableMultiprocess(metricsDirectory(config.server.dataDir), fresh=workerIndex == 0)
    return Metrics()


def serveMetrics(config: Any, reactor: Any, runner: Any, metrics: Metrics, parent: MultiService,
                 listeners: dict[str, Any], journalDirectory: str, keyWatches: list[Any],
                 listen: str | None = None) -> PortService:
    """
    Add the metrics port to C{parent} (the main process only).

    @param listeners: the listener services, for the health check.
    @param journalDirectory: the main process's journal.
    @param keyWatches: the KME link watches, for the health check.
    @param listen: an endpoint description overriding C{[metrics] port}
        and C{bind} (tests listen on port 0).
    @return: the service.
    """
    health = Health(clock=reactor, runner=runner, listeners=listeners, journalDirectory=journalDirectory,
                    keyWatches=keyWatches)
    registry = scrapeRegistry(metrics, metricsDirectory(config.server.dataDir))
    bind = config.metrics.bind
    description = listen or f"tcp:{config.metrics.port}:interface={bind.replace(':', chr(92) + ':')}"
    policy = ownPolicy(config.server.hostname, config.metrics.mtaStsMode)
    service = PortService(serverFromString(reactor, description), metricsSite(reactor, registry, health, policy))
    service.setName("metrics")
    service.health = health
    service.setServiceParent(parent)
    return service
