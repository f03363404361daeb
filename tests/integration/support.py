"""
Helpers for integration tests: real servers on loopback, driven by real
clients in threads.
"""

import functools
import os
import random
import signal
import ssl as stdssl
import socket
import subprocess
import sys
import time
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from qutemail.assembly import buildBackends
from qutemail.blocking import InlineRunner, wait
from qutemail.config import loadConfig

# Socket timeout for every client (STYLE: 10 s or less).
CLIENT_TIMEOUT = 10


def insecureContext() -> stdssl.SSLContext:
    """
    A client context that accepts the test server's self-signed certificate.
    """
    context = stdssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = stdssl.CERT_NONE
    return context

CONFIG_TEMPLATE = """\
[server]
hostname = mail.example.test
domains = example.test, example.org
data_dir = {dataDir}
bind = 127.0.0.1
workers = {workers}
{serverExtra}
[smtp]
mta_port = {mtaPort}
submission_port = {submissionPort}
smtps_port = 0
max_message_size = {maxMessageSize}
max_recipients = 100

[imap]
port = 0
tls_port = 0

[pop3]
port = 0
tls_port = 0
"""


def writeConfig(path: str, dataDir: str, mtaPort: int = 0, maxMessageSize: str = "25M",
                workers: int = 1, extra: str = "", submissionPort: int = 0, serverExtra: str = "") -> str:
    """
    Write a loopback test configuration.

    @param serverExtra: more lines of the C{[server]} section.
    @param extra: more sections, e.g. C{[relay]} pointing at a loopback DNS
        server and remote exchanger.  Without a C{[relay]} section there is
        no test DNS server, so the inbound checks (which would ask the
        machine's resolvers) are turned off unless C{extra} has its own
        C{[inbound]} section.
    @return: C{path}.
    """
    text = CONFIG_TEMPLATE.format(dataDir=dataDir, mtaPort=mtaPort, maxMessageSize=maxMessageSize,
                                  workers=workers, submissionPort=submissionPort, serverExtra=serverExtra)
    if "[relay]" not in extra and "[inbound]" not in extra:
        text += "\n[inbound]\nchecks = no\n"
    with open(path, "w") as f:
        f.write(text + extra)
    return path


def addTestUsers(configPath: str, names: tuple[str, ...] = ("alice", "bob")) -> None:
    """
    Create C{name@example.test} with password C{pw-name} for each name, in
    the user directory the configuration names (a file, or Redis), as the
    command line reaches it, with a cheap password hash.
    """
    users = buildBackends(loadConfig(configPath, environ={}), InlineRunner(), Clock()).users
    users.workFactor = 4
    for name in names:
        wait(users.addUser(f"{name}@example.test", b"pw-" + name.encode()))


def relaySection(dns, remote, extra: str = "") -> str:
    """
    @param dns: the loopback L{tests.dnsserver.DNSServer}.
    @param remote: the loopback L{tests.relay.remote.RemoteMX}.
    @return: a C{[relay]} section sending outbound mail through them.
    """
    servers = ", ".join(f"{ip}:{port}" for ip, port in dns.nameservers)
    return f"\n[relay]\nnameservers = {servers}\nmx_port = {remote.port}\n{extra}"


# The outside world of the end-to-end tests: remote.test's exchanger is on
# loopback; nowhere.test does not exist.
REMOTE_ZONE = [
    ("remote.test", "MX", (10, "mx.remote.test")),
    ("mx.remote.test", "A", "127.0.0.1"),
]


# Where freePort looks: below the kernel's range of ephemeral ports
# (32768-60999 by default), which every outgoing connection of the suite's
# two workers draws from.  A port taken from that range by binding to port
# 0 could be another connection's before the server bound it: a node once
# failed to start with "Address already in use".
_PORTS_FROM, _PORTS_TO = 20000, 32767
_given: set[int] = set()
_pick = random.Random()


@functools.cache
def _candidatePorts() -> list[int]:
    """
    @return: the ports of C{_PORTS_FROM}-C{_PORTS_TO} outside the kernel's
        range of ephemeral ports.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(value) for value in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return [port for port in range(_PORTS_FROM, _PORTS_TO + 1) if not low <= port <= high]


def freePort() -> int:
    """
    @return: a TCP port that was free on 127.0.0.1 a moment ago, outside
        the ephemeral range and not given out before by this process (so
        that nothing but another test picks it meanwhile, by chance).
    """
    candidates = _candidatePorts()
    for _ in range(200):
        port = _pick.choice(candidates) if candidates else 0
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _given.add(port)
        return port
    raise RuntimeError("no free loopback port found")


def holdPort(testCase: Any) -> int:
    """
    Listen on a free loopback port, as another program holding it would,
    until C{testCase} ends.

    @return: the port.
    """
    holder = socket.socket()
    testCase.addCleanup(holder.close)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder.getsockname()[1]


def runCLI(configPath: str, *args: str, stdin: str = "", env: dict | None = None,
           binary: bool = False) -> subprocess.CompletedProcess:
    """
    Run the C{qutemail} admin command in a subprocess (blocking: call it in
    a thread or during set-up).

    @param env: the environment (C{None}: this process's).
    @param binary: keep standard output as bytes.
    """
    return subprocess.run(
        [sys.executable, "-m", "qutemail.cli", "--config", configPath, *args],
        input=stdin.encode() if binary else stdin, capture_output=True, text=not binary, timeout=60, env=env,
    )


def maildirFiles(dataDir: str, address: str) -> list[str]:
    """
    @return: the paths of every message in an account's C{new/} and C{cur/}.
    """
    local, _, domain = address.partition("@")
    base = os.path.join(dataDir, "mail", domain, local)
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(base, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
    return out


async def waitFor(predicate, timeout: float = 30.0, interval: float = 0.05):
    """
    Poll C{predicate} on the reactor until it returns true.

    @raise AssertionError: it did not within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, interval, lambda: None)


class ServerProcess:
    """
    C{twistd -n qutemail} in a subprocess.
    """

    def __init__(self, configPath: str, logPath: str, port: int, logToStdout: bool = False,
                 env: dict | None = None) -> None:
        """
        @param configPath: the configuration.
        @param logPath: where twistd logs.
        @param port: the MTA port it will listen on.
        @param logToStdout: run twistd without C{--logfile} and send its
            standard output (where extra workers log too) to C{logPath}.
        """
        self.logToStdout = logToStdout
        self.env = env
        self._stdout = subprocess.DEVNULL
        self.configPath = configPath
        self.logPath = logPath
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """
        Start the server and wait (blocking, up to 30 s) until it accepts
        connections.
        """
        logging = [] if self.logToStdout else ["--logfile", self.logPath]
        self._stdout = open(self.logPath, "ab") if self.logToStdout else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", *logging, "qutemail", "--config", self.configPath],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.PIPE, env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("server exited: " + self.process.stderr.read().decode())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start listening")

    def kill(self) -> None:
        """
        SIGKILL the server and reap it.
        """
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process:
            self.process.wait(10)
        if not isinstance(self._stdout, int):
            self._stdout.close()
            self._stdout = subprocess.DEVNULL

    def stop(self) -> int:
        """
        SIGTERM the server and wait for it to exit.

        @return: its exit status.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def children(self, module: str = "qutemail.workermain") -> list[int]:
        """
        @param module: what the children run (C{python -m module}): the
            extra SMTP workers by default, or the delivery process
            (C{qutemail.store.deliveryworker}).
        @return: the pids of those child processes of the server.
        """
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) != self.process.pid:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if module.encode("ascii") in argv:
                pids.append(int(entry))
        return pids

    def rssKiB(self, field: str = "VmRSS") -> int:
        """
        @return: a memory figure of the server from C{/proc}, in KiB.
        """
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field}")


async def readAsOwner(dataDir: str, path: str) -> bytes:
    """
    Read a stored message as its owner sees it: decrypted with the key
    from the server's vault when it is internal mail, as stored otherwise.
    """
    from qutemail.blocking import InlineRunner
    from qutemail.qkd.vault import FileKeyVault
    from qutemail.store.reader import readMessage

    keys = os.path.join(dataDir, "keys")
    vault = FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), InlineRunner())
    body, _ = await readMessage(path, vault, InlineRunner())
    with body:
        return body.read()


@attrs.frozen
class Node:
    """
    One node of a test of several (issue 17): its configuration,
    environment and ports.
    """

    config: str
    env: dict
    mta: int
    submission: int
    imap: int


def sharedNode(testCase: Any, base: str, name: str, masterKey: bytes, redisURL: str, sharedMail: str,
               extra: str = "") -> tuple[Node, "ServerProcess"]:
    """
    Write the configuration of one node sharing Redis, a Maildir directory
    and the master key with the others (killed when the test ends; not
    started yet).

    @param base: the test's directory: the node's C{data_dir}, its
        configuration and log go under it, named after C{name}.
    @param masterKey: the master key every node has before it first starts.
    @param extra: more configuration lines (a C{[limits]} section, say).
    @return: the node, and its server process.
    """
    mta, imap, submission = freePort(), freePort(), freePort()
    dataDir = os.path.join(base, name)
    os.makedirs(os.path.join(dataDir, "keys"), mode=0o700)
    with open(os.open(os.path.join(dataDir, "keys", "master.key"), os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(masterKey)
    config = writeConfig(os.path.join(base, f"{name}.ini"), dataDir, mtaPort=mta, submissionPort=submission,
                         extra=f"\n[redis]\nurl = {redisURL}\n[mailbox]\nmail_dir = {sharedMail}\n"
                               # Deferred deliveries are retried every second; no
                               # DNS here, so no SPF, DKIM or DMARC either.
                               f"[relay]\nretry_schedule = 1s\nnameservers = 127.0.0.1:9\n"
                               f"[inbound]\nchecks = no\n{extra}")
    env = dict(os.environ, QUTEMAIL_IMAP_PORT=str(imap))
    server = ServerProcess(config, os.path.join(base, f"{name}.log"), mta, env=env)
    testCase.addCleanup(server.kill)
    return Node(config, env, mta, submission, imap), server
