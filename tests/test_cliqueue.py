"""
Tests for the queue commands of L{qutemail.cli}: C{queue show}, the
commands that work with the server stopped, and the control socket.
"""

import io
import os
import shutil
import sys
import tempfile
import time

from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail import cli
from qutemail.blocking import InlineRunner
from qutemail.message import Envelope, SpooledMessage
from qutemail.queue.control import ControlService, controlPath
from qutemail.queue.deferred import DeferredQueue
from qutemail.message import RecipientState
from qutemail.queue.journal import Journal
from tests.queue.test_control import FakeScheduler

from tests.test_cli import CONFIG, CommandTestsMixin


QUEUED_ID = "18F2A3B4C5D6E7ABCD0001"
OTHER_ID = "18F2A3B4C5D6E7ABCD0002"
# A stored message, LF line ends, with a byte that is not UTF-8.
STORED = (b"From: Alice <alice@example.test>\nTo: dave@remote.test\nSubject: hi\n\n"
          b"caf\xe9\n.dot line\nno final newline")


def queueMessage(dataDir: str, queueId: str = QUEUED_ID, dkimHeader: str = "") -> None:
    """
    Put a message with a deferred and a pending recipient in the deferred
    queue of C{dataDir}, queued five minutes ago.
    """
    directory = os.path.join(dataDir, "queue", "deferred")
    envelope = Envelope("x@remote.test", ("alice@example.test", "dave@remote.test"), "c", "192.0.2.1",
                        time.time() - 300)
    DeferredQueue(directory, InlineRunner()).add(SpooledMessage(queueId, envelope, len(STORED), inline=STORED), [
        RecipientState("alice@example.test", 0, "deferred", 2, time.time() + 600, "452 4.2.2 Mailbox full"),
        RecipientState("dave@remote.test", 1, "pending", 0, 0.0, ""),
    ], dkimHeader)


class QueueShowTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{queue show ID}: read-only, whether or not the server runs.
    """

    def runBinary(self, *args: str) -> tuple[int, bytes, str]:
        """
        Run a command whose standard output is bytes.

        @return: the exit status, standard output and standard error.
        """
        raw, stderr = io.BytesIO(), io.StringIO()
        stdout = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        status = cli.main(["--config", self.configPath, *args])
        stdout.flush()
        return status, raw.getvalue(), stderr.getvalue()

    def test_show(self) -> None:
        """
        The envelope, each recipient's state, attempts, next attempt and
        last reply, then a blank line and the stored message byte for
        byte; the queue is left as it was.
        """
        queueMessage(self.dataDir, dkimHeader="DKIM-Signature: v=1; a=rsa-sha256\n")
        directory = os.path.join(self.dataDir, "queue", "deferred")
        before = {name: os.path.getmtime(os.path.join(directory, name)) for name in os.listdir(directory)}
        status, out, err = self.runBinary("queue", "show", QUEUED_ID)
        self.assertEqual((status, err), (0, ""))
        header, _, body = out.partition(b"\n\n")
        self.assertEqual(body, STORED)
        lines = header.decode().splitlines()
        self.assertEqual(lines[0], f"queue id:     {QUEUED_ID}")
        self.assertEqual(lines[1], "sender:       <x@remote.test>")
        self.assertRegex(lines[2], r"^queued:       \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \([45]m ago\)$")
        self.assertEqual(lines[3], f"size:         {len(STORED)} bytes")
        self.assertEqual(lines[4], "DKIM-signed:  yes")
        self.assertRegex(lines[5], r"^recipient:    <alice@example\.test>  deferred  attempts=2  "
                                   r"next attempt in (9|10)m  last reply: 452 4\.2\.2 Mailbox full$")
        self.assertEqual(lines[6], "recipient:    <dave@remote.test>  pending  attempts=0  next attempt now")
        self.assertEqual(len(lines), 7)
        self.assertEqual({name: os.path.getmtime(os.path.join(directory, name)) for name in os.listdir(directory)},
                         before)

    def test_unsigned(self) -> None:
        """
        A message without a DKIM signature says so; the id may be given in
        lower case.
        """
        queueMessage(self.dataDir)
        status, out, err = self.runBinary("queue", "show", QUEUED_ID.lower())
        self.assertEqual((status, err), (0, ""))
        self.assertIn(b"\nDKIM-signed:  no\n", out)
        self.assertTrue(out.endswith(b"\n\n" + STORED))

    def test_inFlight(self) -> None:
        """
        A message still in a journal is shown with its recipients active.
        """
        journal = Journal(os.path.join(self.dataDir, "queue", "journal"), InlineRunner(), Clock())
        journal.recover()
        envelope = Envelope("x@remote.test", ("alice@example.test",), "c", "192.0.2.1", time.time())
        journal.commit(SpooledMessage(QUEUED_ID, envelope, len(STORED), inline=STORED))
        status, out, err = self.runBinary("queue", "show", QUEUED_ID)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(b"\nrecipient:    <alice@example.test>  active\n\n", out)
        self.assertIn(b"\nDKIM-signed:  not yet\n", out)
        self.assertTrue(out.endswith(b"\n\n" + STORED))

    def test_unknown(self) -> None:
        """
        An id not in the queue is one line of error.
        """
        queueMessage(self.dataDir)
        self.assertEqual(self.runFailing("queue", "show", OTHER_ID), f"no message {OTHER_ID} in the queue")

    def test_badId(self) -> None:
        """
        Something that is not a queue id is refused before any file is
        looked at.
        """
        for text in ["../deferred/x", "G00D", "A" * 41, ""]:
            self.assertTrue(self.runFailing("queue", "show", text).startswith(f"bad queue id {text!r}"))


class QueueOfflineTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{queue flush}, C{queue delete} and C{queue bounce} with no server
    running.
    """

    def test_flush(self) -> None:
        """
        C{queue flush} needs the server.
        """
        self.assertEqual(self.runFailing("queue", "flush"),
                         "the server is not running; queued mail is retried when it starts")

    def test_bounce(self) -> None:
        """
        C{queue bounce} needs the server, which sends the bounce.
        """
        queueMessage(self.dataDir)
        message = self.runFailing("queue", "bounce", QUEUED_ID)
        self.assertIn("the server is not running", message)
        self.assertIn("bounce", message)
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "queue", "deferred", QUEUED_ID + ".json")))

    def test_delete(self) -> None:
        """
        C{queue delete} removes the entry's files itself; other entries
        stay.
        """
        queueMessage(self.dataDir)
        queueMessage(self.dataDir, OTHER_ID)
        self.assertEqual(self.runOk("queue", "delete", QUEUED_ID), f"deleted {QUEUED_ID}\n")
        directory = os.path.join(self.dataDir, "queue", "deferred")
        self.assertEqual(sorted(os.listdir(directory)), [OTHER_ID + ".json", OTHER_ID + ".msg"])
        self.assertNotIn(QUEUED_ID, self.runOk("queue", "list"))

    def test_deleteUnknown(self) -> None:
        """
        Deleting an id not in the queue fails with one line.
        """
        self.assertEqual(self.runFailing("queue", "delete", QUEUED_ID), f"no message {QUEUED_ID} in the queue")
        self.assertTrue(self.runFailing("queue", "delete", "../users").startswith("bad queue id '../users'"))

    def test_deleteInFlight(self) -> None:
        """
        A message still in the journal cannot be deleted offline; the error
        says what to do.
        """
        journal = Journal(os.path.join(self.dataDir, "queue", "journal"), InlineRunner(), Clock())
        journal.recover()
        envelope = Envelope("x@remote.test", ("alice@example.test",), "c", "192.0.2.1", time.time())
        journal.commit(SpooledMessage(QUEUED_ID, envelope, 5, inline=b"body\n"))
        self.assertIn("start the server", self.runFailing("queue", "delete", QUEUED_ID))


class QueueControlTests(CommandTestsMixin, TestCase):
    """
    C{queue flush}, C{queue delete} and C{queue bounce} with a server
    listening on the control socket (a L{ControlService} over a fake
    scheduler); the command runs in a thread, as it blocks.
    """

    def setUp(self) -> None:
        """
        A data directory with a short path (UNIX socket paths are short),
        and the control service listening in it.
        """
        from twisted.internet import reactor

        super().setUp()
        self.dataDir = tempfile.mkdtemp(prefix="qm-")
        self.addCleanup(shutil.rmtree, self.dataDir, True)
        with open(self.configPath, "w") as f:
            f.write(CONFIG.replace("data_dir = data", f"data_dir = {self.dataDir}"))
        self.scheduler = FakeScheduler()
        service = ControlService(reactor, controlPath(self.dataDir), self.scheduler)
        service.startService()
        self.addCleanup(service.stopService)

    async def test_flush(self) -> None:
        """
        C{queue flush} asks the server and prints its answer.
        """
        self.assertEqual(await deferToThread(self.runOk, "queue", "flush"), "flushed 2 messages\n")
        self.assertEqual(self.scheduler.calls, [("flush", None)])

    async def test_delete(self) -> None:
        """
        C{queue delete} goes through the server, which removes the entry:
        the command leaves the files alone.
        """
        queueMessage(self.dataDir)
        self.assertEqual(await deferToThread(self.runOk, "queue", "delete", QUEUED_ID.lower()),
                         f"deleted {QUEUED_ID}\n")
        self.assertEqual(self.scheduler.calls, [("delete", QUEUED_ID)])
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "queue", "deferred", QUEUED_ID + ".json")))

    async def test_bounce(self) -> None:
        """
        C{queue bounce} asks the server, which sends the bounce.
        """
        self.assertEqual(await deferToThread(self.runOk, "queue", "bounce", QUEUED_ID), f"bounced {QUEUED_ID}\n")
        self.assertEqual(self.scheduler.calls, [("bounceNow", QUEUED_ID)])

    async def test_unknown(self) -> None:
        """
        The server's refusal of an unknown id is one line of error.
        """
        for action in ["delete", "bounce"]:
            message = await deferToThread(self.runFailing, "queue", action, OTHER_ID)
            self.assertEqual(message, f"no message {OTHER_ID} in the queue")

    async def test_internalError(self) -> None:
        """
        A failure inside the server is reported as one line pointing to
        the server's log.
        """
        self.scheduler.error = RuntimeError("boom")
        message = await deferToThread(self.runFailing, "queue", "flush")
        self.assertEqual(message, "internal error, see the server log")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
