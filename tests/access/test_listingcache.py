"""
Tests for L{qutemail.access.listingcache} and its use by
L{qutemail.access.uids.sync}: an unchanged folder's state is reused, a
changed one read again, and a state is only remembered once its files
have settled.
"""

import os
import time

import attrs
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.listingcache import (
    FINE_SETTLED_SECONDS, SETTLED_SECONDS, ListingCache, TimeCache, folderStamps, settled,
)
from qutemail.access.uids import setFlags, sync, withTimes
from qutemail.store.folders import MaildirFolders
from tests.access.test_uids import _deliver, _uids


class ListingCacheTests(SynchronousTestCase):
    """
    L{sync} with a L{ListingCache}.
    """

    def setUp(self) -> None:
        self.folders = MaildirFolders(os.path.join(self.mktemp(), "alice"))
        self.folders.ensureSpecialFolders()
        self.inbox = self.folders.pathOf("INBOX")
        self.listings = ListingCache()
        for n in range(3):
            _deliver(self.inbox, f"{n}.M{n}Q1R0.host,S=20", 1_700_000_000 + n)

    def later(self) -> float:
        """
        @return: a time by which every file written so far has settled.
        """
        return time.time() + SETTLED_SECONDS + 1

    def test_unchangedReused(self) -> None:
        """
        Once its files have settled, an unchanged folder's state is the
        one remembered, without reading the folder again.
        """
        first = sync(self.inbox, self.later(), self.listings)
        second = sync(self.inbox, self.later(), self.listings)
        self.assertIs(second, first)
        self.assertEqual(len(first.messages), 3)

    def test_notSettledNotRemembered(self) -> None:
        """
        A folder changed less than L{FINE_SETTLED_SECONDS} before the
        look is read again next time (a change in the same tick of the file
        system's clock would not show in its times).
        """
        stamps = folderStamps(self.inbox, ("new", "cur"))
        now = max(stamp[1] for stamp in stamps) / 1e9 + FINE_SETTLED_SECONDS / 2
        first = sync(self.inbox, now, self.listings)
        second = sync(self.inbox, now, self.listings)
        self.assertIsNot(second, first)
        self.assertEqual(second, first)

    def test_ownUidListNeedNotSettle(self) -> None:
        """
        The C{uidlist} a look has just written does not keep its state
        from being remembered when the directories have settled.
        """
        old = time.time() - 60
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.inbox, sub), (old, old))
        now = time.time()
        first = sync(self.inbox, now, self.listings)
        self.assertGreater(os.stat(os.path.join(self.inbox, "uidlist")).st_mtime, now - FINE_SETTLED_SECONDS)
        self.assertIs(sync(self.inbox, now, self.listings), first)

    def test_timesLookedAtLater(self) -> None:
        """
        A look lists a folder without the files' modification times (no
        C{stat} each); L{withTimes} looks, keeps times already known, finds
        a file renamed by a flag change elsewhere by its base name, and
        gives C{None} for one that is gone.
        """
        first = sync(self.inbox, time.time(), self.listings)
        self.assertEqual([m.mtime for m in first.messages], [None, None, None])
        one, two, three = first.messages
        os.utime(one.path, (1_600_000_000, 1_600_000_000))
        moved = setFlags(two.path, {"\\Seen"})
        os.remove(three.path)
        known = attrs.evolve(one, mtime=5.0)
        times = TimeCache()
        timed = withTimes(self.inbox, [one, two, three, known], times)
        self.assertEqual([(m.path, m.mtime) for m in timed[:2]],
                         [(one.path, 1_600_000_000), (moved, 1_700_000_001)])
        self.assertEqual(timed[2:], [None, known])
        # Another session asks: what was found is not looked at again.
        os.utime(one.path, (1_650_000_000, 1_650_000_000))
        again = withTimes(self.inbox, [one, two], times)
        self.assertEqual([m.mtime for m in again], [1_600_000_000, 1_700_000_001])
        self.assertEqual(withTimes(self.inbox, [one], TimeCache())[0].mtime, 1_650_000_000)

    def test_timeCacheBounded(self) -> None:
        """
        The time cache keeps at most its bound of times in all, dropping
        the least recently used folders first.
        """
        times = TimeCache(maxMessages=4)
        times.add("/a", {"1": 1.0, "2": 2.0})
        times.add("/b", {"3": 3.0})
        self.assertEqual(times.known("/a"), {"1": 1.0, "2": 2.0})
        times.add("/c", {"4": 4.0, "5": 5.0})
        self.assertEqual((times.known("/a"), times.known("/b"), times.known("/c")),
                         ({"1": 1.0, "2": 2.0}, {}, {"4": 4.0, "5": 5.0}))
        times.add("/d", {str(n): float(n) for n in range(5)})
        self.assertEqual(times.known("/d"), {})

    def test_changesSeen(self) -> None:
        """
        A delivery, a flag change and an expunge each give a new state.
        """
        state = sync(self.inbox, self.later(), self.listings)
        self.assertIs(sync(self.inbox, self.later(), self.listings), state)
        _deliver(self.inbox, "9.M9Q1R0.host,S=20")
        state = sync(self.inbox, self.later(), self.listings)
        self.assertEqual(sorted(_uids(state).values()), [1, 2, 3, 4])
        message = state.messages[0]
        setFlags(message.path, frozenset({"\\Seen"}), state.keywords)
        state = sync(self.inbox, self.later(), self.listings)
        self.assertEqual(state.messages[0].flags, frozenset({"\\Seen"}))
        os.unlink(state.messages[0].path)
        state = sync(self.inbox, self.later(), self.listings)
        self.assertEqual(sorted(_uids(state).values()), [2, 3, 4])
        self.assertIs(sync(self.inbox, self.later(), self.listings), state)

    def test_bounded(self) -> None:
        """
        States beyond the bound on messages are forgotten, least recently
        used first.
        """
        listings = ListingCache(maxMessages=4)
        sent = self.folders.pathOf("Sent")
        _deliver(sent, "5.M5Q1R0.host,S=20", 1_700_000_000)
        inbox = sync(self.inbox, self.later(), listings)
        self.assertIsNotNone(listings.get(self.inbox, folderStamps(self.inbox, ("new", "cur", "uidlist",
                                                                                "dovecot-keywords"))))
        sync(sent, self.later(), listings)
        self.assertIs(sync(self.inbox, self.later(), listings), inbox)
        _deliver(sent, "6.M6Q1R0.host,S=20", 1_700_000_000)
        sync(sent, self.later(), listings)
        # Three and two messages: the inbox, least recently used, went.
        self.assertIsNot(sync(self.inbox, self.later(), listings), inbox)

    def test_settled(self) -> None:
        """
        L{settled} holds when every stamped file changed at least
        L{SETTLED_SECONDS} before; missing files count as settled.
        """
        stamps = ((1, 10_000_000_000, 0), None)
        self.assertTrue(settled(stamps, 10 + SETTLED_SECONDS + 0.001))
        self.assertFalse(settled(stamps, 10 + SETTLED_SECONDS))

    def test_fineTimesSettleSooner(self) -> None:
        """
        When every stamped time has a fraction of a second (a file system
        keeping nanoseconds), L{FINE_SETTLED_SECONDS} is enough; one time
        on a whole second (as a file system keeping seconds gives) brings
        back L{SETTLED_SECONDS} for all.
        """
        fine = ((1, 10_004_000_000, 0), (2, 9_500_000_000, 0), None)
        self.assertTrue(settled(fine, 10.004 + FINE_SETTLED_SECONDS + 0.001))
        self.assertFalse(settled(fine, 10.004 + FINE_SETTLED_SECONDS - 0.001))
        coarse = fine[:1] + ((2, 9_000_000_000, 0),)
        self.assertFalse(settled(coarse, 10.004 + FINE_SETTLED_SECONDS + 0.001))
        self.assertTrue(settled(coarse, 10.004 + SETTLED_SECONDS + 0.001))
