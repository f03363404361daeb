"""
Tests for L{qutemail.access.imapmailbox}: a session's view of its selected
folder holds the folder state's own messages, and only its C{\\Recent}
ones are made again.
"""

import attrs
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.imapmailbox import FolderView, RecentMessage, isRecent, slotFlagList
from qutemail.access.uids import FolderMessage, FolderState


def message(uid: int, flags: frozenset[str] = frozenset(), where: str = "cur") -> FolderMessage:
    """
    @return: a folder's message C{uid}.
    """
    name = "17000000%02d.M%dP1.test" % (uid, uid)
    return FolderMessage(uid, name, "/box/%s/%s:2," % (where, name), flags, 1700000000.0 + uid)


def state(*messages: FolderMessage) -> FolderState:
    """
    @return: a folder state of these messages.
    """
    return FolderState(77, (messages[-1].uid if messages else 0) + 1, tuple(messages))


class FolderViewTests(SynchronousTestCase):
    """
    L{FolderView}.
    """

    def test_sharesTheStatesMessages(self):
        """
        Without recent messages, a view holds the very objects of the
        state: a SELECT makes no object per message.
        """
        folder = state(message(1), message(2, frozenset({"\\Seen"})))
        view = FolderView.fromState("INBOX", "/box", True, folder, frozenset())
        self.assertEqual([id(s) for s in view.slots], [id(m) for m in folder.messages])
        self.assertEqual((view.recentCount(), view.firstUnseen()), (0, 1))

    def test_recentMessages(self):
        """
        Messages recent for the session are L{RecentMessage}s with the same
        fields, shown with C{\\Recent}; the others are the state's own.
        """
        folder = state(message(1, frozenset({"\\Seen"})), message(2, where="new"))
        view = FolderView.fromState("INBOX", "/box", True, folder, frozenset({folder.messages[1].baseName}))
        first, second = view.slots
        self.assertIs(first, folder.messages[0])
        self.assertEqual((type(second), attrs.astuple(second)), (RecentMessage, attrs.astuple(folder.messages[1])))
        self.assertEqual([isRecent(s) for s in view.slots], [False, True])
        self.assertEqual([slotFlagList(s) for s in view.slots], [b"(\\Seen)", b"(\\Recent)"])
        self.assertEqual(view.recentCount(), 1)

    def test_updateReplacesChangedMessages(self):
        """
        A sync that changed a message's flags replaces it in the view (with
        C{\\Recent} kept for a recent one) and tells the client; unchanged
        messages stay as they were, arrivals are announced.
        """
        one, two, three = message(1), message(2), message(3)
        view = FolderView.fromState("INBOX", "/box", True, state(one, two, three), frozenset({two.baseName}))
        kept, recentTwo = view.slots[0], view.slots[1]
        seen = frozenset({"\\Seen"})
        four = message(4, where="new")
        later = state(one, attrs.evolve(two, flags=seen, path="/box/cur/x:2,S"),
                      attrs.evolve(three, flags=seen, path="/box/cur/y:2,S"), four)
        lines = view.update(later, frozenset({four.baseName}))
        self.assertEqual(lines, [b"2 FETCH (FLAGS (\\Seen \\Recent))", b"3 FETCH (FLAGS (\\Seen))",
                                 b"4 EXISTS", b"2 RECENT"])
        self.assertIs(view.slots[0], kept)
        self.assertIsNot(view.slots[1], recentTwo)
        self.assertEqual([(isRecent(s), s.flags, s.path) for s in view.slots[1:3]],
                         [(True, seen, "/box/cur/x:2,S"), (False, seen, "/box/cur/y:2,S")])
        self.assertIs(view.slots[2], later.messages[2])
        self.assertTrue(isRecent(view.slots[3]))
        # The old objects were not changed.
        self.assertEqual((recentTwo.flags, three.flags), (frozenset(), frozenset()))

    def test_updateKeepsTheDateTheClientWasTold(self):
        """
        A message whose file time changed keeps the INTERNALDATE the session
        gave out.
        """
        one = message(1)
        view = FolderView.fromState("INBOX", "/box", True, state(one), frozenset())
        view.update(state(attrs.evolve(one, flags=frozenset({"\\Seen"}), mtime=5.0)), frozenset())
        self.assertEqual((view.slots[0].mtime, view.slots[0].flags), (one.mtime, frozenset({"\\Seen"})))

    def test_replaceFollowsTheMessage(self):
        """
        L{FolderView.replace} puts the new message where the old one is, even
        when the sequence number given is out of date.
        """
        one, two, three = message(1), message(2), message(3)
        view = FolderView.fromState("INBOX", "/box", True, state(one, two, three), frozenset())
        view.replace(2, two, attrs.evolve(two, flags=frozenset({"\\Flagged"})))
        self.assertEqual(view.remove([one.baseName]), [b"1 EXPUNGE"])
        changed = attrs.evolve(three, flags=frozenset({"\\Seen"}))
        view.replace(3, three, changed)
        self.assertEqual([s.flags for s in view.slots], [frozenset({"\\Flagged"}), frozenset({"\\Seen"})])
        self.assertIs(view.slots[1], changed)
