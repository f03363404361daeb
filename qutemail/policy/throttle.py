# -*- test-case-name: tests.policy.test_throttle,tests.listener.test_submission -*-
"""
Throttling of failed authentications, per client IP and per account.

Each failure is answered only after a delay (the listener's job), which
slows guessing: one second, growing with the account's recent failures
from anywhere (so guesses spread over many IPs slow down too), up to
L{MAX_DELAY_SECONDS}.  A client IP with C{maxFailures} failures in the
window, whatever accounts they were against, is locked out for
C{lockoutSeconds}: it gets no further tries at all.  Accounts are never
locked, and other IPs are not affected, so a burst of guesses from one
place does not lock the owner out of their mail.

A correct password clears only the failures against that account from
that IP: a client holding one valid account cannot wipe its guesses at
another by logging in between them.

A guess counts from the moment it starts: the listener calls
L{AuthThrottle.begin} before the password is checked, which takes one of
the IP's C{maxFailures} slots at once (or is refused), and the outcome
turns that slot into a failure or frees it.  So many guesses sent in
parallel, before any hash has finished, get at most C{maxFailures}
evaluated.
"""

from typing import Any

import attrs

# The longest a failed AUTH waits before its answer.
MAX_DELAY_SECONDS = 30.0

# Past this many records, idle ones are dropped (a spray of addresses).
_MAX_RECORDS = 100_000


@attrs.define
class _ClientRecord:
    """
    Failures and attempts in progress of one client IP.

    @ivar failures: the times of recent failures, by the account tried
        (C{""} when none was named).
    @ivar pending: attempts begun and not yet decided.
    @ivar lockedUntil: when a lockout ends.
    """

    failures: dict[str, list[float]] = attrs.field(factory=dict)
    pending: int = 0
    lockedUntil: float = 0.0

    def forget(self, now: float, windowSeconds: float) -> None:
        """
        Drop failures older than the window.
        """
        for account, times in list(self.failures.items()):
            recent = [t for t in times if now - t < windowSeconds]
            if recent:
                self.failures[account] = recent
            else:
                del self.failures[account]

    def failureCount(self) -> int:
        """
        @return: the failures kept, against any account.
        """
        return sum(len(times) for times in self.failures.values())

    def idle(self, now: float) -> bool:
        """
        @return: whether the record holds nothing worth keeping.
        """
        return not self.failures and not self.pending and self.lockedUntil <= now


@attrs.define(eq=False)
class Attempt:
    """
    One login attempt in progress: it holds a slot of its client IP's
    failure budget until its outcome is known.  Each outcome frees the slot
    once; calling L{release} after an outcome does nothing more.

    @ivar ip: the client's address.
    """

    _throttle: "AuthThrottle"
    ip: str
    _open: bool = True

    def release(self) -> None:
        """
        Free the slot without an outcome (the check could not be made, or
        the client went away); nothing is counted.
        """
        if self._open:
            self._open = False
            self._throttle._endAttempt(self.ip)

    def failed(self, now: float, account: str | None = None) -> float:
        """
        The password was wrong: the slot becomes a failure.

        @param now: the current time.
        @param account: the user name tried, if any.
        @return: how long to wait before answering.
        """
        self.release()
        return self._throttle.failed(self.ip, now, account)

    def succeeded(self, account: str | None = None, tried: str | None = None) -> None:
        """
        The password was right: free the slot and clear this account's
        failures from this IP.

        @param account: the account's address.
        @param tried: the user name as the client gave it (lower-cased), if
            it may differ in form from C{account}; its failures are cleared
            too.
        """
        self.release()
        self._throttle.succeeded(self.ip, account, tried)


@attrs.define
class AuthThrottle:
    """
    Failure counters for AUTH (in-process).  Times are passed in as C{now}.

    @ivar maxFailures: failures in the window that trigger a lockout; also
        how many attempts from one IP may be in progress at once, counted
        with the failures.
    @ivar windowSeconds: how far back failures count.
    @ivar lockoutSeconds: how long a lockout lasts.
    @ivar failureDelaySeconds: how long the listener waits before it
        answers a failed attempt.
    @ivar metrics: counts attempts by result, or C{None}.
    """

    maxFailures: int = 10
    windowSeconds: float = 600.0
    lockoutSeconds: float = 900.0
    failureDelaySeconds: float = 1.0
    _clients: dict[str, _ClientRecord] = attrs.field(factory=dict)
    _accounts: dict[str, list[float]] = attrs.field(factory=dict)
    metrics: Any = None

    def _client(self, ip: str, now: float) -> _ClientRecord:
        """
        The record of C{ip} (made if missing), with old failures forgotten.
        """
        record = self._clients.setdefault(ip, _ClientRecord())
        record.forget(now, self.windowSeconds)
        return record

    def allowed(self, ip: str, now: float) -> bool:
        """
        Whether C{ip} may try to authenticate now: it is not locked out, and
        its failures in the window plus its attempts in progress leave room
        for one more.

        @param ip: the client's address.
        @param now: the current time.
        """
        record = self._clients.get(ip)
        if record is None:
            return True
        record.forget(now, self.windowSeconds)
        return record.lockedUntil <= now and record.failureCount() + record.pending < self.maxFailures

    def begin(self, ip: str, now: float) -> Attempt | None:
        """
        Start an attempt from C{ip}, before its password is checked: it
        counts toward the lockout from now on.

        @param ip: the client's address.
        @param now: the current time.
        @return: the attempt, to be given its outcome; or C{None} when the
            IP is locked out or already has as many failures and attempts
            in progress as a lockout takes (answer as for a lockout, and do
            not check the password).
        """
        if not self.allowed(ip, now):
            return None
        self._bound(now)
        self._client(ip, now).pending += 1
        return Attempt(self, ip)

    def _endAttempt(self, ip: str) -> None:
        """
        An attempt from C{ip} is decided: free its slot.
        """
        record = self._clients.get(ip)
        if record is not None and record.pending > 0:
            record.pending -= 1
            self._dropIfEmpty(ip, record)

    def _dropIfEmpty(self, ip: str, record: _ClientRecord) -> None:
        """
        Forget C{ip}'s record if it holds nothing and was never locked out.
        """
        if not record.failures and not record.pending and not record.lockedUntil:
            del self._clients[ip]

    def _bound(self, now: float) -> None:
        """
        Bound memory under a spray of addresses: past L{_MAX_RECORDS}
        records, drop the idle ones.
        """
        if len(self._clients) + len(self._accounts) > _MAX_RECORDS:
            self._clients = {k: r for k, r in self._clients.items() if not r.idle(now)}
            self._accounts = {k: ts for k, ts in self._accounts.items() if ts and now - ts[-1] < self.windowSeconds}

    def failed(self, ip: str, now: float, account: str | None = None) -> float:
        """
        Count a failed attempt from C{ip}, against C{account}.

        @param ip: the client's address.
        @param now: the current time.
        @param account: the user name tried, if any.
        @return: how long to wait before answering.
        """
        delay = self.failureDelaySeconds
        if self.metrics is not None:
            self.metrics.authenticated(False)
        if account:
            times = [t for t in self._accounts.get(account, ()) if now - t < self.windowSeconds]
            times.append(now)
            self._accounts[account] = times
            delay = min(MAX_DELAY_SECONDS, delay * (1 + len(times) // self.maxFailures))
        record = self._client(ip, now)
        record.failures.setdefault(account or "", []).append(now)
        if record.failureCount() >= self.maxFailures:
            record.lockedUntil = now + self.lockoutSeconds
            record.failures = {}
        self._bound(now)
        return delay

    def succeeded(self, ip: str, account: str | None = None, tried: str | None = None) -> None:
        """
        A correct password from C{ip}: clear the failures against this
        account from this IP (those against other accounts still count
        toward the IP's lockout), and the account's delay.

        @param ip: the client's address.
        @param account: the account's address, if any.
        @param tried: the user name as the client gave it, if it may differ
            in form from C{account}.
        """
        if self.metrics is not None:
            self.metrics.authenticated(True)
        record = self._clients.get(ip)
        names = {account or "", tried or account or ""}
        if record is not None:
            for name in names:
                record.failures.pop(name, None)
            self._dropIfEmpty(ip, record)
        for name in names:
            if name:
                self._accounts.pop(name, None)
