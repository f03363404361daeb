# -*- test-case-name: tests.content.test_scanner -*-
"""
The content step of the intake: a message goes to rspamd and clamd at once,
before the 250, and their two answers become one verdict (refuse, file in
Junk, or deliver) with the trace fields that say why.
"""

from typing import Any

import attrs
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeoutError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from qutemail.content.results import ADD_HEADER, GREYLIST, REJECT, REWRITE_SUBJECT, SOFT_REJECT, ClamdResult, \
    RspamdResult, ScanError
from qutemail.message import Envelope, SpooledMessage
from qutemail.replies import MALWARE_FOUND, SCANNER_UNAVAILABLE, SPAM_DEFERRED, SPAM_REJECTED, Reply, oneLine

# What [content] on_error may say.
TEMPFAIL = "tempfail"
ACCEPT = "accept"
# The folder spam goes to (rspamd's "add header" and "rewrite subject").
JUNK = "Junk"


@attrs.frozen
class ContentVerdict:
    """
    What the scanners concluded.

    @ivar reject: the reply that refuses the message, or C{None}.
    @ivar folder: C{"Junk"} for spam, C{""} for the INBOX.
    @ivar headers: trace fields for the stored copies, LF line ends.
    @ivar summary: one line for the log.
    @ivar errors: what went wrong with a scanner, one line each.
    """

    reject: Reply | None = None
    folder: str = ""
    headers: str = ""
    summary: str = ""
    errors: tuple[str, ...] = ()


def _rspamdFields(result: RspamdResult | ScanError | None) -> str:
    """
    The C{X-Spamd-Result} and C{X-Spam-Status} fields for rspamd's answer.
    """
    if result is None:
        return ""
    if isinstance(result, ScanError):
        return f"X-Spam-Status: Unknown, {oneLine(str(result), 150)}\n"
    spam = result.action in (ADD_HEADER, REWRITE_SUBJECT, REJECT)
    lines = [f"X-Spamd-Result: default: {spam} [{result.score:.2f} / {result.requiredScore:.2f}]"]
    lines += [f"{oneLine(name, 60)}({score:.2f})" for name, score in result.symbols]
    fields = ";\n\t".join(lines) + "\n"
    status = "Yes" if spam else "No"
    return fields + (f"X-Spam-Status: {status}, score={result.score:.2f} required={result.requiredScore:.2f} "
                     f"action={result.action}\n")


def _clamdFields(result: ClamdResult | ScanError | None) -> str:
    """
    The C{X-Virus-Scanned} field for clamd's answer.
    """
    if result is None:
        return ""
    if isinstance(result, ScanError):
        return f"X-Virus-Scanned: clamd; unknown, {oneLine(str(result), 150)}\n"
    return f"X-Virus-Scanned: clamd; {oneLine(result.describe(), 150)}\n"


def decide(rspamd: RspamdResult | ScanError | None, clamd: ClamdResult | ScanError | None,
           onError: str) -> ContentVerdict:
    """
    One verdict from the two answers.  A definite "no" wins over "later":
    malware (554 5.7.0) first, then rspamd's reject (550 5.7.1); then a
    scanner that gave no answer (451 4.3.0, unless C{onError} is
    C{"accept"}); then rspamd's soft reject or greylisting (451 4.7.1).
    Spam that is not refused goes to Junk.

    @param rspamd: rspamd's answer, its error, or C{None} when it is off.
    @param clamd: clamd's answer, its error, or C{None} when it is off.
    @param onError: C{[content] on_error}.
    """
    errors = tuple(str(r) for r in (rspamd, clamd) if isinstance(r, ScanError))
    reject = None
    folder = ""
    if isinstance(clamd, ClamdResult) and clamd.virus is not None:
        reject = MALWARE_FOUND.withText(f"Message refused: malware found ({oneLine(clamd.virus, 100)})")
    elif isinstance(rspamd, RspamdResult) and rspamd.action == REJECT:
        reject = SPAM_REJECTED.withText(oneLine(rspamd.smtpMessage)) if rspamd.smtpMessage.strip() else SPAM_REJECTED
    elif errors and onError == TEMPFAIL:
        reject = SCANNER_UNAVAILABLE
    elif isinstance(rspamd, RspamdResult) and rspamd.action in (SOFT_REJECT, GREYLIST):
        reject = SPAM_DEFERRED.withText(oneLine(rspamd.smtpMessage)) if rspamd.smtpMessage.strip() else SPAM_DEFERRED
    elif isinstance(rspamd, RspamdResult) and rspamd.action in (ADD_HEADER, REWRITE_SUBJECT):
        folder = JUNK
    parts = []
    for name, result in (("rspamd", rspamd), ("clamd", clamd)):
        if result is not None:
            parts.append(f"{name}={'error' if isinstance(result, ScanError) else result.describe()}")
    return ContentVerdict(reject=reject, folder=folder, headers=_rspamdFields(rspamd) + _clamdFields(clamd),
                          summary=", ".join(parts), errors=errors)


def skipped(sizeBytes: int, maxScanBytes: int) -> ContentVerdict:
    """
    The verdict on a message too large to scan: delivered, with fields
    saying it was not scanned.
    """
    why = f"not scanned, {sizeBytes} bytes is over max_scan_size ({maxScanBytes})"
    return ContentVerdict(headers=f"X-Spam-Status: Unknown, {why}\nX-Virus-Scanned: clamd; {why}\n",
                          summary=f"skipped ({sizeBytes} bytes > max_scan_size)")


class ContentScanner:
    """
    Runs the configured scanners on a message, concurrently, each with a
    timeout.
    """

    _log = Logger()

    def __init__(self, *, clock: Any, rspamd: Any = None, clamd: Any = None, maxScanBytes: int,
                 onError: str = TEMPFAIL, timeoutSeconds: float = 30.0, scanSubmission: bool = True,
                 metrics: Any = None) -> None:
        """
        @param clock: an C{IReactorTime}, for the timeouts.
        @param rspamd: the L{qutemail.content.rspamd.RspamdClient}, or
            C{None}.
        @param clamd: the L{qutemail.content.clamd.ClamdClient}, or C{None}.
        @param maxScanBytes: larger messages are not scanned.
        @param onError: C{"tempfail"} or C{"accept"}: what a message gets
            when a scanner gives no answer.
        @param timeoutSeconds: how long each scanner may take.
        @param scanSubmission: scan our own users' mail too.
        @param metrics: counts each scanner's verdicts, or C{None}.
        """
        self.clock = clock
        self.rspamd = rspamd
        self.clamd = clamd
        self.maxScanBytes = maxScanBytes
        self.onError = onError
        self.timeoutSeconds = timeoutSeconds
        self.scanSubmission = scanSubmission
        self.metrics = metrics

    def wants(self, envelope: Envelope) -> bool:
        """
        @return: whether a message with this envelope is scanned: mail
            from outside always, our users' mail under C{scan_submission}.
        """
        return envelope.authenticated is None or self.scanSubmission

    def scan(self, message: SpooledMessage) -> Deferred:
        """
        Scan one message.

        @return: a Deferred firing with a L{ContentVerdict}; it never fails.
        """
        return Deferred.fromCoroutine(self._scan(message))

    async def _scan(self, message: SpooledMessage) -> ContentVerdict:
        """
        See L{scan}.
        """
        if message.size > self.maxScanBytes:
            verdict = skipped(message.size, self.maxScanBytes)
        else:
            rspamd, clamd = await self.answers(message)
            verdict = decide(rspamd, clamd, self.onError)
            if self.metrics is not None:
                for name, result in (("rspamd", rspamd), ("clamd", clamd)):
                    if isinstance(result, RspamdResult):
                        self.metrics.scanned(name, result.action)
                    elif isinstance(result, ClamdResult):
                        self.metrics.scanned(name, "clean" if result.virus is None else "found")
                    elif result is not None:
                        self.metrics.scanned(name, "error")
        for error in verdict.errors:
            self._log.warn("content scan of {queueId}: {error}; {outcome}", queueId=message.queueId, error=error,
                           outcome="deferred" if verdict.reject == SCANNER_UNAVAILABLE else "accepted unscanned")
        return verdict

    def answers(self, message: SpooledMessage) -> Deferred:
        """
        Ask both scanners about a message at once, whatever its size.

        @return: a Deferred firing with C{(rspamd, clamd)}: each scanner's
            result, the L{ScanError} that says why there is none, or
            C{None} when that scanner is off.  It never fails.
        """
        return gatherResults([
            self._ask("rspamd", self.rspamd.check, message) if self.rspamd is not None else succeed(None),
            self._ask("clamd", self.clamd.scan, message) if self.clamd is not None else succeed(None),
        ])

    def _ask(self, name: str, call: Any, message: SpooledMessage) -> Deferred:
        """
        Ask one scanner, within the timeout.

        @return: a Deferred firing with its result, or with the
            L{ScanError} that says why there is none; it never fails.
        """
        d = call(message)
        d.addTimeout(self.timeoutSeconds, self.clock)

        def noAnswer(failure: Failure) -> ScanError:
            if failure.check(ScanError):
                return failure.value
            if failure.check(DeferredTimeoutError):
                return ScanError(f"{name}: no answer within {self.timeoutSeconds:g}s")
            self._log.failure("content scan of {queueId} by {scanner}", failure, queueId=message.queueId,
                              scanner=name)
            return ScanError(f"{name}: {failure.getErrorMessage()}")

        return d.addErrback(noAnswer)

    def close(self) -> Deferred:
        """
        Close the scanners' kept-alive connections.
        """
        return self.rspamd.close() if self.rspamd is not None else succeed(None)
