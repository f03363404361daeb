"""
Issue 20: every file the server writes under C{data_dir} is mode 0600 and
every directory 0700, whatever the umask, including the files that only
exist for a moment (a large body arriving in C{queue/large/}, sealed copies,
APPEND literals, temporary Maildir files).
"""

import imaplib
import os
import smtplib
import stat

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import InlineRunner
from tests.integration.support import CLIENT_TIMEOUT, insecureContext, maildirFiles, waitFor, writeConfig
from tests.integration.test_mta import RunningServerMixin

# Over the spool's 256 KiB threshold: streamed to its own file.
LARGE_BYTES = 300 * 1024

# Certificates are public (every client gets them in the TLS handshake), so
# keys/**/*-cert.pem may be 0644; see qutemail.durable.
PUBLIC_CERTIFICATE_MODES = (0o600, 0o644)


def modeProblems(dataDir: str) -> list[str]:
    """
    Walk C{dataDir} (itself included): every directory must be 0700, every
    regular file 0600 (a certificate under C{keys/} may be 0644) and every
    socket 0600.  Entries that vanish during the walk (the server renames
    and removes files meanwhile) are skipped.

    @return: one line per offending entry, its path relative to C{dataDir}
        and its mode.
    """
    problems = []
    paths = [dataDir]
    for directory, dirs, files in os.walk(dataDir):
        paths += [os.path.join(directory, name) for name in dirs + files]
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        relative = os.path.relpath(path, dataDir)
        if stat.S_ISDIR(st.st_mode):
            allowed: tuple[int, ...] = (0o700,)
        elif relative.startswith("keys" + os.sep) and relative.endswith("-cert.pem"):
            allowed = PUBLIC_CERTIFICATE_MODES
        else:
            allowed = (0o600,)
        if mode not in allowed:
            problems.append(f"{relative} {oct(mode)}")
    return problems


def message(subject: str, size: int = 0) -> bytes:
    """
    A message with CRLF line ends and about C{size} bytes of body.
    """
    head = f"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\n".encode("ascii")
    line = b"0123456789" * 7 + b"\r\n"
    return head + b"short body\r\n" + line * (size // len(line))


class FileModeTests(RunningServerMixin, TestCase):
    """
    The whole service tree on a fresh data directory, with the umask most
    systems start with (022), and a watcher walking the data directory all
    along: every file and directory the server makes is private.
    """

    timeout = 120
    maxDiff = None
    maxMessageSize = "4M"
    configExtra = "\n[qkd]\npool_keys = 50\nrefill_per_second = 0\n"

    async def setUp(self):
        """
        Set the umask to 022, create alice, bob and carol (carol with a
        100-byte quota, so mail to her is deferred), start the server and a
        watcher that walks the data directory every 20 ms.
        """
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.dataDir = os.path.join(base, "var")
        self.configPath = writeConfig(os.path.join(base, "qutemail.ini"), self.dataDir,
                                      maxMessageSize=self.maxMessageSize, extra=self.configExtra)
        users = FileUserDirectory(os.path.join(self.dataDir, "users"), InlineRunner(), reactor, workFactor=4)
        for name in ("alice", "bob", "carol"):
            await users.addUser(f"{name}@example.test", b"pw-" + name.encode())
        await users.setQuota("carol@example.test", 100)
        await self.startServer()
        self.seen: set[str] = set()
        watcher = LoopingCall(lambda: self.seen.update(modeProblems(self.dataDir)))
        watcher.clock = reactor
        watcher.start(0.02)
        self.addCleanup(watcher.stop)

    def sendFromOutside(self, body: bytes, recipients: list[str]):
        """
        Send a message over the MTA port without SIZE (so carol's quota is
        not refused at RCPT).
        """

        def send(client):
            client.ehlo()
            client.mail("x@remote.test")
            for rcpt in recipients:
                self.assertEqual(client.rcpt(rcpt)[0], 250)
            self.assertEqual(client.data(body)[0], 250)

        return self.smtp(send)

    async def sendLargeWatchingSpill(self) -> list[str]:
        """
        Send a large message over the MTA port, stopping before the final
        dot until its spill file in C{queue/large/} has bytes, and look at
        the data directory then.

        @return: the problems seen while the body was half-way.
        """

        def start():
            c = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            c.ehlo()
            c.mail("x@remote.test")
            c.rcpt("alice@example.test")
            c.rcpt("carol@example.test")
            c.putcmd("data")
            code, _ = c.getreply()
            self.assertEqual(code, 354)
            c.send(message("large from outside", LARGE_BYTES))
            return c

        client = await deferToThread(start)
        large = os.path.join(self.dataDir, "queue", "large")
        spilled = await waitFor(lambda: [os.path.join(large, n) for n in os.listdir(large)
                                         if os.path.getsize(os.path.join(large, n)) > 0])
        midway = modeProblems(self.dataDir)
        # The final dot is not sent yet: the walk above saw the spill file.
        self.assertTrue(os.path.exists(spilled[0]))

        def finish():
            try:
                client.send(b".\r\n")
                return client.getreply()[0]
            finally:
                client.quit()

        self.assertEqual(await deferToThread(finish), 250)
        return midway

    def submitInternal(self, body: bytes):
        """
        Bob sends alice a message over the submission port (sealed).
        """
        return self.submit(lambda c: c.sendmail("bob@example.test", ["alice@example.test"], body))

    def imap(self, f):
        """
        Run C{f(client)} in a thread with alice logged in over IMAPS (her
        special folders are made at this first login).
        """

        def run():
            client = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=insecureContext(),
                                       timeout=CLIENT_TIMEOUT)
            try:
                client.login("alice@example.test", "pw-alice")
                return f(client)
            finally:
                client.logout()

        return deferToThread(run)

    def assertPrivate(self, midway: list[str] | None = None, ignore=lambda problem: False) -> None:
        """
        Nothing in the data directory is more open than it should be: now,
        according to the watcher, and at C{midway} if given.

        @param ignore: a predicate on the problems to leave out.
        """
        found = {"now": modeProblems(self.dataDir), "seen by the watcher": sorted(self.seen)}
        if midway is not None:
            found["while the large message arrived"] = midway
        found = {when: [p for p in problems if not ignore(p)] for when, problems in found.items()}
        self.assertEqual(found, {when: [] for when in found})

    async def test_mailPrivate(self):
        """
        After small and large messages from outside (delivered, and
        deferred for a recipient over quota) and small and large internal
        ones (sealed), every directory under C{data_dir} is 0700 and every
        file 0600, both while the large message was arriving (its spill
        file in C{queue/large/} among them) and at the end.
        """
        await self.sendFromOutside(message("small from outside"), ["alice@example.test", "carol@example.test"])
        midway = await self.sendLargeWatchingSpill()
        await self.submitInternal(message("small internal").replace(b"x@remote.test", b"bob@example.test"))
        await self.submitInternal(message("large internal", LARGE_BYTES).replace(b"x@remote.test",
                                                                                  b"bob@example.test"))
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 4)
        deferred = os.path.join(self.dataDir, "queue", "deferred")
        await waitFor(lambda: len([n for n in os.listdir(deferred) if n.endswith(".json")]) == 2)
        self.assertEqual(sorted(os.path.splitext(n)[1] for n in os.listdir(deferred)),
                         [".json", ".json", ".msg", ".msg"])
        self.assertPrivate(midway)

    async def test_imapPrivate(self):
        """
        An IMAP session that selects the INBOX (its UID list is written)
        and APPENDs a message (sealed through C{queue/append/}) leaves
        every file 0600 and every directory 0700, apart from what the
        folder code makes (see L{test_specialFoldersPrivate}).
        """
        await self.sendFromOutside(message("small from outside"), ["alice@example.test"])
        await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))

        def appendOne(client):
            client.select("INBOX")
            appended = message("appended").replace(b"x@remote.test", b"alice@example.test")
            self.assertEqual(client.append("INBOX", r"(\Seen)", None, appended)[0], "OK")

        await self.imap(appendOne)
        self.assertEqual(len(maildirFiles(self.dataDir, "alice@example.test")), 2)
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "mail", "example.test", "alice",
                                                    "uidlist")))
        self.assertPrivate()

    async def test_specialFoldersPrivate(self):
        """
        The special folders made at the first IMAP login (Sent, Drafts,
        Trash, Junk) are directories 0700 with a C{maildirfolder} file 0600.
        """
        await self.imap(lambda client: client.list())
        self.assertTrue(os.path.isdir(os.path.join(self.dataDir, "mail", "example.test", "alice", ".Sent")))
        self.assertPrivate()
