"""
Issue 20: a full disk is refused with 452 4.3.1 at MAIL (against the
declared SIZE, or the reserve without one) and at DATA, before any of the
body arrives; sessions over a L{StringTransport} with a fake C{statvfs}.
"""

import os
import stat

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.config import loadConfig
from qutemail.service import buildService
from qutemail.store.diskspace import DiskSpace, reserveFor
from tests.integration.support import writeConfig
from tests.listener.test_smtp import EHLO_REPLY
from tests.store.test_diskspace import FRAGMENT_BYTES, RESERVE, FakeStatvfs
from tests.support import buildStack, connect, converse

FULL = b"452 4.3.1 Insufficient system storage, try again later\r\n"
SENDER_OK = b"250 2.1.0 Sender OK\r\n"
RECIPIENT_OK = b"250 2.1.5 Recipient OK\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"


class StorageFullTests(SynchronousTestCase):
    """
    The session policy asks the L{DiskSpace} of the data directory.
    """

    def setUp(self):
        """
        A stack (1 MiB size limit) whose disk has 512 KiB above the 100 MiB
        reserve, measured.
        """
        self.statvfs = FakeStatvfs(RESERVE + 512 * 1024)
        self.space = DiskSpace("/var/qutemail", InlineRunner(), RESERVE, self.statvfs)
        self.space.refresh()
        self.dataDir = self.mktemp()
        self.stack = buildStack(self.dataDir, diskSpace=self.space)
        self.proto, self.transport = connect(self.stack.factory)
        self.assertEqual(self.send(b"EHLO client.test\r\n"), EHLO_REPLY)

    def send(self, data: bytes) -> bytes:
        """
        Send lines, return the replies.
        """
        return converse(self.proto, self.transport, data)

    def setFree(self, freeBytes: int) -> None:
        """
        The disk now has C{freeBytes} free, and the next measurement says
        so.
        """
        self.statvfs.freeBytes = freeBytes
        self.space.refresh()

    def test_mailSizeOverFreeSpace(self):
        """
        MAIL with a SIZE (under the size limit) larger than the free space
        above the reserve is refused with 452 4.3.1; one that fits is
        accepted.
        """
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test> SIZE=524289\r\n"), FULL)
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test> SIZE=524288\r\n"), SENDER_OK)

    def test_overTheLimitIsStillTooBig(self):
        """
        A SIZE over the size limit gets the definite 552 5.3.4, not a 452
        that would have the client try again.
        """
        self.setFree(0)
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test> SIZE=1048577\r\n"),
                         b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")

    def test_mailWithoutSizeUnderReserve(self):
        """
        MAIL without SIZE is refused with 452 4.3.1 when the free space is
        under the reserve, and accepted again once it is not.
        """
        self.setFree(RESERVE - FRAGMENT_BYTES)
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test>\r\n"), FULL)
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test> SIZE=10\r\n"), FULL)
        self.setFree(RESERVE)
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test>\r\n"), SENDER_OK)

    def test_dataUnderReserve(self):
        """
        When the disk fills between MAIL and DATA, DATA is refused with 452
        4.3.1 and no 354: no body is taken, nothing is spooled, and the
        session goes on (the transaction is still there for a later DATA).
        """
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"),
                         SENDER_OK + RECIPIENT_OK)
        self.setFree(RESERVE - FRAGMENT_BYTES)
        self.assertEqual(self.send(b"DATA\r\n"), FULL)
        self.assertEqual(os.listdir(os.path.join(self.dataDir, "queue", "large")), [])
        self.assertIsNone(self.proto._data)
        self.setFree(RESERVE)
        self.assertEqual(self.send(b"DATA\r\n"), GO_AHEAD)
        replies = self.send(b"Subject: late\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(replies.startswith(b"250 2.0.0 Ok: queued as "), replies)
        self.assertEqual(len(self.stack.newFiles("alice@example.test")), 1)

    def test_refusalsAreNotErrors(self):
        """
        Our lack of room is not the client's fault: twenty refusals do not
        end the session as twenty errors would.
        """
        self.setFree(0)
        self.assertEqual(self.send(b"MAIL FROM:<x@remote.test>\r\n" * 25), FULL * 25)
        self.assertFalse(self.transport.disconnecting)

    def test_unmeasuredAcceptsMail(self):
        """
        Before the first measurement (the server just started), nothing is
        refused for lack of room.
        """
        stack = buildStack(self.mktemp(), diskSpace=DiskSpace("/var/qutemail", InlineRunner(), RESERVE,
                                                                FakeStatvfs(0)))
        proto, transport = connect(stack.factory)
        replies = converse(proto, transport, b"EHLO client.test\r\nMAIL FROM:<x@remote.test> SIZE=100\r\n"
                                             b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(replies.endswith(SENDER_OK + RECIPIENT_OK + GO_AHEAD), replies)


class WiringTests(SynchronousTestCase):
    """
    C{buildService} measures C{data_dir} and gives the measurement to the
    policies of the MTA and submission listeners.
    """

    def test_serviceTree(self):
        """
        The C{disk-space} service measures the data directory (made, 0700,
        when missing) with the reserve for the configured size limit, and
        both listeners' policies ask it.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        dataDir = os.path.join(base, "var")
        config = loadConfig(writeConfig(os.path.join(base, "q.ini"), dataDir, mtaPort=2525,
                                        submissionPort=2587, maxMessageSize="80M",
                                        extra="[qkd]\nencrypt = no\n"), environ={})
        root = buildService(config, MemoryReactorClock())
        space = root.getServiceNamed("disk-space").space
        self.assertEqual((space.path, space.reserveBytes), (dataDir, reserveFor(80 * 1024 * 1024)))
        self.assertEqual(stat.S_IMODE(os.stat(dataDir).st_mode), 0o700)
        for name in ("mta", "submission"):
            self.assertIs(root.listeners[name].smtpFactory.policy.diskSpace, space)
