# -*- test-case-name: tests.listener.test_smtp -*-
"""
Writing replies to an SMTP client without waiting for the reactor's next
turn, and without Nagle's delay.
"""

from typing import Any

from twisted.internet import tcp


def setNoDelay(transport: Any) -> None:
    """
    Turn on C{TCP_NODELAY} for a connection, under TLS too.
    """
    while transport is not None:
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            setter(True)
            return
        transport = getattr(transport, "transport", None)


def sendNow(transport: Any, data: bytes) -> None:
    """
    Send bytes to a client.

    Twisted's TCP transport holds every write until the reactor's next
    turn: an epoll_ctl to watch for writability, a poll, the send, and
    another epoll_ctl.  A reply is a few dozen bytes and the socket
    buffer is nearly always empty, so on a plain TCP connection with
    nothing already queued the send is tried at once, and only what did
    not fit goes to the transport.  Under TLS, or with anything queued,
    everything goes through the transport.  (This reads the transport's
    buffer attributes, which are Twisted internals: setup.cfg pins the
    Twisted series; tests over real sockets cover this path.)
    """
        # Only a plain TCP connection: a TLS wrapper (port 465) forwards
    # attribute lookups to the socket beneath it, and a direct send
    # there would bypass the encryption.
    sock = transport.socket if isinstance(transport, tcp.Connection) else None
    if (
        sock is not None
        and transport.TLS is False
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let the transport meet the error and close properly.
            sent = 0
        data = data[sent:]
        if not data:
            return
    transport.write(data)
