# -*- test-case-name: tests.test_portservice -*-
"""
A listening port whose failure to open stops the server's start.
"""

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

_log = Logger()


class PortService(StreamServerEndpointService):
    """
    A server on an endpoint (the mail listeners, the metrics port).  A port
    that cannot be opened (in use, a privileged port without the right, an
    address the machine does not have) ends the start with one line naming
    the service and exit status 1, as Postfix's master and Dovecot do: a
    server that went on without one of its ports looked started to its
    init system (with an Unhandled Error in the log) while that port's
    clients were refused.
    """

    # The endpoint's failure is raised by privilegedStartService.
    _raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """
        Open the port, or stop the start.

        @raise SystemExit: it cannot be opened (the line is logged, and
            written to the process's real standard error: twistd sends
            C{sys.stderr} to the log by now).
        """
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            line = f"{self.name}: cannot listen on {e.interface or '*'}:{e.port}: {reason}"
            _log.critical("{line}; stopping", line=line)
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(f"qutemail: {line}\n")
            stderr.flush()
            raise SystemExit(1) from None
