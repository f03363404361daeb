"""
What the benchmark scripts share about running a server: C{twistd -n
qutemail} as a child process, its environment, and counting and checking
what it stored in a Maildir.
"""

import email.parser
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
# Give up waiting for the Maildir when its count has not moved for this long.
STALL_TIMEOUT = 60.0


class BenchError(Exception):
    """
    A run failed: the server did not start, a session failed, a message is
    missing, or a stored file is not what the mode should store.
    """


def freePort() -> int:
    """
    @return: a TCP port that was free on 127.0.0.1 a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serverEnvironment() -> dict[str, str]:
    """
    @return: this environment without QUTEMAIL_* variables, and with
        Python's fault handler on, so that a server that has to be stopped
        with SIGABRT (see L{BenchServer.stop}) writes every thread's stack
        to its stderr first.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QUTEMAIL_")}
    environment["PYTHONFAULTHANDLER"] = "1"
    return environment


def maildirCount(mailbox: str) -> int:
    """
    @return: how many messages are in a Maildir's new/ and cur/.
    """
    count = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(os.path.join(mailbox, sub)) as entries:
                count += sum(1 for _ in entries)
        except FileNotFoundError:
            pass
    return count


def maildirFiles(mailbox: str) -> list[str]:
    """
    @return: the paths of every message in a Maildir's new/ and cur/.
    """
    paths = []
    for sub in ("new", "cur"):
        directory = os.path.join(mailbox, sub)
        if os.path.isdir(directory):
            paths += [os.path.join(directory, name) for name in os.listdir(directory)]
    return paths


def waitForGreeting(port: int, process: subprocess.Popen, greeting: bytes, name: str,
                    exited: Callable[[], str] | None = None, timeout: float = START_TIMEOUT) -> None:
    """
    Wait until the server C{process} started greets on C{port} with a line
    starting with C{greeting}.

    @param name: the server, for the errors.
    @param exited: the error when C{process} ends first (by default its
        name and exit status).
    @raise BenchError: it ended, or did not greet within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(exited() if exited else f"{name} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(greeting):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"{name} did not greet on port {port} within {timeout:.0f} s")


def _parentAndTicks(pid: int | str) -> tuple[int, int]:
    """
    @return: a process's parent and the clock ticks (user and system, all
        threads) it has used, from C{/proc/PID/stat}.
    @raise OSError: it is gone, or there is no /proc.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def processCPUSeconds(process: subprocess.Popen | None) -> float | None:
    """
    @return: the CPU time (user and system, all threads) a child process
        has used so far, or C{None} where /proc cannot say.
    """
    try:
        return _parentAndTicks(process.pid)[1] / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def leaveScratch(scratch: str, clean: bool, failed: bool = False) -> None:
    """
    Keep a benchmark's scratch directory and say where it is (the
    default), or delete it (C{--clean}, and the run did not fail).

    Deleting thousands of files slows the creation of new ones for one to
    six minutes on ext4 without a journal, as on the benchmark machines:
    inode allocation then looks at each candidate inode's deletion time
    and skips those deleted in that span.  A benchmark run soon after
    another had deleted its files measured that rather than the server.
    Delete kept directories when no benchmark is about to run.
    """
    if clean and not failed:
        shutil.rmtree(scratch, ignore_errors=True)
        return
    print(f"# scratch directory kept: {scratch} (delete it when no benchmark is about to run)",
          file=sys.stderr if failed else sys.stdout, flush=True)


def addScratchOptions(parser: Any) -> None:
    """
    Add C{--dir}, C{--keep} and C{--clean} to a benchmark's options.
    """
    parser.add_argument("--dir", help="scratch directory (default: a new one under $TMPDIR)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (the default; see --clean)")
    parser.add_argument("--clean", action="store_true",
                        help="delete the scratch directory at the end (this slows the next run's file "
                             "creation for minutes on ext4 without a journal)")


def descendantsCPUSeconds(pid: int) -> float | None:
    """
    @return: the CPU time (user and system) the live descendants of a
        process have used so far (a server's delivery process and SMTP
        worker processes), or C{None} where /proc cannot say.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if not name.isdigit():
            continue
        try:
            parents[int(name)], ticks[int(name)] = _parentAndTicks(name)
        except OSError:
            continue
    total, wanted = 0, {pid}
    while True:
        found = {child for child, parent in parents.items() if parent in wanted and child not in wanted}
        if not found:
            break
        total += sum(ticks[child] for child in found)
        wanted |= found
    return total / os.sysconf("SC_CLK_TCK")


class Server:
    """
    C{twistd -n qutemail} for one run.
    """

    def __init__(self, configPath: str, runDir: str, port: int) -> None:
        self.configPath = configPath
        self.logPath = os.path.join(runDir, "twistd.log")
        self.errPath = os.path.join(runDir, "twistd.stderr")
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """
        Start it and wait until the submission port greets.
        """
        with open(self.errPath, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "--logfile", self.logPath, "qutemail", "--config", self.configPath],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=serverEnvironment(),
            )
        waitForGreeting(self.port, self.process, b"220", "twistd",
                        lambda: f"twistd exited with status {self.process.returncode}: {self.tail()}")

    def tail(self) -> str:
        """
        @return: the end of its stderr and log, for an error message.
        """
        text = ""
        for path in (self.errPath, self.logPath):
            try:
                with open(path, errors="replace") as f:
                    text += f.read()[-1500:]
            except OSError:
                pass
        return text.strip() or "(no output)"

    def cpuSeconds(self) -> float | None:
        """
        @return: the CPU time (user and system, all threads) it has used so
            far, or C{None} where /proc cannot say.
        """
        return processCPUSeconds(self.process)

    def childrenCPUSeconds(self) -> float | None:
        """
        @return: the CPU time its live child processes (the delivery
            process, SMTP workers) have used so far, or C{None}.
        """
        return None if self.process is None else descendantsCPUSeconds(self.process.pid)

    def stop(self) -> None:
        """
        SIGTERM it and wait.  If it does not stop in time, SIGABRT it (the
        fault handler writes every thread's stack to C{twistd.stderr}, for
        finding out where it hung), then SIGKILL it if need be.  Safe to
        call more than once, and when it never started.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            raise BenchError(f"twistd (pid {process.pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f} s; aborted "
                             f"(its threads' stacks are in {self.errPath})") from None


def waitForMaildir(mailbox: str, expected: int, started: float) -> tuple[float, int]:
    """
    Poll the Maildir until it holds C{expected} messages.

    @return: the monotonic time the count was reached, and the count.
    @raise BenchError: it stopped growing for L{STALL_TIMEOUT} seconds.
    """
    count = maildirCount(mailbox)
    lastChange = time.monotonic()
    while count < expected:
        time.sleep(0.005)
        now = time.monotonic()
        current = maildirCount(mailbox)
        if current != count:
            count, lastChange = current, now
        elif now - lastChange > STALL_TIMEOUT:
            raise BenchError(f"only {count} of {expected} messages delivered after {now - started:.1f} s")
    return time.monotonic(), count


def checkStored(mailbox: str, encrypted: bool, body: bytes, samples: int = 3) -> str:
    """
    Check a few stored messages: sealed (multipart/encrypted, no plaintext)
    or plain (the body as sent), as the mode says.

    @return: the Content-Type seen, for the report.
    """
    paths = maildirFiles(mailbox)
    marker = body[:70]
    seen = ""
    for path in random.sample(paths, min(samples, len(paths))):
        with open(path, "rb") as f:
            data = f.read()
        header = email.parser.BytesHeaderParser().parsebytes(data)
        contentType = header.get_content_type()
        seen = contentType
        if encrypted and (contentType != "multipart/encrypted" or marker in data):
            raise BenchError(f"{path} is not sealed: Content-Type {contentType}")
        if not encrypted and (contentType == "multipart/encrypted" or marker not in data):
            raise BenchError(f"{path} is not the plain message: Content-Type {contentType}")
    return seen


class KMEPair:
    """
    C{qutemail kme} (the real command) in its own process: a KME serving
    one SAE and, on the same simulated QKD link, a second KME serving
    another, with a pool large enough for any run and a fast refill.
    Started once for a whole benchmark.
    """

    def __init__(self, scratch: str, saes: tuple[str, str], tlsHosts: tuple[str, ...] = ()) -> None:
        """
        @param scratch: the benchmark's scratch directory.
        @param saes: the SAE of the first KME, then of the second.
        @param tlsHosts: mail host names to issue TLS server certificates
            for, from the pair's CA.
        """
        self.directory = os.path.join(scratch, "kme")
        self.saes = saes
        self.tlsHosts = tlsHosts
        self.ports = (freePort(), freePort())
        while self.ports[1] == self.ports[0]:
            self.ports = (self.ports[0], freePort())
        self.process: subprocess.Popen | None = None
        self.logPath = os.path.join(scratch, "kme.log")

    def start(self, configPath: str) -> None:
        """
        Start it and wait until both KMEs listen.
        """
        hosts = [arg for host in self.tlsHosts for arg in ("--tls-host", host)]
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qutemail.cli", "--config", configPath, "kme", "--directory", self.directory,
                 "--sae", self.saes[0], "--port", str(self.ports[0]), "--link-sae", self.saes[1],
                 "--link-port", str(self.ports[1]), "--pool-keys", "1000000", "--refill", "1000000", *hosts],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=serverEnvironment())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with open(self.logPath, errors="replace") as f:
                if f.read().count(" listening at ") == 2:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise BenchError(f"the KME pair did not start: {open(self.logPath, errors='replace').read()[-800:]}")

    def cpuSeconds(self) -> float | None:
        """
        @return: the CPU time the KME pair has used so far.
        """
        return processCPUSeconds(self.process)

    def stop(self) -> None:
        """
        Stop it (SIGTERM) and wait.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def qkd(self, sae: str) -> dict[str, str]:
        """
        @return: the C{[qkd]} keys of a server that is C{sae} at this pair.
        """
        return {"kme_url": f"https://localhost:{self.ports[self.saes.index(sae)]}", "sae_id": sae,
                "client_cert": os.path.join(self.directory, f"sae-{sae}-cert.pem"),
                "client_key": os.path.join(self.directory, f"sae-{sae}-key.pem"),
                "ca_cert": os.path.join(self.directory, "ca-cert.pem")}
