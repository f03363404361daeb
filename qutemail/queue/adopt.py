# -*- test-case-name: tests.queue.test_adopt -*-
"""
Queue ownership between nodes (issue 17): the lock a running server holds
on its queue, and C{qutemail queue adopt DIR}, which moves a stopped
node's queue to this one.

Each node keeps its journal and deferred queue under its own C{data_dir}.
The main process holds an exclusive C{flock} on C{data_dir/queue/lock}
while it runs (L{QueueLock}); a second server on the same C{data_dir}
refuses to start, and C{queue adopt} refuses a queue whose lock is held.

L{QueueAdopter} runs in the adopting node's main process (asked over the
queue control socket) and takes the stopped node's lock for as long as it
works, so the stopped node cannot start meanwhile and two nodes cannot
adopt one queue at once.  It moves, in this order:

  1. every deferred entry, through this node's L{IRelayQueue.add} (the body
     re-sealed under this node's queue key), then removes it from the
     stopped node;
  2. every unfinished message of every journal (C{queue/journal},
     C{queue/journal-N}), spill files copied first, through
     L{qutemail.pipeline.intake.Intake.adopt}: made durable in this node's
     journal, then routed as a recovered message; once a whole journal is
     in ours, its segments and spill files are removed.

Nothing is delivered twice when an adoption is cut short and run again: an
entry already in our queue under the same id is only removed from the
stopped node, and a message journalled twice is routed as recovered, which
finds the copies already stored (file names carry the queue id and
recipient index) and the queue entry already written.  A different
message with an id already ours is left where it is and reported.
Afterwards C{queue/adopted} in the stopped node's directory says who took
its queue, and that node, started again, finds nothing to deliver.
"""

import fcntl
import os
import socket
import time
from functools import partial
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.logger import Logger

from qutemail.durable import PRIVATE_FILE_MODE, makeDirectories, removeFile, syncDirectory
from qutemail.message import QueueEntry
from qutemail.qkd.vault import loadQueueKey
from qutemail.queue.control import controlPath, shortSocketPath
from qutemail.queue.deferred import DeferredQueue, copyPrivately
from qutemail.queue.journal import unfinished

LOCK_NAME = "lock"
ADOPTED_NOTE = "adopted"


class QueueInUse(Exception):
    """
    A queue belongs to a running server, or cannot be adopted; C{str()}
    says why, in one line.
    """


def takeQueueLock(queueDir: str) -> int:
    """
    Take the exclusive lock of a queue directory.  Blocking (no wait for
    the lock itself: a held lock fails at once).

    @param queueDir: C{data_dir/queue}.
    @return: the descriptor holding the lock; closing it releases it.
    @raise QueueInUse: another process holds it.
    """
    makeDirectories(queueDir)
    path = os.path.join(queueDir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QueueInUse(f"{queueDir} is in use by a running server (it holds {path})") from None
    return fd


class QueueLock(Service):
    """
    Holds this node's queue lock while the server runs (main process).
    """

    name = "queue-lock"

    def __init__(self, queueDir: str) -> None:
        """
        @param queueDir: C{data_dir/queue}.
        """
        self.queueDir = queueDir
        self._fd: int | None = None

    def startService(self) -> None:
        """
        Take the lock, or stop the start.

        @raise QueueInUse: another server runs on this C{data_dir}.
        """
        self._fd = takeQueueLock(self.queueDir)
        Service.startService(self)

    def stopService(self) -> None:
        """
        Release the lock.
        """
        Service.stopService(self)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _controlAnswers(dataDir: str) -> bool:
    """
    @return: whether a server accepts connections on C{dataDir}'s queue
        control socket (blocking).
    """
    path = controlPath(dataDir)
    if not os.path.lexists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        connectPath, fd = shortSocketPath(path)
        try:
            probe.connect(connectPath)
        except OSError:
            return False
        finally:
            if fd is not None:
                os.close(fd)
    return True


def _copyDurably(source: str, destination: str) -> None:
    """
    Copy a spill file (mode 0600, fsynced) and sync its new directory.
    Blocking.
    """
    with open(source, "rb") as f:
        copyPrivately(f, destination)
    syncDirectory(os.path.dirname(destination))


def _journals(queueDir: str) -> list[tuple[str, str]]:
    """
    @return: C{(journal directory, spill directory)} of every SMTP process
        a node ran (see L{qutemail.service.journalPaths}).
    """
    found = []
    for name in sorted(os.listdir(queueDir)):
        prefix, dash, number = name.partition("-")
        if prefix == "journal" and (not dash or number.isdigit()) and os.path.isdir(os.path.join(queueDir, name)):
            found.append((os.path.join(queueDir, name), os.path.join(queueDir, "large" + dash + number)))
    return found


def _removeJournal(journalDir: str, spillDir: str) -> None:
    """
    Remove a journal that is wholly in ours, and its spill files
    (blocking).
    """
    for directory in (journalDir, spillDir):
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                removeFile(os.path.join(directory, name))
            os.rmdir(directory)
    syncDirectory(os.path.dirname(journalDir))


def _sameMessage(ours: QueueEntry, theirs: QueueEntry) -> bool:
    """
    @return: whether two queue entries with one id hold one message.
    """
    a, b = ours.message, theirs.message
    return (a.size, a.envelope.sender, a.envelope.receivedAt) == (b.size, b.envelope.sender, b.envelope.receivedAt)


class QueueAdopter:
    """
    Moves a stopped node's queue into this node's (see the module
    docstring).
    """

    _log = Logger()

    def __init__(self, *, intake: Any, queue: Any, runner: Any, clock: Any, dataDir: str, hostname: str,
                 masterKeyPath: str) -> None:
        """
        @param intake: the main process's intake, which journals and routes
            the unfinished messages.
        @param queue: this node's L{qutemail.interfaces.IRelayQueue}.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param clock: an C{IReactorTime}, for the note left behind.
        @param dataDir: this node's C{data_dir}.
        @param hostname: this node's name, for the note left behind.
        @param masterKeyPath: this node's master key: it opens the stopped
            node's sealed bodies when that node has no C{keys/master.key}
            of its own in its directory (nodes sharing a vault share it).
        """
        self.intake = intake
        self.queue = queue
        self.runner = runner
        self.clock = clock
        self.dataDir = dataDir
        self.hostname = hostname
        self.masterKeyPath = masterKeyPath

    async def adopt(self, directory: str) -> str:
        """
        Adopt the queue of the stopped node whose C{data_dir} is
        C{directory}.

        @return: the reply line, C{ok ...} or C{error ...}.
        """
        try:
            lock = await self.runner.run(self._claim, directory)
        except QueueInUse as e:
            return f"error {e}"
        queueDir = os.path.join(directory, "queue")
        try:
            deferred, failedDeferred = await self._adoptDeferred(directory, queueDir)
            messages, failedMessages = await self._adoptJournals(queueDir)
            summary = (f"{deferred} deferred entr{'y' if deferred == 1 else 'ies'} and "
                       f"{messages} unfinished message{'' if messages == 1 else 's'}")
            await self.runner.run(self._leaveNote, queueDir, summary)
        finally:
            await self.runner.run(os.close, lock)
        self._log.info("adopted the queue of {directory}: {summary}", directory=directory, summary=summary)
        if failedDeferred or failedMessages:
            return (f"error adopted {summary}; {failedDeferred + failedMessages} could not be and stay in "
                    f"{queueDir} (see the server log)")
        return f"ok adopted {summary} from {directory}"

    def _claim(self, directory: str) -> int:
        """
        Check that C{directory} is another node's stopped C{data_dir} and
        take its queue lock (blocking).

        @raise QueueInUse: it is not, or its server runs.
        """
        if not os.path.isabs(directory):
            raise QueueInUse(f"{directory!r} is not an absolute path")
        queueDir = os.path.join(directory, "queue")
        if not os.path.isdir(queueDir):
            raise QueueInUse(f"{directory} has no queue/ directory: not a QutEmail data_dir")
        if os.path.realpath(directory) == os.path.realpath(self.dataDir):
            raise QueueInUse(f"{directory} is this node's own data_dir")
        if _controlAnswers(directory):
            raise QueueInUse(f"the server of {directory} is running (its control socket answers); stop it first")
        return takeQueueLock(queueDir)

    def _sourceKey(self, directory: str, create: bool) -> bytes:
        """
        The stopped node's queue key (blocking).
        """
        own = os.path.join(directory, "keys", "master.key")
        return loadQueueKey(own if os.path.exists(own) else self.masterKeyPath)

    async def _adoptDeferred(self, directory: str, queueDir: str) -> tuple[int, int]:
        """
        Move every deferred entry.

        @return: how many moved, and how many could not be.
        """
        source = DeferredQueue(os.path.join(queueDir, "deferred"), self.runner,
                               queueKey=partial(self._sourceKey, directory))
        entries = await self.runner.run(source.load)
        moved = failed = 0
        for entry in sorted(entries, key=lambda e: e.message.envelope.receivedAt):
            queueId = entry.queueId
            try:
                ours = await self.queue.get(queueId)
                if ours is not None and not _sameMessage(ours, entry):
                    self._log.error("cannot adopt {queueId} from {directory}: this node's queue holds another "
                                    "message with that id", queueId=queueId, directory=directory)
                    failed += 1
                    continue
                if ours is None:
                    ours = await self.queue.add(entry.message, entry.recipients, entry.dkimHeader)
                    if entry.delayWarned or entry.transitWarned:
                        ours.delayWarned, ours.transitWarned = entry.delayWarned, entry.transitWarned
                        await self.queue.update(ours)
                await source.remove(queueId)
            except Exception:
                self._log.failure("cannot adopt deferred entry {queueId} from {directory}",
                                  queueId=queueId, directory=directory)
                failed += 1
                continue
            moved += 1
        return moved, failed

    async def _adoptJournals(self, queueDir: str) -> tuple[int, int]:
        """
        Move the unfinished messages of every journal.

        @return: how many moved, and how many could not be.
        """
        moved = failed = 0
        for journalDir, spillDir in await self.runner.run(_journals, queueDir):
            left = 0
            for message in await self.runner.run(unfinished, journalDir):
                try:
                    if message.path is not None:
                        name = os.path.basename(message.path)
                        copy = os.path.join(self.intake.spoolDirectory, name)
                        await self.runner.run(makeDirectories, self.intake.spoolDirectory)
                        await self.runner.run(_copyDurably, os.path.join(spillDir, name), copy)
                        message = attrs.evolve(message, path=copy)
                    await self.intake.adopt(message)
                except Exception:
                    self._log.failure("cannot adopt unfinished message {queueId} from {journal}",
                                      queueId=message.queueId, journal=journalDir)
                    left += 1
                    continue
                moved += 1
            if left:
                failed += left
            else:
                await self.runner.run(_removeJournal, journalDir, spillDir)
        return moved, failed

    def _leaveNote(self, queueDir: str, summary: str) -> None:
        """
        Say in the stopped node's queue directory who adopted what
        (blocking).
        """
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.seconds()))
        with open(os.path.join(queueDir, ADOPTED_NOTE), "a", encoding="utf-8") as note:
            note.write(f"{stamp} {summary} adopted by {self.hostname} ({self.dataDir})\n")
