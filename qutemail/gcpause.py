# -*- test-case-name: tests.test_gcpause -*-
"""
The cyclic garbage collector held off while a thread builds many objects
that live on.

A first look at a large folder (L{qutemail.access.uids.sync}) makes tens
of thousands of objects that all outlive the look: the folder's messages,
their UIDs and paths.  Every 700 of them started a collection that found
nothing to free (20-26 young collections and 2 older ones per look at
10,000 messages): 2-3 ms of a 16-20 ms look in a process with the
server's modules loaded (issue 14).  L{collectorPaused} turns automatic
collection off for the length of such a step and back on after it, once
no thread is inside one any more; objects made meanwhile are collected
as usual afterwards.
"""

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
# How many threads are inside collectorPaused, and whether automatic
# collection was on when the first went in.
_inside = 0
_wasEnabled = False


@contextmanager
def collectorPaused() -> Iterator[None]:
    """
    Hold off automatic collection for the block (collection left off by
    someone else stays off).
    """
    global _inside, _wasEnabled
    with _lock:
        if _inside == 0:
            _wasEnabled = gc.isenabled()
            gc.disable()
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _wasEnabled:
                gc.enable()
