# -*- test-case-name: tests.pipeline.test_router,tests.queue.test_scheduler -*-
"""
Local delivery: a message to some of our own recipients, stored in their
mailboxes.

Internal mail (see L{qutemail.store.encrypted.isInternal}) is sealed once,
with one QKD key whatever the number of recipients, and the sealed copy
goes to every mailbox; anything else is stored as it came.  A deferred
internal message, sealed in the queue under the queue key, is opened only
by the encryptor (through L{SpooledMessage.openBody}), never copied as it
is into a mailbox.  The router uses this for fresh mail and the retry
scheduler for deferred local recipients, so both follow the same rules.
"""

from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.logger import Logger

from qutemail.address import isLocalAddress
from qutemail.message import SpooledMessage
from qutemail.replies import LOCAL_ERROR, NO_SUCH_USER, Reply, ReplyError
from qutemail.store.encrypted import isInternal

# A temporary failure: the entry waits until encryption is turned back on.
_SEALED_NEEDS_ENCRYPTION = LOCAL_ERROR.withText("Sealed in the queue; delivery needs [qkd] encrypt = yes")


class LocalDelivery:
    """
    Delivers to local mailboxes, sealing internal mail first.
    """

    _log = Logger()

    def __init__(self, *, store: Any, users: Any, domains: tuple[str, ...], encryptor: Any = None) -> None:
        """
        @param store: the L{qutemail.interfaces.IMessageStore}.
        @param users: the L{qutemail.interfaces.IUserDirectory}.
        @param domains: the local domains, lower case.
        @param encryptor: seals internal mail before it reaches a mailbox
            (L{qutemail.store.encrypted.MessageEncryptor}), or C{None} to
            store everything as it came.
        """
        self.store = store
        self.users = users
        self.domains = domains
        self.encryptor = encryptor

    def isLocal(self, address: str) -> bool:
        """
        @return: whether C{address} is in one of our domains.
        """
        return isLocalAddress(address, self.domains)

    async def deliver(self, message: SpooledMessage, targets: list[tuple[int, str]],
                      checkExisting: bool) -> tuple[list[tuple[bool, Any]], str | None]:
        """
        Deliver to local recipients: internal mail sealed once for all of
        them (one key per message), anything else as it came.

        @param targets: C{(index, address)} of each recipient.
        @param checkExisting: a copy may already be stored (recovery, a
            retry): do not store it twice.
        @return: per target, as C{DeferredList} gives it: C{(True, None)}
            stored, C{(True, reply)} not stored and why, C{(False,
            failure)} an unexpected error; and the id of the key the copies
            were sealed with, if they were.
        """
        if not targets:
            return [], None
        delivered = message
        sealed = None
        internal = isInternal(message.envelope, self.domains)
        if message.opener is not None and (self.encryptor is None or not internal):
            # Sealed in the queue under the queue key: the store copies the
            # file as it is, so only the encryptor may read it.
            self._log.warn("{queueId} is sealed in the queue and cannot be delivered without QKD encryption",
                           queueId=message.queueId)
            return [(True, _SEALED_NEEDS_ENCRYPTION)] * len(targets), None
        if self.encryptor is not None and internal:
            try:
                sealed = await self.encryptor.seal(message)
            except ReplyError as e:
                self._log.info("{queueId} not sealed: {reply}", queueId=message.queueId, reply=str(e.reply))
                return [(True, e.reply)] * len(targets), None
            delivered = sealed.message
        try:
            results = await DeferredList(
                [ensureDeferred(self._attempt(delivered, address, index, checkExisting))
                 for index, address in targets],
                consumeErrors=True)
            return results, sealed.keyId if sealed is not None else None
        finally:
            if sealed is not None:
                await self.encryptor.discard(sealed)

    async def _attempt(self, message: SpooledMessage, address: str, index: int,
                       checkExisting: bool) -> Reply | None:
        """
        Try one local delivery.

        @return: C{None} when stored, else the L{Reply} saying why not (a
            temporary one for failures worth retrying).
        """
        account = await self.users.getAccount(address)
        if account is None:
            return NO_SUCH_USER
        try:
            await self.store.deliver(message, account, index, checkExisting)
        except ReplyError as e:
            return e.reply
        return None
