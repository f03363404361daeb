# -*- test-case-name: tests.backends.test_redisvault,tests.test_interfaces -*-
"""
Blocking Redis calls for the command line, which runs no reactor: RESP
over one short TCP or UNIX-socket connection per call, after C{AUTH} and
C{SELECT} as the C{[redis] url} says.
"""

import socket
from typing import Any
from urllib.parse import SplitResult, unquote

from qutemail.qkd.vault import KeyVaultError


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


def askRedis(url: SplitResult, timeoutSeconds: float, *commands: list[bytes]) -> list[Any]:
    """
    Send C{commands} over one blocking connection, after C{AUTH} and
    C{SELECT} as the URL says.

    @return: their replies.
    @raise OSError: Redis cannot be reached or does not answer in time.
    @raise RedisReadError: Redis answered one of them with an error.
    """
    if url.scheme == "unix":
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = url.path
    else:
        connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (url.hostname or "localhost", url.port or 6379)
    with connection:
        connection.settimeout(timeoutSeconds)
        connection.connect(address)
        replies = _Replies(connection)
        if url.password:
            connection.sendall(_command(b"AUTH", unquote(url.password).encode()))
            replies.read()
        db = (url.path.strip("/") or "0") if url.scheme == "redis" else "0"
        connection.sendall(_command(b"SELECT", db.encode()) + b"".join(_command(*c) for c in commands))
        replies.read()
        return [replies.read() for _ in commands]
