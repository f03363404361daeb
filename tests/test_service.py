"""
Tests of the service assembly: crash recovery through L{SpoolService}, and
the sequential stop of the service tree.
"""

import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.interfaces import Account
from qutemail.service import SequentialMultiService, SpoolService
from tests.listener.test_smtp import ENVELOPE
from tests.support import QueuedRunner, buildStack, connect, converse


class RecoveryTests(SynchronousTestCase):
    """
    Messages acknowledged but not yet delivered when the process died are
    delivered by the next start, exactly once.
    """

    def acceptWithoutDelivering(self, dataDir: str, count: int) -> tuple:
        """
        Accept C{count} messages whose Maildir deliveries are held back.

        @return: the stack and the runner holding the deliveries.
        """
        stack = buildStack(dataDir)
        # RCPT reads usage through the store's runner: cache it first.
        self.successResultOf(stack.store.usage(Account("alice@example.test")))
        held = QueuedRunner()
        stack.store._writer.runner = held
        proto, transport = connect(stack.factory)
        for i in range(count):
            replies = converse(proto, transport, ENVELOPE + b"Subject: %d\r\nX-Seq: %d\r\n\r\nbody\r\n.\r\n" % (i, i))
            self.assertIn(b"250 2.0.0 Ok: queued as", replies)
        return stack, held

    def restart(self, dataDir: str):
        """
        Start a fresh stack on the same directory, recovering as the server
        does at start.

        @return: the new stack.
        """
        stack = buildStack(dataDir)
        service = SpoolService(stack.intake, stack.queue, os.path.join(dataDir, "queue", "large"))
        service.startService()
        self.addCleanup(service.stopService)
        return stack

    def sequences(self, stack) -> list[int]:
        """
        The X-Seq values of alice's messages in C{new/} and C{cur/}, sorted.
        """
        mailbox = stack.mailbox("alice@example.test")
        out = []
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(mailbox, sub)):
                with open(os.path.join(mailbox, sub, name), "rb") as f:
                    out.append(int(f.read().split(b"X-Seq: ")[1].split(b"\n")[0]))
        return sorted(out)

    def test_undeliveredRecovered(self):
        """
        Forty acknowledged messages none of which reached the Maildir are all
        delivered after the restart.
        """
        dataDir = self.mktemp()
        stack, held = self.acceptWithoutDelivering(dataDir, 40)
        self.assertEqual(stack.newFiles("alice@example.test"), [])
        restarted = self.restart(dataDir)
        self.assertEqual(self.sequences(restarted), list(range(40)))

    def test_partlyDeliveredNotDuplicated(self):
        """
        When some copies were stored before the crash but not yet marked
        done in the journal, the restart stores only the missing ones.
        """
        dataDir = self.mktemp()
        stack, held = self.acceptWithoutDelivering(dataDir, 10)
        # Write the first three batches to disk, but let no callback run:
        # the process dies before the journal learns they are done.
        for f, args, kwargs, _ in held.calls[:3]:
            f(*args, **kwargs)
        self.assertEqual(len(stack.newFiles("alice@example.test")), 3)
        # The user read one of them meanwhile: it moved to cur/ with a flag.
        mailbox = stack.mailbox("alice@example.test")
        name = sorted(os.listdir(os.path.join(mailbox, "new")))[0]
        os.rename(os.path.join(mailbox, "new", name), os.path.join(mailbox, "cur", name + ":2,S"))
        restarted = self.restart(dataDir)
        self.assertEqual(self.sequences(restarted), list(range(10)))

    def test_nothingAfterCleanFinish(self):
        """
        Once messages are delivered and their done records written, a
        restart delivers nothing again and leaves one (empty) segment.
        """
        dataDir = self.mktemp()
        stack = buildStack(dataDir)
        proto, transport = connect(stack.factory)
        converse(proto, transport, ENVELOPE + b"Subject: once\r\n\r\nbody\r\n.\r\n")
        stack.clock.advance(1)
        self.successResultOf(stack.journal.close())
        restarted = self.restart(dataDir)
        self.assertEqual(len(restarted.newFiles("alice@example.test")), 1)


class _Recorder(Service):
    """
    A child service that records when it stops and can hold its stop open.
    """

    def __init__(self, name: str, log: list, hold: Deferred | None = None) -> None:
        """
        @param name: its name in the log.
        @param log: where stops are recorded.
        @param hold: a Deferred its stop waits for.
        """
        self.setName(name)
        self.log = log
        self.hold = hold

    def stopService(self):
        """
        Record the stop, and return the held Deferred.
        """
        Service.stopService(self)
        self.log.append(self.name)
        return self.hold


class SequentialStopTests(SynchronousTestCase):
    """
    The service tree stops its children one at a time, last first.
    """

    def test_waitsForEachChild(self):
        """
        A child's stop starts only once the stop of the child after it has
        finished.
        """
        log: list = []
        hold: Deferred = Deferred()
        root = SequentialMultiService()
        _Recorder("first", log).setServiceParent(root)
        _Recorder("second", log, hold).setServiceParent(root)
        _Recorder("third", log).setServiceParent(root)
        root.startService()
        d = root.stopService()
        self.assertEqual(log, ["third", "second"])
        self.assertNoResult(d)
        hold.callback(None)
        self.assertEqual(log, ["third", "second", "first"])
        self.successResultOf(d)
