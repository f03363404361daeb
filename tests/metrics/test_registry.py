"""
Tests for L{qutemail.metrics.registry}: each method moves the metric it
names, read back through prometheus_client's own exposition.
"""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from qutemail.metrics.registry import Metrics, scrapeRegistry
from qutemail.replies import NO_SUCH_USER, QUEUED, SPAM_DEFERRED


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """
    @return: the sum of the samples called C{name} with C{labels}.
    """
    total = 0.0
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class MetricsTests(SynchronousTestCase):
    """
    L{Metrics} in a private registry.
    """

    def setUp(self) -> None:
        """
        Fresh metrics.
        """
        self.metrics = Metrics(private=True)

    def test_messages(self) -> None:
        """
        An accepted message counts with its bytes; a refused one by its
        reply's class and enhanced code, without bytes.
        """
        self.metrics.messageAnswered("mta", QUEUED, 1000)
        self.metrics.messageAnswered("mta", SPAM_DEFERRED, 500)
        m = self.metrics
        self.assertEqual(value(m, "qutemail_smtp_messages_total", result="accepted", code_class="2xx"), 1)
        self.assertEqual(value(m, "qutemail_smtp_messages_total", result="rejected", code_class="4xx",
                               enhanced="4.7.1"), 1)
        self.assertEqual(value(m, "qutemail_received_bytes_total", listener="mta"), 1000)

    def test_errorReplies(self) -> None:
        """
        Error replies count by code and enhanced code.
        """
        self.metrics.errorReply("submission", NO_SUCH_USER.code, NO_SUCH_USER.enhanced)
        self.assertEqual(value(self.metrics, "qutemail_smtp_error_replies_total", listener="submission",
                               code="550", enhanced="5.1.1"), 1)

    def test_sessions(self) -> None:
        """
        The sessions gauge goes up and down.
        """
        for _ in range(3):
            self.metrics.sessionOpened("imap", "imaps")
        self.metrics.sessionClosed("imap", "imaps")
        self.assertEqual(value(self.metrics, "qutemail_sessions", protocol="imap", listener="imaps"), 2)

    def test_outcomesAndLatency(self) -> None:
        """
        Delivered and relayed recipients observe their time since the 250;
        deferred and bounced ones count only.
        """
        self.metrics.recipientOutcome("delivered", 100.0, 100.5, "local")
        self.metrics.recipientOutcome("relayed", 100.0, 160.0, "remote")
        self.metrics.recipientOutcome("deferred")
        m = self.metrics
        self.assertEqual([value(m, "qutemail_recipients_total", outcome=o) for o in ("delivered", "relayed",
                                                                                     "deferred", "bounced")],
                         [1, 1, 1, 0])
        self.assertEqual(value(m, "qutemail_delivery_seconds_sum", path="local"), 0.5)
        self.assertEqual(value(m, "qutemail_delivery_seconds_bucket", path="remote", le="60.0"), 1)
        self.assertEqual(value(m, "qutemail_delivery_seconds_bucket", path="remote", le="30.0"), 0)

    def test_journalAndKME(self) -> None:
        """
        Journal syncs, KME requests, key counts and queue state.
        """
        m = self.metrics
        m.journalSynced(0.002, 5)
        m.kmeRequest("enc_keys", "ok", 0.01)
        m.keyCount("mail-sae", 42)
        m.queueState({"pending": 1, "deferred": 3}, 7200.0)
        self.assertEqual(value(m, "qutemail_journal_group_messages_sum"), 5)
        self.assertEqual(value(m, "qutemail_kme_requests_total", operation="enc_keys", outcome="ok"), 1)
        self.assertEqual(value(m, "qutemail_qkd_stored_keys", link="mail-sae"), 42)
        self.assertEqual(value(m, "qutemail_queue_messages", state="deferred"), 3)
        self.assertEqual(value(m, "qutemail_queue_oldest_message_age_seconds"), 7200)

    def test_scrapeOwnRegistry(self) -> None:
        """
        Outside multiprocess mode the scrape reads the process's registry.
        """
        self.assertIs(scrapeRegistry(self.metrics, None), self.metrics.registry)
