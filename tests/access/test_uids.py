# -*- test-case-name: tests.access.test_uids -*-
"""
Tests for L{qutemail.access.uids}: persistent UIDs and Maildir flags.
"""

import multiprocessing
import os
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.folders import MaildirFolders
from qutemail.access.uids import (
    UIDLIST_FILE,
    CorruptUidList,
    flagsOfLetters,
    formatUidList,
    lettersOfFlags,
    parseUidList,
    setFlags,
    sync,
)
from qutemail.blocking import InlineRunner

NOW = 1_700_000_000.5


def _deliver(folder: str, baseName: str, mtime: float | None = None) -> str:
    """
    Deliver a message into a folder's C{new/} as the Maildir store does.

    @return: its path.
    """
    temp = os.path.join(folder, "tmp", baseName)
    with open(temp, "w") as f:
        f.write("Subject: test\n\nbody\n")
    path = os.path.join(folder, "new", baseName)
    os.rename(temp, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _uids(state) -> dict[str, int]:
    """
    @return: C{{baseName: uid}} of a folder state.
    """
    return {m.baseName: m.uid for m in state.messages}


def _deliverAndSync(folder: str, tag: str, count: int, queue) -> None:
    """
    Deliver C{count} messages, syncing after each, and report every
    C{(uidValidity, uid, baseName)} seen (run in a thread or a process).
    """
    seen = []
    for i in range(count):
        _deliver(folder, f"{i}.M0Q{tag}R0.host,S=20")
        state = sync(folder, NOW)
        seen.extend((state.uidValidity, m.uid, m.baseName) for m in state.messages)
    queue.put(seen)


def _checkUnique(case: SynchronousTestCase, seen) -> None:
    """
    No UID was given to two messages, nor two UIDs to one message.
    """
    byUid: dict[tuple[int, int], str] = {}
    byName: dict[tuple[int, str], int] = {}
    for validity, uid, name in seen:
        case.assertEqual(byUid.setdefault((validity, uid), name), name)
        case.assertEqual(byName.setdefault((validity, name), uid), uid)


class SyncTests(SynchronousTestCase):
    """
    L{sync} gives messages UIDs that persist.
    """

    def setUp(self) -> None:
        """
        A mailbox with a C{Sent} folder.
        """
        self.folders = MaildirFolders(os.path.join(self.mktemp(), "alice"))
        self.folders.ensureSpecialFolders()
        self.inbox = self.folders.pathOf("INBOX")

    def test_empty(self) -> None:
        """
        An empty folder gets UIDVALIDITY from the clock and UIDNEXT 1, kept
        in its C{uidlist}.
        """
        state = self.successResultOf(InlineRunner().run(sync, self.inbox, NOW))
        self.assertEqual((state.uidValidity, state.uidNext, state.messages), (int(NOW), 1, ()))
        with open(os.path.join(self.inbox, UIDLIST_FILE), "rb") as f:
            self.assertEqual(f.read(), b"1700000000 1\n")

    def test_deliveryOrder(self) -> None:
        """
        New messages get UIDs in delivery order as their names tell it (a
        Maildir name begins with its delivery time, our own to the
        microsecond), whatever the files' modification times (not looked
        at), from C{new/} and C{cur/}; dot files and names that cannot be
        listed (a newline, bytes that are not UTF-8) are skipped.
        """
        _deliver(self.inbox, "1700000001.M000002P1.host", NOW - 10)
        _deliver(self.inbox, "1700000001.M000010P1.host", NOW - 50)
        _deliver(self.inbox, "1700000000.M999999P1.host", NOW - 5)
        _deliver(self.inbox, ".hidden", NOW - 20)
        _deliver(self.inbox, "two\nlines", NOW - 20)
        with open(os.path.join(os.fsencode(self.inbox), b"new", b"not-utf8-\xff"), "wb") as f:
            f.write(b"Subject: x\n\nx\n")
        os.rename(os.path.join(self.inbox, "new", "1700000001.M000002P1.host"),
                  os.path.join(self.inbox, "cur", "1700000001.M000002P1.host:2,S"))
        state = sync(self.inbox, NOW)
        self.assertEqual(_uids(state), {"1700000000.M999999P1.host": 1, "1700000001.M000002P1.host": 2,
                                        "1700000001.M000010P1.host": 3})
        self.assertEqual(state.uidNext, 4)
        self.assertEqual([m.uid for m in state.messages], [1, 2, 3])
        self.assertEqual(state.messages[1].flags, frozenset({"\\Seen"}))
        self.assertEqual(state.messages[1].path, os.path.join(self.inbox, "cur", "1700000001.M000002P1.host:2,S"))
        self.assertEqual([m.mtime for m in state.messages], [None, None, None])

    def test_stableAcrossRestart(self) -> None:
        """
        A later sync (a restarted server: nothing but the files is shared)
        gives the same UIDs and UIDVALIDITY, whatever the time; deliveries
        meanwhile get greater UIDs.
        """
        for i in range(3):
            _deliver(self.inbox, f"m{i}", NOW + i)
        first = sync(self.inbox, NOW)
        _deliver(self.inbox, "later", NOW + 100)
        second = sync(self.inbox, NOW + 1000)
        self.assertEqual(second.uidValidity, first.uidValidity)
        self.assertEqual(_uids(second), dict(_uids(first), later=4))
        self.assertEqual(second.uidNext, 5)

    def test_flagChangesKeepUid(self) -> None:
        """
        Moving a message from C{new/} to C{cur/} and changing its flags
        keeps its UID.
        """
        path = _deliver(self.inbox, "m1", NOW)
        _deliver(self.inbox, "m2", NOW + 1)
        before = sync(self.inbox, NOW)
        path = setFlags(path, ["\\Seen"])
        middle = sync(self.inbox, NOW)
        path = setFlags(path, ["\\Seen", "\\Flagged", "\\Answered"])
        after = sync(self.inbox, NOW)
        self.assertEqual(_uids(before), _uids(middle))
        self.assertEqual(_uids(before), _uids(after))
        self.assertEqual(after.messages[0].flags, frozenset({"\\Seen", "\\Flagged", "\\Answered"}))
        self.assertEqual(after.messages[0].path, path)

    def test_vanishedDropped(self) -> None:
        """
        A vanished message is dropped and its UID is never used again.
        """
        gone = _deliver(self.inbox, "m1", NOW)
        _deliver(self.inbox, "m2", NOW + 1)
        sync(self.inbox, NOW)
        os.unlink(gone)
        _deliver(self.inbox, "m3", NOW + 2)
        state = sync(self.inbox, NOW)
        self.assertEqual(_uids(state), {"m2": 2, "m3": 3})
        with open(os.path.join(self.inbox, UIDLIST_FILE), "rb") as f:
            self.assertEqual(f.read(), b"1700000000 4\n2 m2\n3 m3\n")

    def test_oddNames(self) -> None:
        """
        A message's flags come from the letters after the first C{:2,} of
        its file name, wherever the first colon is; a name without info
        has none.  A message in both C{new/} and C{cur/} is listed once,
        at its C{cur/} path and not as new.  Dot files, directories and
        names with a newline are not messages.
        """
        names = {
            ("new", "1.a.host"): frozenset(),
            ("new", "2.b.host:"): frozenset(),
            ("cur", "3.c.host:2,FS"): frozenset({"\\Flagged", "\\Seen"}),
            ("cur", "4.d.host:x:2,T"): frozenset({"\\Deleted"}),
            ("cur", "5.e.host:1,S"): frozenset(),
            ("new", "6.f.host"): None,
            ("cur", "6.f.host:2,R"): frozenset({"\\Answered"}),
        }
        for (sub, name) in names:
            with open(os.path.join(self.inbox, sub, name), "w") as f:
                f.write("Subject: odd\n\nbody\n")
        for sub in ("new", "cur"):
            with open(os.path.join(self.inbox, sub, ".hidden:2,S"), "w") as f:
                f.write("x")
            with open(os.path.join(self.inbox, sub, "7.g\nhost"), "w") as f:
                f.write("x")
            os.mkdir(os.path.join(self.inbox, sub, "8.h.host"))
        state = sync(self.inbox, NOW)
        listed = {m.baseName: (os.path.relpath(m.path, self.inbox), m.flags) for m in state.messages}
        expected = {name.partition(":")[0]: (os.path.join(sub, name), flags)
                    for (sub, name), flags in names.items() if flags is not None}
        self.assertEqual(listed, expected)
        self.assertEqual([m.baseName for m in state.messages], sorted(expected))
        self.assertEqual(state.inNew, frozenset({"1.a.host", "2.b.host"}))

    def test_foldersIndependent(self) -> None:
        """
        Each folder has its own C{uidlist}.
        """
        sent = self.folders.pathOf("Sent")
        _deliver(sent, "s1", NOW)
        _deliver(self.inbox, "i1", NOW)
        _deliver(self.inbox, "i2", NOW)
        self.assertEqual(_uids(sync(sent, NOW)), {"s1": 1})
        self.assertEqual(_uids(sync(self.inbox, NOW)), {"i1": 1, "i2": 2})

    def test_lostUidList(self) -> None:
        """
        When the C{uidlist} is lost, UIDVALIDITY changes (greater: the clock
        has moved on) and UIDs start again.
        """
        _deliver(self.inbox, "m1", NOW)
        first = sync(self.inbox, NOW)
        os.unlink(os.path.join(self.inbox, UIDLIST_FILE))
        _deliver(self.inbox, "m0", NOW - 1)
        second = sync(self.inbox, NOW + 60)
        self.assertGreater(second.uidValidity, first.uidValidity)
        self.assertEqual(_uids(second), {"m0": 1, "m1": 2})

    def test_corruptUidList(self) -> None:
        """
        A corrupt C{uidlist} is rebuilt (and logged) with a greater
        UIDVALIDITY, even at the same time, when its first line can be read.
        """
        _deliver(self.inbox, "m1", NOW)
        first = sync(self.inbox, NOW)
        listPath = os.path.join(self.inbox, UIDLIST_FILE)
        with open(listPath, "ab") as f:
            f.write(b"garbage line without a uid\n")
        second = sync(self.inbox, NOW)
        self.assertGreater(second.uidValidity, first.uidValidity)
        self.assertEqual(_uids(second), {"m1": 1})
        self.assertEqual(sync(self.inbox, NOW), second)
        with open(listPath, "wb") as f:
            f.write(b"\x00\xff")
        third = sync(self.inbox, NOW + 5)
        self.assertEqual(third.uidValidity, int(NOW) + 5)
        self.assertEqual(_uids(third), {"m1": 1})

    def test_missingFolder(self) -> None:
        """
        Syncing a folder that does not exist fails with
        C{FileNotFoundError}, creating nothing.
        """
        missing = self.folders.pathOf("Nothing")
        self.assertRaises(FileNotFoundError, sync, missing, NOW)
        self.assertFalse(os.path.exists(missing))

    def test_concurrentThreads(self) -> None:
        """
        Several threads delivering and syncing one folder at once never give
        one UID to two messages.
        """
        import queue
        results: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=_deliverAndSync, args=(self.inbox, f"t{n}", 15, results))
                   for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seen = []
        while not results.empty():
            seen.extend(results.get())
        _checkUnique(self, seen)
        final = sync(self.inbox, NOW)
        self.assertEqual(len(final.messages), 60)
        self.assertEqual(sorted(m.uid for m in final.messages), list(range(1, 61)))

    def test_concurrentProcesses(self) -> None:
        """
        Two processes delivering and syncing one folder at once never give
        one UID to two messages.
        """
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        processes = [context.Process(target=_deliverAndSync, args=(self.inbox, f"p{n}", 20, results))
                     for n in range(2)]
        for p in processes:
            p.start()
        seen = results.get(timeout=60) + results.get(timeout=60)
        for p in processes:
            p.join(timeout=60)
            self.assertEqual(p.exitcode, 0)
        _checkUnique(self, seen)
        self.assertEqual(sorted(m.uid for m in sync(self.inbox, NOW).messages), list(range(1, 41)))


class UidListFormatTests(SynchronousTestCase):
    """
    Reading and writing the C{uidlist} file.
    """

    def test_roundTrip(self) -> None:
        """
        What L{formatUidList} writes, L{parseUidList} reads back.
        """
        entries = [(1, "a"), (5, "b c"), (7, "1.M1Q2R0.host,S=9")]
        self.assertEqual(parseUidList(formatUidList(42, 8, entries)), (42, 8, entries))

    def test_corrupt(self) -> None:
        """
        Malformed files raise L{CorruptUidList}, carrying UIDVALIDITY when
        the first line is readable.
        """
        cases = {b"": None, b"1 2": None, b"x 2\n": None, b"0 2\n": None, b"1\n": None,
                 b"5 3\n1 a\n1 b\n": 5, b"5 3\n3 a\n": 5, b"5 3\n1 a\n2 a\n": 5, b"5 3\nx a\n": 5,
                 b"5 3\n1\n": 5, b"5 3\n\n": 5, b"5 3\n2 a\n1 b\n": 5}
        for data, validity in cases.items():
            e = self.assertRaises(CorruptUidList, parseUidList, data)
            self.assertEqual(e.uidValidity, validity, data)


    @settings(max_examples=400, deadline=None)
    @given(lines=st.lists(st.tuples(st.sampled_from(["1", "2", "3", "9", "10", "0", "x", "", "\u0663"]),
                                    st.sampled_from([" ", "", "  "]),
                                    st.sampled_from(["a", "b", "a b", "", "1.M1Q2R0.host,S=9", "\r"])),
                          max_size=5),
           uidNext=st.sampled_from(["4", "11", "1"]), end=st.sampled_from(["\n", ""]))
    def test_sameAsLineByLine(self, lines, uidNext, end) -> None:
        """
        L{parseUidList} accepts exactly the files a line-by-line reading
        of the format accepts, with the same entries, and refuses the
        others with the same UIDVALIDITY.
        """
        text = "7 " + uidNext + "\n" + "".join(u + sp + n + "\n" for u, sp, n in lines)
        data = (text[:-1] + end).encode("utf-8")
        try:
            expected = _lineByLine(data)
        except CorruptUidList as e:
            self.assertEqual(self.assertRaises(CorruptUidList, parseUidList, data).uidValidity, e.uidValidity)
        else:
            self.assertEqual(parseUidList(data), expected)


def _lineByLine(data: bytes) -> tuple[int, int, list[tuple[int, str]]]:
    """
    The C{uidlist} format read one line at a time (the reading before
    L{parseUidList} was made faster), for comparison.
    """
    text = data.decode("utf-8")
    if not text.endswith("\n"):
        raise CorruptUidList("truncated")
    lines = text[:-1].split("\n")
    header = lines[0].split(" ")
    uidValidity, uidNext = int(header[0]), int(header[1])
    entries, seen, last = [], set(), 0
    for line in lines[1:]:
        uidText, space, name = line.partition(" ")
        if not (space and uidText.isdigit() and uidText.isascii() and name) or name in seen:
            raise CorruptUidList("bad message line", uidValidity)
        uid = int(uidText)
        if not last < uid < uidNext:
            raise CorruptUidList("UIDs out of order or past UIDNEXT", uidValidity)
        last = uid
        seen.add(name)
        entries.append((uid, name))
    return uidValidity, uidNext, entries


class FlagTests(SynchronousTestCase):
    """
    Maildir flag letters and L{setFlags}.
    """

    def test_letters(self) -> None:
        """
        The Maildir letters map to IMAP flags and back, in ASCII order;
        unknown flags and letters are left out.
        """
        self.assertEqual(flagsOfLetters("DFPRSTa"), frozenset(
            {"\\Draft", "\\Flagged", "$Forwarded", "\\Answered", "\\Seen", "\\Deleted"}))
        self.assertEqual(lettersOfFlags(["\\seen", "\\Deleted", "\\Draft", "\\Recent", "$Junk"]), "DST")
        self.assertEqual(lettersOfFlags(["\\Seen"], keep="aSb"), "Sab")

    def test_setFlags(self) -> None:
        """
        L{setFlags} moves a message from C{new/} to C{cur/} with the C{:2,}
        info, keeps unknown letters, and can clear every flag.
        """
        folder = os.path.join(self.mktemp(), "box")
        MaildirFolders(folder).ensureSpecialFolders()
        path = _deliver(folder, "1.M2Q3R0.host,S=20")
        path = setFlags(path, ["\\Seen", "\\Flagged"])
        self.assertEqual(path, os.path.join(folder, "cur", "1.M2Q3R0.host,S=20:2,FS"))
        os.rename(path, path + "a")
        path = setFlags(path + "a", [])
        self.assertEqual(path, os.path.join(folder, "cur", "1.M2Q3R0.host,S=20:2,a"))
        self.assertEqual(setFlags(path, []), path)
        self.assertEqual(os.listdir(os.path.join(folder, "cur")), ["1.M2Q3R0.host,S=20:2,a"])
        self.assertEqual(os.listdir(os.path.join(folder, "new")), [])

    def test_setFlagsGone(self) -> None:
        """
        Setting the flags of a file that is gone raises C{FileNotFoundError}.
        """
        folder = os.path.join(self.mktemp(), "box")
        MaildirFolders(folder).ensureSpecialFolders()
        self.assertRaises(FileNotFoundError, setFlags, os.path.join(folder, "new", "nothing"), ["\\Seen"])
