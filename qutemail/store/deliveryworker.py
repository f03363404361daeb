# -*- test-case-name: tests.store.test_deliveryprocess -*-
"""
The delivery process (C{python -m qutemail.store.deliveryworker}), started
by L{qutemail.store.deliveryprocess.DeliveryProcess}, never by hand.

It reads framed requests on its standard input, does each in one of a few
threads (an fsync mostly waits on the disk, which serves several at once)
and answers each on its standard output.  A request is either
- C{DELIVER}: a batch of L{qutemail.store.maildirwrite.WriteJob}, written
  with a L{MaildirWriter}; or
- C{VAULT_KEYS}: the key files of a batch of message keys, already wrapped
  under the master key by the parent (which alone reads that key), written
  by L{qutemail.qkd.keyfiles.addKeyFiles}; or
- C{SEAL_INLINE}: internal mail held in memory, encrypted with its QKD
  message keys (L{qutemail.store.sealwork.sealBodies}) on this process's
  core: in a thread of the server, the seals of a busy server held its
  interpreter lock against the reactor (issue 14).  The message keys cross
  the private pipe and are dropped once used; the vault's master key never
  does; or
- C{INDEX_PLAIN}: the IMAP fetch index entries of a batch of small plain
  stored messages (L{qutemail.access.plainindex.indexSmallPlain}; plain
  tuples, which pickle in C), so that
  a first listing of a large folder uses this process's core beside the
  server's.  They have one thread of their own: a delivery never waits
  behind them for a thread, only, briefly, for the interpreter.
It has no reactor and no state but the writer's caches: at the end of its
input (its parent stopped, or died) it finishes the requests it has and
exits.  Diagnostics go to the standard error it shares with its parent.

A frame is a 4-byte big-endian length and a pickle: C{(requestId, kind,
payload)} in, C{(requestId, results, error)} out.  Pickle is safe here
because both ends are this program, started by its own parent over private
pipes.
"""

import functools
import importlib
import os
import pickle
import signal
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable

from qutemail.parentdeath import dieWithParent
from qutemail.qkd.keyfiles import addKeyFiles
from qutemail.store.maildirwrite import MaildirWriter

# How many requests are done at once.
THREADS = 4
# The kinds of request.
DELIVER = "deliver"
VAULT_KEYS = "vault-keys"
INDEX_PLAIN = "index-plain"
SEAL_INLINE = "seal-inline"
# The options that have the process load, as it starts, the IMAP indexing
# code (40 ms of imports) and the sealing code (100 ms: the cipher and the
# MIME parts): each is otherwise loaded by its first request, which waits.
PRELOAD_INDEXING = "--preload-indexing"
PRELOAD_SEALING = "--preload-sealing"
_PRELOADS = {PRELOAD_INDEXING: "qutemail.access.plainindex", PRELOAD_SEALING: "qutemail.store.sealwork"}
_LENGTH = struct.Struct(">I")


def encodeFrame(value: object) -> bytes:
    """
    @return: C{value} pickled, after its length.
    """
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def decodeFrames(buffer: bytes) -> tuple[list, bytes]:
    """
    Split complete frames off the front of C{buffer}.

    @return: the values decoded, and the bytes of an incomplete frame.
    """
    values = []
    pos = 0
    while len(buffer) - pos >= _LENGTH.size:
        (length,) = _LENGTH.unpack_from(buffer, pos)
        end = pos + _LENGTH.size + length
        if len(buffer) < end:
            break
        values.append(pickle.loads(buffer[pos + _LENGTH.size:end]))
        pos = end
    return values, buffer[pos:]


def frameSize(buffer: bytes) -> int:
    """
    @return: how many bytes the first frame of C{buffer} needs in all
        (the length's own size while that is not all in yet).
    """
    if len(buffer) < _LENGTH.size:
        return _LENGTH.size
    return _LENGTH.size + _LENGTH.unpack_from(buffer)[0]


def _readExactly(source: BinaryIO, count: int) -> bytes | None:
    """
    @return: C{count} bytes, or C{None} at the end of the input.
    """
    chunks = []
    while count:
        chunk = source.read(count)
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to a file descriptor, each part after the one
    before.  Blocking.

    A blocking write to a pipe that a stop interrupts (C{SIGSTOP} and
    C{SIGCONT}: job control, a debugger or a profiler attaching) returns
    having written only part of it.  CPython 3.11's C{BufferedWriter}
    (C{sys.stdout.buffer}) was seen to lose the rest then: the parent read
    the start of one answer followed by the next one, and stopped hearing
    from the child.  So answers are written with bare C{os.write}.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(source: BinaryIO, send: Callable[[bytes], object], writer: MaildirWriter,
          threads: int = THREADS) -> None:
    """
    Answer requests from C{source} with C{send} until C{source} ends, then
    finish the batches under way.

    @param send: writes a whole answer frame (L{writeAll} on the standard
        output), called by one thread at a time.
    """
    lock = threading.Lock()

    def answer(requestId: int, kind: str, payload: object) -> None:
        try:
            if kind == DELIVER:
                results = writer.writeBatch(payload)
            elif kind == VAULT_KEYS:
                directory, wrapped = payload
                results = addKeyFiles(directory, wrapped)
            elif kind == INDEX_PLAIN:
                # Loaded by now when the parent asked for it (see main),
                # else at the first such request: a process that never
                # indexes (an SMTP worker's) never pays its memory.
                from qutemail.access.plainindex import indexSmallPlain
                results = indexSmallPlain(payload)
            elif kind == SEAL_INLINE:
                # Loaded by now when the parent asked for it (see main),
                # else at the first seal: a server that never encrypts
                # never pays for the cipher's imports here.
                from qutemail.store.sealwork import sealBodies
                subject, items = payload
                results = sealBodies(subject, items)
            else:
                raise ValueError(f"unknown request {kind!r}")
            frame = encodeFrame((requestId, results, None))
        except Exception as e:
            # A bug, not a disk error (those are in the results): the
            # parent fails the batch with this text.
            frame = encodeFrame((requestId, None, f"{type(e).__name__}: {e}"))
        with lock:
            send(frame)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qutemail-delivery") as pool, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qutemail-vault") as keyPool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="qutemail-index") as indexPool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="qutemail-seal") as sealPool:
        # Key files have threads of their own: a seal waits for its keys,
        # and its delivery after it, so they never queue behind deliveries.
        # Seals are CPU work, one batch at a time.
        pools = {VAULT_KEYS: keyPool, INDEX_PLAIN: indexPool, SEAL_INLINE: sealPool}
        while True:
            header = _readExactly(source, _LENGTH.size)
            if header is None:
                break
            payload = _readExactly(source, _LENGTH.unpack(header)[0])
            if payload is None:
                break
            requestId, kind, request = pickle.loads(payload)
            pools.get(kind, pool).submit(answer, requestId, kind, request)


def _preload(modules: list[str]) -> None:
    """
    Import modules, one after the other.
    """
    for module in modules:
        importlib.import_module(module)


def main() -> int:
    """
    Run the delivery process.
    """
    # Die with the parent even if its pipe is inherited elsewhere.
    dieWithParent(signal.SIGKILL)
    # The parent's SIGTERM or Ctrl-C is for the parent: this process
    # stops when its input ends, after the batches it has.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.umask(0o077)
    modules = [module for option, module in _PRELOADS.items() if option in sys.argv[1:]]
    if modules:
        # Loaded beside the loop, not before it: a delivery waiting on a
        # restarted process does not wait for them, and a first listing or
        # seal waits only for what is not loaded yet (the import lock).
        threading.Thread(target=_preload, args=(modules,), name="qutemail-preload", daemon=True).start()
    serve(sys.stdin.buffer, functools.partial(writeAll, sys.stdout.fileno()), MaildirWriter())
    return 0


if __name__ == "__main__":
    sys.exit(main())
