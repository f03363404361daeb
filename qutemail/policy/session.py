# -*- test-case-name: tests.listener.test_smtp,tests.listener.test_submission,tests.listener.test_storagefull -*-
"""
The policy of one SMTP listener, as its sessions see it: room on the disk
(at C{MAIL} and C{DATA}), the message rate limit, the envelope rules
(L{RecipientPolicy}) and, for mail from outside, the SPF check at
C{MAIL FROM} and what it writes into the message.

Each listener has its own: the MTA port counts messages per client IP and
checks SPF; the submission ports count per authenticated user and check
nothing of the kind (their mail is signed on the way out instead).
"""

from typing import Any

import attrs
from twisted.logger import Logger

from qutemail.address import domainOf, isInternalSender
from qutemail.interfaces import Account
from qutemail.replies import RATE_LIMITED, STORAGE_FULL, Reply, ReplyError

# The window of the message rate limits.
HOUR_SECONDS = 3600.0

_log = Logger()


@attrs.define(eq=False)
class SessionPolicy:
    """
    Verdicts for the sessions of one listener.

    @ivar envelope: the L{qutemail.policy.envelope.RecipientPolicy}.
    @ivar clock: an C{IReactorTime}, for the rate limit's window.
    @ivar limiter: the L{qutemail.interfaces.IRateLimiter}, or C{None}.
    @ivar messagesPerHour: messages per client IP (unauthenticated) or per
        authenticated user per hour; 0 for no limit.
    @ivar inbound: the L{qutemail.policy.inbound.InboundChecks} that
        unauthenticated mail goes through, or C{None} for none.
    @ivar diskSpace: the L{qutemail.store.diskspace.DiskSpace} of
        C{data_dir}, or C{None} not to look.
    @ivar keyPool: the L{qutemail.policy.keypool.KeyPoolWatch} that
        admits internal mail, or C{None}.
    @ivar peerPools: per peer domain (lower case), the
        L{qutemail.policy.keypool.KeyPoolWatch} of the link to that site,
        which admits our users' mail to it.
    @ivar peerDomains: the domains of C{[qkd] peers} (lower case): mail
        from outside naming one as its sender is not counted against the
        client's rate limit at C{MAIL}; the intake counts it after DATA
        unless it proves to be a QKD transit message from that site
        (L{chargeMessage}), so a peer site's relay is never throttled as
        an internet client and a forger gains nothing.
    """

    envelope: Any
    clock: Any
    limiter: Any = None
    messagesPerHour: int = 0
    inbound: Any = None
    diskSpace: Any = None
    keyPool: Any = None
    peerPools: dict = attrs.field(factory=dict)
    peerDomains: frozenset = frozenset()

    async def checkSender(self, *, peer: str, sender: str, declaredSize: int | None,
                          authenticated: str | None, helo: str) -> Any:
        """
        Decide C{MAIL FROM}: the rate limit, the envelope rules, room on
        the disk, then SPF for mail from outside.

        @return: the SPF result when the message is to be checked at the
            end of DATA, else C{None}.
        @raise ReplyError: the reply refusing it; C{STORAGE_FULL} (452
            4.3.1) when the declared size, or without one the reserve, does
            not fit in the free space (see L{qutemail.store.diskspace}).
        """
        if not (authenticated is None and domainOf(sender) in self.peerDomains):
            await self._charge(f"user:{authenticated}" if authenticated else f"ip:{peer}")
        await self.envelope.checkSender(sender, declaredSize, authenticated)
        # After the envelope rules, so that a message over the size limit
        # gets their definite 552, not a 452 to try again.
        if self.diskSpace is not None and not self.diskSpace.hasRoomFor(declaredSize):
            raise ReplyError(STORAGE_FULL)
        if self.inbound is not None and authenticated is None:
            return await self.inbound.checkSender(peer, sender, helo)
        return None

    async def _charge(self, key: str) -> None:
        """
        Count one message against C{key}'s hourly limit.

        @raise ReplyError: C{RATE_LIMITED} when it is used up.
        """
        if not self.messagesPerHour or self.limiter is None:
            return
        allowed = await self.limiter.consume(key, 1, self.messagesPerHour, HOUR_SECONDS, self.clock.seconds())
        if not allowed:
            _log.info("rate limit for {key}: {limit} messages per hour", key=key, limit=self.messagesPerHour)
            raise ReplyError(RATE_LIMITED.withText(
                f"Rate limit of {self.messagesPerHour} messages per hour exceeded, try again later"))

    async def chargeMessage(self, peer: str) -> None:
        """
        Count, after DATA, a message from outside whose sender named a
        peer domain but that is not a QKD transit message from that site.

        @param peer: the client's IP address.
        @raise ReplyError: C{RATE_LIMITED} when its limit is used up.
        """
        await self._charge(f"ip:{peer}")

    def checkData(self) -> Reply | None:
        """
        Decide C{DATA}, before the 354: whether there is still room on the
        disk (the free space is not under the reserve).

        @return: C{STORAGE_FULL} (452 4.3.1) to refuse it, else C{None}.
        """
        if self.diskSpace is not None and not self.diskSpace.hasRoomFor(None):
            return STORAGE_FULL
        return None

    async def checkRecipient(self, recipient: str, declaredSize: int | None,
                             authenticated: str | None, sender: str | None = None) -> Account | None:
        """
        Decide C{RCPT TO}; see L{qutemail.policy.envelope.RecipientPolicy}.
        A local recipient of internal mail (an authenticated sender of
        ours) is refused with C{KEY_POOL_LOW} while the key pool is low;
        so is a recipient at a peer site while that link's pool is low.
        """
        account = await self.envelope.checkRecipient(recipient, declaredSize, authenticated)
        if authenticated is None:
            return account
        if account is not None and self.keyPool is not None and isInternalSender(authenticated, sender or "",
                                                                                  self.envelope.domains):
            self.keyPool.check()
        if account is None and self.peerPools:
            pool = self.peerPools.get(domainOf(recipient))
            if pool is not None:
                pool.check()
        return account

    def traceHeader(self, spf: Any, peer: str, sender: str, helo: str) -> bytes:
        """
        @return: the C{Received-SPF} field for a checked message.
        """
        return self.inbound.traceHeader(spf, peer, sender, helo)

    def isForged(self, field: bytes) -> bool:
        """
        @return: whether an incoming C{Authentication-Results} field claims
            to be ours (it is then removed).
        """
        return self.inbound.isForged(field)
