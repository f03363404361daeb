"""
Tests of the delivery process: the framing, the child's loop, and
L{DeliveryProcess} running the real child under the reactor.
"""

import errno
import fcntl
import io
import os
import signal
import sys
import threading
import time
import uuid

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from qutemail.backends.memory import MemoryKeyVault
from qutemail.interfaces import IQKDKeySource, Account
from qutemail.message import Envelope, SpooledMessage
from qutemail.replies import MAILBOX_FULL, ReplyError
from qutemail.store.deliveryprocess import PIPE_BYTES, DeliveryProcess, _AnswerReader, _ChildProtocol
from qutemail.store.encrypted import MessageEncryptor
from qutemail.qkd.keyfiles import KeyExists
from qutemail.qkd.vault import FileKeyVault
from qutemail.access.fetchindex import BODYSTRUCTURE, ENVELOPE
from qutemail.access.plainindex import indexSmallPlain
from qutemail.qkd.cipher import decryptBytes, readEnvelope
from qutemail.store.deliveryworker import (
    DELIVER, INDEX_PLAIN, SEAL_INLINE, VAULT_KEYS, decodeFrames, encodeFrame, serve,
)
from qutemail.store.maildir import MaildirStore
from qutemail.store.maildirwrite import MaildirWriter, WriteJob
from tests.integration.support import waitFor

ALICE = Account("alice@example.test")
HEADER = b"Return-Path: <x@remote.test>\n"
# The stored size of a job's default body with HEADER.
STORED = len(HEADER) + len(b"body\n")


def message(queueId: str, body: bytes = b"Subject: hi\n\nbody\n") -> SpooledMessage:
    """
    @return: an inline message to alice.
    """
    envelope = Envelope("sender@remote.test", (ALICE.address,), "client.test", "192.0.2.7", 1700000000.5)
    return SpooledMessage(queueId, envelope, len(body), inline=body)


def job(mailbox: str, name: str, body: bytes = b"body\n", quotaBytes: int = 0) -> WriteJob:
    """
    @return: a job writing C{body} as C{name} into C{mailbox}'s INBOX.
    """
    return WriteJob(mailbox, "", name, HEADER, body, None, len(HEADER) + len(body), quotaBytes, False)


@implementer(IQKDKeySource)
class FreshKeys:
    """
    Fresh keys, as many as asked.
    """

    def encKeys(self, peerSAE, sizeBits, number):
        return succeed([(str(uuid.uuid4()), os.urandom(sizeBits // 8)) for _ in range(number)])

    def encKey(self, peerSAE, sizeBits):
        return succeed((str(uuid.uuid4()), os.urandom(sizeBits // 8)))


class NoSealing:
    """
    Runs the vault's blocking work inline, refuses to seal.
    """

    def run(self, f, *args):
        """
        Run C{f} now, unless it seals.
        """
        assert f.__name__ != "sealBodies", "sealed by the runner"
        return maybeDeferred(f, *args)


class AnswerRecorder:
    """
    Stands for L{DeliveryProcess} behind a L{_ChildProtocol}: records the
    answers.
    """

    def __init__(self) -> None:
        self.answers: list = []

    def answered(self, requestId, results, error) -> None:
        self.answers.append((requestId, results, error))


class FrameTests(SynchronousTestCase):
    """
    The length-prefixed frames between the two processes.
    """

    @given(st.lists(st.tuples(st.integers(0, 2**31), st.binary(max_size=300)), max_size=5),
           st.integers(0, 2000))
    def test_anySplit(self, values, cut):
        """
        Frames split anywhere decode to the values sent, in order, once
        all their bytes are there, and not before.
        """
        stream = b"".join(encodeFrame(v) for v in values)
        cut = min(cut, len(stream))
        first, rest = decodeFrames(stream[:cut])
        second, left = decodeFrames(rest + stream[cut:])
        self.assertEqual(first + second, values)
        self.assertEqual(left, b"")

    def test_incomplete(self):
        """
        A frame missing its last byte is kept for later.
        """
        frame = encodeFrame((1, [b"x"]))
        self.assertEqual(decodeFrames(frame[:-1]), ([], frame[:-1]))

    @given(st.lists(st.binary(min_size=0, max_size=70000), min_size=1, max_size=4),
           st.lists(st.integers(1, 50000), max_size=30))
    def test_answersInAnyReads(self, bodies, reads):
        """
        The parent's end takes answers in reads of any size (a large one
        in many) and hands over each once it is all in, in order.
        """
        owner = AnswerRecorder()
        protocol = _ChildProtocol(owner)
        sent = [(n, [body], None) for n, body in enumerate(bodies)]
        stream = b"".join(encodeFrame(answer) for answer in sent)
        position = 0
        for size in reads:
            protocol.answerBytes(stream[position:position + size])
            position += size
            whole = [answer for answer in sent if len(b"".join(encodeFrame(a) for a in sent[:answer[0] + 1]))
                     <= min(position, len(stream))]
            self.assertEqual(owner.answers, whole)
        protocol.answerBytes(stream[position:])
        self.assertEqual(owner.answers, sent)
        # Each answer is handed over by the read that ends it exactly.
        owner.answers = []
        for answer in sent:
            frame = encodeFrame(answer)
            protocol.answerBytes(frame[:3])
            protocol.answerBytes(frame[3:])
            self.assertEqual(owner.answers[-1:], [answer])


class ServeTests(SynchronousTestCase):
    """
    The child's loop, run over in-memory pipes.
    """

    def answers(self, *requests) -> list:
        """
        Run the loop over C{requests} until its input ends.

        @return: the answers, by request id.
        """
        source = io.BytesIO(b"".join(encodeFrame(r) for r in requests))
        sink = io.BytesIO()
        serve(source, sink.write, MaildirWriter(), threads=2)
        values, left = decodeFrames(sink.getvalue())
        self.assertEqual(left, b"")
        return sorted(values, key=lambda v: v[0])

    def test_writesAndAnswers(self):
        """
        Each batch is written to the Maildir and answered with its results;
        a disk error is that job's result, not the batch's.
        """
        base = os.path.abspath(self.mktemp())
        mailbox = os.path.join(base, "alice")
        blocked = os.path.join(base, "notadir")
        os.makedirs(base)
        with open(blocked, "w") as f:
            f.write("a file where a mailbox should be")
        [first, second] = self.answers(
            (1, DELIVER, [job(mailbox, "m1"), job(mailbox, "m2")]),
            (2, DELIVER, [job(blocked, "m3")]),
        )
        self.assertEqual(first, (1, [("m1", STORED), ("m2", STORED)], None))
        self.assertEqual(sorted(os.listdir(os.path.join(mailbox, "new"))), ["m1", "m2"])
        with open(os.path.join(mailbox, "new", "m1"), "rb") as f:
            self.assertEqual(f.read(), b"Return-Path: <x@remote.test>\nbody\n")
        requestId, [result], error = second
        self.assertEqual((requestId, error), (2, None))
        self.assertIsInstance(result, OSError)

    def test_quotaCrosses(self):
        """
        A full mailbox comes back as the L{ReplyError} the store raises.
        """
        mailbox = os.path.join(os.path.abspath(self.mktemp()), "alice")
        [(_, [result], _)] = self.answers((7, DELIVER, [job(mailbox, "big", b"x" * 100, quotaBytes=50)]))
        self.assertIsInstance(result, ReplyError)
        self.assertEqual(result.reply, MAILBOX_FULL)

    def test_bugIsReported(self):
        """
        A batch the writer cannot even read is answered with the error's
        text, and the loop goes on with the next one.
        """
        mailbox = os.path.join(os.path.abspath(self.mktemp()), "alice")
        [bad, unknown, good] = self.answers((1, DELIVER, [None]), (2, "format-disk", None),
                                            (3, DELIVER, [job(mailbox, "ok")]))
        self.assertEqual(bad[:2], (1, None))
        self.assertIn("AttributeError", bad[2])
        self.assertEqual(unknown, (2, None, "ValueError: unknown request 'format-disk'"))
        self.assertEqual(good, (3, [("ok", STORED)], None))

    def test_vaultKeys(self):
        """
        Key files are written as given, mode 0600; an id already held is
        answered with L{KeyExists} (it pickles), and its file is kept.
        """
        directory = os.path.join(os.path.abspath(self.mktemp()), "vault")
        [(requestId, results, error)] = self.answers((4, VAULT_KEYS, (directory, [("k1", b"one"), ("k2", b"two")])))
        self.assertEqual((requestId, results, error), (4, [None, None], None))
        [(_, [again], _)] = self.answers((5, VAULT_KEYS, (directory, [("k1", b"other")])))
        self.assertIsInstance(again, KeyExists)
        for name, content in (("k1.key", b"one"), ("k2.key", b"two")):
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)


    def test_sealInline(self):
        """
        Messages held in memory are sealed in the child, each with its own
        key: what comes back reads as the original with that key.
        """
        keys = [(f"00000000-0000-4000-8000-00000000000{n}", os.urandom(32)) for n in range(3)]
        bodies = [b"Subject: number %d\nMessage-ID: <%d@x.test>\n\nbody %d\n" % (n, n, n) for n in range(3)]
        [(requestId, results, error)] = self.answers(
            (4, SEAL_INLINE, ("Encrypted message", [(body, keyId, key) for body, (keyId, key) in zip(bodies, keys)])))
        self.assertEqual((requestId, error), (4, None))
        for n, ((data, keyId, messageId, plaintextBytes, storedBytes), body) in enumerate(zip(results, bodies)):
            self.assertEqual((keyId, messageId, plaintextBytes, storedBytes),
                             (keys[n][0], f"<{n}@x.test>", len(body), len(data)))
            self.assertEqual(readEnvelope(io.BytesIO(data)).keyId, keyId)
            self.assertNotIn(b"body %d" % n, data)
            self.assertEqual(decryptBytes(data, keys[n][1]), body)

    def test_indexPlain(self):
        """
        The fetch index entries of small plain messages are made in the
        child as the server makes them; one that names "encrypted" (it may
        be sealed) or is missing has none (the server sees to those).
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        paths = []
        for name, content in (("a", b"From: A <a@x.test>\nSubject: one\n\nbody\n"),
                              ("b", b"Content-Type: multipart/mixed; boundary=B\n\n--B\n\nx\n--B--\n"),
                              ("c", b"Content-Type: multipart/encrypted; protocol=x\n\nsealed\n")):
            paths.append(os.path.join(folder, name))
            with open(paths[-1], "wb") as f:
                f.write(content)
        paths.append(os.path.join(folder, "gone"))
        [(requestId, results, error)] = self.answers((9, INDEX_PLAIN, paths))
        self.assertEqual((requestId, error), (9, None))
        self.assertEqual(results, indexSmallPlain(paths))
        self.assertIn(b'"one"', results[0][ENVELOPE])
        self.assertIn(b'"mixed"', results[1][BODYSTRUCTURE])
        self.assertEqual(results[2:], [None, None])


class DeliveryProcessTests(TestCase):
    """
    L{MaildirStore} writing through the real child process.
    """

    timeout = 60

    def setUp(self):
        """
        A started L{DeliveryProcess} and a store that uses it.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.process = DeliveryProcess(reactor)
        self.process.startService()
        self.addCleanup(self.stop)
        self.store = MaildirStore(self.dataDir, None, "mail.example.test", 0, writer=self.process)

    def stop(self):
        """
        Stop the child if a test has not.
        """
        if self.process.running:
            return self.process.stopService()
        return None

    def newFiles(self) -> list[str]:
        """
        @return: the names in alice's C{new/}.
        """
        path = os.path.join(self.dataDir, "mail", "example.test", "alice", "new")
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def childEncryptor(self, vault: MemoryKeyVault) -> MessageEncryptor:
        """
        @return: an encryptor that stores keys in C{vault} and has its
            inline messages sealed by the child (its runner refuses to
            seal).
        """
        return MessageEncryptor(FreshKeys(), vault, NoSealing(), "sae-b", os.path.join(self.dataDir, "sealed"),
                                sealer=self.process)

    async def test_delivers(self):
        """
        Copies delivered through the child are in the Maildir when their
        Deferreds fire, and the child runs as a separate process.
        """
        pid = self.process._child.pid
        self.assertNotEqual(pid, os.getpid())
        names = [await self.store.deliver(message(f"Q{i}"), ALICE, 0) for i in range(3)]
        self.assertEqual(self.newFiles(), sorted(names))

    async def test_vaultThroughChild(self):
        """
        A file vault given the process as its C{keyFiles} has its new key
        files written by the child (not by its runner, which here refuses
        any file work): they are there when C{addKeys} fires, and the keys
        fetch back.
        """
        keys = os.path.join(self.dataDir, "keys")

        class NoAddKeyFiles:
            """
            Runs the vault's other blocking work inline, refuses its key
            files.
            """

            def run(self, f, *args):
                """
                Run C{f} now, unless it writes key files.
                """
                assert f.__name__ != "addKeyFiles", "written by the runner"
                return maybeDeferred(f, *args)

        vault = FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), NoAddKeyFiles(),
                             keyFiles=self.process)
        pairs = [(f"key-{n}", os.urandom(32)) for n in range(20)]
        self.assertEqual(await vault.addKeys(pairs), [None] * 20)
        self.assertEqual(len(os.listdir(os.path.join(keys, "vault"))), 20)
        for keyId, key in pairs:
            self.assertEqual(await vault.fetch(keyId), key)
        [held] = await vault.addKeys([("key-3", os.urandom(32))])
        self.assertIsInstance(held, KeyExists)
        self.assertEqual(await vault.fetch("key-3"), pairs[3][1])

    async def test_sealThroughChild(self):
        """
        An encryptor given the process as its C{sealer} has its inline
        messages sealed by the child (not by its runner, which here refuses
        to seal); each reads back with its own key.
        """
        vault = MemoryKeyVault()
        encryptor = self.childEncryptor(vault)
        bodies = [b"Subject: secret %d\n\nbody %d\n" % (n, n) for n in range(5)]
        results = await gatherResults([Deferred.fromCoroutine(encryptor.seal(message(f"QS{n}", body)))
                                       for n, body in enumerate(bodies)])
        self.assertEqual(len({r.keyId for r in results}), 5)
        for result, body in zip(results, bodies):
            self.assertNotIn(body, result.message.inline)
            self.assertEqual(decryptBytes(result.message.inline, await vault.fetch(result.keyId)), body)

    async def test_indexThroughChild(self):
        """
        Fetch index entries made by the child are those the server would
        make itself.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        paths = []
        for i in range(5):
            paths.append(os.path.join(folder, f"m{i}"))
            with open(paths[-1], "wb") as f:
                f.write(b"From: S%d <s%d@x.test>\nSubject: number %d\n\nbody\n" % (i, i, i))
        self.assertEqual(await self.process.indexPlain(paths), indexSmallPlain(paths))

    async def test_vaultChildKilled(self):
        """
        Key files under way when the child dies fail with EIO, so their
        seals fail (and are retried with other keys).
        """
        first = self.process._child.pid
        os.kill(first, signal.SIGSTOP)
        pending = self.process.addKeyFiles(os.path.join(self.dataDir, "vault"), [("k", b"wrapped")])
        os.kill(first, signal.SIGKILL)
        with self.assertRaises(OSError) as caught:
            await pending
        self.assertEqual(caught.exception.errno, errno.EIO)
        self.flushLoggedErrors()

    async def test_quotaFromChild(self):
        """
        The child's quota refusal reaches the caller as L{ReplyError}.
        """
        small = Account(ALICE.address, 30)
        with self.assertRaises(ReplyError) as caught:
            await self.store.deliver(message("QFULL"), small, 0)
        self.assertEqual(caught.exception.reply, MAILBOX_FULL)
        self.assertEqual(self.newFiles(), [])

    async def test_childKilled(self):
        """
        A batch under way when the child dies fails with EIO; the next
        delivery starts a new child and succeeds.
        """
        first = self.process._child.pid
        old = self.process._protocol
        # Stop the child so the batch is certainly in flight when it dies.
        os.kill(first, signal.SIGSTOP)
        pending = self.store.deliver(message("QLOST"), ALICE, 0)
        os.kill(first, signal.SIGKILL)
        with self.assertRaises(OSError) as caught:
            await pending
        self.assertEqual(caught.exception.errno, errno.EIO)
        name = await self.store.deliver(message("QNEXT"), ALICE, 0)
        self.assertNotEqual(self.process._child.pid, first)
        self.assertEqual(self.newFiles(), [name])
        # The dead child's pipes were closed.
        self.assertEqual((old.reader.fileno(), old.writer.fileno()), (-1, -1))
        self.flushLoggedErrors()

    async def test_idleChildKilled(self):
        """
        When a child with nothing under way dies, both of its pipes are
        closed, and the next delivery starts another.
        """
        await self.store.deliver(message("QFIRST"), ALICE, 0)
        old = self.process._protocol
        os.kill(old.transport.pid, signal.SIGKILL)
        await waitFor(lambda: self.process._protocol is None, timeout=10)
        self.assertEqual((old.reader.fileno(), old.writer.fileno()), (-1, -1))
        await self.store.deliver(message("QNEXT"), ALICE, 0)
        self.assertEqual(len(self.newFiles()), 2)
        self.flushLoggedErrors()

    async def test_stopFinishesBatches(self):
        """
        Stopping closes the child's input: the batch already sent is
        written and answered, then the child exits.
        """
        pid = self.process._child.pid
        pending = self.store.deliver(message("QLAST"), ALICE, 0)
        await self.process.stopService()
        name = await pending
        self.assertEqual(self.newFiles(), [name])
        await waitFor(lambda: not os.path.exists(f"/proc/{pid}") or _isZombie(pid), timeout=10)
        with self.assertRaises(OSError) as caught:
            await self.store.deliver(message("QAFTER"), ALICE, 0)
        self.assertEqual(caught.exception.errno, errno.EIO)

    async def test_badAnswer(self):
        """
        A child that answers with the wrong number of results (here: a
        program that echoes an empty result list) fails the batch with EIO.
        """
        await self.process.stopService()
        echo = ("import sys; from qutemail.store.deliveryworker import decodeFrames, encodeFrame\n"
                "buf = b''\n"
                "while chunk := sys.stdin.buffer.read1(65536):\n"
                "    values, buf = decodeFrames(buf + chunk)\n"
                "    for rid, kind, jobs in values:\n"
                "        sys.stdout.buffer.write(encodeFrame((rid, [], None))); sys.stdout.flush()\n")
        self.process = DeliveryProcess(reactor, [sys.executable, "-c", echo])
        self.process.startService()
        self.store = MaildirStore(self.dataDir, None, "mail.example.test", 0, writer=self.process)
        with self.assertRaises(OSError) as caught:
            await self.store.deliver(message("QBAD"), ALICE, 0)
        self.assertEqual(caught.exception.errno, errno.EIO)
        self.flushLoggedErrors()

    async def test_answersSurviveStops(self):
        """
        Answers larger than the pipe holds reach the parent whole while
        the child is stopped and continued again and again (job control, a
        debugger or a profiler attaching): each blocking write a stop
        interrupts has written only part of its answer, and the child
        writes the rest after it.  (Written through C{sys.stdout.buffer},
        answers lost their ends and the parent stopped hearing from the
        child.)
        """
        vault = MemoryKeyVault()
        encryptor = self.childEncryptor(vault)
        pid = self.process._child.pid
        done = threading.Event()

        def stopAndGo():
            while not done.is_set():
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.0005)
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.001)

        stopper = threading.Thread(target=stopAndGo)
        stopper.start()
        try:
            for round_ in range(8):
                bodies = [b"Subject: big %d\n\n" % n + os.urandom(150_000) for n in range(4)]
                results = await gatherResults([Deferred.fromCoroutine(encryptor.seal(message(f"QB{round_}{n}", body)))
                                               for n, body in enumerate(bodies)])
                for result, body in zip(results, bodies):
                    self.assertEqual(decryptBytes(result.message.inline, await vault.fetch(result.keyId)), body)
        finally:
            done.set()
            stopper.join()
            os.kill(pid, signal.SIGCONT)
        self.assertEqual(self.process._child.pid, pid)

    def test_answerPipe(self):
        """
        The child answers through a pipe widened to L{PIPE_BYTES} (where
        the system allows that much), read by the parent's own reader.
        """
        reader = self.process._protocol.reader
        with open("/proc/sys/fs/pipe-max-size") as f:
            allowed = int(f.read())
        size = fcntl.fcntl(reader.fileno(), 1032)  # F_GETPIPE_SZ
        self.assertEqual(size, PIPE_BYTES if allowed >= PIPE_BYTES else 65536)

    def test_drainReadsTheRest(self):
        """
        Once the child has exited, what is left in its pipe is read before
        its requests are failed, and the pipe is closed.
        """
        readEnd, writeEnd = os.pipe()
        answers = [(n, [b"x" * 20_000], None) for n in range(3)]

        owner = AnswerRecorder()
        protocol = _ChildProtocol(owner)
        reader = _AnswerReader(reactor, readEnd, protocol)
        # Under a default pipe's 64 KB: the write does not wait for a reader.
        os.write(writeEnd, b"".join(encodeFrame(a) for a in answers))
        os.close(writeEnd)
        reader.drain()
        self.assertEqual(owner.answers, answers)
        self.assertEqual(reader.fileno(), -1)

    async def test_damagedAnswer(self):
        """
        An answer that cannot be read fails the batches under way with
        EIO, and the child is killed: nothing after it in the pipe could
        be told apart.  The next batch starts another child.
        """
        await self.process.stopService()
        marker = os.path.abspath(self.mktemp())
        # The first child answers its first request with a frame that does
        # not unpickle; any later child is the real one.
        garbler = ("import os, sys\n"
                   f"marker = {marker!r}\n"
                   "if os.path.exists(marker):\n"
                   "    os.execv(sys.executable, [sys.executable, '-m', 'qutemail.store.deliveryworker'])\n"
                   "open(marker, 'w').close()\n"
                   "size = int.from_bytes(sys.stdin.buffer.read(4), 'big')\n"
                   "sys.stdin.buffer.read(size)\n"
                   "os.write(1, b'\\x00\\x00\\x00\\x05junk!')\n"
                   "sys.stdin.buffer.read()\n")
        self.process = DeliveryProcess(reactor, [sys.executable, "-c", garbler])
        self.process.startService()
        first = self.process._child.pid
        self.store = MaildirStore(self.dataDir, None, "mail.example.test", 0, writer=self.process)
        with self.assertRaises(OSError) as caught:
            await self.store.deliver(message("QGARBLED"), ALICE, 0)
        self.assertEqual(caught.exception.errno, errno.EIO)
        await waitFor(lambda: not os.path.exists(f"/proc/{first}") or _isZombie(first), timeout=10)
        name = await self.store.deliver(message("QNEXT"), ALICE, 0)
        self.assertNotEqual(self.process._child.pid, first)
        self.assertEqual(self.newFiles(), [name])
        self.assertEqual(len(self.flushLoggedErrors()), 0)


def _isZombie(pid: int) -> bool:
    """
    @return: whether C{pid} has exited but not been reaped yet.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
