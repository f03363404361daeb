# -*- test-case-name: tests.queue.test_control -*-
"""
Queue control: how the C{qutemail} command asks the running server's main
process to act on its queue.

The server listens on a UNIX stream socket, C{data_dir/queue/control}, mode
0600 so that only the account the server runs as may connect.  The protocol
is one request line, one reply line, each ending in LF::

    flush               ok flushed 3 messages
    delete <ID>         ok deleted <ID>          error no message <ID> in the queue
    bounce <ID>         ok bounced <ID>          error no message <ID> in the queue
    adopt <DIR>         ok adopted ...           error <why>   (see L{qutemail.queue.adopt})

A reply is C{ok <text>} or C{error <text>}.  Queue ids are checked against
L{QUEUE_ID} before anything is done with them.  Several requests on one
connection are answered in order.  Any exception in a request is logged and
answered C{error internal error, see the server log}: the listener never
goes down with a request.

L{sendCommand} is the client: blocking, with the standard library's
C{socket}, for the command line, which runs no reactor.

UNIX socket paths are limited to about 100 bytes (C{sun_path}); a
C{data_dir} whose control path is longer cannot be listened on, which is
logged, and the server runs without queue control.
"""

import os
import re
import socket
import stat
import time
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from qutemail.durable import makeDirectories

# Queue ids are upper-case hex (see qutemail.message.QueueIds),
# about 22 digits today.
QUEUE_ID = re.compile(r"[0-9A-F]{1,40}", re.ASCII)
# The longest request: "adopt " and a path (PATH_MAX), with room to spare.
MAX_REQUEST_BYTES = 4200
# The longest reply the client reads.
MAX_REPLY_BYTES = 4096
# Requests one connection may have waiting for an answer.
MAX_WAITING_REQUESTS = 8
INTERNAL_ERROR = "error internal error, see the server log"
DEFAULT_TIMEOUT_SECONDS = 10.0
_DONE = {"delete": "deleted", "bounce": "bounced"}
_HUNG_UP = "the server closed the control connection without answering"


# sun_path holds 108 bytes on Linux, the final NUL included.
_MAX_SOCKET_PATH_BYTES = 100


def shortSocketPath(path: str) -> tuple[str, int | None]:
    """
    A name for C{path} that fits in a C{sockaddr_un}: the path itself when
    it is short enough, else C{/proc/self/fd/<fd>/<name>} through an open
    descriptor of its directory (Linux), so a deep C{data_dir} still works.

    @return: the name to bind or connect to, and the directory descriptor
        to close afterwards (C{None} when none was opened).
    """
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH_BYTES:
        return path, None
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def controlPath(dataDir: str) -> str:
    """
    @param dataDir: C{[server] data_dir}.
    @return: the control socket's path, C{data_dir/queue/control}.
    """
    return os.path.join(dataDir, "queue", "control")


def _plural(count: int, noun: str) -> str:
    """
    @return: C{"1 message"}, C{"3 messages"}.
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


@attrs.define
class ControlCommands:
    """
    Carries out control requests on the retry scheduler.

    @ivar scheduler: the L{qutemail.queue.scheduler.RetryScheduler}: its
        C{flush() -> Deferred[int]}, C{async delete(queueId) -> bool} and
        C{async bounceNow(queueId) -> bool}.
    @ivar adopter: the L{qutemail.queue.adopt.QueueAdopter}, or C{None}:
        C{adopt} is refused.
    """

    scheduler: Any
    adopter: Any = None

    _log = Logger()

    async def answer(self, line: bytes) -> str:
        """
        Carry out one request and log it.  Never raises.

        @param line: the request, without its line end.
        @return: the reply line, C{ok ...} or C{error ...}, without a line
            end.
        """
        words = line.decode("ascii", "replace").split()
        command = words[0] if words else ""
        queueId = words[1] if len(words) > 1 else ""
        if command == "adopt":
            # One argument, a path: it may hold spaces and any UTF-8.
            queueId = line.decode("utf-8", "surrogateescape").strip().partition(" ")[2].strip()
            words = [command, queueId] if queueId else [command]
        try:
            reply = await self._dispatch(command, words[1:])
        except Exception:
            self._log.failure("queue control: {command} {queueId} failed", command=command, queueId=queueId)
            return INTERNAL_ERROR
        self._log.info("queue control: {command} {queueId}: {reply}", command=command, queueId=queueId, reply=reply)
        return reply

    async def _dispatch(self, command: str, arguments: list[str]) -> str:
        """
        @param command: the request's first word.
        @param arguments: the words after it.
        @return: the reply line.
        """
        if command == "flush" and not arguments:
            return f"ok flushed {_plural(await self.scheduler.flush(), 'message')}"
        if command in ("delete", "bounce") and len(arguments) == 1:
            queueId = arguments[0]
            if QUEUE_ID.fullmatch(queueId) is None:
                return f"error bad queue id {queueId!r}"
            if command == "delete":
                found = await self.scheduler.delete(queueId)
            else:
                found = await self.scheduler.bounceNow(queueId)
            if not found:
                return f"error no message {queueId} in the queue"
            return f"ok {_DONE[command]} {queueId}"
        if command == "adopt" and len(arguments) == 1:
            if self.adopter is None:
                return "error this server cannot adopt a queue"
            return await self.adopter.adopt(arguments[0])
        return "error unknown request; expected 'flush', 'delete ID', 'bounce ID' or 'adopt DIR'"


class ControlProtocol(LineOnlyReceiver):
    """
    One control connection: answers its requests one at a time, in order.

    @ivar lost: fires when the connection is gone.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_BYTES
    _log = Logger()

    def __init__(self) -> None:
        """
        Nothing waits yet.
        """
        self.lost = Deferred()
        self._tail: Deferred = succeed(None)
        self._waiting = 0
        self._gone = False

    def connectionMade(self) -> None:
        """
        Let the factory drop this connection at stop.
        """
        self.factory.connections.add(self)

    def connectionLost(self, reason: Any) -> None:
        """
        Forget the connection; requests not yet started are dropped.
        """
        self._gone = True
        self.factory.connections.discard(self)
        self.lost.callback(None)

    def lineReceived(self, line: bytes) -> None:
        """
        Queue a request behind those already waiting.
        """
        if self._waiting >= MAX_WAITING_REQUESTS:
            self.sendLine(b"error too many requests at once")
            self._gone = True
            self.transport.loseConnection()
            return
        self._waiting += 1
        self._tail.addCallback(self._answer, line.rstrip(b"\r")).addErrback(self._failed)

    def _answer(self, ignored: Any, line: bytes) -> Deferred | None:
        """
        Carry out one request, unless the client has gone, and send the
        reply.
        """
        self._waiting -= 1
        if self._gone:
            return None
        d = Deferred.fromCoroutine(self.factory.commands.answer(line))
        return d.addCallback(lambda reply: self.sendLine(reply.encode("ascii", "replace")))

    def _failed(self, failure: Any) -> None:
        """
        Log a failure to send a reply, keeping the chain going.
        """
        self._log.failure("queue control: cannot send a reply", failure)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Say why, then close: the rest of the stream cannot be trusted.
        """
        self.sendLine(b"error request too long")
        self._gone = True
        self.transport.loseConnection()


class ControlFactory(Factory):
    """
    Makes L{ControlProtocol}s and keeps track of them.

    @ivar commands: the L{ControlCommands}.
    @ivar connections: the connections open now.
    """

    protocol = ControlProtocol

    def __init__(self, commands: ControlCommands) -> None:
        """
        @param commands: what answers the requests.
        """
        self.commands = commands
        self.connections: set[ControlProtocol] = set()


class ControlService(Service):
    """
    Listens on the control socket while running.

    @ivar path: the socket's path.
    @ivar port: the listening port, while listening.
    """

    name = "queue-control"
    _log = Logger()

    def __init__(self, reactor: Any, path: str, scheduler: Any, adopter: Any = None) -> None:
        """
        @param reactor: an C{IReactorUNIX}.
        @param path: the socket's path (L{controlPath}).
        @param scheduler: the L{qutemail.queue.scheduler.RetryScheduler}.
        @param adopter: the L{qutemail.queue.adopt.QueueAdopter}, or
            C{None}.
        """
        self._reactor = reactor
        self.path = path
        self._factory = ControlFactory(ControlCommands(scheduler, adopter))
        self._listening: Deferred | None = None
        self._directoryFd: int | None = None
        self.port: Any = None

    def startService(self) -> None:
        """
        Remove a socket left by a server that did not stop cleanly, then
        listen.  A failure to listen is logged; mail goes on without queue
        control.
        """
        Service.startService(self)
        makeDirectories(os.path.dirname(self.path))
        self._removeStale()
        bindPath, self._directoryFd = shortSocketPath(self.path)
        endpoint = UNIXServerEndpoint(self._reactor, bindPath, mode=0o600)
        self._listening = endpoint.listen(self._factory)
        self._listening.addCallbacks(self._listened, self._listenFailed)

    def _removeStale(self) -> None:
        """
        Remove the socket file of an earlier run.  Only the main process
        listens here, so a socket file at start is stale.  Anything but a
        socket is left alone (listening then fails and says why).
        """
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
                self._log.info("removed the stale control socket {path}", path=self.path)
        except FileNotFoundError:
            pass

    def _listened(self, port: Any) -> None:
        """
        Keep the port, to stop it.
        """
        self.port = port
        self._log.info("queue control listening on {path}", path=self.path)

    def _listenFailed(self, failure: Any) -> None:
        """
        Log why the socket could not be listened on.
        """
        self._log.failure("cannot listen for queue control on {path}", failure, path=self.path)

    def stopService(self) -> Deferred:
        """
        Stop listening (which removes the socket file) and drop open
        connections.

        @return: a Deferred firing once the port is closed and every
            connection is gone.
        """
        Service.stopService(self)
        waiting = [protocol.lost for protocol in self._factory.connections]
        for protocol in list(self._factory.connections):
            protocol.transport.abortConnection()
        if self.port is not None:
            waiting.append(maybeDeferred(self.port.stopListening))
            self.port = None
        self._listening = None
        return DeferredList(waiting, consumeErrors=True).addCallback(self._closeDirectory)

    def _closeDirectory(self, result: Any) -> None:
        """
        Close the directory descriptor a long path needed, once the socket
        file is removed through it.
        """
        fd, self._directoryFd = self._directoryFd, None
        if fd is not None:
            os.close(fd)


class ControlError(Exception):
    """
    The server could not be asked, or gave no usable answer; C{str()} says
    why.
    """


class ServerNotRunning(ControlError):
    """
    No server listens: the socket file is missing, or nothing accepts
    connections on it (a socket left by a server that stopped uncleanly).
    """


class RequestRefused(ControlError):
    """
    The server answered C{error <text>}; C{str()} is the text.
    """


def sendCommand(path: str, line: str, timeoutSeconds: float = DEFAULT_TIMEOUT_SECONDS) -> str:
    """
    Send one request and wait for its reply.  Blocking: for the command
    line only.

    @param path: the control socket (L{controlPath}).
    @param line: the request, e.g. C{"delete 18F2A..."}, without a line end.
    @param timeoutSeconds: how long connecting and waiting for the reply
        may take, in all.
    @return: the text of an C{ok} reply, e.g. C{"flushed 3 messages"}.
    @raise ValueError: the request holds a line end.
    @raise ServerNotRunning: no server listens on C{path}.
    @raise RequestRefused: the server answered C{error <text>}.
    @raise ControlError: no reply in time, a malformed reply, or the
        socket cannot be used (for instance, its path is too long).
    """
    if "\n" in line or "\r" in line:
        raise ValueError("a control request is one line")
    # UTF-8 (with the bytes of an undecodable file name kept as they were):
    # an adopted directory's path may be any file name.
    request = line.encode("utf-8", "surrogateescape") + b"\n"
    # connect() on a path that is too long fails before looking, so check
    # that something is there first.
    if not os.path.lexists(path):
        raise ServerNotRunning(f"no control socket at {path}")
    deadline = time.monotonic() + timeoutSeconds
    reply = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        try:
            connection.settimeout(timeoutSeconds)
            connectPath, fd = shortSocketPath(path)
            try:
                connection.connect(connectPath)
            except (FileNotFoundError, ConnectionRefusedError):
                raise ServerNotRunning(f"nothing listens on {path}") from None
            finally:
                if fd is not None:
                    os.close(fd)
            connection.sendall(request)
            while b"\n" not in reply and len(reply) <= MAX_REPLY_BYTES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError()
                connection.settimeout(remaining)
                chunk = connection.recv(MAX_REPLY_BYTES)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            raise ControlError(f"no answer from the server within {timeoutSeconds:g} seconds") from None
        except (ConnectionResetError, BrokenPipeError):
            raise ControlError(_HUNG_UP) from None
        except OSError as e:
            raise ControlError(f"cannot use the control socket {path}: {e.strerror or e}") from None
    if b"\n" not in reply:
        raise ControlError(_HUNG_UP)
    text = reply.split(b"\n", 1)[0].rstrip(b"\r").decode("ascii", "replace")
    status, _, rest = text.partition(" ")
    if status == "ok":
        return rest
    if status == "error":
        raise RequestRefused(rest)
    raise ControlError(f"unexpected answer from the server: {text!r}")
