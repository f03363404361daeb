"""
Tests for L{qutemail.pipeline.transitkeys}: the keys of received transit
mail are erased from the vault once no resend can come.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.memory import MemoryKeyVault
from qutemail.blocking import InlineRunner
from qutemail.interfaces import KeyGone
from qutemail.pipeline.transitkeys import SWEEP_SECONDS, TransitKeyLog, TransitKeySweep

DAY = 86400.0


class TransitKeyLogTests(SynchronousTestCase):
    """
    Keys noted in the log are erased by a sweep once older than the
    lifetime, and only then.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.path = os.path.join(self.mktemp(), "transit-keys")
        os.makedirs(os.path.dirname(self.path))
        self.keyLog = TransitKeyLog(self.path, InlineRunner(), self.clock)
        self.vault = MemoryKeyVault()

    def keep(self, vaultId: str) -> None:
        self.successResultOf(self.vault.store(vaultId, b"k" * 32))
        self.successResultOf(self.keyLog.note(vaultId))

    def test_erasedAfterLifetime(self) -> None:
        """
        A key kept five days ago is erased by a sweep with a five-day
        lifetime; a younger one stays, in the vault and in the log.
        """
        self.keep("transit-old")
        self.clock.advance(2 * DAY)
        self.keep("transit-young")
        self.clock.advance(3 * DAY - 1)
        self.assertEqual(self.successResultOf(self.keyLog.sweep(self.vault, 5 * DAY)), 0)
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(self.keyLog.sweep(self.vault, 5 * DAY)), 1)
        self.failureResultOf(self.vault.fetch("transit-old"), KeyGone)
        self.assertEqual(self.successResultOf(self.vault.fetch("transit-young")), b"k" * 32)
        with open(self.path) as f:
            self.assertEqual([line.split()[0] for line in f], ["transit-young"])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_alreadyGoneAndBadLines(self) -> None:
        """
        A key already erased counts as erased; a damaged line is skipped.
        """
        self.successResultOf(self.keyLog.note("transit-gone"))
        with open(self.path, "ab") as f:
            f.write(b"garbage\n")
        self.clock.advance(10 * DAY)
        self.assertEqual(self.successResultOf(self.keyLog.sweep(self.vault, 5 * DAY)), 1)

    def test_serviceSweepsHourly(self) -> None:
        """
        The service sweeps at start and every L{SWEEP_SECONDS}.
        """
        self.keep("transit-a")
        service = TransitKeySweep(self.keyLog, self.vault, DAY)
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(self.vault.fetch("transit-a"))
        self.clock.advance(DAY + SWEEP_SECONDS)
        self.failureResultOf(self.vault.fetch("transit-a"), KeyGone)
