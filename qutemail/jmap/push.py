# -*- test-case-name: tests.jmap.test_push -*-
"""
Push over EventSource (RFC 8620 §7.3): a C{text/event-stream} that
announces a C{StateChange} whenever the account's Email or Mailbox state
changes.  It listens to the mailbox notifier that IMAP IDLE listens to
(L{qutemail.interfaces.IMailboxNotifier}: local deliveries, IMAP and JMAP
changes, other nodes through Redis), so a delivery is announced as soon
as it is stored.  On each notice the account is read again (one snapshot,
in a worker thread) and an event is sent only when a state differs from
the last one sent.  C{ping} (seconds, at least L{MIN_PING_SECONDS})
keeps idle connections alive; C{closeafter=state} ends the stream after
the first change.
"""

import json
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

MIN_PING_SECONDS = 5
_TYPES = ("Email", "Mailbox", "Thread", "EmailDelivery")


def parseTypes(value: str) -> frozenset[str] | None:
    """
    @return: the types asked for (C{None}: all).
    """
    if value in ("", "*"):
        return None
    return frozenset(t for t in value.split(",") if t)


@attrs.define(eq=False)
class StateStream:
    """
    One EventSource connection.

    @ivar request: the HTTP request, written to.
    @ivar context: makes a fresh L{qutemail.jmap.context.AccountContext}
        for each look at the account.
    @ivar notifier: the mailbox notifier, or C{None}.
    @ivar clock: an C{IReactorTime}.
    @ivar types: the types to announce (C{None}: all).
    @ivar closeAfterState: end after the first change.
    @ivar pingSeconds: 0 for no pings.
    @ivar done: fires once the stream has ended.
    """

    _log = Logger()

    request: Any
    context: Callable[[], Any]
    notifier: Any
    clock: Any
    types: frozenset | None
    closeAfterState: bool
    pingSeconds: int
    _last: dict | None = None
    _busy: bool = False
    _again: bool = False
    _closed: bool = False
    _unsubscribe: Any = None
    _ping: Any = None
    done: Deferred = attrs.field(factory=Deferred)

    async def start(self) -> None:
        """
        Send the headers and the current state, and listen.
        """
        self.request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        self.request.setHeader(b"Cache-Control", b"no-cache, no-store")
        self.request.write(b": QutEmail JMAP push\n\n")
        self.request.notifyFinish().addBoth(lambda _: self.close())
        account = self.context()
        if self.notifier is not None:
            self._unsubscribe = self.notifier.subscribe(account.address, self.wake)
        if self.pingSeconds:
            self._ping = LoopingCall(self._sendPing)
            self._ping.clock = self.clock
            self._ping.start(max(MIN_PING_SECONDS, self.pingSeconds), now=False).addErrback(
                lambda f: self._log.failure("JMAP push ping", f))
        await self._look(initial=True)

    def wake(self) -> None:
        """
        The mailbox changed: look again (once more after a look under way).
        """
        if self._closed:
            return
        if self._busy:
            self._again = True
            return
        Deferred.fromCoroutine(self._look(initial=False)).addErrback(
            lambda f: self._log.failure("JMAP push for a mailbox change", f))

    async def _look(self, initial: bool) -> None:
        """
        Read the states and send what changed.
        """
        self._busy = True
        try:
            while True:
                self._again = False
                context = self.context()
                snapshot = await context.snapshot()
                states = {"Email": snapshot.emailState, "Thread": snapshot.emailState,
                          "Mailbox": snapshot.mailboxState}
                if self._closed:
                    return
                changed = {k: v for k, v in states.items()
                           if (self.types is None or k in self.types) and (self._last or {}).get(k) != v}
                first = self._last is None
                self._last = states
                if changed and not (first and self.closeAfterState):
                    event = {"@type": "StateChange", "changed": {context.accountId: changed}}
                    self.request.write(b"event: state\ndata: " + json.dumps(event).encode() + b"\n\n")
                    if self.closeAfterState and not first:
                        self.end()
                        return
                if not self._again:
                    return
        finally:
            self._busy = False

    def _sendPing(self) -> None:
        """
        Send a ping event (RFC 8620 §7.3).
        """
        if not self._closed:
            self.request.write(b"event: ping\ndata: " + json.dumps({"interval": self._ping.interval}).encode()
                               + b"\n\n")

    def end(self) -> None:
        """
        End the stream from our side.
        """
        if not self._closed:
            self.close()
            if not self.request.finished and not getattr(self.request, "_disconnected", False):
                self.request.finish()

    def close(self) -> None:
        """
        Stop listening (once).
        """
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._ping is not None and self._ping.running:
            self._ping.stop()
        self.done.callback(None)
