"""
Real rspamd and clamd for the tests, from Debian's packages, each a child
process of the test on a free loopback port with a configuration written
into the test's directory: rspamd with no DNS lists and three rules keyed on
a test header, clamd with a signature database the test writes (the EICAR
test string and a string of our own), never the network updater.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.integration.support import freePort
from tests.support import requireInstalled

# The EICAR anti-virus test file (https://www.eicar.org), which every
# scanner is expected to detect; our clamd gets a signature for it below.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# A second string only our test database knows.
TEST_MALWARE = b"QUTEMAIL-TEST-MALWARE-7d1c0f5e"
# The header whose value picks rspamd's verdict (see RULES).
VERDICT_HEADER = "X-Test-Verdict"

# rspamd rules: "spam" scores 8 (add header at 6), "reject" 20 (reject at
# 15), "soft-reject" forces rspamd's soft reject with a message.
RULES = """
local function verdictIs(task, wanted)
  return task:get_header('%(header)s') == wanted
end
rspamd_config.QT_TEST_SPAM = {
  callback = function(task) return verdictIs(task, 'spam') end,
  score = 8.0, description = 'test verdict: spam',
}
rspamd_config.QT_TEST_REJECT = {
  callback = function(task) return verdictIs(task, 'reject') end,
  score = 20.0, description = 'test verdict: reject',
}
rspamd_config.QT_TEST_SOFT = {
  callback = function(task)
    if verdictIs(task, 'soft-reject') then
      task:set_pre_result('soft reject', 'Try again later, test soft reject')
      return true
    end
    return false
  end,
  score = 0.0, description = 'test verdict: soft reject',
}
""" % {"header": VERDICT_HEADER}

RSPAMD_CONFIG = """
options {
  pidfile = "%(dir)s/rspamd.pid";
  dbdir = "%(dir)s/db";
  # A few suffixes instead of the whole public suffix list: start in a
  # fraction of a second.
  url_tld = "%(dir)s/tld.dat";
  # No DNS lists or other lookups: a nameserver nobody answers on.
  dns { nameserver = ["127.0.0.1:9"]; timeout = 1s; retransmits = 1; }
}
logging { type = "file"; filename = "%(dir)s/rspamd.log"; level = "info"; }
worker "normal" { bind_socket = "127.0.0.1:%(port)d"; count = 1; }
actions { reject = 15; add_header = 6; }
lua = "%(dir)s/rules.lua";
"""

CLAMD_CONFIG = """
Foreground yes
DatabaseDirectory %(dir)s/db
TCPSocket %(port)d
TCPAddr 127.0.0.1
LocalSocket %(socket)s
LogFile %(dir)s/clamd.log
TemporaryDirectory %(dir)s
StreamMaxLength 30M
"""


def _binary(name: str) -> str | None:
    """
    @return: the path of a program, looked for in the sbin directories too
        (clamd is in /usr/sbin, which a user's PATH may lack).
    """
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class _Daemon:
    """
    A scanner daemon in a directory of the test's own.
    """

    name = ""

    def __init__(self, testCase) -> None:
        """
        Find the program (a failure under CI, a skip elsewhere when it is
        missing) and make its directory.
        """
        self.binary = _binary(self.name)
        requireInstalled(testCase, self.binary is not None, self.name, ".ci/run installs it")
        self.testCase = testCase
        self.port = freePort()
        self.directory = os.path.abspath(testCase.mktemp())
        os.makedirs(os.path.join(self.directory, "db"))
        self.process: subprocess.Popen | None = None
        testCase.addCleanup(self.stop)

    def command(self) -> list[str]:
        """
        @return: the command line.
        """
        raise NotImplementedError()

    def answers(self) -> bool:
        """
        @return: whether it answers its ping.
        """
        raise NotImplementedError()

    def start(self) -> "_Daemon":
        """
        Start it and wait (blocking, up to 30 s) until it answers.
        """
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        cwd=self.directory)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.answers():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.testCase.fail(f"{self.name} did not start; see {self.directory}")

    def pause(self) -> None:
        """
        SIGSTOP it: it accepts connections (the kernel does) but answers
        nothing, as a hung scanner does.
        """
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """
        SIGCONT it.
        """
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """
        Stop it (and its children) and reap it.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Rspamd(_Daemon):
    """
    rspamd's normal worker on a free port, with the rules of L{RULES}.
    """

    name = "rspamd"

    def command(self) -> list[str]:
        """
        Write the configuration; run it in the foreground (as root, it
        must be told the user to stay and that this is meant).
        """
        with open(os.path.join(self.directory, "rspamd.conf"), "w") as f:
            f.write(RSPAMD_CONFIG % {"dir": self.directory, "port": self.port})
        with open(os.path.join(self.directory, "rules.lua"), "w") as f:
            f.write(RULES)
        with open(os.path.join(self.directory, "tld.dat"), "w") as f:
            f.write("com\norg\nnet\ntest\n")
        asRoot = ["-u", "root", "-g", "root"] if os.getuid() == 0 else []
        return [self.binary, "-f", "-i", *asRoot, "-c", os.path.join(self.directory, "rspamd.conf")]

    def answers(self) -> bool:
        """
        @return: whether C{/ping} answers C{pong}.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            return b"pong" in s.recv(4096)

    @property
    def url(self) -> str:
        """
        @return: its C{[content] rspamd_url}.
        """
        return f"http://127.0.0.1:{self.port}"


class Clamd(_Daemon):
    """
    clamd on a free port and a Unix socket, with a database of two
    signatures: EICAR (named C{Eicar-Test-Signature}) and L{TEST_MALWARE}.
    """

    name = "clamd"

    def command(self) -> list[str]:
        """
        Write the configuration and the database.
        """
        with open(os.path.join(self.directory, "db", "qutemail-test.ndb"), "w") as f:
            f.write(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
            f.write(f"QutEmail-Test-Malware:0:*:{TEST_MALWARE.hex()}\n")
        path = os.path.join(self.directory, "clamd.conf")
        with open(path, "w") as f:
            f.write(CLAMD_CONFIG % {"dir": self.directory, "port": self.port, "socket": self.socketPath})
        return [self.binary, f"--config-file={path}"]

    def answers(self) -> bool:
        """
        @return: whether C{PING} answers C{PONG}.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"zPING\0")
            return s.recv(100).startswith(b"PONG")

    @property
    def socketPath(self) -> str:
        """
        @return: its Unix socket, in a short directory of its own (a
            socket path has at most 107 bytes, and the test's is long).
        """
        if not hasattr(self, "_socketDir"):
            self._socketDir = tempfile.mkdtemp(prefix="qt-clamd-")
            self.testCase.addCleanup(shutil.rmtree, self._socketDir, True)
        return os.path.join(self._socketDir, "clamd.sock")
