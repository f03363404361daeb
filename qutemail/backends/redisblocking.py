# -*- test-case-name: tests.backends.test_redisvault,tests.test_interfaces,tests.backends.test_redissentinel -*-
"""
Blocking Redis calls for the command line, which runs no reactor (and for
the server's checks before its reactor runs): RESP over one short TCP or
UNIX-socket connection per call, after C{AUTH} and C{SELECT} as the
C{[redis] url} says.

With C{redis-sentinel://}, each call first asks the sentinels in turn
(C{SENTINEL get-master-addr-by-name}) where the master is, and checks with
C{ROLE} that the server there is one.  Just after a failover a sentinel
may still name the old master, dead or now a replica: the call asks again,
up to L{MASTER_ATTEMPTS} times, L{MASTER_RETRY_SECONDS} apart (a blocking
wait: there is no reactor here).
"""

import socket
import time
from typing import Any
from urllib.parse import SplitResult, unquote

from qutemail.configvalues import SentinelURL, parseSentinelURL
from qutemail.qkd.vault import KeyVaultError

# How often a call through Sentinel looks for the master, and how long it
# waits between looks: a failover takes a few seconds.
MASTER_ATTEMPTS = 5
MASTER_RETRY_SECONDS = 0.5


class RedisReadError(KeyVaultError):
    """
    The command line could not use Redis: it answered with an error, or
    with something that is not RESP.
    """


def _command(*parts: bytes) -> bytes:
    """
    @return: one RESP request.
    """
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Replies:
    """
    Reads RESP replies from a blocking socket.
    """

    def __init__(self, connection: socket.socket) -> None:
        self._file = connection.makefile("rb")

    def read(self) -> Any:
        """
        @return: a simple or bulk string reply (C{None} for a null bulk), an
            integer, or a list of them for an array.
        @raise RedisReadError: an error reply, or one we do not expect.
        """
        line = self._file.readline(65536)
        if not line.endswith(b"\r\n"):
            raise RedisReadError("Redis closed the connection")
        kind, value = line[:1], line[1:-2]
        if kind == b"+":
            return value
        if kind == b":":
            return int(value)
        if kind == b"-":
            raise RedisReadError(f"Redis answered: {value.decode('utf-8', 'replace')}")
        if kind == b"$":
            length = int(value)
            if length < 0:
                return None
            data = self._file.read(length + 2)
            return data[:-2]
        if kind == b"*":
            count = int(value)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise RedisReadError(f"unexpected Redis reply {line[:40]!r}")


def _login(connection: socket.socket, password: str | None) -> _Replies:
    """
    Send C{AUTH} when there is a password.

    @return: the reader of the connection's replies.
    @raise RedisReadError: Redis refused the password.
    """
    replies = _Replies(connection)
    if password:
        connection.sendall(_command(b"AUTH", password.encode()))
        replies.read()
    return replies


def _askSentinels(url: SentinelURL, timeoutSeconds: float) -> tuple[str, int]:
    """
    Ask the sentinels, in the URL's order, where the master is.

    @return: the address the first to answer gives.
    @raise OSError: no sentinel could be asked.
    @raise RedisReadError: those that answered know no such master.
    """
    problem: Exception = OSError(f"no sentinel of {url.masterName} to ask")
    for address in url.sentinels:
        try:
            with socket.create_connection(address, timeoutSeconds) as connection:
                connection.sendall(_command(b"SENTINEL", b"get-master-addr-by-name", url.masterName.encode()))
                reply = _Replies(connection).read()
        except (OSError, RedisReadError) as e:
            problem = e
            continue
        if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], bytes) and reply[1].isdigit():
            return reply[0].decode("ascii", "replace"), int(reply[1])
        problem = RedisReadError(f"the sentinel at {address[0]}:{address[1]} knows no master {url.masterName}")
    raise problem


def _findMaster(url: SentinelURL, timeoutSeconds: float) -> tuple[socket.socket, _Replies]:
    """
    Connect to the master the sentinels name, and log in; see the module
    docstring.

    @return: the connection and the reader of its replies.
    @raise OSError: no master could be reached.
    @raise RedisReadError: none was found, or Redis refused the password.
    """
    problem: Exception = OSError(f"no master {url.masterName} found")
    for attempt in range(MASTER_ATTEMPTS):
        if attempt:
            time.sleep(MASTER_RETRY_SECONDS)
        host, port = _askSentinels(url, timeoutSeconds)
        try:
            connection = socket.create_connection((host, port), timeoutSeconds)
        except OSError as e:
            problem = e
            continue
        try:
            replies = _login(connection, url.password)
            connection.sendall(_command(b"ROLE"))
            role = replies.read()
        except BaseException:
            connection.close()
            raise
        if isinstance(role, list) and role[:1] == [b"master"]:
            return connection, replies
        connection.close()
        problem = RedisReadError(f"{host}:{port}, the master the sentinels name, says it is not one ({role!r})")
    raise problem


def _connect(url: SplitResult, timeoutSeconds: float) -> tuple[socket.socket, _Replies, bytes]:
    """
    Connect to the Redis server (or Sentinel master) a URL names, and log
    in.

    @return: the connection, the reader of its replies, and the database
        to C{SELECT}.
    """
    if url.scheme == "redis-sentinel":
        sentinel = parseSentinelURL(url.geturl())
        connection, replies = _findMaster(sentinel, timeoutSeconds)
        return connection, replies, str(sentinel.db).encode()
    if url.scheme == "unix":
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = url.path
    else:
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (url.hostname or "localhost", url.port or 6379)
    try:
        connection.settimeout(timeoutSeconds)
        connection.connect(address)
        replies = _login(connection, unquote(url.password) if url.password else None)
    except BaseException:
        connection.close()
        raise
    db = (url.path.strip("/") or "0") if url.scheme == "redis" else "0"
    return connection, replies, db.encode()


def askRedis(url: SplitResult, timeoutSeconds: float, *commands: list[bytes]) -> list[Any]:
    """
    Send C{commands} over one blocking connection, after C{AUTH} and
    C{SELECT} as the URL says; with C{redis-sentinel://}, to the master
    (see the module docstring).

    @return: their replies.
    @raise OSError: Redis cannot be reached or does not answer in time.
    @raise RedisReadError: Redis answered one of them with an error; or,
        through Sentinel, no master was found.
    """
    connection, replies, db = _connect(url, timeoutSeconds)
    with connection:
        connection.sendall(_command(b"SELECT", db) + b"".join(_command(*c) for c in commands))
        replies.read()
        return [replies.read() for _ in commands]
