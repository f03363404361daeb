# -*- test-case-name: tests.queue.test_control -*-
"""
Tests for L{qutemail.queue.control}: the requests on their own, then the
L{ControlService} over a real UNIX socket with a fake scheduler, and the
blocking client L{sendCommand} against it.

UNIX socket paths are limited to about 100 bytes, and trial's temporary
directories can be longer, so the sockets live in short directories made
with L{tempfile.mkdtemp}.
"""

import os
import shutil
import socket
import stat
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.queue.control import (
    INTERNAL_ERROR,
    MAX_REQUEST_BYTES,
    MAX_WAITING_REQUESTS,
    ControlCommands,
    ControlError,
    ControlService,
    RequestRefused,
    ServerNotRunning,
    controlPath,
    sendCommand,
)

KNOWN = "18F2A3B4C5D6E7ABCD0001"
UNKNOWN = "18F2A3B4C5D6E7ABCD0002"


class FakeScheduler:
    """
    Records what it is asked; knows one queue id.

    @ivar calls: C{(method, queueId)} pairs, in order.
    @ivar error: raised by the next call, then forgotten.
    @ivar hold: when set, C{delete} waits for it.
    """

    def __init__(self) -> None:
        """
        No calls yet.
        """
        self.calls: list[tuple[str, str | None]] = []
        self.error: Exception | None = None
        self.hold: Deferred | None = None

    def _call(self, method: str, queueId: str | None) -> None:
        """
        Record a call; raise L{error} if set.
        """
        self.calls.append((method, queueId))
        error, self.error = self.error, None
        if error is not None:
            raise error

    async def flush(self) -> int:
        """
        @return: 2 messages made due.
        """
        self._call("flush", None)
        return 2

    async def delete(self, queueId: str) -> bool:
        """
        @return: whether C{queueId} is the known one.
        """
        self._call("delete", queueId)
        if self.hold is not None:
            await self.hold
        return queueId == KNOWN

    async def bounceNow(self, queueId: str) -> bool:
        """
        @return: whether C{queueId} is the known one.
        """
        self._call("bounceNow", queueId)
        return queueId == KNOWN


def shortDirectory(case: SynchronousTestCase) -> str:
    """
    @return: a new directory with a short path, removed after the test.
    """
    directory = tempfile.mkdtemp(prefix="qc-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def staleSocket(path: str) -> None:
    """
    Leave a socket file at C{path} that nothing listens on, as a server
    killed without cleaning up does.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)


class ControlCommandsTests(SynchronousTestCase):
    """
    L{ControlCommands.answer}: one request line to one reply line.
    """

    def setUp(self) -> None:
        """
        Commands over a fake scheduler, and the log events they write.
        """
        self.scheduler = FakeScheduler()
        self.commands = ControlCommands(self.scheduler)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def answer(self, line: bytes) -> str:
        """
        @return: the reply to C{line}.
        """
        return self.successResultOf(Deferred.fromCoroutine(self.commands.answer(line)))

    def test_flush(self) -> None:
        """
        C{flush} calls the scheduler's C{flush} and says how many messages
        it made due.
        """
        self.assertEqual(self.answer(b"flush"), "ok flushed 2 messages")
        self.assertEqual(self.scheduler.calls, [("flush", None)])

    def test_delete(self) -> None:
        """
        C{delete ID} calls C{delete}; an unknown id is an error.
        """
        self.assertEqual(self.answer(f"delete {KNOWN}".encode()), f"ok deleted {KNOWN}")
        self.assertEqual(self.answer(f"delete {UNKNOWN}".encode()), f"error no message {UNKNOWN} in the queue")
        self.assertEqual(self.scheduler.calls, [("delete", KNOWN), ("delete", UNKNOWN)])

    def test_bounce(self) -> None:
        """
        C{bounce ID} calls C{bounceNow}; an unknown id is an error.
        """
        self.assertEqual(self.answer(f"bounce {KNOWN}".encode()), f"ok bounced {KNOWN}")
        self.assertEqual(self.answer(f"bounce {UNKNOWN}".encode()), f"error no message {UNKNOWN} in the queue")
        self.assertEqual(self.scheduler.calls, [("bounceNow", KNOWN), ("bounceNow", UNKNOWN)])

    def test_badQueueId(self) -> None:
        """
        A queue id that is not upper-case hex of a sane length is refused
        before the scheduler hears of it.
        """
        for queueId in ["../etc/passwd", KNOWN.lower(), "G1", "A" * 41, "1F\u00e9"]:
            reply = self.answer(f"delete {queueId}".encode("utf-8"))
            self.assertTrue(reply.startswith("error bad queue id "), reply)
        self.assertEqual(self.scheduler.calls, [])

    def test_unknownRequest(self) -> None:
        """
        Unknown requests, missing or extra arguments, and empty lines are
        errors naming what is understood.
        """
        for line in [b"", b"frob", b"flush now", b"delete", b"bounce A B", b"\xff\xfe"]:
            self.assertEqual(
                self.answer(line), "error unknown request; expected 'flush', 'delete ID', 'bounce ID' or 'adopt DIR'"
            )
        self.assertEqual(self.scheduler.calls, [])

    def test_internalError(self) -> None:
        """
        An exception in the scheduler is answered with an internal error
        and logged as a failure.
        """
        self.scheduler.error = RuntimeError("boom")
        self.assertEqual(self.answer(f"delete {KNOWN}".encode()), INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.answer(f"delete {KNOWN}".encode()), f"ok deleted {KNOWN}")

    def test_logged(self) -> None:
        """
        Every request is logged with its command, its queue id and the
        reply.
        """
        self.answer(f"delete {UNKNOWN}".encode())
        [event] = [e for e in self.events if e.get("command") == "delete"]
        self.assertEqual(event["queueId"], UNKNOWN)
        self.assertEqual(event["reply"], f"error no message {UNKNOWN} in the queue")


class LineCollector(Protocol):
    """
    A raw client: sends bytes, collects the replies until it has C{wanted}
    lines or the server closes.

    @ivar done: fires with everything received, once the connection is
        closed.
    """

    def __init__(self, data: bytes, wanted: int) -> None:
        """
        @param data: sent on connecting.
        @param wanted: close after this many reply lines.
        """
        self.data = data
        self.wanted = wanted
        self.received = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        """
        Send the requests.
        """
        if self.data:
            self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        """
        Collect; close once enough lines came.
        """
        self.received += data
        if self.received.count(b"\n") >= self.wanted:
            self.transport.loseConnection()

    def connectionLost(self, reason: object) -> None:
        """
        Hand over what came.
        """
        self.done.callback(self.received)


class ControlServiceTests(TestCase):
    """
    L{ControlService} listening on a real UNIX socket.
    """

    def setUp(self) -> None:
        """
        A service for a short data directory, not started yet.
        """
        from twisted.internet import reactor

        self.reactor = reactor
        self.dataDir = shortDirectory(self)
        self.path = controlPath(self.dataDir)
        self.scheduler = FakeScheduler()
        self.service = ControlService(reactor, self.path, self.scheduler)

    def start(self) -> None:
        """
        Start the service; stop it, waiting for its connections to go,
        after the test.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)

    async def exchange(self, data: bytes, wanted: int = 1) -> bytes:
        """
        Send raw bytes over a new connection.

        @return: what came back before the connection closed.
        """
        collector = LineCollector(data, wanted)
        await connectProtocol(UNIXClientEndpoint(self.reactor, self.path), collector)
        return await collector.done

    async def ask(self, line: str) -> str:
        """
        @return: L{sendCommand}'s answer, from a thread.
        """
        return await deferToThread(sendCommand, self.path, line, 5.0)

    async def test_requests(self) -> None:
        """
        Each request gets its reply through L{sendCommand}, and the
        scheduler sees each call.
        """
        self.start()
        self.assertEqual(await self.ask("flush"), "flushed 2 messages")
        self.assertEqual(await self.ask(f"delete {KNOWN}"), f"deleted {KNOWN}")
        self.assertEqual(await self.ask(f"bounce {KNOWN}"), f"bounced {KNOWN}")
        self.assertEqual(self.scheduler.calls, [("flush", None), ("delete", KNOWN), ("bounceNow", KNOWN)])

    async def test_longDataDirectory(self) -> None:
        """
        A data directory too deep for a socket address still gets queue
        control (through its directory descriptor), and the socket file is
        gone after the stop.
        """
        deep = os.path.join(self.dataDir, *["a-rather-long-directory-name"] * 5)
        self.path = controlPath(deep)
        self.assertGreater(len(self.path), 108)
        self.service = ControlService(self.reactor, self.path, self.scheduler)
        self.service.startService()
        self.assertEqual(await self.ask("flush"), "flushed 2 messages")
        self.assertTrue(os.path.exists(self.path))
        await self.service.stopService()
        self.assertFalse(os.path.exists(self.path))

    async def test_refused(self) -> None:
        """
        An C{error} reply raises L{RequestRefused} with its text.
        """
        self.start()
        with self.assertRaises(RequestRefused) as raised:
            await self.ask(f"delete {UNKNOWN}")
        self.assertEqual(str(raised.exception), f"no message {UNKNOWN} in the queue")

    async def test_pipelined(self) -> None:
        """
        Several requests on one connection are answered in order, each
        with one line; a bad id is answered with an error.
        """
        self.start()
        received = await self.exchange(f"flush\r\ndelete ../x\nbounce {UNKNOWN}\n".encode(), wanted=3)
        self.assertEqual(received.decode().splitlines(), [
            "ok flushed 2 messages",
            "error bad queue id '../x'",
            f"error no message {UNKNOWN} in the queue",
        ])
        self.assertEqual(self.scheduler.calls, [("flush", None), ("bounceNow", UNKNOWN)])

    async def test_internalErrorKeepsServing(self) -> None:
        """
        An exception in the scheduler is answered with an internal error,
        logged, and the listener goes on serving.
        """
        self.start()
        self.scheduler.error = RuntimeError("boom")
        with self.assertRaises(RequestRefused) as raised:
            await self.ask("flush")
        self.assertEqual("error " + str(raised.exception), INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(await self.ask("flush"), "flushed 2 messages")

    async def test_lineTooLong(self) -> None:
        """
        A request over the limit is answered with an error and the
        connection is closed; nothing reaches the scheduler, and the
        listener goes on serving.
        """
        self.start()
        received = await self.exchange(b"delete " + b"A" * MAX_REQUEST_BYTES + b"\nflush\n", wanted=5)
        self.assertEqual(received, b"error request too long\n")
        # No line end at all: the buffer alone is over the limit.
        received = await self.exchange(b"f" * (MAX_REQUEST_BYTES + 1), wanted=5)
        self.assertEqual(received, b"error request too long\n")
        self.assertEqual(self.scheduler.calls, [])
        self.assertEqual(await self.ask("flush"), "flushed 2 messages")

    async def test_tooManyWaiting(self) -> None:
        """
        A client that piles up more requests than L{MAX_WAITING_REQUESTS}
        is told so and disconnected.
        """
        self.start()
        self.scheduler.hold = Deferred()
        self.addCleanup(self.scheduler.hold.callback, None)
        # The first starts and waits; the next ones wait their turn.
        requests = f"delete {KNOWN}\n".encode() * (MAX_WAITING_REQUESTS + 2)
        received = await self.exchange(requests, wanted=1)
        self.assertEqual(received, b"error too many requests at once\n")
        self.assertEqual(self.scheduler.calls, [("delete", KNOWN)])

    async def test_socketMode(self) -> None:
        """
        The socket is mode 0600, in a C{queue} directory made if missing.
        """
        self.start()
        mode = os.stat(self.path).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    async def test_staleSocketRemoved(self) -> None:
        """
        A socket file left by an earlier run is replaced at start.
        """
        os.mkdir(os.path.dirname(self.path))
        staleSocket(self.path)
        self.start()
        self.assertIsNotNone(self.service.port)
        self.assertEqual(await self.ask("flush"), "flushed 2 messages")

    async def test_otherFileKept(self) -> None:
        """
        A file that is not a socket is left alone; the service logs that
        it cannot listen, and does not fail the start.
        """
        os.mkdir(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("not a socket")
        self.start()
        self.assertIsNone(self.service.port)
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        with open(self.path) as f:
            self.assertEqual(f.read(), "not a socket")

    async def test_stop(self) -> None:
        """
        Stopping drops open connections and removes the socket file.
        """
        self.service.startService()
        collector = LineCollector(b"", 1)
        await connectProtocol(UNIXClientEndpoint(self.reactor, self.path), collector)
        await self.service.stopService()
        self.assertEqual(await collector.done, b"")
        self.assertFalse(os.path.lexists(self.path))
        with self.assertRaises(ServerNotRunning):
            sendCommand(self.path, "flush")

    async def test_closedWithoutAnswer(self) -> None:
        """
        A server that closes without answering raises L{ControlError}.
        """

        class Hangup(Protocol):
            """
            Closes at once.
            """

            def connectionMade(self) -> None:
                """
                Hang up.
                """
                self.transport.loseConnection()

        os.mkdir(os.path.dirname(self.path))
        port = self.reactor.listenUNIX(self.path, Factory.forProtocol(Hangup))
        self.addCleanup(port.stopListening)
        with self.assertRaises(ControlError) as raised:
            await self.ask("flush")
        self.assertIn("without answering", str(raised.exception))


class SendCommandTests(SynchronousTestCase):
    """
    L{sendCommand} when no server answers.
    """

    def setUp(self) -> None:
        """
        A short directory for the socket.
        """
        self.path = os.path.join(shortDirectory(self), "control")

    def test_missingSocket(self) -> None:
        """
        No socket file: L{ServerNotRunning}.
        """
        self.assertRaises(ServerNotRunning, sendCommand, self.path, "flush")

    def test_staleSocket(self) -> None:
        """
        A socket file nothing listens on: L{ServerNotRunning}.
        """
        staleSocket(self.path)
        self.assertRaises(ServerNotRunning, sendCommand, self.path, "flush")

    def test_timeout(self) -> None:
        """
        A server that accepts but never answers: L{ControlError} once the
        timeout has passed.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
            listening.bind(self.path)
            listening.listen(1)
            error = self.assertRaises(ControlError, sendCommand, self.path, "flush", 0.2)
        self.assertNotIsInstance(error, ServerNotRunning)
        self.assertIn("no answer", str(error))

    def test_oneLine(self) -> None:
        """
        A request holding a line end is refused before connecting.
        """
        staleSocket(self.path)
        self.assertRaises(ValueError, sendCommand, self.path, "flush\nflush")
