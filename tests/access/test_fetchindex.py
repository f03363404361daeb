"""
Tests for L{qutemail.access.fetchindex}: the per-folder file of what FETCH
sends about messages' structure.
"""

import gc
import os
import pickle

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access import fetchindex
from qutemail.access.fetchindex import (
    ENVELOPE, FIELDS, INDEX_NAME, SIZE, FetchIndex, SharedIndexes, indexEntry, indexLine, parseLines,
)
from qutemail.access.quickscan import scanBytes
from qutemail.access.searchfields import IndexedHeader
from qutemail.blocking import InlineRunner
from tests.support import QueuedRunner


def entry(n: int) -> tuple:
    """
    A distinct entry, with 8-bit and space-holding values.
    """
    return (100 + n, b'("date" "caf\xc3\xa9 %d")' % (n,), b'("text" "plain")', b"(%d)" % (n,), None)


class FetchIndexTests(SynchronousTestCase):
    """
    Sessions share one index file through appends; dead entries go once
    they outnumber the live ones.
    """

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.runner = InlineRunner()

    def index(self) -> FetchIndex:
        return FetchIndex(self.folder, self.runner)

    def refresh(self, index: FetchIndex, live) -> None:
        live = set(live)
        self.successResultOf(Deferred.fromCoroutine(index.refresh(len(live), lambda: live)))

    def flush(self, index: FetchIndex) -> None:
        self.successResultOf(Deferred.fromCoroutine(index.flush()))

    def test_roundTrip(self) -> None:
        """
        What one session adds and flushes, another reads back exactly; and
        the first sees later additions of the second on its next refresh.
        """
        first, second = self.index(), self.index()
        self.refresh(first, ["a"])
        first.add("a", entry(1))
        self.flush(first)
        self.refresh(second, ["a", "b"])
        self.assertEqual(second.get("a"), entry(1))
        second.add("b", entry(2))
        self.flush(second)
        self.refresh(first, ["a", "b"])
        self.assertEqual((first.get("a"), first.get("b")), (entry(1), entry(2)))
        self.assertEqual(os.stat(os.path.join(self.folder, INDEX_NAME)).st_mode & 0o777, 0o600)

    def test_plainTuples(self) -> None:
        """
        An entry is a plain tuple of numbers and bytes, which the cyclic
        garbage collector stops tracking once it has looked (a server
        holds thousands), and which pickles (as the delivery process sends
        it) to an equal tuple naming no class of ours.
        """
        root = scanBytes(b"From: A <a@x.test>\nSubject: one\n\nbody\n")
        made = indexEntry(root)
        self.assertIs(type(made), tuple)
        self.assertEqual(made[SIZE], root.size)
        self.assertIn(b'"one"', made[ENVELOPE])
        gc.collect()
        self.assertFalse(gc.is_tracked(made))
        for each in (made, entry(1), entry(2)[:FIELDS] + (None,)):
            data = pickle.dumps([each], protocol=pickle.HIGHEST_PROTOCOL)
            self.assertEqual(pickle.loads(data), [each])
            self.assertNotIn(b"qutemail", data)

    def test_ownAppendsNotReadBack(self) -> None:
        """
        Lines an index appended right where its last read ended are not
        read back by its next refresh; lines another appended meanwhile
        are, with its own.
        """
        path = os.path.join(self.folder, INDEX_NAME)
        first, second = self.index(), self.index()
        self.refresh(first, [])
        self.refresh(second, [])
        first.add("a", entry(1))
        self.flush(first)
        self.assertEqual(first._offset, os.path.getsize(path))
        second.add("b", entry(2))
        self.flush(second)
        first.add("c", entry(3))
        self.flush(first)
        self.refresh(first, ["a", "b", "c"])
        self.assertEqual(first.entries, {"a": entry(1), "b": entry(2), "c": entry(3)})
        self.assertEqual(first._offset, os.path.getsize(path))

    def test_appendsAhead(self) -> None:
        """
        Once L{fetchindex.APPEND_AHEAD_BYTES} of lines wait, they are
        appended in the background, one append at a time and in order;
        L{FetchIndex.flush} appends the rest and waits for all of them.
        """
        self.patch(fetchindex, "APPEND_AHEAD_BYTES", len(indexLine("m1", entry(1))) * 2)
        runner = QueuedRunner()
        index = FetchIndex(self.folder, runner)
        for n in range(1, 6):
            index.add(f"m{n}", entry(n))
        # m1-m2 are being appended; m3-m4 wait for that append to finish.
        self.assertEqual(len(runner.calls), 1)
        flushed = Deferred.fromCoroutine(index.flush())
        self.assertNoResult(flushed)
        while runner.calls:
            runner.runNext()
        self.successResultOf(flushed)
        with open(os.path.join(self.folder, INDEX_NAME), "rb") as f:
            self.assertEqual(f.read(), b"".join(indexLine(f"m{n}", entry(n)) for n in range(1, 6)))

    def test_damagedLinesSkipped(self) -> None:
        """
        A torn last line, or a line that is not an entry, is skipped; the
        others are read.
        """
        good = indexLine("a", entry(1)) + indexLine("b", entry(2))
        self.assertEqual(parseLines(good + b"c 12 e30= bm90IGI2NA"), {"a": entry(1), "b": entry(2)})
        self.assertEqual(parseLines(b"junk\nd x AA== AA== AA==\n" + good), {"a": entry(1), "b": entry(2)})

    def test_deadEntriesDropped(self) -> None:
        """
        Once the entries of messages no longer in the folder outnumber the
        live ones (and a minimum), the file is rewritten with the live
        ones only.
        """
        self.patch(fetchindex, "MIN_DEAD_FOR_REWRITE", 2)
        writer = self.index()
        self.refresh(writer, [])
        for n in range(5):
            writer.add(f"m{n}", entry(n))
        self.flush(writer)
        path = os.path.join(self.folder, INDEX_NAME)
        size = os.path.getsize(path)
        reader = self.index()
        self.refresh(reader, ["m0", "m1", "m2"])
        self.assertEqual(os.path.getsize(path), size)
        self.refresh(reader, ["m4"])
        with open(path, "rb") as f:
            self.assertEqual(parseLines(f.read()), {"m4": entry(4)})
        self.assertEqual(reader.entries, {"m4": entry(4)})
        # A session that had read the old file starts again from the new.
        writer.add("m5", entry(5))
        self.flush(writer)
        self.refresh(writer, ["m4", "m5"])
        self.assertEqual(sorted(writer.entries), ["m4", "m5"])

    def test_namesGatheredOnlyWhenNeeded(self) -> None:
        """
        A refresh asks for the folder's base names only when the index has
        more entries than the folder has messages and than
        L{fetchindex.MIN_DEAD_FOR_REWRITE}: with fewer, the dead ones
        cannot be enough for a rewrite.
        """
        self.patch(fetchindex, "MIN_DEAD_FOR_REWRITE", 1)
        index = self.index()
        for n in range(3):
            index.add(f"m{n}", entry(n))
        self.flush(index)
        asked = []

        def live() -> set[str]:
            asked.append(True)
            return {"m0"}

        self.successResultOf(Deferred.fromCoroutine(index.refresh(3, live)))
        self.assertEqual(asked, [])
        self.successResultOf(Deferred.fromCoroutine(index.refresh(1, live)))
        self.assertEqual(asked, [True])
        self.assertEqual(index.entries, {"m0": entry(0)})

    def test_rewriteSeenByInode(self) -> None:
        """
        A session that read the file before another rewrote it (and the
        new file grew past where the first had read) reads the new file
        from its start, not from its old offset.
        """
        self.patch(fetchindex, "MIN_DEAD_FOR_REWRITE", 0)
        reader = self.index()
        self.refresh(reader, [])
        writer = self.index()
        writer.add("m1", entry(1))
        self.flush(writer)
        self.refresh(reader, ["m1"])
        self.assertEqual(reader.get("m1"), entry(1))
        rewriter = self.index()
        self.refresh(rewriter, [])
        self.assertEqual(rewriter.entries, {})
        for n in range(2, 6):
            writer.add(f"m{n}", entry(n))
        self.flush(writer)
        self.refresh(reader, [f"m{n}" for n in range(2, 6)])
        self.assertEqual(sorted(reader.entries), ["m2", "m3", "m4", "m5"])

    def test_unwritableLogged(self) -> None:
        """
        An index that cannot be written only costs the saving: the flush
        logs and returns.
        """
        index = FetchIndex(os.path.join(self.folder, "missing"), self.runner)
        index.add("a", entry(1))
        self.flush(index)
        self.refresh(index, ["a"])
        self.assertEqual(index.get("a"), entry(1))

    def test_searchFields(self) -> None:
        """
        An entry's header record comes back as an L{IndexedHeader}; a line
        written before records were kept (five fields) still serves FETCH
        but has none, and a later line of the same name replaces it.
        """
        old = indexLine("a", entry(1))
        self.assertEqual(old.count(b" "), 4)
        with open(os.path.join(self.folder, INDEX_NAME), "wb") as f:
            f.write(old)
        index = self.index()
        self.refresh(index, ["a"])
        self.assertEqual(index.get("a"), entry(1))
        self.assertIsNone(index.header("a"))
        self.assertIsNone(index.header("missing"))
        record = "subject\x01Caf\u00e9\x01caf\u00e9".encode()
        index.add("a", entry(1)[:FIELDS] + (record,))
        self.flush(index)
        again = self.index()
        self.refresh(again, ["a"])
        header = again.header("a")
        self.assertIsInstance(header, IndexedHeader)
        self.assertTrue(header.fieldMatches("Subject", "caf\u00e9"))
        self.assertEqual((header.rawField("subject"), header.size), ("Caf\u00e9", 101))

    def test_headersNotKept(self) -> None:
        """
        The index keeps nothing of a search but its entries: after every
        entry's header record has been asked for, no L{IndexedHeader} is
        left alive (a searched folder would otherwise hold one, and its
        fields, per message for the garbage collector to walk).
        """
        index = self.index()
        record = "subject\x01One\x01one\x02from\x01A\x01a".encode()
        for n in range(50):
            index.add(f"m{n}", entry(n)[:FIELDS] + (record,))
        self.assertEqual(sum(index.header(f"m{n}").fieldMatches("from", "a") for n in range(50)), 50)
        gc.collect()
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, IndexedHeader)], [])


class SharedIndexesTests(SynchronousTestCase):
    """
    L{SharedIndexes}: one index per folder for a server's sessions, within
    bounds.
    """

    def test_sharedAndBounded(self) -> None:
        """
        Sessions asking for a folder get the same index; the least recently
        used folders go past the bounds on folders and on entries.
        """
        shared = SharedIndexes(InlineRunner(), maxFolders=2, maxEntries=3)
        first = shared.indexFor("/f1")
        self.assertIs(shared.indexFor("/f1"), first)
        second = shared.indexFor("/f2")
        shared.indexFor("/f1")
        third = shared.indexFor("/f3")
        # /f2 was the least recently used of three folders.
        self.assertIs(shared.indexFor("/f1"), first)
        self.assertIs(shared.indexFor("/f3"), third)
        for n in range(4):
            first.add(f"m{n}", entry(n))
        # Four entries in all: /f1, now the least recently used, goes.
        self.assertIs(shared.indexFor("/f3"), third)
        self.assertIsNot(shared.indexFor("/f1"), first)
        self.assertIsNot(shared.indexFor("/f2"), second)
