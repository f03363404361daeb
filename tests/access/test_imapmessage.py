"""
Tests for L{qutemail.access.imapmessage}: the session's cache of opened
and scanned messages.
"""

import io
import os

import attrs
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access import imapmessage
from qutemail.access.imapmessage import MessageCache
from tests.store.test_reader import ReaderTestsMixin


class CountingRunner:
    """
    Runs calls inline, counting them.
    """

    def __init__(self, runner) -> None:
        self.runner = runner
        self.calls = 0

    def run(self, f, *args, **kwargs):
        self.calls += 1
        return self.runner.run(f, *args, **kwargs)


class PrefetchScansTests(ReaderTestsMixin, SynchronousTestCase):
    """
    L{MessageCache.prefetchScans} scans many plain messages in one call.
    """

    def test_plainScannedInOneCall(self):
        """
        Five plain messages are scanned in one worker-thread call; an
        encrypted one and a vanished one are left for L{MessageCache.open},
        which then opens only those (the plain ones come from the cache
        without any call), giving the same structures as without
        prefetching.
        """
        paths = [self.deliver(self.message(queueId=f"P{i}", body=b"Subject: plain %d\n\nbody\n" % i), seal=False)
                 for i in range(5)]
        sealed = self.deliver(self.message(queueId="S1"), seal=True)
        gone = paths[0] + ".gone"
        folder = os.path.dirname(os.path.dirname(paths[0]))
        entries = [(os.path.basename(p), p) for p in paths + [sealed, gone]]
        counting = CountingRunner(self.runner)
        cache = MessageCache("bob@example.test", counting, self.vault)
        self.successResultOf(Deferred.fromCoroutine(cache.prefetchScans(folder, entries)))
        self.assertEqual(counting.calls, 1)
        plain = MessageCache("bob@example.test", self.runner, self.vault)
        for baseName, path in entries[:5]:
            root, f = self.successResultOf(Deferred.fromCoroutine(cache.open(folder, baseName, path, False)))
            self.assertIsNone(f)
            expected, _ = self.successResultOf(Deferred.fromCoroutine(plain.open(folder, baseName, path, False)))
            self.assertEqual(_shape(root), _shape(expected))
        self.assertEqual(counting.calls, 1)
        root, _ = self.successResultOf(Deferred.fromCoroutine(
            cache.open(folder, os.path.basename(sealed), sealed, False)))
        self.assertGreater(counting.calls, 1)
        self.assertIsNotNone(root)
        self.successResultOf(Deferred.fromCoroutine(cache.close()))
        self.successResultOf(Deferred.fromCoroutine(plain.close()))


class PrefetchFilesTests(ReaderTestsMixin, SynchronousTestCase):
    """
    L{MessageCache.prefetchFiles} reads many small plain messages whole in
    one call.
    """

    def test_plainReadInOneCall(self):
        """
        Plain messages are read with their structure in one worker-thread
        call and then opened without any (in memory, with the same bytes
        and structure as the file); an encrypted one, and one past the
        byte budget, are opened from disk as before.
        """
        paths = [self.deliver(self.message(queueId=f"P{i}", body=b"Subject: plain %d\n\nbody %d\n" % (i, i)),
                              seal=False) for i in range(4)]
        sealed = self.deliver(self.message(queueId="S1"), seal=True)
        folder = os.path.dirname(os.path.dirname(paths[0]))
        entries = [(os.path.basename(p), p) for p in paths + [sealed]]
        sizes = [os.path.getsize(p) for p in paths]
        counting = CountingRunner(self.runner)
        cache = MessageCache("bob@example.test", counting, self.vault)
        # Room for the first three only.
        self.patch(imapmessage, "PREFETCH_BYTES", sum(sizes[:3]))
        self.successResultOf(Deferred.fromCoroutine(cache.prefetchFiles(folder, entries)))
        self.assertEqual(counting.calls, 1)
        plain = MessageCache("bob@example.test", self.runner, self.vault)
        for baseName, path in entries[:3]:
            root, f = self.successResultOf(Deferred.fromCoroutine(cache.open(folder, baseName, path)))
            self.assertIsInstance(f, io.BytesIO)
            expected, onDisk = self.successResultOf(Deferred.fromCoroutine(plain.open(folder, baseName, path)))
            self.assertEqual(_shape(root), _shape(expected))
            onDisk.seek(0)
            self.assertEqual(f.getvalue(), onDisk.read())
        self.assertEqual(counting.calls, 1)
        for baseName, path in entries[3:]:
            _, f = self.successResultOf(Deferred.fromCoroutine(cache.open(folder, baseName, path)))
            self.assertNotIsInstance(f, io.BytesIO)
        self.assertGreater(counting.calls, 1)
        self.successResultOf(Deferred.fromCoroutine(cache.close()))
        self.successResultOf(Deferred.fromCoroutine(plain.close()))


def _shape(entity) -> dict:
    """
    @return: an entity's fields, without what it keeps of its header once
        parsed (a quick scan splits the fields at once, see
        L{qutemail.access.quickscan}).
    """
    return attrs.asdict(entity, filter=lambda attribute, value: attribute.name not in (
        "_parsed", "_byName", "_typeParams"))
