# -*- test-case-name: tests.access.test_plainindex -*-
"""
Fetch index entries of small plain stored messages, for a first IMAP
listing of a folder (issue 14), made where there is a core to spare: the
delivery process loads this module, so it imports only what reading,
scanning and indexing need (no reader of sealed mail, no protocol code:
the whole of L{qutemail.access.imapmessage} would cost that process 30 MiB).

A message that may be one of ours (its header names "encrypted"), is
larger than L{WHOLE_READ_BYTES} or cannot be read has no entry here; the
server indexes those itself (L{qutemail.access.imapmessage.indexPlainFiles}).
"""

import os

from qutemail.access.fetchindex import Indexed, indexEntry
from qutemail.access.imapmime import Entity
from qutemail.access.quickscan import scanBytes
from qutemail.headerblock import namesEncrypted

# Messages of at most this many bytes are read whole to be scanned; larger
# ones are scanned from their file, block by block.
WHOLE_READ_BYTES = 256 * 1024
# How much L{readWhole} asks for at a time.
_READ_BYTES = 64 * 1024


def readWhole(path: str, maxBytes: int) -> bytes | None:
    """
    A message file's content, if it is at most C{maxBytes} long and its
    header does not name "encrypted" (see
    L{qutemail.store.reader.mayBeOurs}: such a message may be one of ours,
    which only L{qutemail.store.reader.openStored} can tell).  Blocking.

    The file is read with bare system calls.  A message of a few KB is
    one read to its end (a read of a regular file that gives less than
    asked has reached it), with no C{fstat} and no file object: a first
    listing reads thousands, and those were half of the time a read took.
    A longer one is C{fstat}ed before any more is read, so a large
    message costs one read, not C{maxBytes} of them.

    @return: the content, or C{None} when the file is larger (or grew
        while it was read) or may be ours.
    @raise OSError: it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        wanted = min(_READ_BYTES, maxBytes + 1)
        data = os.read(fd, wanted)
        if len(data) == wanted:
            size = os.fstat(fd).st_size
            if size > maxBytes:
                return None
            # The rest in one read: a stored message does not change, and
            # one that grew since the fstat is left to the caller.
            data += os.read(fd, max(size + 1 - len(data), 1))
            if len(data) > size:
                return None
    finally:
        os.close(fd)
    if len(data) > maxBytes or namesEncrypted(data):
        return None
    return data


def scanSmallPlain(path: str) -> Entity | None:
    """
    The structure of a small plain message, from its bytes read whole.
    Blocking.

    @return: it, or C{None} for a message larger than L{WHOLE_READ_BYTES}
        or one whose header names "encrypted" (see L{readWhole}).
    @raise OSError: it cannot be read.
    """
    data = readWhole(path, WHOLE_READ_BYTES)
    return None if data is None else scanBytes(data)


def indexSmallPlain(paths: list[str]) -> list[Indexed | None]:
    """
    The fetch index entry of each small plain message among C{paths}, or
    C{None} for one left to the server (see the module's docstring).
    Blocking.
    """
    entries: list[Indexed | None] = []
    for path in paths:
        try:
            root = scanSmallPlain(path)
        except OSError:
            root = None
        entries.append(None if root is None else indexEntry(root))
    return entries
