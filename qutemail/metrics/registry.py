# -*- test-case-name: tests.metrics.test_registry -*-
"""
Everything the server counts, as prometheus_client metrics, behind methods
that say what happened (L{Metrics.messageReceived}, ...), so the code that
counts never names a metric.

One L{Metrics} per process, made by the service and handed to every part
that counts.  With C{[metrics] port} set, the server runs prometheus_client
in its multiprocess mode (L{enableMultiprocess}, before the library is
first imported): each process, extra SMTP workers included, writes its
values to files in one directory, and the scrape adds them up.  Without it
the values live in a registry of the process that nobody reads.
"""

import os
import shutil
from typing import Any

# Delivery takes milliseconds locally and up to the queue lifetime (days)
# for a remote exchanger that keeps deferring.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600,
                    86400, 5 * 86400)
FSYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The environment variable prometheus_client reads when it is imported.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enableMultiprocess(directory: str, fresh: bool) -> None:
    """
    Put prometheus_client in its multiprocess mode, writing to
    C{directory}: call it before anything imports the library (children
    inherit the setting).

    @param fresh: empty the directory first (the main process at start:
        values of an earlier run must not be added in).
    @raise RuntimeError: the library was imported before, in the ordinary
        mode; its values would not add up across processes.
    """
    if fresh and os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.environ[MULTIPROCESS_ENV] = directory
    if not isMultiprocess():
        raise RuntimeError("prometheus_client was imported before its multiprocess mode was set")


def isMultiprocess() -> bool:
    """
    @return: whether prometheus_client writes its values to files.
    """
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


class Metrics:
    """
    The server's metrics, one instance per process.

    @ivar registry: the registry the metrics are in, or C{None} in
        multiprocess mode (the scrape reads the files instead).
    """

    def __init__(self, private: bool = False) -> None:
        """
        Make every metric.

        @param private: put them in a registry of their own (a process
            without a metrics port, or a test); otherwise, in multiprocess
            mode, in none.
        """
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry() if private or not isMultiprocess() else None
        r = self.registry
        self.messages = Counter("qutemail_smtp_messages", "Messages at the end of DATA, by listener and reply",
                                ["listener", "result", "code_class", "enhanced"], registry=r)
        self.errorReplies = Counter("qutemail_smtp_error_replies", "4xx and 5xx SMTP replies, by listener",
                                    ["listener", "code", "enhanced"], registry=r)
        self.receivedBytes = Counter("qutemail_received_bytes", "Bytes of accepted messages, by listener",
                                     ["listener"], registry=r)
        self.recipients = Counter("qutemail_recipients", "Recipient outcomes: delivered (local mailbox), "
                                  "relayed (remote 250), deferred (each time), bounced", ["outcome"], registry=r)
        self.deliverySeconds = Histogram("qutemail_delivery_seconds", "From the 250 to the Maildir (local) or "
                                         "to the remote 250 (remote)", ["path"], buckets=DELIVERY_BUCKETS,
                                         registry=r)
        self.sessions = Gauge("qutemail_sessions", "Open sessions, by protocol and listener", ["protocol", "listener"],
                              multiprocess_mode="livesum", registry=r)
        self.tlsHandshakes = Counter("qutemail_tls_handshakes", "Completed server TLS handshakes, by version",
                                     ["version"], registry=r)
        self.auth = Counter("qutemail_auth_attempts", "Authentication attempts (SMTP, IMAP, POP3), by result",
                            ["result"], registry=r)
        self.fsyncSeconds = Histogram("qutemail_journal_fsync_seconds", "One journal write and sync",
                                      buckets=FSYNC_BUCKETS, registry=r)
        self.groupSize = Histogram("qutemail_journal_group_messages", "Messages committed by one journal sync",
                                   buckets=GROUP_BUCKETS, registry=r)
        self.inbound = Counter("qutemail_inbound_checks", "SPF, DKIM and DMARC results of mail from outside",
                               ["check", "result"], registry=r)
        self.quota = Counter("qutemail_quota_refusals", "Recipients refused for a full mailbox", ["stage"],
                             registry=r)
        self.scans = Counter("qutemail_content_scans", "Content scanner verdicts", ["scanner", "verdict"],
                             registry=r)
        self.kmeRequests = Counter("qutemail_kme_requests", "ETSI GS QKD 014 requests to the KME",
                                   ["operation", "outcome"], registry=r)
        self.kmeSeconds = Histogram("qutemail_kme_request_seconds", "ETSI GS QKD 014 request latency",
                                    ["operation"], buckets=KME_BUCKETS, registry=r)
        self.queueMessages = Gauge("qutemail_queue_messages", "Messages in the deferred queue, by state",
                                   ["state"], multiprocess_mode="livesum", registry=r)
        self.queueOldest = Gauge("qutemail_queue_oldest_message_age_seconds", "Age of the oldest queued message",
                                 multiprocess_mode="livemax", registry=r)
        self.storedKeys = Gauge("qutemail_qkd_stored_keys", "Keys the KME holds for a link (Get status)",
                                ["link"], multiprocess_mode="livemax", registry=r)

    # -- SMTP --------------------------------------------------------------

    def messageAnswered(self, listener: str, reply: Any, sizeBytes: int) -> None:
        """
        The end of DATA got C{reply}.
        """
        accepted = 200 <= reply.code < 300
        self.messages.labels(listener, "accepted" if accepted else "rejected", f"{reply.code // 100}xx",
                             reply.enhanced).inc()
        if accepted:
            self.receivedBytes.labels(listener).inc(sizeBytes)

    def errorReply(self, listener: str, code: int, enhanced: str) -> None:
        """
        A 4xx or 5xx reply went to an SMTP client.
        """
        self.errorReplies.labels(listener, str(code), enhanced).inc()

    # -- sessions and security ----------------------------------------------

    def sessionOpened(self, protocol: str, listener: str) -> None:
        """
        A session was admitted.
        """
        self.sessions.labels(protocol, listener).inc()

    def sessionClosed(self, protocol: str, listener: str) -> None:
        """
        An admitted session ended.
        """
        self.sessions.labels(protocol, listener).dec()

    def tlsHandshake(self, version: str) -> None:
        """
        A server TLS handshake completed with C{version} (C{TLSv1.3}, ...).
        """
        self.tlsHandshakes.labels(version).inc()

    def authenticated(self, success: bool) -> None:
        """
        An authentication attempt ended.
        """
        self.auth.labels("success" if success else "failure").inc()

    def quotaRefused(self, stage: str) -> None:
        """
        A recipient was refused for a full mailbox, at C{"rcpt"} or at
        C{"delivery"}.
        """
        self.quota.labels(stage).inc()

    # -- what becomes of a message -----------------------------------------

    def recipientOutcome(self, outcome: str, acceptedAt: float | None = None, now: float | None = None,
                         path: str = "local") -> None:
        """
        One recipient was C{"delivered"}, C{"relayed"}, C{"deferred"} or
        C{"bounced"}; for the first two, the time since the 250.
        """
        self.recipients.labels(outcome).inc()
        if acceptedAt is not None and now is not None and acceptedAt > 0:
            self.deliverySeconds.labels(path).observe(max(0.0, now - acceptedAt))

    def journalSynced(self, seconds: float, messages: int) -> None:
        """
        One journal write and sync took C{seconds} for C{messages} commits.
        """
        self.fsyncSeconds.observe(seconds)
        if messages:
            self.groupSize.observe(messages)

    def inboundResult(self, check: str, result: str) -> None:
        """
        An SPF, DKIM or DMARC check of mail from outside gave C{result}.
        """
        self.inbound.labels(check, result).inc()

    def scanned(self, scanner: str, verdict: str) -> None:
        """
        A content scanner gave C{verdict} (or C{"error"}).
        """
        self.scans.labels(scanner, verdict).inc()

    # -- QKD -------------------------------------------------------------------

    def kmeRequest(self, operation: str, outcome: str, seconds: float) -> None:
        """
        One request to the KME ended.
        """
        self.kmeRequests.labels(operation, outcome).inc()
        self.kmeSeconds.labels(operation).observe(seconds)

    def keyCount(self, link: str, count: int) -> None:
        """
        The KME said how many keys a link holds.
        """
        self.storedKeys.labels(link).set(count)

    def queueState(self, counts: dict[str, int], oldestAgeSeconds: float) -> None:
        """
        The deferred queue's size by state, and its oldest message's age.
        """
        for state, count in counts.items():
            self.queueMessages.labels(state).set(count)
        self.queueOldest.set(oldestAgeSeconds)


def scrapeRegistry(metrics: Metrics, directory: str | None) -> Any:
    """
    @param directory: the multiprocess directory, or C{None}.
    @return: the registry C{/metrics} shows: every process's values added
        up in multiprocess mode, else the process's own.
    """
    if directory is None:
        return metrics.registry
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def processGone(directory: str | None, pid: int) -> None:
    """
    A worker process ended: its live gauges (sessions) no longer count.
    """
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
