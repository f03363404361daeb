"""
Tests for the start of the delivery process (L{qutemail.store.deliveryworker}
run as the program its parent starts): what it loads before any request.
"""

import os
import select
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.deliveryworker import PRELOAD_INDEXING, PRELOAD_SEALING

# What C{python -v} writes to the standard error when a module is imported.
IMPORTED = "import 'qutemail.{}'"


def startWorker(*options: str) -> subprocess.Popen:
    """
    Start the delivery process as its parent does, with C{python -v}, so
    that every import it makes is written to its standard error.
    """
    environment = dict(os.environ, PYTHONVERBOSE="1")
    return subprocess.Popen([sys.executable, "-m", "qutemail.store.deliveryworker", *options],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environment)


class PreloadTests(SynchronousTestCase):
    """
    C{--preload-indexing} and C{--preload-sealing} load code as the process
    starts, with no request asking for it; without them it is not loaded
    until a request needs it.
    """

    def setUp(self):
        self.seen = b""

    def waitForImport(self, process: subprocess.Popen, module: str, timeout: float = 30) -> None:
        """
        Read a process's standard error until it has imported C{module}
        (what was read before is kept in C{self.seen}).
        """
        wanted = IMPORTED.format(module).encode()
        deadline = time.monotonic() + timeout
        fd = process.stderr.fileno()
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.fail(f"the delivery process did not import qutemail.{module} in {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                self.fail(f"the delivery process ended without importing qutemail.{module}")
            self.seen += chunk

    def importsUntilExit(self, process: subprocess.Popen, timeout: float = 30) -> str:
        """
        End a delivery process's input (it exits once it has read to the
        end) and wait for it.

        @return: its whole standard error.
        """
        _, errors = process.communicate(timeout=timeout)
        return (self.seen + errors).decode("utf-8", "replace")

    def test_preloadSealing(self):
        """
        With C{--preload-sealing}, the sealing code is imported although
        nothing asked for a seal.
        """
        process = startWorker(PRELOAD_SEALING)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.waitForImport(process, "store.sealwork")
        self.assertNotIn(IMPORTED.format("access.plainindex"), self.importsUntilExit(process))
        self.assertEqual(process.returncode, 0)

    def test_preloadBoth(self):
        """
        Both options together load both.
        """
        process = startWorker(PRELOAD_INDEXING, PRELOAD_SEALING)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.waitForImport(process, "access.plainindex")
        self.waitForImport(process, "store.sealwork")
        self.importsUntilExit(process)
        self.assertEqual(process.returncode, 0)

    def test_nothingPreloaded(self):
        """
        Without the options, a process that gets no request loads neither.
        """
        process = startWorker()
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.waitForImport(process, "store.maildirwrite")
        errors = self.importsUntilExit(process)
        self.assertNotIn(IMPORTED.format("store.sealwork"), errors)
        self.assertNotIn(IMPORTED.format("access.plainindex"), errors)
        self.assertEqual(process.returncode, 0)
