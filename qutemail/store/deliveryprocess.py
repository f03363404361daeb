# -*- test-case-name: tests.store.test_deliveryprocess -*-
"""
L{DeliveryProcess}: local deliveries written by a child process.

An SMTP process spends its reactor thread on the dialogue; a delivery in
its worker threads makes a dozen system calls per copy (create, write,
fsync, close, rename), and each return from one takes the GIL back from the
reactor.  Postfix keeps C{smtpd} and C{local} in separate processes for the
same reason.  With C{[server] delivery_process = yes} (the default) each
SMTP process starts one child (L{qutemail.store.deliveryworker}) and hands
it the batches of L{qutemail.store.maildir.MaildirStore} over a pipe.  The
key files of the file vault go the same way (L{DeliveryProcess.addKeyFiles}):
one per message key, each created and written, they cost internal mail
about as many system calls as its delivery does.

Nothing that got a 250 depends on the child: the message is in the journal
until its delivery is reported.  If the child dies, or sends an answer
that cannot be read (it is then killed: nothing after such an answer could
be found), the batches it had fail with C{EIO} (the router defers those
recipients for a retry) and the next batch starts a new child; if the
parent dies, the child is killed with it (C{PR_SET_PDEATHSIG}) and the
next start recovers the journal, finding any copy the child had finished
(the file names are fixed by the queue entry).
"""

import errno
import fcntl
import itertools
import os
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.fdesc import setNonBlocking
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.store.deliveryworker import (
    DELIVER, INDEX_PLAIN, PRELOAD_INDEXING, PRELOAD_SEALING, SEAL_INLINE, VAULT_KEYS, decodeFrames, encodeFrame,
    frameSize,
)

# How much of the child's answers one read takes, and the size asked for
# the pipes between the two.  Sealed 100 KB messages come back in answers
# of a few MB; Twisted's own reader of a child's output takes 8 KB a read,
# and with a pipe's default 64 KB each side waited on the other: for
# internal mail of 100 KB, passing the bodies and the sealed messages cost
# the server's reactor more than everything else encryption added to it.
READ_BYTES = 1024 * 1024
MIN_READ_BYTES = 64 * 1024
PIPE_BYTES = 1024 * 1024
# fcntl's F_SETPIPE_SZ (Linux; Python 3.10 names it).
_SET_PIPE_SIZE = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widenPipe(fd: int) -> None:
    """
    Ask for a pipe of L{PIPE_BYTES}; where that is refused (not Linux, or
    more than C{/proc/sys/fs/pipe-max-size}), it keeps the size it has.
    """
    try:
        fcntl.fcntl(fd, _SET_PIPE_SIZE, PIPE_BYTES)
    except OSError:
        pass


class _PipeEnd(FileDescriptor):
    """
    The parent's end of one of the pipes to the child, non-blocking, closed
    when it is lost.
    """

    # Open from the start (FileDescriptor drops what is written to one not
    # connected, and does not close one that is not).
    connected = True

    def __init__(self, reactor: Any, fd: int) -> None:
        FileDescriptor.__init__(self, reactor)
        self.fd = fd
        setNonBlocking(fd)

    def fileno(self) -> int:
        return self.fd

    def connectionLost(self, reason: Any) -> None:
        FileDescriptor.connectionLost(self, reason)
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _AnswerReader(_PipeEnd):
    """
    The end the child answers on (its standard output), read up to
    L{READ_BYTES} at a time.
    """

    def __init__(self, reactor: Any, fd: int, protocol: "_ChildProtocol") -> None:
        _PipeEnd.__init__(self, reactor, fd)
        self.protocol = protocol

    def doRead(self) -> object:
        """
        Hand what has arrived to the protocol.
        """
        try:
            data = os.read(self.fd, self.protocol.readSize())
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self.protocol.answerBytes(data)
        return None

    def drain(self) -> None:
        """
        Read what is left, the child having exited (its exit can be seen
        before the last of its answers is read), and close.
        """
        while self.fd >= 0:
            try:
                data = os.read(self.fd, READ_BYTES)
            except OSError:
                # Including BlockingIOError: another process still holds
                # the pipe, and what it may write later is not the child's.
                data = b""
            if not data:
                self.stopReading()
                self._close()
                return
            self.protocol.answerBytes(data)


class _RequestWriter(_PipeEnd):
    """
    The end the child takes requests from (its standard input): Twisted's
    buffering, in writes of up to a widened pipe's size.
    """

    SEND_LIMIT = PIPE_BYTES

    def writeSomeData(self, data: bytes) -> object:
        """
        Write what the pipe takes now.
        """
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            return CONNECTION_LOST


class _ChildProtocol(ProcessProtocol):
    """
    The pipes of one delivery process.
    """

    def __init__(self, owner: "DeliveryProcess") -> None:
        self.owner = owner
        # What has arrived of the answers not yet decoded, and how much of
        # it the first one needs: a large answer (sealed messages) comes in
        # many reads, which are joined once it is all in, not at each read.
        self.chunks: list[bytes] = []
        self.size = 0
        self.needed = frameSize(b"")
        self.ended: Deferred = Deferred()
        # Set once an answer could not be read: nothing after it can be.
        self.damaged = False
        self.reader: _AnswerReader | None = None
        self.writer: _RequestWriter | None = None

    def readSize(self) -> int:
        """
        @return: how much the next read of the pipe should take: what the
            answer under way still needs, between L{MIN_READ_BYTES} and
            L{READ_BYTES} (a read allocates all it asks for first, and most
            answers are small).
        """
        return min(READ_BYTES, max(MIN_READ_BYTES, self.needed - self.size))

    def answerBytes(self, data: bytes) -> None:
        """
        Answers arrive on the child's standard output (see L{_AnswerReader}).
        """
        if self.damaged:
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size < self.needed:
            return
        try:
            answers, rest = decodeFrames(b"".join(self.chunks))
        except Exception as e:
            # Whatever unpickling raises: the stream has lost its framing.
            self.damaged, self.chunks, self.size = True, [], 0
            self.owner.damaged(self, f"{type(e).__name__}: {e}")
            return
        self.chunks, self.size = ([rest] if rest else []), len(rest)
        self.needed = frameSize(rest)
        for requestId, results, error in answers:
            self.owner.answered(requestId, results, error)

    def processEnded(self, reason) -> None:
        """
        The child exited: its last answers are read first.
        """
        if self.reader is not None:
            self.reader.drain()
        if self.writer is not None and self.writer.fd >= 0:
            # Nothing more can be handed to it.
            self.writer.connectionLost(Failure(CONNECTION_DONE))
        self.owner.ended(self, reason)
        self.ended.callback(None)


class DeliveryProcess(Service):
    """
    Starts the delivery process, hands it batches, and stops it with the
    server.  Its C{write(jobs)} is what L{MaildirStore} calls.
    """

    _log = Logger()
    name = "delivery-process"

    def __init__(self, reactor: Any, argv: list[str] | None = None, preloadIndexing: bool = False,
                 preloadSealing: bool = False) -> None:
        """
        @param reactor: an C{IReactorProcess}.
        @param argv: the child's command line (tests run other programs).
        @param preloadIndexing: have the child load the IMAP indexing code
            as it starts, for a server whose IMAP sends it first listings
            to index (L{indexPlain}); without it the first such request
            loads it.
        @param preloadSealing: the same for the sealing code, for a server
            that encrypts internal mail (L{sealInline}).
        """
        self._reactor = reactor
        preloads = [option for option, wanted in ((PRELOAD_INDEXING, preloadIndexing),
                                                  (PRELOAD_SEALING, preloadSealing)) if wanted]
        self._argv = argv or [sys.executable, "-m", "qutemail.store.deliveryworker", *preloads]
        self._protocol: _ChildProtocol | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[Deferred, int]] = {}

    def startService(self) -> None:
        """
        Start the child at once, so the first delivery does not wait for it.
        """
        Service.startService(self)
        self._spawn()

    @property
    def _child(self) -> Any:
        """
        The child's process transport, or C{None}.
        """
        return None if self._protocol is None else self._protocol.transport

    def _spawn(self) -> None:
        """
        Start a child.
        """
        protocol = _ChildProtocol(self)
        childIn, requests = os.pipe2(os.O_CLOEXEC)
        answers, childOut = os.pipe2(os.O_CLOEXEC)
        widenPipe(requests)
        widenPipe(answers)
        try:
            child = self._reactor.spawnProcess(
                protocol, self._argv[0], self._argv, env=os.environ.copy(),
                childFDs={0: childIn, 1: childOut, 2: 2},
            )
        except BaseException:
            os.close(requests)
            os.close(answers)
            raise
        finally:
            os.close(childIn)
            os.close(childOut)
        protocol.writer = _RequestWriter(self._reactor, requests)
        protocol.reader = _AnswerReader(self._reactor, answers, protocol)
        protocol.reader.startReading()
        self._protocol = protocol
        self._log.info("started the delivery process (pid {pid})", pid=child.pid)

    def write(self, jobs: list) -> Deferred:
        """
        Write a batch in the child.

        @return: a Deferred firing with the results of
            L{qutemail.store.maildirwrite.MaildirWriter.writeBatch}, or
            failing with C{OSError(EIO)} if the child cannot write it.
        """
        return self._request(DELIVER, jobs, len(jobs))

    def addKeyFiles(self, directory: str, wrapped: list[tuple[str, bytes]]) -> Deferred:
        """
        Write the key files of wrapped message keys in the child (see
        L{qutemail.qkd.keyfiles.addKeyFiles}).

        @return: a Deferred firing with that function's results, or failing
            with C{OSError(EIO)} if the child cannot write them.
        """
        return self._request(VAULT_KEYS, (directory, wrapped), len(wrapped))

    def indexPlain(self, paths: list[str]) -> Deferred:
        """
        Make the IMAP fetch index entries of small plain stored messages
        in the child (see L{qutemail.access.plainindex.indexSmallPlain}),
        on its core rather than the server's.

        @return: a Deferred firing with that function's results, or failing
            with C{OSError(EIO)} if the child cannot make them.
        """
        return self._request(INDEX_PLAIN, paths, len(paths))

    def sealInline(self, subject: str | None, items: list[tuple[bytes, str, bytes]]) -> Deferred:
        """
        Encrypt internal mail held in memory in the child, on its core
        rather than the server's (see L{qutemail.store.sealwork.sealBodies}).

        @return: a Deferred firing with that function's results, or failing
            with C{OSError(EIO)} if the child cannot make them.
        """
        return self._request(SEAL_INLINE, (subject, items), len(items))

    def _request(self, kind: str, payload: object, count: int) -> Deferred:
        """
        Hand the child a request whose answer has C{count} results.
        """
        if not self.running:
            return fail(OSError(errno.EIO, "the delivery process is stopped"))
        if self._protocol is None:
            self._spawn()
        requestId = next(self._ids)
        d: Deferred = Deferred()
        self._waiting[requestId] = (d, count)
        self._protocol.writer.write(encodeFrame((requestId, kind, payload)))
        return d

    def answered(self, requestId: int, results: list | None, error: str | None) -> None:
        """
        The child answered a batch.
        """
        entry = self._waiting.pop(requestId, None)
        if entry is None:
            self._log.error("the delivery process answered unknown batch {id}", id=requestId)
            return
        d, count = entry
        if error is not None or results is None or len(results) != count:
            self._log.error("the delivery process failed a batch: {error}", error=error or "bad answer")
            d.errback(OSError(errno.EIO, f"delivery process: {error or 'bad answer'}"))
            return
        d.callback(results)

    def ended(self, protocol: _ChildProtocol, reason) -> None:
        """
        The child exited: fail what it had; the next batch starts another.
        """
        if protocol is not self._protocol:
            return
        if self.running:
            self._log.error("the delivery process ended ({reason}); {count} batches fail and are retried",
                            reason=reason.getErrorMessage(), count=len(self._waiting))
        self._dropChild("the delivery process ended")

    def damaged(self, protocol: _ChildProtocol, reason: str) -> None:
        """
        An answer from the child could not be read, so no later one can
        be found either: fail everything it had, as if it had died, and
        kill it; the next batch starts another.
        """
        if protocol is not self._protocol:
            return
        self._log.error("the delivery process sent an answer that cannot be read ({reason}); stopping it, "
                        "{count} batches fail and are retried", reason=reason, count=len(self._waiting))
        self._dropChild("the delivery process sent a damaged answer")
        try:
            protocol.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def _dropChild(self, why: str) -> None:
        """
        Forget the child and fail the requests it had with EIO.
        """
        self._protocol = None
        waiting, self._waiting = self._waiting, {}
        for d, _ in waiting.values():
            d.errback(OSError(errno.EIO, why))

    def stopService(self) -> Deferred:
        """
        Close the child's input: it finishes the batches it has, answers
        them and exits.
        """
        Service.stopService(self)
        if self._protocol is None:
            return succeed(None)
        ended = self._protocol.ended
        self._protocol.writer.loseConnection()
        return ended
