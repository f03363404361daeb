# -*- test-case-name: tests.integration.test_metrics -*-
"""
The C{status} command of the admin tool:

    qutemail --config PATH status

It asks the running server's C{/healthz} (on C{[metrics] port}) and says
in words what it answered: whether every listener listens, the journal
directory is writable and the KME answered recently.
"""

import argparse
import http.client
from typing import Any

from qutemail.cliqueue import CommandError

# How long to wait for the server's answer.
TIMEOUT_SECONDS = 10


def addStatusCommands(commands: Any) -> None:
    """
    Add the C{status} command.

    @param commands: the top-level subparsers.
    """
    status = commands.add_parser("status", help="say whether the running server is healthy (its /healthz)")
    status.set_defaults(run=_status)


def _status(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{status}: ask C{/healthz} and print the answer.

    @return: 0 when healthy, 1 otherwise.
    """
    metrics = context.config.metrics
    if not metrics.port:
        raise CommandError("[metrics] port is 0: the server has no health endpoint to ask")
    host = "127.0.0.1" if metrics.bind in ("0.0.0.0", "") else "::1" if metrics.bind == "::" else metrics.bind
    connection = http.client.HTTPConnection(host, metrics.port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    except OSError as e:
        raise CommandError(f"no answer from the server at {host}:{metrics.port} ({e.strerror or e}): "
                           f"is it running?") from None
    finally:
        connection.close()
    problems = [line for line in body.splitlines() if line.strip()]
    if response.status == 200:
        print("healthy: every listener listens, the journal is writable, the KME answers", file=context.stdout)
        return 0
    print(f"unhealthy (HTTP {response.status}):", file=context.stdout)
    for line in problems:
        print(f"- {line}", file=context.stdout)
    return 1
