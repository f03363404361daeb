# -*- test-case-name: tests.listener.test_smtp,tests.listener.test_submission -*-
"""
Envelope verdicts: may this sender send, may this recipient receive?

The policy knows nothing of transports: it takes addresses and the session's
facts and returns an L{Account} or raises L{ReplyError}.
"""

from typing import Any

from qutemail.address import AddressInvalid, isLocalAddress, parseAccountAddress
from qutemail.interfaces import Account
from qutemail.replies import MAILBOX_FULL, NO_SUCH_USER, RELAY_DENIED, SENDER_NOT_OWNED, TOO_BIG, ReplyError


class RecipientPolicy:
    """
    Decides MAIL and RCPT for one listener.
    """

    def __init__(self, users: Any, store: Any, domains: tuple[str, ...], maxMessageBytes: int,
                 metrics: Any = None) -> None:
        """
        @param users: the L{qutemail.interfaces.IUserDirectory}.
        @param store: the L{qutemail.store.maildir.MaildirStore} (for quota).
        @param domains: the local domains, lower-cased.
        @param maxMessageBytes: the largest message accepted.
        @param metrics: counts quota refusals, or C{None}.
        """
        self.metrics = metrics
        self.users = users
        self.store = store
        self.domains = domains
        self.maxMessageBytes = maxMessageBytes

    def isLocal(self, address: str) -> bool:
        """
        @return: whether the address's domain is one of ours.
        """
        return isLocalAddress(address, self.domains)

    async def checkSender(self, sender: str, declaredSize: int | None, authenticated: str | None) -> None:
        """
        Decide MAIL FROM.

        @param sender: the reverse path, C{""} for the null sender.
        @param declaredSize: the C{SIZE=} parameter, if any (RFC 1870).
        @param authenticated: the authenticated account, if any.
        @raise ReplyError: C{TOO_BIG} when the declared size is over the
            limit; C{SENDER_NOT_OWNED} when an authenticated user uses an
            address not their own (the null sender is allowed, for the
            notifications mail clients send).
        """
        if declaredSize is not None and declaredSize > self.maxMessageBytes:
            raise ReplyError(TOO_BIG)
        if authenticated is not None and sender and sender.lower() != authenticated:
            raise ReplyError(SENDER_NOT_OWNED)

    async def checkRecipient(self, recipient: str, declaredSize: int | None, authenticated: str | None) -> Account | None:
        """
        Decide RCPT TO.

        @param recipient: the forward path.
        @param declaredSize: the C{SIZE=} of the transaction, if declared.
        @param authenticated: the authenticated account, if any.
        @return: the local L{Account}, or C{None} for a remote recipient an
            authenticated user may relay to.
        @raise ReplyError: C{RELAY_DENIED} for a remote recipient without
            authentication, C{NO_SUCH_USER} for an unknown local one,
            C{MAILBOX_FULL} when the mailbox is already over its quota.
        """
        if not self.isLocal(recipient):
            if authenticated is None:
                raise ReplyError(RELAY_DENIED)
            return None
        try:
            normal = str(parseAccountAddress(recipient, self.domains))
        except AddressInvalid:
            raise ReplyError(NO_SUCH_USER)
        account = await self.users.getAccount(normal)
        if account is None:
            raise ReplyError(NO_SUCH_USER)
        if await self.store.isFull(account, declaredSize or 0):
            if self.metrics is not None:
                self.metrics.quotaRefused("rcpt")
            raise ReplyError(MAILBOX_FULL)
        return account
