# -*- test-case-name: tests.pipeline.test_transitkeys -*-
"""
How long the keys of received transit mail stay in the vault.

The receiver keeps each transit key (C{transit-<key id>}) so that a resend
of the same message after a lost 250 can still be read: the KME hands a
key out only once.  A sender gives up resending after its queue lifetime,
so after our C{[relay] queue_lifetime} (sites of one organisation use the
same) the key serves nothing and is erased.

Which keys were kept, and when, is a log beside the vault,
C{keys/transit-keys}: one C{<vault id> <POSIX time>} line per key,
appended (not synced: a line lost in a crash only means that key stays),
rewritten by each sweep without the keys it erased.  It works for every
vault, the file one and Redis alike.
"""

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qutemail.durable import PRIVATE_FILE_MODE, replaceFile
from qutemail.interfaces import KeyGone

# How often the log is swept.
SWEEP_SECONDS = 3600.0


class TransitKeyLog:
    """
    The log of kept transit keys (see the module docstring).
    """

    _log = Logger()

    def __init__(self, path: str, runner: Any, clock: Any) -> None:
        """
        @param path: the log file.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @param clock: an C{IReactorTime}.
        """
        self.path = path
        self.runner = runner
        self.clock = clock

    def note(self, vaultId: str) -> Deferred:
        """
        Record that C{vaultId} was kept now.
        """
        line = f"{vaultId} {self.clock.seconds():.0f}\n".encode("ascii")
        return self.runner.run(self._append, line)

    def _append(self, line: bytes) -> None:
        """
        Append one line (worker thread).
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def sweep(self, vault: Any, keepSeconds: float) -> Deferred:
        """
        Erase the keys kept longer than C{keepSeconds}.

        @return: a Deferred firing with how many were erased.
        """
        return Deferred.fromCoroutine(self._sweep(vault, keepSeconds))

    async def _sweep(self, vault: Any, keepSeconds: float) -> int:
        """
        See L{sweep}.
        """
        cutoff = self.clock.seconds() - keepSeconds
        entries = await self.runner.run(self._read)
        old = [vaultId for vaultId, when in entries if when < cutoff]
        if not old:
            return 0
        erased = set()
        for vaultId in old:
            try:
                await vault.erase(vaultId)
            except KeyGone:
                pass
            except Exception as e:
                # Kept in the log: the next sweep tries again.
                self._log.warn("could not erase transit key {vaultId}: {problem}", vaultId=vaultId,
                               problem=f"{type(e).__name__}: {e}")
                continue
            erased.add(vaultId)
        await self.runner.run(self._rewrite, erased)
        self._log.info("erased {count} transit keys older than {days:.1f} days", count=len(erased),
                       days=keepSeconds / 86400)
        return len(erased)

    def _read(self) -> list[tuple[str, float]]:
        """
        @return: the log's entries (worker thread); bad lines are skipped.
        """
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            parts = line.decode("ascii", "replace").split()
            if len(parts) == 2 and parts[1].isdigit():
                entries.append((parts[0], float(parts[1])))
        return entries

    def _rewrite(self, erased: set[str]) -> None:
        """
        Rewrite the log without the erased keys (worker thread); lines
        appended meanwhile are kept (it is read again here).
        """
        kept = [f"{vaultId} {when:.0f}\n" for vaultId, when in self._read() if vaultId not in erased]
        replaceFile(self.path, "".join(kept).encode("ascii"))


class TransitKeySweep(Service):
    """
    Sweeps the transit key log every L{SWEEP_SECONDS}, first at start.
    """

    name = "transit-key-sweep"
    _log = Logger()

    def __init__(self, keyLog: TransitKeyLog, vault: Any, keepSeconds: float) -> None:
        self.keyLog = keyLog
        self.vault = vault
        self.keepSeconds = keepSeconds
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = self.keyLog.clock
        self._loop.start(SWEEP_SECONDS, now=True)

    def _sweep(self) -> Deferred:
        """
        One sweep; a failure is logged and the loop goes on.
        """
        d = self.keyLog.sweep(self.vault, self.keepSeconds)
        d.addErrback(lambda failure: self._log.failure("sweeping transit keys failed", failure))
        return d

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
