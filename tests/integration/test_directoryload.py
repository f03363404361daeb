"""
The user directory under load, through a real C{twistd -n qutemail}
process: bursts of lookups that arrive while the user file is due for a
re-read (hundreds of simultaneous RCPTs, one message to many local
recipients, a flushed backlog of internal mail) are all answered, and the
server goes on answering RCPT and AUTH promptly and stops on SIGTERM.

These are the three ways the directory's old lock was seen to wedge for
good (its release resumed each waiter inside the previous one's callback
until the stack overflowed, leaving it held): from then on every lookup
hung, and with deliveries waiting on it SIGTERM no longer stopped the
server.
"""

import base64
import collections
import json
import os
import selectors
import signal
import smtplib
import socket
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from qutemail.backends.passwordhash import hashPassword
from tests.integration.support import (
    CLIENT_TIMEOUT,
    ServerProcess,
    freePort,
    insecureContext,
    maildirFiles,
    runCLI,
    waitFor,
    writeConfig,
)

SENDER = "alice@example.test"
PASSWORD = "pw-alice"

# The server re-reads the user file at most once a second; waiting longer
# than that before a burst makes the burst's first lookup start a re-read,
# so the rest of the burst arrives while one is in progress.
STALE_SECONDS = 1.3

# Limits high enough for the bursts below (0 would mean unlimited; explicit
# figures show what the tests need).  No DNS: the inbound checks are off.
LOAD_SECTIONS = """
[limits]
connections_per_ip = 1000
messages_per_ip_hour = 10000
messages_per_user_hour = 10000

[inbound]
checks = no
"""

# Fast enough for hundreds of test accounts, and inside the range the user
# file accepts (log2 N from 1 to 20).
TEST_WORK_FACTOR = 4

# The bounds of the checks made after each burst.
PROMPT_SECONDS = 1.0
STOP_SECONDS = 5.0


def writeUsers(dataDir: str, addresses: list[str], password: str) -> None:
    """
    Write the user file (the format documented in
    L{qutemail.backends.userfile}) with these accounts, all with the same
    password, hashed with a small scrypt work factor.
    """
    os.makedirs(dataDir, mode=0o700, exist_ok=True)
    passwordHash = hashPassword(password.encode(), workFactor=TEST_WORK_FACTOR)
    document = {
        "version": 1,
        "users": {address: {"password": passwordHash, "quota": None} for address in addresses},
    }
    fd = os.open(os.path.join(dataDir, "users"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, sort_keys=True)


def _takeReply(buffer: bytes) -> tuple[int, bytes] | None:
    """
    @return: the code of the first complete SMTP reply in C{buffer} and
        what follows it, or C{None} when no reply is complete yet.
    """
    start = 0
    while True:
        end = buffer.find(b"\r\n", start)
        if end < 0:
            return None
        line = buffer[start:end]
        start = end + 2
        if line[3:4] != b"-":
            return int(line[:3]), buffer[start:]


class RawSession:
    """
    One SMTP client session over a plain socket (blocking; for a thread).
    """

    def __init__(self, port: int) -> None:
        """
        Connect to the MTA port and read the greeting.
        """
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.buffer = b""
        self.greeting = self.reply()

    def reply(self) -> int:
        """
        @return: the code of the next reply.
        @raise OSError: none came within L{CLIENT_TIMEOUT}.
        """
        while True:
            taken = _takeReply(self.buffer)
            if taken is not None:
                code, self.buffer = taken
                return code
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buffer += data

    def command(self, line: str) -> int:
        """
        Send one command line.

        @return: the code of its reply.
        """
        self.sock.sendall(line.encode("ascii") + b"\r\n")
        return self.reply()

    def close(self) -> None:
        """
        Close the socket.
        """
        self.sock.close()


def openSessions(port: int, count: int) -> list[RawSession]:
    """
    Open C{count} sessions, each past EHLO and MAIL (blocking).

    @raise AssertionError: a greeting, EHLO or MAIL was refused.
    """
    sessions = []
    try:
        for _ in range(count):
            session = RawSession(port)
            sessions.append(session)
            codes = (session.greeting, session.command("EHLO client.test"),
                     session.command("MAIL FROM:<x@remote.test>"))
            if codes != (220, 250, 250):
                raise AssertionError(f"session {len(sessions)}: greeting, EHLO, MAIL answered {codes}")
    except BaseException:
        closeSessions(sessions)
        raise
    return sessions


def closeSessions(sessions: list[RawSession]) -> None:
    """
    Close every session.
    """
    for session in sessions:
        session.close()


def sendAtOnce(sessions: list[RawSession], line: str, serverPid: int, timeoutSeconds: float) -> list[int | str]:
    """
    Write the same command on every session while the server is paused, so
    that it finds them all waiting in one turn of its reactor, then collect
    one reply from each (blocking).

    @return: each session's reply code, C{"closed"} if the server closed
        it, or C{"no reply"} if nothing came within C{timeoutSeconds}.
    """
    data = line.encode("ascii") + b"\r\n"
    os.kill(serverPid, signal.SIGSTOP)
    try:
        for session in sessions:
            session.sock.sendall(data)
    finally:
        os.kill(serverPid, signal.SIGCONT)
    deadline = time.monotonic() + timeoutSeconds
    results: list[int | str] = ["no reply"] * len(sessions)
    with selectors.DefaultSelector() as selector:
        for index, session in enumerate(sessions):
            selector.register(session.sock, selectors.EVENT_READ, index)
        waiting = len(sessions)
        while waiting and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                index = key.data
                session = sessions[index]
                chunk = session.sock.recv(4096)
                if chunk:
                    session.buffer += chunk
                    taken = _takeReply(session.buffer)
                    if taken is None:
                        continue
                    results[index], session.buffer = taken
                else:
                    results[index] = "closed"
                selector.unregister(session.sock)
                waiting -= 1
    return results


def timedRcpt(port: int, recipient: str) -> tuple[int, float]:
    """
    A fresh session on the MTA port: EHLO, MAIL, then one RCPT, timed
    (blocking).

    @return: the RCPT's reply code (or why there was none) and how long it
        took, in seconds.
    """
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo()
        code, reply = client.mail("x@remote.test")
        if code != 250:
            raise AssertionError(f"MAIL answered {code} {reply!r}")
        start = time.monotonic()
        try:
            code, _ = client.rcpt(recipient)
        except (OSError, smtplib.SMTPException) as e:
            return f"no reply: {e}", time.monotonic() - start
        return code, time.monotonic() - start
    finally:
        client.close()


def timedAuth(port: int, user: str, password: str) -> tuple[int, float]:
    """
    A fresh session on the submission port: EHLO, STARTTLS, EHLO, then one
    AUTH PLAIN, timed (blocking).

    @return: the AUTH's reply code (or why there was none) and how long it
        took, in seconds.
    """
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
    try:
        client.ehlo()
        client.starttls(context=insecureContext())
        client.ehlo()
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
        start = time.monotonic()
        try:
            code, _ = client.docmd("AUTH", "PLAIN " + blob)
        except (OSError, smtplib.SMTPException) as e:
            return f"no reply: {e}", time.monotonic() - start
        return code, time.monotonic() - start
    finally:
        client.close()


def sigtermAndWait(server: ServerProcess, timeoutSeconds: float) -> tuple[int | None, float]:
    """
    SIGTERM the server and wait for it to exit (blocking).

    @return: its exit status (C{None} if it was still running after
        C{timeoutSeconds}) and how long it took.
    """
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        status = server.process.wait(timeoutSeconds)
    except subprocess.TimeoutExpired:
        status = None
    return status, time.monotonic() - start


class DirectoryLoadTests(TestCase):
    """
    Bursts of user directory lookups leave the server answering and
    stoppable.
    """

    _log = Logger()

    # Every wait inside a test is bounded well below this, so a wedged
    # server fails a test rather than hanging the suite.
    timeout = 150

    def setUp(self) -> None:
        """
        A directory and free ports; each test writes its own configuration
        and users.
        """
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.dataDir = os.path.join(self.base, "var")
        self.port = freePort()
        self.submissionPort = freePort()
        self.logPath = os.path.join(self.base, "twistd.log")
        self.configPath = os.path.join(self.base, "qutemail.ini")

    def configure(self, extra: str = "", maxRecipients: int | None = None) -> None:
        """
        Write the configuration: loopback ports, L{LOAD_SECTIONS}, C{extra}.

        @param maxRecipients: replaces the template's C{[smtp]
            max_recipients}.
        """
        writeConfig(self.configPath, self.dataDir, mtaPort=self.port, submissionPort=self.submissionPort,
                    extra=LOAD_SECTIONS + extra)
        if maxRecipients is not None:
            with open(self.configPath) as f:
                text = f.read()
            self.assertIn("\nmax_recipients = 100\n", text)
            with open(self.configPath, "w") as f:
                f.write(text.replace("\nmax_recipients = 100\n", f"\nmax_recipients = {maxRecipients}\n"))

    async def addUsers(self, addresses: list[str]) -> None:
        """
        Write the user file with C{addresses} (password L{PASSWORD}), then
        add the sender with the command line, which also proves the file
        is one the server's code accepts.
        """
        writeUsers(self.dataDir, addresses, PASSWORD)
        added = await deferToThread(runCLI, self.configPath, "user", "add", SENDER, "--password-stdin",
                                    stdin=PASSWORD + "\n")
        self.assertEqual(added.returncode, 0, added.stderr)

    async def startServer(self) -> None:
        """
        Start C{twistd -n qutemail} on the configuration.
        """
        self.server = ServerProcess(self.configPath, self.logPath, self.port)
        self.addCleanup(self.server.kill)
        await deferToThread(self.server.start)

    def serverLog(self) -> str:
        """
        @return: the server's log so far.
        """
        with open(self.logPath, errors="replace") as f:
            return f.read()

    async def assertStillServing(self) -> None:
        """
        A fresh RCPT for a local user is answered 250 within a second, a
        fresh AUTH PLAIN on the submission port succeeds within a second,
        and SIGTERM ends the server within five seconds, cleanly.
        """
        code, seconds = await deferToThread(timedRcpt, self.port, SENDER)
        self.assertEqual(code, 250, f"RCPT after {seconds:.2f}s")
        self.assertLess(seconds, PROMPT_SECONDS, f"RCPT took {seconds:.2f}s")
        code, seconds = await deferToThread(timedAuth, self.submissionPort, SENDER, PASSWORD)
        self.assertEqual(code, 235, f"AUTH after {seconds:.2f}s")
        self.assertLess(seconds, PROMPT_SECONDS, f"AUTH took {seconds:.2f}s")
        status, seconds = await deferToThread(sigtermAndWait, self.server, STOP_SECONDS)
        self.assertIsNotNone(status, f"still running {STOP_SECONDS}s after SIGTERM")
        # Recent twistd re-raises the signal after a clean shutdown.
        self.assertIn(status, (0, -signal.SIGTERM, 128 + signal.SIGTERM))
        log = self.serverLog()
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)

    async def test_threeHundredSimultaneousRcpts(self) -> None:
        """
        Three hundred sessions from one address, each past MAIL, send RCPT
        for an existing user at the same instant, just as the user file is
        due for a re-read: every one is answered 250.
        """
        self.configure()
        await self.addUsers(["bob@example.test"])
        await self.startServer()
        sessions = await deferToThread(openSessions, self.port, 300)
        self.addCleanup(closeSessions, sessions)
        await deferLater(reactor, STALE_SECONDS, lambda: None)
        results = await deferToThread(sendAtOnce, sessions, "RCPT TO:<bob@example.test>", self.server.process.pid,
                                      CLIENT_TIMEOUT)
        self.assertEqual(collections.Counter(results), {250: 300})
        await deferToThread(closeSessions, sessions)
        await self.assertStillServing()

    async def test_oneMessageToOneHundredFiftyRecipients(self) -> None:
        """
        A message from outside to 150 local users, whose 150 deliveries look
        the accounts up just as the user file is due for a re-read, gets 250
        and lands in all 150 Maildirs.
        """
        recipients = [f"user{i:03d}@example.test" for i in range(150)]
        self.configure(maxRecipients=200)
        await self.addUsers(recipients)
        await self.startServer()

        def envelope():
            client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            client.ehlo()
            codes = [client.mail("x@remote.test")[0]] + [client.rcpt(r)[0] for r in recipients]
            return client, codes

        client, codes = await deferToThread(envelope)
        self.addCleanup(client.close)
        self.assertEqual(collections.Counter(codes), {250: 151})
        # The RCPTs refreshed the user file; the deliveries come after a
        # pause long enough for it to be due again.
        await deferLater(reactor, STALE_SECONDS, lambda: None)
        body = b"From: x@remote.test\r\nSubject: to everyone\r\n\r\nHello, all 150 of you.\r\n"
        code, reply = await deferToThread(client.data, body)
        self.assertEqual(code, 250, reply)
        await deferToThread(client.quit)

        await self.waitForProgress("recipients with their copy", 150,
                                   lambda: sum(len(maildirFiles(self.dataDir, r)) == 1 for r in recipients))
        await self.assertStillServing()

    async def test_flushTwoThousandDeferredInternalMessages(self) -> None:
        """
        Two thousand internal messages, each to three local users, submitted
        while the KME is down are all deferred; once it is back, C{queue
        flush} delivers every copy to its recipient's Maildir and empties
        the queue.
        """
        count = 2000
        recipients = [f"user{i:03d}@example.test" for i in range(20)]
        # Several recipients a message: each retried message looks up all
        # of them at once, so one batch of retries is hundreds of lookups.
        perMessage = 3
        copies = count * perMessage
        kmePort = freePort()
        kmeDirectory = os.path.join(self.base, "kme")
        self.configure()
        kme = await self.startKME(kmePort, kmeDirectory)
        # The scheduler ticks at a tenth of the shortest retry interval, but
        # at least every second: with 10 s last, a flush drains a batch a
        # second.  The first retry, 5 minutes away, keeps the deferred mail
        # waiting for the flush.
        with open(self.configPath, "a") as f:
            f.write(f"\n[relay]\nnameservers = 127.0.0.1:9\nretry_schedule = 5m,10s\n"
                    f"\n[qkd]\nkme_url = {kme['url']}\nclient_cert = {kme['cert']}\n"
                    f"client_key = {kme['key']}\nca_cert = {kme['ca']}\n")
        await self.stopKME()
        await self.addUsers(recipients)
        await self.startServer()

        def submit(first: int, last: int) -> None:
            client = smtplib.SMTP("127.0.0.1", self.submissionPort, local_hostname="client.test",
                                  timeout=CLIENT_TIMEOUT)
            client.starttls(context=insecureContext())
            client.login(SENDER, PASSWORD)
            for i in range(first, last):
                to = [recipients[(i + k) % len(recipients)] for k in range(perMessage)]
                body = (f"From: {SENDER}\r\nTo: {', '.join(to)}\r\nSubject: backlog {i}\r\n\r\n"
                        f"internal message {i}\r\n").encode()
                client.sendmail(SENDER, to, body)
            client.quit()

        sessions = 4
        share = count // sessions
        started = time.monotonic()
        await gatherResults([deferToThread(submit, n * share, (n + 1) * share) for n in range(sessions)],
                            consumeErrors=True)
        self._log.info("submitted {count} messages in {seconds:.1f}s", count=count,
                       seconds=time.monotonic() - started)
        queueDir = os.path.join(self.dataDir, "queue", "deferred")

        def queued() -> int:
            return len([n for n in os.listdir(queueDir) if n.endswith(".json")]) if os.path.isdir(queueDir) else 0

        try:
            await waitFor(lambda: queued() == count, timeout=30)
        except AssertionError:
            self.fail(f"{queued()} of {count} messages in the deferred queue after 30s")
        listing = await self.queueListing(f"-- {count} messages in the queue")
        self.assertEqual(
            (listing.count("  deferred  attempts=1  "), listing.count("  451 4.3.0 QKD key source unavailable")),
            (copies, copies), listing[-300:])

        def delivered() -> int:
            return sum(len(maildirFiles(self.dataDir, r)) for r in recipients)

        self.assertEqual(delivered(), 0)

        await self.startKME(kmePort, kmeDirectory)
        started = time.monotonic()
        flushed = await deferToThread(runCLI, self.configPath, "queue", "flush")
        self.assertEqual(flushed.returncode, 0, flushed.stderr)
        self.assertIn(f"flushed {count} messages", flushed.stdout)
        await self.waitForProgress("copies delivered", copies, delivered)
        await self.waitForProgress("messages out of the queue", count, lambda: count - queued())
        self._log.info("flushed and delivered {copies} copies in {seconds:.1f}s", copies=copies,
                       seconds=time.monotonic() - started)
        counts = {r: len(maildirFiles(self.dataDir, r)) for r in recipients}
        self.assertEqual(set(counts.values()), {copies // len(recipients)}, counts)
        await self.assertStillServing()

    async def waitForProgress(self, what: str, target: int, measure, stallSeconds: float = 15.0,
                              timeoutSeconds: float = 90.0) -> None:
        """
        Poll C{measure()} until it reaches C{target}.

        @param what: what C{measure} counts, for the failure message.
        @raise FailTest: it stayed the same for C{stallSeconds}, or did not
            get there within C{timeoutSeconds}.
        """
        start = lastChange = time.monotonic()
        last = measure()
        while last != target:
            await deferLater(reactor, 0.1, lambda: None)
            value, now = measure(), time.monotonic()
            if value != last:
                last, lastChange = value, now
            elif now - lastChange > stallSeconds:
                self.fail(f"{what}: {value} of {target}, unchanged for {stallSeconds:.0f}s")
            if now - start > timeoutSeconds:
                self.fail(f"{what}: {value} of {target} after {timeoutSeconds:.0f}s")

    async def queueListing(self, last: str, timeoutSeconds: float = 10.0) -> str:
        """
        Run C{queue list} until its last line is C{last}: messages already
        in the deferred queue show as C{active} too until the journal's
        lazy flush of done records.

        @return: the listing.
        """
        deadline = time.monotonic() + timeoutSeconds
        while True:
            listing = await deferToThread(runCLI, self.configPath, "queue", "list")
            self.assertEqual(listing.returncode, 0, listing.stderr)
            lines = listing.stdout.splitlines()
            if lines[-1:] == [last]:
                return listing.stdout
            if time.monotonic() > deadline:
                self.fail(f"queue list still ends {lines[-1:]} after {timeoutSeconds}s, expected {last!r}")

    async def startKME(self, port: int, directory: str) -> dict[str, str]:
        """
        Run C{qutemail kme} for this server's SAE on C{port}, with its
        certificates in C{directory} (made the first time, reused after).

        @return: its C{url}, and the C{ca}, client C{cert} and C{key} paths.
        """
        stderr = open(os.path.join(self.base, "kme.err"), "ab")
        self.addCleanup(stderr.close)
        process = subprocess.Popen(
            [sys.executable, "-m", "qutemail.cli", "--config", self.configPath, "kme", "--port", str(port),
             "--sae", "mail.example.test", "--pool-keys", "5000", "--refill", "0", "--directory", directory],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        self.kme = process
        self.addCleanup(lambda: (process.poll() is None and process.kill(), process.wait(10)))
        lines = [(await deferToThread(process.stdout.readline)).decode() for _ in range(3)]
        if not lines[0].startswith("KME "):
            with open(stderr.name, errors="replace") as f:
                self.fail(f"the KME did not start: {lines} {f.read()}")
        cert, key = lines[2].split(": ", 1)[1].split()
        return {"url": lines[0].split(" listening at ")[1].strip(), "ca": lines[1].split(": ", 1)[1].strip(),
                "cert": cert, "key": key}

    async def stopKME(self) -> None:
        """
        Stop the KME started last.
        """
        self.kme.terminate()
        self.assertEqual(await deferToThread(self.kme.wait, 10), 0)
