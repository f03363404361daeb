# -*- test-case-name: tests.policy.test_keypool -*-
"""
Admission by key pool (C{[qkd] min_pool_keys}): when the KME says its link
holds fewer keys than that, new internal mail is refused at RCPT with
C{452 4.3.1} rather than accepted and left to wait in the deferred queue
for keys that are not there.  Mail from outside never needs a key and is
never refused for this.

L{KeyPoolWatch} asks the key source for the link's status (ETSI GS QKD
014 "Get status") every L{POLL_SECONDS} on the injected clock, never on the
path of a session: RCPT only reads the last answer.  A status request that
fails leaves the last verdict as it was (a KME that is down is the deferral
path's business, and admission should not flap with it).
"""

from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qutemail.replies import KEY_POOL_LOW, Reply, ReplyError

# How often the link's status is read.
POLL_SECONDS = 5.0


def poolClosed(storedKeys: object, minKeys: int) -> bool:
    """
    The one rule of admission: a link whose KME reports fewer stored keys
    than C{minKeys} (or no count at all) takes no new mail that needs one.
    """
    return not isinstance(storedKeys, int) or storedKeys < minKeys


class KeyPoolWatch(Service):
    """
    Follows one link's stored key count and says whether internal mail is
    admitted.

    @ivar storedKeys: the last count the KME gave, or C{None} before the
        first answer.
    @ivar answeredAt: when the KME last answered, or C{None}.
    @ivar closed: whether new internal mail is refused.
    """

    _log = Logger()

    def __init__(self, source: Any, peerSAE: str, minKeys: int, clock: Any,
                 intervalSeconds: float = POLL_SECONDS, reply: Reply = KEY_POOL_LOW,
                 what: str = "internal mail", metrics: Any = None) -> None:
        """
        @param source: the L{qutemail.interfaces.IQKDKeySource}.
        @param peerSAE: the slave SAE of the link (C{[qkd] rest_sae}, or
            our own SAE).
        @param minKeys: C{[qkd] min_pool_keys}.
        @param clock: an C{IReactorTime}.
        @param reply: the refusal while the pool is low.
        @param what: the mail refused, for the log.
        @param metrics: gets each stored key count, or C{None}.
        """
        self.source = source
        self.peerSAE = peerSAE
        self.minKeys = minKeys
        self.clock = clock
        self.intervalSeconds = intervalSeconds
        self.reply = reply
        self.what = what
        self.name = f"key-pool-watch-{peerSAE}"
        self.metrics = metrics
        self.storedKeys: int | None = None
        self.answeredAt: float | None = None
        self.closed = False
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """
        Read the status now and then every L{intervalSeconds}.
        """
        Service.startService(self)
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.intervalSeconds, now=True)

    def stopService(self) -> None:
        """
        Stop polling.
        """
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def poll(self):
        """
        Ask for the link's status once.

        @return: a Deferred that fires (never fails) when the answer is in.
        """
        d = self.source.status(self.peerSAE)
        d.addCallbacks(self._answered, self._failed)
        return d

    def _answered(self, status: Any) -> None:
        """
        The KME gave its count: open or close admission.
        """
        self.storedKeys = status.storedKeyCount
        self.answeredAt = self.clock.seconds()
        if self.metrics is not None and isinstance(status.storedKeyCount, int):
            self.metrics.keyCount(self.peerSAE, status.storedKeyCount)
        if not self.minKeys:
            return  # watched for the metrics and health only: admission stays open
        closed = poolClosed(status.storedKeyCount, self.minKeys)
        if closed != self.closed:
            self.closed = closed
            if closed:
                self._log.warn("QKD key pool for SAE {sae} holds {count} keys, under min_pool_keys {minimum}: "
                               "{what} is refused with 452 4.3.1 until it refills", what=self.what,
                               sae=self.peerSAE, count=status.storedKeyCount, minimum=self.minKeys)
            else:
                self._log.info("QKD key pool for SAE {sae} holds {count} keys again: {what} is admitted",
                               sae=self.peerSAE, count=status.storedKeyCount, what=self.what)

    def _failed(self, failure: Any) -> None:
        """
        No answer this time: keep the last verdict.
        """
        self._log.debug("QKD key pool status for SAE {sae} unavailable: {reason}", sae=self.peerSAE,
                        reason=failure.getErrorMessage())

    def check(self) -> None:
        """
        @raise ReplyError: C{KEY_POOL_LOW} while admission is closed.
        """
        if self.closed:
            raise ReplyError(self.reply)
