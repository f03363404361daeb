"""
Tests for L{qutemail.qkd.sparekeys}: keys taken ahead are handed out
oldest first, each once, and not once they are too old.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail.qkd.sparekeys import SPARE_SECONDS, SpareKeys


class SpareKeysTests(SynchronousTestCase):
    """
    L{SpareKeys}.
    """

    def test_oldestFirstEachOnce(self) -> None:
        """
        Keys come out in the order they were kept, and never twice.
        """
        spare = SpareKeys()
        spare.keep(["a", "b"], 10.0)
        spare.keep(["c"], 11.0)
        self.assertEqual(spare.take(2, 12.0), ["a", "b"])
        self.assertEqual(spare.take(5, 12.0), ["c"])
        self.assertEqual((spare.take(1, 12.0), len(spare)), ([], 0))

    def test_agedKeysDropped(self) -> None:
        """
        A key kept longer than L{SPARE_SECONDS} is dropped, not handed
        out; one kept exactly that long still is.
        """
        spare = SpareKeys()
        spare.keep(["old"], 0.0)
        spare.keep(["edge"], 5.0)
        spare.keep(["new"], 20.0)
        self.assertEqual(spare.take(3, 5.0 + SPARE_SECONDS), ["edge", "new"])
        self.assertEqual(len(spare), 0)
