"""
Tests for the content step of L{qutemail.pipeline.intake}: the scanners'
verdict refuses a message before the journal sees it, or files it, with
their trace fields for mail from outside only.
"""

import attrs
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.content.results import ClamdResult, RspamdResult
from qutemail.content.scanner import ContentScanner
from qutemail.message import Envelope, QueueIds
from qutemail.pipeline.intake import Intake
from tests.pipeline.test_intake import ALICE, BOB, FakeJournal, FakeRouter, FakeWriter


class AnsweringScanner:
    """
    A scanner client that answers every message the same.

    @ivar seen: the queue ids it was asked about.
    """

    def __init__(self, answer) -> None:
        """
        @param answer: the result to give.
        """
        self.answer = answer
        self.seen: list[str] = []

    def check(self, message):
        """
        @return: the answer, at once.
        """
        self.seen.append(message.queueId)
        return succeed(self.answer)

    scan = check


class IntakeContentTests(SynchronousTestCase):
    """
    The intake with content scanners.
    """

    def makeIntake(self, rspamd, clamd, scanSubmission=True) -> Intake:
        """
        @return: an intake over fakes, with a real L{ContentScanner}.
        """
        self.clock = Clock()
        self.journal = FakeJournal()
        scanner = ContentScanner(clock=self.clock, rspamd=AnsweringScanner(rspamd), clamd=AnsweringScanner(clamd),
                                 maxScanBytes=10_000, scanSubmission=scanSubmission)
        self.scanner = scanner
        return Intake(journal=self.journal, router=FakeRouter(), clock=self.clock, runner=InlineRunner(),
                      queueIds=QueueIds(self.clock), spoolDirectory=self.mktemp(), hostname="mx.example.test",
                      content=scanner)

    def submit(self, intake, authenticated=None):
        """
        @return: the reply's Deferred and the writer.
        """
        writer = FakeWriter()
        envelope = Envelope(BOB, (ALICE,), "client.test", "192.0.2.7", 0.0, authenticated=authenticated)
        return intake.submit("Q1", writer, envelope), writer

    def test_malwareRefusedBeforeCommit(self) -> None:
        """
        A message clamd finds malware in gets 554 5.7.0 naming it; its body
        is discarded and the journal never sees it.
        """
        intake = self.makeIntake(RspamdResult("no action", 0.0, 15.0), ClamdResult("Eicar-Test-Signature"))
        d, writer = self.submit(intake)
        reply = self.successResultOf(d)
        self.assertEqual((reply.code, reply.enhanced), (554, "5.7.0"))
        self.assertIn("Eicar-Test-Signature", reply.text)
        self.assertTrue(writer.discarded)
        self.assertEqual(self.journal.commits, {})

    def test_fieldsAndFolderCommitted(self) -> None:
        """
        What the journal gets carries the folder and the trace fields.
        """
        intake = self.makeIntake(RspamdResult("add header", 8.0, 15.0, (("QT_TEST_SPAM", 8.0),)), ClamdResult())
        committed = []
        commit = self.journal.commit
        self.journal.commit = lambda message: committed.append(message) or commit(message)
        self.submit(intake)
        envelope = committed[0].envelope
        self.assertEqual(envelope.folder, "Junk")
        self.assertIn("X-Spamd-Result: default: True [8.00 / 15.00];\n\tQT_TEST_SPAM(8.00)\n", envelope.addedHeaders)
        self.assertIn("X-Virus-Scanned: clamd; clean\n", envelope.addedHeaders)

    def test_ownUsersMailWithoutFields(self) -> None:
        """
        Our own users' mail is scanned, but gets no fields in clear (it is
        stored encrypted).
        """
        intake = self.makeIntake(RspamdResult("no action", 0.5, 15.0), ClamdResult())
        committed = []
        commit = self.journal.commit
        self.journal.commit = lambda message: committed.append(message) or commit(message)
        self.submit(intake, authenticated=BOB)
        self.assertEqual(self.scanner.clamd.seen, ["Q1"])
        self.assertEqual(committed[0].envelope.addedHeaders, "")

    def test_submissionNotScanned(self) -> None:
        """
        With C{scan_submission = no}, our users' mail is not scanned, even
        when it would be refused.
        """
        intake = self.makeIntake(RspamdResult("reject", 30.0, 15.0), ClamdResult("X"), scanSubmission=False)
        self.submit(intake, authenticated=BOB)
        self.assertEqual((self.scanner.rspamd.seen, self.scanner.clamd.seen), ([], []))
        self.assertIn("Q1", self.journal.commits)

    def test_peerSiteMailScannedOpened(self) -> None:
        """
        Mail from a peer site is scanned once it is opened, and gets no
        fields in clear (it is stored encrypted).
        """
        intake = self.makeIntake(RspamdResult("no action", 0.0, 15.0), ClamdResult())
        seen = []

        class Transit:
            def open(self, message, traceBytes):
                opened = attrs.evolve(message, envelope=attrs.evolve(message.envelope, transitKeyId="K1"))
                return succeed(opened)

        scan = self.scanner.scan
        self.scanner.scan = lambda message: seen.append(message.envelope.transitKeyId) or scan(message)
        intake.transit = Transit()
        committed = []
        commit = self.journal.commit
        self.journal.commit = lambda message: committed.append(message) or commit(message)
        self.submit(intake)
        self.assertEqual(seen, ["K1"])
        self.assertEqual(committed[0].envelope.addedHeaders, "")
