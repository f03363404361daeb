# -*- test-case-name: tests.test_stopsignals -*-
"""
Stop on SIGTERM and SIGINT without logging inside the signal handler.

Twisted's own handlers (C{ReactorBase.sigTerm} and C{sigInt}) log
"Received SIGTERM, shutting down." from the handler itself.  Python runs a
handler in the main thread between two bytecodes, so a signal that arrives
while the reactor thread is inside a log observer re-enters it.  twistd's
log file (C{twisted.python.logfile.LogFile}) serialises its writes with
C{threadable.XLock}, a reentrant lock written in Python: caught between
taking its inner lock and recording its owner, the handler's write waits
for a lock its own thread holds, forever, and the server ignores every
later SIGTERM (Twisted issue #7736).  Issue 14's benchmark hit it twice in
about 270 server stops: the fault handler's stacks showed C{sigTerm}
waiting in C{LogFile.write} under another C{LogFile.write} of the same
thread.

L{installStopHandlers} replaces those handlers once the reactor runs (in
twistd, in the extra SMTP workers and in C{qutemail kme}): the
handler only records the signal for twistd's exit status and hands the
stop to the reactor's loop with C{callFromThread} (a list append and a
write to the waker pipe, no lock), which logs and stops there.
"""

import signal
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

_log = Logger()


def stopFromSignal(reactor: Any, number: int) -> None:
    """
    Log the signal and stop the reactor, from the reactor's loop.  A second
    signal while it is stopping changes nothing.
    """
    _log.info("Received {signal}, shutting down.", signal=signal.Signals(number).name)
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def stopHandler(reactor: Any):
    """
    @return: a signal handler that hands L{stopFromSignal} to C{reactor}'s
        loop and does nothing else that could take a lock.
    """
    def handler(number: int, frame: Any) -> None:
        # What twistd re-raises at exit, as Twisted's own handlers set it.
        reactor._exitSignal = number
        reactor.callFromThread(stopFromSignal, reactor, number)
    return handler


def installStopHandlers(reactor: Any) -> None:
    """
    Put L{stopHandler} in place of the reactor's SIGTERM handler, and of
    its SIGINT handler where it installed one (not where another was there
    first, such as a debugger's).
    """
    handler = stopHandler(reactor)
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) == getattr(reactor, "sigInt", None):
        signal.signal(signal.SIGINT, handler)


def installWhenRunning(reactor: Any) -> None:
    """
    Call L{installStopHandlers} once C{reactor} runs (after it installed
    its own handlers, during start-up).
    """
    reactor.callWhenRunning(installStopHandlers, reactor)
