#!/usr/bin/env python3
"""
Internal-mail delivery throughput with QKD encryption at rest, against the
same run without it (issue 4, acceptance item 7).

For each round, and within it for each mode ([qkd] encrypt = no, then yes),
the script:

  - makes a fresh data directory under the scratch directory (never one
    reused after deleting thousands of files: on these disks creating files
    right after that is slow for minutes, see bench/throughput.sh);
  - writes a configuration from etc/qutemail.ini: loopback, the MTA and
    submission listeners on free ports (the others off), one process, no
    message or connection limits in the way, the embedded KME with a pool
    large enough for the whole run and a fast refill, and [qkd] encrypt;
    with --kme separate, the KME is instead `qutemail kme` in its own
    process, started once for the whole benchmark (a site's KME runs on
    its own machine): the server is SAE "qutemail" there and takes keys
    for mail at rest naming SAE "escrow" on the KME's link ([qkd]
    rest_sae), and each run's line adds the KME's CPU time;
  - creates bob@example.test and alice@example.test with the admin command;
  - starts `twistd -n qutemail` (log in the run directory, no pid file) and
    waits until the submission port answers;
  - opens SESSIONS submission sessions (threads), each with STARTTLS (the
    server's certificate is self-signed and not verified) and AUTH PLAIN as
    bob; then, all at once, each sends MESSAGES messages of SIZE bytes
    from bob to alice;
  - times from the first MAIL until all SESSIONS x MESSAGES messages are
    in alice's Maildir (files in new/ and cur/), so the figure covers
    delivery (and sealing), not only acceptance;
  - stops the server with SIGTERM (if it does not stop within 60 s,
    SIGABRT, which writes its threads' stacks to twistd.stderr, then
    SIGKILL), then checks the count and a few stored files: multipart/encrypted without the
    plaintext when encrypting, the plaintext as sent otherwise.

It prints one line per run (mode, round, messages, seconds, messages per
second; then when the last message was accepted, the CPU time the server,
its child processes (the delivery process) and this client used over the
measured interval, what a stored message is,
and when encrypting the vault's key count and how many enc_keys requests
took those keys, from the KME's log: the batching that keeps encryption
cheap under load) and a summary: the median messages per second of each mode, the ratio
encrypted/plain and the cost of encryption (1 - ratio).
QUTEMAIL_* environment variables are not passed to the server (they would
override the benchmark's configuration).  The scratch directory is kept
(see L{benchserver.leaveScratch}) unless --clean is given.

    python bench/qkd_throughput.py [--sessions 4] [--messages 250]
        [--size 2048 | --size 100K] [--rounds 3] [--kme embedded|separate]
        [--dir DIR] [--clean] [--before-run COMMAND]

--before-run runs COMMAND PID MODE ROUND once each server listens, before
the sessions connect; for example a script that starts
`py-spy record --pid PID ...` in the background (it stops when the server
does).

Exit status 0 when every run delivered every message and passed its checks,
1 otherwise.
"""

import argparse
import configparser
import email.utils
import os
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
from typing import Any
import time

from benchserver import (
    BenchError, KMEPair, Server, addScratchOptions, checkStored, freePort, leaveScratch, maildirCount,
    serverEnvironment, waitForMaildir,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BASE_CONFIG = os.path.join(REPO, "etc", "qutemail.ini")

DOMAIN = "example.test"
SENDER = f"bob@{DOMAIN}"
RECIPIENT = f"alice@{DOMAIN}"
PASSWORD = "bench-password"
MODES = (("plain", "no"), ("encrypted", "yes"))
# With --kme separate: the server's SAE, and the SAE keys for mail at rest
# are taken for.
KME_SAES = ("qutemail", "escrow")

CLIENT_TIMEOUT = 120.0


def parseSize(text: str) -> int:
    """
    @return: a size in bytes from C{2048}, C{2K}, C{100K} or C{1M} (binary).
    """
    text = text.strip().upper().removesuffix("B")
    factor = 1
    if text and text[-1] in "KM":
        factor = 1024 if text[-1] == "K" else 1024 * 1024
        text = text[:-1]
    try:
        value = int(text) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 512:
        raise argparse.ArgumentTypeError("the size must be at least 512 bytes")
    return value


def positive(text: str) -> int:
    """
    @return: a positive integer.
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def writeConfig(path: str, dataDir: str, mtaPort: int, submissionPort: int, encrypt: bool,
                poolKeys: int, kme: KMEPair | None = None) -> None:
    """
    Write a run's configuration: etc/qutemail.ini with the benchmark's
    values (every other key as there).

    @param kme: a separate KME to use, or C{None} for the embedded one.
    """
    overrides = {
        "server": {"data_dir": dataDir, "bind": "127.0.0.1", "workers": "1"},
        "smtp": {"mta_port": str(mtaPort), "submission_port": str(submissionPort), "smtps_port": "0"},
        "imap": {"port": "0", "tls_port": "0"},
        "pop3": {"port": "0", "tls_port": "0"},
        # Off: the development configuration's fixed ports may be taken by
        # another server on the machine, and they are not measured.
        "jmap": {"port": "0"},
        "metrics": {"port": "0"},
        "tls": {"cert": "", "key": ""},
        "limits": {"messages_per_ip_hour": "0", "messages_per_user_hour": "0", "connections_per_ip": "1000"},
        "qkd": {"kme_url": "", "pool_keys": str(poolKeys), "refill_per_second": "100000",
                "encrypt": "yes" if encrypt else "no"},
        "redis": {"url": ""},
    }
    if kme is not None:
        # Our own SAE is only for the embedded KME: with another, keys for
        # mail at rest name a second SAE (as a key-escrow service would be).
        overrides["qkd"] |= kme.qkd(KME_SAES[0]) | {"rest_sae": KME_SAES[1]}
    writeFromBase(path, overrides)


def writeFromBase(path: str, overrides: dict[str, dict[str, str]]) -> None:
    """
    Write etc/qutemail.ini to C{path} with C{overrides} (section, then key,
    then value); every other key stays as there.

    @raise BenchError: an override names a key the file does not have.
    """
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    with open(BASE_CONFIG, encoding="utf-8") as f:
        parser.read_file(f)
    for section, values in overrides.items():
        for key, value in values.items():
            if not parser.has_option(section, key):
                raise BenchError(f"{BASE_CONFIG} has no [{section}] {key}")
            parser.set(section, key, value)
    with open(path, "w", encoding="utf-8") as f:
        parser.write(f)


def addUser(configPath: str, address: str) -> None:
    """
    Create an account with the admin command.
    """
    result = subprocess.run(
        [sys.executable, "-m", "qutemail.cli", "--config", configPath, "user", "add", address,
         "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=120, env=serverEnvironment(),
    )
    if result.returncode != 0:
        raise BenchError(f"user add {address} failed: {result.stderr.strip()}")


def makeBody(size: int) -> bytes:
    """
    @return: C{size} bytes of printable ASCII lines ending in CRLF.
    """
    line = (b"The quick brown fox jumps over the lazy dog, QKD bench filler 0123456789"[:70] + b"\r\n")
    lines = []
    total = 0
    while total + len(line) <= size:
        lines.append(line)
        total += len(line)
    if size - total >= 2:
        lines.append(b"x" * (size - total - 2) + b"\r\n")
    return b"".join(lines)


class Message:
    """
    The messages of one run: the same body under a header with a unique
    Message-ID, SIZE bytes in all (give or take a byte).
    """

    def __init__(self, size: int, tag: str, sender: str = SENDER, recipient: str = RECIPIENT) -> None:
        self.tag = tag
        self.sender, self.recipient = sender, recipient
        headerSize = len(self.header(0, 0))
        self.body = makeBody(max(size - headerSize, 2))

    def header(self, session: int, index: int) -> bytes:
        """
        @return: the header of one message, ending with its blank line.
        """
        return (
            f"From: Bob <{self.sender}>\r\n"
            f"To: Alice <{self.recipient}>\r\n"
            f"Subject: qkd bench {self.tag} {session}-{index:06d}\r\n"
            f"Date: {email.utils.formatdate(localtime=False)}\r\n"
            f"Message-ID: <{self.tag}.{session}.{index:06d}@{self.sender.partition('@')[2]}>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n"
            f"\r\n"
        ).encode("ascii")

    def build(self, session: int, index: int) -> bytes:
        """
        @return: one whole message.
        """
        return self.header(session, index) + self.body


def clientContext() -> ssl.SSLContext:
    """
    @return: a TLS context that accepts the server's self-signed certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Session(threading.Thread):
    """
    One submission session: connect, STARTTLS, AUTH PLAIN, wait for the
    start, then send its messages one after the other.
    """

    def __init__(self, number: int, port: int, count: int, message: Message, barrier: threading.Barrier) -> None:
        super().__init__(name=f"session-{number}", daemon=True)
        self.number = number
        self.port = port
        self.count = count
        self.message = message
        self.barrier = barrier
        self.error: BaseException | None = None
        self.finished: float | None = None

    def run(self) -> None:
        client = None
        try:
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="bench.example.test",
                                      timeout=CLIENT_TIMEOUT)
                client.ehlo()
                client.starttls(context=clientContext())
                client.ehlo()
                client.user, client.password = self.message.sender, PASSWORD
                client.auth("PLAIN", client.auth_plain)
            finally:
                # Ready or broken, never leave the others waiting.
                self.barrier.wait(CLIENT_TIMEOUT)
            for index in range(self.count):
                refused = client.sendmail(self.message.sender, [self.message.recipient],
                                          self.message.build(self.number, index))
                if refused:
                    raise BenchError(f"recipient refused: {refused}")
            self.finished = time.monotonic()
            client.quit()
            client = None
        except BaseException as e:  # reported by the main thread
            self.error = e
            try:
                self.barrier.abort()
            except Exception:
                pass
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass


def runSessions(count: int, port: int, messages: int, message: "Message", onStart: Any) -> tuple[float, float]:
    """
    Run C{count} submission sessions that start together (C{onStart()}
    runs at the start, as the barrier opens) and wait for them all.

    @return: when they started and when the last one was answered
        (C{time.monotonic()}).
    @raise BenchError: a session failed.
    """
    times: dict[str, float] = {}

    def go() -> None:
        times["start"] = time.monotonic()
        onStart()

    barrier = threading.Barrier(count, action=go)
    sessions = [Session(i, port, messages, message, barrier) for i in range(count)]
    for session in sessions:
        session.start()
    for session in sessions:
        session.join()
    # The session that broke the barrier says why; the others only that it broke.
    errors = sorted((s.error for s in sessions if s.error is not None),
                    key=lambda e: isinstance(e, threading.BrokenBarrierError))
    if errors:
        raise BenchError(f"a session failed: {type(errors[0]).__name__}: {errors[0]}")
    return times["start"], max(s.finished for s in sessions)


def encKeysRequests(logPath: str) -> int | None:
    """
    @return: how many C{enc_keys} requests the embedded KME answered with
        keys, from its one log line per request, or C{None} without a log.
    """
    try:
        with open(logPath, encoding="utf-8", errors="replace") as f:
            return sum(1 for line in f if ": enc_keys from SAE " in line and ": 200, " in line)
    except OSError:
        return None


def _spent(now: float | None, before: float | None) -> float | None:
    """
    @return: the CPU seconds used between two readings, or C{None} when
        either could not be taken.
    """
    return None if now is None or before is None else now - before


def oneRun(args: argparse.Namespace, scratch: str, number: int, mode: str, encrypt: bool,
           kme: KMEPair | None = None) -> dict:
    """
    One run of one mode on a fresh data directory.

    @return: the run's figures.
    """
    runDir = os.path.join(scratch, f"run-{number:02d}-{mode}")
    os.makedirs(runDir)
    dataDir = os.path.join(runDir, "var")
    configPath = os.path.join(runDir, "qutemail.ini")
    submissionPort = freePort()
    mtaPort = freePort()
    while mtaPort == submissionPort:
        mtaPort = freePort()
    expected = args.sessions * args.messages
    writeConfig(configPath, dataDir, mtaPort, submissionPort, encrypt,
                poolKeys=max(100000, 2 * expected), kme=kme)
    addUser(configPath, SENDER)
    addUser(configPath, RECIPIENT)
    mailbox = os.path.join(dataDir, "mail", DOMAIN, RECIPIENT.partition("@")[0])
    message = Message(args.size, f"r{number}{mode[0]}")
    server = Server(configPath, runDir, submissionPort)
    try:
        server.start()
        if args.before_run:
            subprocess.run([args.before_run, str(server.process.pid), mode, str(number)], check=False)
        times: dict[str, float] = {}

        def go() -> None:
            times["serverCPU"] = server.cpuSeconds()
            times["childrenCPU"] = server.childrenCPUSeconds()
            times["clientCPU"] = time.process_time()
            times["kmeCPU"] = kme.cpuSeconds() if kme is not None else None

        started, accepted = runSessions(args.sessions, submissionPort, args.messages, message, go)
        done, count = waitForMaildir(mailbox, expected, started)
        serverCPU = _spent(server.cpuSeconds(), times["serverCPU"])
        childrenCPU = _spent(server.childrenCPUSeconds(), times["childrenCPU"])
        clientCPU = time.process_time() - times["clientCPU"]
        kmeCPU = _spent(kme.cpuSeconds() if kme is not None else None, times["kmeCPU"])
    finally:
        server.stop()
    # Stopped: nothing is being written now.
    count = maildirCount(mailbox)
    if count != expected:
        raise BenchError(f"{count} messages in {mailbox}, expected {expected}")
    contentType = checkStored(mailbox, encrypt, message.body)
    keys = requests = None
    if encrypt:
        requests = encKeysRequests(server.logPath)
        vault = os.path.join(dataDir, "keys", "vault")
        keys = len(os.listdir(vault)) if os.path.isdir(vault) else 0
        if keys < expected:
            raise BenchError(f"{keys} keys in {vault} for {expected} sealed messages")
    seconds = done - started
    return {"mode": mode, "round": number, "messages": count, "seconds": seconds,
            "rate": count / seconds, "accepted": accepted - started, "contentType": contentType,
            "keys": keys, "requests": requests, "serverCPU": serverCPU, "childrenCPU": childrenCPU,
            "clientCPU": clientCPU, "kmeCPU": kmeCPU}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Internal-mail delivery throughput with [qkd] encrypt = yes against encrypt = no.")
    parser.add_argument("--sessions", type=positive, default=4, help="concurrent submission sessions (4)")
    parser.add_argument("--messages", type=positive, default=250, help="messages per session (250)")
    parser.add_argument("--size", type=parseSize, default=2048,
                        help="message size in bytes, or with K/M: 2K (default), 100K")
    parser.add_argument("--rounds", type=positive, default=3, help="runs of each mode, alternating (3)")
    addScratchOptions(parser)
    parser.add_argument("--kme", choices=("embedded", "separate"), default="embedded",
                        help="the server's embedded KME (default), or `qutemail kme` in its own process, "
                             "as a site's KME is on its own machine")
    parser.add_argument("--before-run", metavar="COMMAND",
                        help="run COMMAND PID MODE ROUND once each server listens (e.g. to attach a profiler)")
    args = parser.parse_args(argv)

    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="qkd-bench-", dir=args.dir)
    else:
        scratch = tempfile.mkdtemp(prefix="qutemail-qkd-bench-")
    print(f"# {args.sessions} sessions x {args.messages} messages of {args.size} bytes, bob -> alice over "
          f"submission (STARTTLS, AUTH PLAIN), {args.rounds} rounds, {args.kme} KME; scratch {scratch}", flush=True)
    results = []
    status = 0
    kme = KMEPair(scratch, KME_SAES) if args.kme == "separate" else None
    try:
        if kme is not None:
            bootstrap = os.path.join(scratch, "kme.ini")
            writeFromBase(bootstrap, {"server": {"data_dir": os.path.join(scratch, "kme-var")}})
            kme.start(bootstrap)
        for number in range(1, args.rounds + 1):
            for mode, value in MODES:
                result = oneRun(args, scratch, number, mode, value == "yes", kme)
                results.append(result)
                cpu = "" if result["serverCPU"] is None else f"server CPU {result['serverCPU']:.2f} s, "
                if result["childrenCPU"] is not None:
                    cpu += f"children {result['childrenCPU']:.2f} s, "
                if result["kmeCPU"] is not None:
                    cpu += f"KME CPU {result['kmeCPU']:.2f} s, "
                extra = f", {result['keys']} vault keys" if result["keys"] is not None else ""
                if result["requests"]:
                    extra += (f" from {result['requests']} enc_keys requests "
                              f"({result['keys'] / result['requests']:.1f} keys each)")
                print(f"{mode:<9}  round {number}  {result['messages']} messages  {result['seconds']:7.2f} s  "
                      f"{result['rate']:7.1f} msg/s  (all accepted at {result['accepted']:.2f} s; {cpu}"
                      f"client CPU {result['clientCPU']:.2f} s; stored {result['contentType']}{extra})", flush=True)
    except BenchError as e:
        print(f"qkd_throughput: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("qkd_throughput: interrupted", file=sys.stderr)
        status = 130
    finally:
        if kme is not None:
            kme.stop()
        leaveScratch(scratch, args.clean, failed=bool(status))
    if status:
        return status
    medians = {mode: statistics.median(r["rate"] for r in results if r["mode"] == mode) for mode, _ in MODES}
    ratio = medians["encrypted"] / medians["plain"]
    print(f"median plain     {medians['plain']:8.1f} msg/s")
    print(f"median encrypted {medians['encrypted']:8.1f} msg/s")
    print(f"ratio encrypted/plain {ratio:.3f}; cost of encryption {100 * (1 - ratio):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
