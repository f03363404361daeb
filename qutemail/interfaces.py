# -*- test-case-name: tests.test_interfaces -*-
"""
Every zope interface of QutEmail.

Every method returns a L{twisted.internet.defer.Deferred}, even where an
implementation is synchronous.
"""

import attrs
from zope.interface import Attribute, Interface


@attrs.frozen
class Account:
    """
    A local user account.

    @ivar address: the normalised address, C{local@domain}.
    @ivar quotaBytes: the mailbox quota in bytes, or C{None} for the
        configured default.
    """

    address: str
    quotaBytes: int | None = None

    @property
    def localpart(self) -> str:
        """
        The local part of C{address}.
        """
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        """
        The domain of C{address}.
        """
        return self.address.rpartition("@")[2]


class UserExists(Exception):
    """
    An account with this address already exists.
    """


class NoSuchUser(Exception):
    """
    No account has this address.
    """


class UserDirectoryUnavailable(Exception):
    """
    The user directory could not answer (Redis down, slow, or refusing):
    the caller's failure is temporary.  C{str()} is one line.
    """


class IUserDirectory(Interface):
    """
    The local accounts: who exists, and their password.
    """

    def getAccount(address: str):
        """
        Look up an account.

        @param address: a normalised address (see L{qutemail.address}).
        @return: a Deferred firing with the L{Account}, or C{None} when
            there is no such account.
        """

    def checkPassword(address: str, password: bytes):
        """
        Check a password.

        @param address: a normalised address.
        @param password: the password as the client sent it.
        @return: a Deferred firing with the L{Account} when the password is
            right, or C{None} when it is wrong or there is no such account
            (the two cases take the same time).
        """

    def addUser(address: str, password: bytes):
        """
        Create an account.

        @return: a Deferred firing with the new L{Account}.
        @raise UserExists: (in the Deferred) when it already exists.
        """

    def setPassword(address: str, password: bytes):
        """
        Replace an account's password.

        @return: a Deferred firing with C{None}.
        @raise NoSuchUser: (in the Deferred) when there is no such account.
        """

    def setQuota(address: str, quotaBytes: int | None):
        """
        Set an account's mailbox quota (C{None}: the configured default).

        @return: a Deferred firing with the updated L{Account}.
        @raise NoSuchUser: (in the Deferred) when there is no such account.
        """

    def removeUser(address: str):
        """
        Delete an account (its mailbox stays on disk).

        @return: a Deferred firing with C{None}.
        @raise NoSuchUser: (in the Deferred) when there is no such account.
        """

    def listAccounts():
        """
        @return: a Deferred firing with a list of every L{Account}, sorted by
            address.
        """


class IMailboxNotifier(Interface):
    """
    Tells the sessions watching a mailbox (IMAP IDLE) that it changed, on
    this node or, through Redis, on every node.
    """

    def publish(address: str):
        """
        Say that an account's mailbox changed (a delivery, a flag change).

        @param address: the account's normalised address.
        @return: a Deferred firing with C{None} once it is sent; it never
            fails (a notice that cannot be sent is logged: watchers still
            poll).
        """

    def subscribe(address: str, callback):
        """
        Call C{callback()} whenever C{address}'s mailbox changes, until the
        returned unsubscribe function is called.

        @return: a function of no arguments that ends the subscription.
        """


class IMessageStore(Interface):
    """
    Local mailboxes.
    """

    def deliver(message, account: Account, index: int = 0, checkExisting: bool = False):
        """
        Store a spooled message in an account's INBOX.

        @param message: a L{qutemail.pipeline.spool.SpooledMessage}.
        @param account: the recipient.
        @param index: the recipient's position in the envelope, so that each
            copy of a message has its own stored id.
        @param checkExisting: first look for a copy stored before a crash
            (recovery and retries), and return its id instead of storing
            another.
        @return: a Deferred firing with the stored message's id.
        @raise qutemail.replies.ReplyError: (in the Deferred) carrying
            C{OVER_QUOTA} when the mailbox is full.
        """

    def usage(account: Account):
        """
        @return: a Deferred firing with C{(bytes, messages)} in the mailbox.
        """


class IRateLimiter(Interface):
    """
    Counters over a sliding window, for rate limits.
    """

    name = Attribute("a short name for logs")

    def consume(key: str, units: int, limit: int, windowSeconds: float, now: float):
        """
        Count C{units} for C{key} if that keeps it within C{limit} over the
        last C{windowSeconds}.

        @param key: what is counted, e.g. C{ip:192.0.2.1}.
        @param units: how much to add.
        @param limit: the most allowed in the window.
        @param windowSeconds: the window's length.
        @param now: the current time.
        @return: a Deferred firing with C{True} when counted (allowed), or
            C{False} when it would exceed the limit (nothing counted).
        """


@attrs.frozen
class KMEStatus:
    """
    What a KME says about one QKD link (ETSI GS QKD 014 §5.1 "Status").

    Sizes are in bits, as in the standard.
    """

    sourceKMEId: str
    targetKMEId: str
    masterSAEId: str
    slaveSAEId: str
    keySize: int
    storedKeyCount: int
    maxKeyCount: int
    maxKeyPerRequest: int
    maxKeySize: int
    minKeySize: int
    maxSAEIdCount: int


class KeySourceError(Exception):
    """
    The key source could not give a key: unreachable, refused, out of keys
    or answering nonsense.  The message is one line, fit for a log and for
    a queue entry's last reply; it never holds key material.

    @ivar temporary: whether trying again later may succeed (timeouts,
        connection failures, HTTP 503, garbled answers).
    """

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class IQKDKeySource(Interface):
    """
    Keys delivered by a QKD Key Management Entity.
    """

    def status(peerSAE: str):
        """
        @param peerSAE: the SAE at the other end of the link (the slave).
        @return: a Deferred firing with a L{KMEStatus}.
        @raise KeySourceError: (in the Deferred) when the KME cannot answer.
        """

    def encKey(peerSAE: str, sizeBits: int = 256):
        """
        Take a fresh key from the pool, for encrypting (ETSI 014 enc_keys).

        @param peerSAE: the slave SAE that may later ask for the same key.
        @param sizeBits: the key length in bits, a multiple of 8.
        @return: a Deferred firing with C{(keyId, key)}: the key id as a
            C{str} (a UUID), the key as C{bytes} of C{sizeBits // 8}.
        @raise KeySourceError: (in the Deferred) when no key can be had.
        """

    def decKey(peerSAE: str, keyId: str):
        """
        Fetch the key a master SAE took with L{encKey} (ETSI 014 dec_keys).

        @param peerSAE: the master SAE that took the key.
        @param keyId: its id.
        @return: a Deferred firing with the key as C{bytes}.
        @raise KeySourceError: (in the Deferred) when it cannot be had (a
            key already fetched or unknown is not temporary).
        """


class KeyGone(Exception):
    """
    The key vault holds no key with this id (never stored, or erased).
    """


class IKeyVault(Interface):
    """
    Message keys kept for reading mail later, wrapped under a local master
    key.  Erasing a key makes its message unreadable (crypto-erase).
    """

    def store(keyId: str, key: bytes):
        """
        Keep a key, durably, before the message it encrypts is stored.

        @return: a Deferred firing with C{None} once the key is safe.
        """

    def fetch(keyId: str):
        """
        @return: a Deferred firing with the key as C{bytes}.
        @raise KeyGone: (in the Deferred) when there is no such key.
        """

    def erase(keyId: str):
        """
        Forget a key for good; erasing a missing key is not an error.

        @return: a Deferred firing with C{None}.
        """


class IDKIMKeys(Interface):
    """
    DKIM signing keys by domain.
    """

    def keyFor(domain: str):
        """
        @param domain: the signing domain (the C{d=} tag), lower case.
        @return: a Deferred firing with a L{qutemail.pipeline.dkim.SigningKey},
            or C{None} when the domain has no key (mail goes unsigned).
        """


class IRelayQueue(Interface):
    """
    Messages some of whose recipients wait: for their first relay attempt,
    or for a retry of a delivery that failed for now.  The router adds to
    it; the retry scheduler takes due entries from it and records each
    outcome.  Entries are L{qutemail.message.QueueEntry} objects, whose
    recipients' states the scheduler changes in place before calling
    L{update}.
    """

    def add(message, recipients, dkimHeader: str = ""):
        """
        Queue a message for some of its recipients, durably.  If the
        message is already queued (routed again after a crash), the entry
        already queued wins and is returned.

        @param message: the L{qutemail.message.SpooledMessage}.
        @param recipients: their L{qutemail.message.RecipientState}s.
        @param dkimHeader: the message's DKIM-Signature field, or C{""}.
        @return: a Deferred firing with the L{qutemail.message.QueueEntry}
            once it is durable; then every subscriber is told of it.
        """

    def update(entry):
        """
        Record an entry's changed recipient states durably; an entry with
        nothing left waiting is removed.  An entry removed meanwhile stays
        removed.

        @return: a Deferred firing when the change is durable.
        """

    def remove(queueId: str):
        """
        Delete an entry whatever its state.

        @return: a Deferred firing with whether there was such an entry.
        """

    def get(queueId: str):
        """
        @return: a Deferred firing with the entry, or C{None}.
        """

    def refresh():
        """
        Pick up entries other processes added (extra SMTP workers share
        one queue).

        @return: a Deferred firing with the number of new entries.
        """

    def due(now: float, limit: int, busy=()):
        """
        @param now: the current time.
        @param limit: the most entries to return.
        @param busy: queue ids to leave out (attempts in progress).
        @return: a Deferred firing with the entries that have a recipient
            due by C{now}: never-tried ones first, then the longest waiting.
        """

    def waiting():
        """
        @return: a Deferred firing with every entry that has a recipient
            still waiting.
        """

    def subscribe(callback):
        """
        Have C{callback(entry)} called with every entry added from now on
        (the scheduler starts a fresh entry at once).  Returns nothing.
        """
