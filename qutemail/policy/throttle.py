# -*- test-case-name: tests.listener.test_submission -*-
"""
Throttling of failed authentications, per client IP and per account.

Each failure is answered only after a delay (the listener's job), which
slows guessing: one second, growing with the account's recent failures
from anywhere (so guesses spread over many IPs slow down too), up to
L{MAX_DELAY_SECONDS}.  A client IP with C{maxFailures} failures in the
window is locked out for C{lockoutSeconds}: it gets no further tries at
all.  Accounts are never locked, and other IPs are not affected, so a
burst of guesses from one place does not lock the owner out of their mail.
"""

# The longest a failed AUTH waits before its answer.
MAX_DELAY_SECONDS = 30.0

import attrs


@attrs.define
class _Record:
    """
    Failures of one client IP.
    """

    failures: list[float] = attrs.field(factory=list)
    lockedUntil: float = 0.0


@attrs.define
class AuthThrottle:
    """
    Failure counters for AUTH (in-process).

    @ivar maxFailures: failures in the window that trigger a lockout.
    @ivar windowSeconds: how far back failures count.
    @ivar lockoutSeconds: how long a lockout lasts.
    @ivar failureDelaySeconds: how long the listener waits before it
        answers a failed attempt.
    """

    maxFailures: int = 10
    windowSeconds: float = 600.0
    lockoutSeconds: float = 900.0
    failureDelaySeconds: float = 1.0
    _records: dict[str, _Record] = attrs.field(factory=dict)

    def _record(self, ip: str, now: float) -> _Record:
        """
        The record of C{ip}, with old failures forgotten.
        """
        record = self._records.setdefault(ip, _Record())
        record.failures = [t for t in record.failures if now - t < self.windowSeconds]
        return record

    def allowed(self, ip: str, now: float) -> bool:
        """
        Whether C{ip} may try to authenticate now.

        @param ip: the client's address.
        @param now: the current time.
        """
        record = self._records.get(ip)
        return record is None or record.lockedUntil <= now

    def failed(self, ip: str, now: float, account: str | None = None) -> float:
        """
        Count a failed attempt from C{ip}, against C{account}.

        @param ip: the client's address.
        @param now: the current time.
        @param account: the user name tried, if any.
        @return: how long to wait before answering.
        """
        delay = self.failureDelaySeconds
        if account:
            accountRecord = self._record("account:" + account, now)
            accountRecord.failures.append(now)
            delay = min(MAX_DELAY_SECONDS, delay * (1 + len(accountRecord.failures) // self.maxFailures))
        record = self._record(ip, now)
        record.failures.append(now)
        if len(record.failures) >= self.maxFailures:
            record.lockedUntil = now + self.lockoutSeconds
            record.failures = []
        if len(self._records) > 100_000:
            # Bound memory under a spray of addresses: drop idle records.
            self._records = {k: r for k, r in self._records.items() if r.failures or r.lockedUntil > now}
        return delay

    def succeeded(self, ip: str, account: str | None = None) -> None:
        """
        A correct password clears the IP's and the account's failures.
        """
        self._records.pop(ip, None)
        if account:
            self._records.pop("account:" + account, None)
