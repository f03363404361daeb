"""
Tests for L{qutemail.content.clamd}: the C{INSTREAM} framing and replies,
and scans by a real clamd (Debian's, with a signature database the test
writes) over TCP and its Unix socket.
"""

import base64
import struct

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.blocking import BlockingRunner, InlineRunner
from qutemail.content.clamd import ClamdClient, InstreamProtocol, clamdEndpoint, frameChunk, parseReply
from qutemail.content.feed import CHUNK_BYTES, MessageFeed
from qutemail.content.results import ClamdResult, ScanError
from qutemail.message import Envelope, SpooledMessage
from tests.content.daemons import EICAR, TEST_MALWARE, Clamd
from tests.integration.support import freePort

ENVELOPE = Envelope("a@remote.test", ("b@example.test",), "c.remote.test", "192.0.2.1")


def withAttachment(payload: bytes) -> bytes:
    """
    @return: a message with C{payload} base64-encoded in a MIME attachment.
    """
    encoded = base64.encodebytes(payload)
    return (b"From: a@remote.test\nSubject: files\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/mixed; boundary=XYZ\n\n--XYZ\nContent-Type: text/plain\n\nSee attached.\n"
            b"--XYZ\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
            b"Content-Disposition: attachment; filename=tool.com\n\n" + encoded + b"--XYZ--\n")


class ProtocolTests(SynchronousTestCase):
    """
    The wire format, without a clamd.
    """

    def test_frame(self) -> None:
        """
        A chunk goes with its length in 4 bytes, network order.
        """
        self.assertEqual(frameChunk(b"abc"), b"\0\0\0\x03abc")

    def test_replies(self) -> None:
        """
        C{OK} is clean, C{<name> FOUND} names the signature, C{ERROR} and
        anything else are scan errors.
        """
        self.assertEqual(parseReply(b"stream: OK"), ClamdResult())
        self.assertEqual(parseReply(b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND"),
                         ClamdResult("Eicar-Test-Signature.UNOFFICIAL"))
        for bad in (b"INSTREAM size limit exceeded. ERROR", b"HTTP/1.1 400 Bad Request", b"stream:  FOUND", b""):
            self.assertRaises(ScanError, parseReply, bad)

    def test_stream(self) -> None:
        """
        The command, the message in chunks, then a zero-length chunk; the
        reply up to its NUL is the verdict.
        """
        body = b"x" * (CHUNK_BYTES + 10)
        message = SpooledMessage("Q1", ENVELOPE, len(body), inline=body)
        protocol = InstreamProtocol(MessageFeed(InlineRunner(), message, frame=frameChunk))
        transport = StringTransport()
        protocol.makeConnection(transport)
        sent = transport.value()
        self.assertEqual(sent, b"zINSTREAM\0" + struct.pack(">I", CHUNK_BYTES) + b"x" * CHUNK_BYTES
                         + struct.pack(">I", 10) + b"x" * 10 + b"\0\0\0\0")
        protocol.dataReceived(b"stream: Test FOU")
        self.assertNoResult(protocol.reply)
        protocol.dataReceived(b"ND\0")
        self.assertEqual(self.successResultOf(protocol.reply), ClamdResult("Test"))
        self.assertTrue(transport.disconnecting)

    def test_closedWithoutReply(self) -> None:
        """
        A connection that ends before the reply is a scan error.
        """
        message = SpooledMessage("Q1", ENVELOPE, 3, inline=b"abc")
        protocol = InstreamProtocol(MessageFeed(InlineRunner(), message, frame=frameChunk))
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertIn("closed without a reply", str(self.failureResultOf(protocol.reply, ScanError).value))


class RealClamdTests(TestCase):
    """
    Scans by Debian's clamd.
    """

    timeout = 60

    async def setUp(self):
        """
        Start clamd.
        """
        self.clamd = await deferToThread(Clamd(self).start)
        self.runner = BlockingRunner(reactor, 0, 4, "clamd-test")
        self.runner.startService()
        self.addCleanup(self.runner.stopService)

    def client(self, socket: str = "") -> ClamdClient:
        """
        @return: a client of our clamd, over TCP unless C{socket} is given.
        """
        return ClamdClient(clamdEndpoint(reactor, socket or f"127.0.0.1:{self.clamd.port}"), self.runner)

    def spilled(self, body: bytes) -> SpooledMessage:
        """
        @return: a message spilled to a file, as large ones are.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        return SpooledMessage("Q2", ENVELOPE, len(body), path=path)

    async def test_cleanAndInfected(self) -> None:
        """
        A clean message is clean; EICAR in a base64 attachment is found by
        its signature's name.
        """
        clean = withAttachment(b"just some bytes")
        self.assertEqual(await self.client().scan(SpooledMessage("Q1", ENVELOPE, len(clean), inline=clean)),
                         ClamdResult())
        infected = withAttachment(EICAR)
        result = await self.client().scan(SpooledMessage("Q1", ENVELOPE, len(infected), inline=infected))
        self.assertIn("Eicar-Test-Signature", result.virus)

    async def test_largeFileOverUnixSocket(self) -> None:
        """
        A 3 MB spilled message with our test string at its end is read in
        chunks and found, over clamd's Unix socket.
        """
        body = b"Subject: big\n\n" + b"0123456789abcdef\n" * 180_000 + TEST_MALWARE + b"\n"
        result = await self.client(self.clamd.socketPath).scan(self.spilled(body))
        self.assertEqual(result, ClamdResult("QutEmail-Test-Malware.UNOFFICIAL"))

    async def test_down(self) -> None:
        """
        Nothing listening: a scan error, not a verdict.
        """
        client = ClamdClient(clamdEndpoint(reactor, f"127.0.0.1:{freePort()}"), self.runner)
        body = b"Subject: x\n\nhello\n"
        with self.assertRaises(ScanError) as caught:
            await client.scan(SpooledMessage("Q1", ENVELOPE, len(body), inline=body))
        self.assertIn("cannot connect", str(caught.exception))

    async def test_hungCancelled(self) -> None:
        """
        A clamd that accepts but does not answer leaves the scan waiting;
        cancelling it drops the connection.
        """
        self.clamd.pause()
        self.addCleanup(self.clamd.resume)
        body = b"Subject: x\n\nhello\n"
        d: Deferred = self.client().scan(SpooledMessage("Q1", ENVELOPE, len(body), inline=body))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(d.called)
        d.cancel()
        self.failureResultOf(d, CancelledError)
