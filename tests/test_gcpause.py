"""
Tests for L{qutemail.gcpause}.
"""

import gc
import os
import shutil
import tempfile
import threading

from twisted.trial.unittest import SynchronousTestCase

from qutemail.access import uids
from qutemail.access.listingcache import ListingCache
from qutemail.gcpause import collectorPaused


class CollectorPausedTests(SynchronousTestCase):
    """
    L{collectorPaused}.
    """

    def setUp(self) -> None:
        self.addCleanup(gc.enable if gc.isenabled() else gc.disable)
        gc.enable()

    def test_offInsideOnAfter(self) -> None:
        """
        Automatic collection is off inside the block and on again after
        it, also when the block raises.
        """
        with collectorPaused():
            self.assertFalse(gc.isenabled())
        self.assertTrue(gc.isenabled())
        with self.assertRaises(ZeroDivisionError):
            with collectorPaused():
                1 / 0
        self.assertTrue(gc.isenabled())

    def test_lastThreadOutTurnsItOn(self) -> None:
        """
        With two threads inside, collection stays off until both are out.
        """
        inside, release = threading.Event(), threading.Event()

        def other() -> None:
            with collectorPaused():
                inside.set()
                release.wait(10)

        thread = threading.Thread(target=other)
        thread.start()
        inside.wait(10)
        with collectorPaused():
            pass
        self.assertFalse(gc.isenabled(), "turned on while another thread was inside")
        release.set()
        thread.join(10)
        self.assertTrue(gc.isenabled())

    def test_leftOffStaysOff(self) -> None:
        """
        Collection that was off before the block stays off after it.
        """
        gc.disable()
        with collectorPaused():
            pass
        self.assertFalse(gc.isenabled())

    def test_firstLookCollectsOnce(self) -> None:
        """
        A first look at a folder of 3,000 messages starts one collection at
        most, the one held off, as the pause ends.  Without the pause it
        starts several: each message is an object that lives on.
        """
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(folder, sub))
        for i in range(3000):
            open(os.path.join(folder, "cur", f"1700000000.M{i:06d}P1.host:2,S"), "wb").close()
        started = []

        def seen(phase: str, info: dict) -> None:
            if phase == "start":
                started.append(info["generation"])

        gc.callbacks.append(seen)
        self.addCleanup(gc.callbacks.remove, seen)
        state = uids.sync(folder, 1_700_000_000.0, ListingCache())
        # Counted before anything else is made: the next object made may
        # start another.
        during = len(started)
        self.assertLessEqual(during, 1)
        self.assertEqual(len(state.messages), 3000)
        self.assertTrue(gc.isenabled())
