"""
Tests for L{qutemail.gcstartup}: start-up's objects are frozen out of
later full collections, once the reactor runs.
"""

import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase

from qutemail.gcstartup import freezeStartup, freezeWhenRunning


class Node:
    """
    One end of a reference cycle.
    """

    other: "Node | None" = None


class RecordingReactor:
    """
    Records what is to be called when it runs.
    """

    def __init__(self) -> None:
        self.whenRunning: list = []

    def callWhenRunning(self, f, *args, **kwargs) -> None:
        self.whenRunning.append((f, args, kwargs))


class FreezeTests(SynchronousTestCase):
    """
    L{freezeStartup} and L{freezeWhenRunning}.
    """

    def test_freezes(self) -> None:
        """
        Every object alive is frozen (so full collections skip it); an
        object made afterwards is not.
        """
        self.addCleanup(gc.unfreeze)
        self.assertEqual(gc.get_freeze_count(), 0)
        frozen = freezeStartup()
        self.assertGreater(frozen, 1000)
        # (frozen objects freed since by their references leave it)
        self.assertGreater(gc.get_freeze_count(), frozen // 2)
        # Cyclic garbage made afterwards is still collected.
        cycle = Node()
        cycle.other = Node()
        cycle.other.other = cycle
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        self.assertIsNone(gone())

    def test_whenRunning(self) -> None:
        """
        L{freezeWhenRunning} asks the reactor to freeze once it runs, not
        before.
        """
        reactor = RecordingReactor()
        freezeWhenRunning(reactor)
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertEqual(reactor.whenRunning, [(freezeStartup, (), {})])
