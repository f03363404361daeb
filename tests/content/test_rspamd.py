"""
Tests for L{qutemail.content.rspamd}: the envelope headers, reading the
answer, and checks by a real rspamd (Debian's, with rules the test writes).
"""

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner
from qutemail.content.results import ScanError
from qutemail.content.rspamd import RspamdClient, parseAnswer, requestHeaders
from qutemail.message import Envelope, SpooledMessage
from tests.content.daemons import VERDICT_HEADER, Rspamd
from tests.integration.support import freePort

ENVELOPE = Envelope("a@remote.test", ("b@example.test", "c@example.test"), "c.remote.test", "192.0.2.1")


def message(verdict: str, queueId: str = "Q1", envelope: Envelope = ENVELOPE) -> SpooledMessage:
    """
    @return: a message whose test header asks rspamd for C{verdict}.
    """
    body = (f"From: a@remote.test\nTo: b@example.test\nSubject: test\n{VERDICT_HEADER}: {verdict}\n"
            f"Message-ID: <{queueId}@remote.test>\n\nHello.\n").encode()
    return SpooledMessage(queueId, envelope, len(body), inline=body)


class HeadersTests(SynchronousTestCase):
    """
    L{requestHeaders} and L{parseAnswer}.
    """

    def test_envelope(self) -> None:
        """
        The envelope goes in rspamd's headers, one C{Rcpt} per recipient;
        C{User} only for authenticated mail.
        """
        headers = requestHeaders(message("ham"))
        self.assertEqual(headers.getRawHeaders(b"Rcpt"), [b"b@example.test", b"c@example.test"])
        self.assertEqual([headers.getRawHeaders(n) for n in (b"IP", b"Helo", b"From", b"Queue-Id", b"User")],
                         [[b"192.0.2.1"], [b"c.remote.test"], [b"a@remote.test"], [b"Q1"], None])
        ours = Envelope("b@example.test", ("x@remote.test",), "c", "127.0.0.1", authenticated="b@example.test")
        headers = requestHeaders(message("ham", envelope=ours), password="s3cret")
        self.assertEqual(headers.getRawHeaders(b"User"), [b"b@example.test"])
        self.assertEqual(headers.getRawHeaders(b"Password"), [b"s3cret"])

    def test_answer(self) -> None:
        """
        The action, scores, matched rules and SMTP message are read.
        """
        result = parseAnswer(b'{"action":"soft reject","score":2.5,"required_score":15,'
                             b'"symbols":{"B":{"score":1.5},"A":{"score":1}},"messages":{"smtp_message":"Later"}}')
        self.assertEqual((result.action, result.score, result.requiredScore, result.symbols, result.smtpMessage),
                         ("soft reject", 2.5, 15.0, (("A", 1.0), ("B", 1.5)), "Later"))

    def test_nonsense(self) -> None:
        """
        Anything that is not rspamd's answer is a scan error.
        """
        for body in (b"<html>", b"[]", b'{"score":1}', b'{"action":"explode","score":1,"required_score":2}',
                     b'{"action":"reject","score":"high","required_score":2}'):
            self.assertRaises(ScanError, parseAnswer, body)


class RealRspamdTests(TestCase):
    """
    Checks by Debian's rspamd.
    """

    timeout = 60

    async def setUp(self):
        """
        Start rspamd and a client of it.
        """
        self.rspamd = await deferToThread(Rspamd(self).start)
        runner = BlockingRunner(reactor, 0, 2, "rspamd-test")
        runner.startService()
        self.addCleanup(runner.stopService)
        self.runner = runner
        self.client = RspamdClient(reactor, runner, self.rspamd.url)
        self.addCleanup(self.client.close)

    async def test_verdicts(self) -> None:
        """
        Each test verdict comes back as the action rspamd chose, over one
        kept-alive connection.
        """
        found = []
        for i, verdict in enumerate(("ham", "spam", "reject", "soft-reject")):
            result = await self.client.check(message(verdict, f"Q{i}"))
            found.append((result.action, dict(result.symbols).get("QT_TEST_SPAM"),
                          dict(result.symbols).get("QT_TEST_REJECT"), result.smtpMessage))
        self.assertEqual(found, [("no action", None, None, ""), ("add header", 8.0, None, ""),
                                 ("reject", None, 20.0, ""),
                                 ("soft reject", None, None, "Try again later, test soft reject")])

    async def test_spilledMessage(self) -> None:
        """
        A 2 MB message spilled to a file goes in chunks, with its length.
        """
        body = message("spam").inline + b"0123456789abcdef\n" * 120_000
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        result = await self.client.check(SpooledMessage("Q9", ENVELOPE, len(body), path=path))
        self.assertEqual(result.action, "add header")

    async def test_down(self) -> None:
        """
        Nothing listening: a scan error.
        """
        client = RspamdClient(reactor, self.runner, f"http://127.0.0.1:{freePort()}")
        with self.assertRaises(ScanError) as caught:
            await client.check(message("ham"))
        self.assertIn("request failed", str(caught.exception))

    async def test_notRspamd(self) -> None:
        """
        An HTTP error from the server (a wrong path) is a scan error.
        """
        client = RspamdClient(reactor, self.runner, self.rspamd.url + "/nothing-here")
        self.addCleanup(client.close)
        with self.assertRaises(ScanError) as caught:
            await client.check(message("ham"))
        self.assertIn("rspamd: HTTP", str(caught.exception))
