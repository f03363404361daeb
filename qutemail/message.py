# -*- test-case-name: tests.test_message -*-
"""
The message types every stage passes around, at the bottom of the house:
the SMTP L{Envelope}, the L{SpooledMessage} that is safely on disk, queue
ids, and the state of queued recipients and of failed ones.

Nothing here does I/O except L{SpooledMessage.openBody}, which callers run
in a worker thread for a spilled body.
"""

import io
import json
import secrets
from typing import Any, BinaryIO, Callable, Iterable

import attrs


@attrs.frozen
class Envelope:
    """
    The SMTP envelope of one transaction.

    @ivar sender: the reverse path, C{""} for the null sender.
    @ivar recipients: the forward paths, normalised, in RCPT order.
    @ivar helo: what the client said in HELO/EHLO.
    @ivar peer: the client's IP address.
    @ivar receivedAt: POSIX time at which DATA began.
    @ivar authenticated: the authenticated account, or C{None}.
    @ivar addedHeaders: header fields, LF line ends, that final delivery
        puts at the top of the message with the C{Return-Path}: what the
        inbound checks concluded (C{Authentication-Results}), known only
        once the whole body was read.
    @ivar folder: the Maildir++ folder final delivery puts the message in
        (C{"Junk"} for quarantined mail), C{""} for the INBOX.
    @ivar transitKeyId: the QKD key id under which a peer site sent the
        message (L{qutemail.qkd.transit}), now decrypted; C{""} for other
        mail.  Such mail is internal to the organisation and is stored
        encrypted like our own users' mail.
    """

    sender: str
    recipients: tuple[str, ...]
    helo: str = ""
    peer: str = ""
    receivedAt: float = 0.0
    authenticated: str | None = None
    addedHeaders: str = ""
    folder: str = ""
    transitKeyId: str = ""

    def toJSON(self) -> dict:
        """
        @return: a JSON-able dict.
        """
        return attrs.asdict(self, recurse=False) | {"recipients": list(self.recipients)}

    @classmethod
    def fromJSON(cls, data: dict) -> "Envelope":
        """
        @param data: what L{toJSON} returned.
        @return: the envelope.
        """
        return cls(**(data | {"recipients": tuple(data["recipients"])}))


@attrs.frozen
class SpooledMessage:
    """
    A message that is safely on disk.

    Exactly one of C{inline} and C{path} is set.

    @ivar queueId: the queue id, unique on this node.
    @ivar envelope: the L{Envelope}.
    @ivar size: the body size in bytes as stored (LF line ends).
    @ivar inline: the body, for small messages.
    @ivar path: the spill file of a large message.
    @ivar opener: for a body stored sealed (a deferred internal message,
        see L{qutemail.queue.sealedbody}), what opens its plaintext; C{path}
        is then not the plaintext, so every reader goes through
        L{openBody}.  C{None} for a body stored as it is.  Not copied by
        meaning: whoever makes a message with another C{path} from this one
        sets it again.
    """

    queueId: str
    envelope: Envelope
    size: int
    inline: bytes | None = None
    path: str | None = None
    opener: Callable[[], BinaryIO] | None = attrs.field(default=None, eq=False, repr=False, kw_only=True)

    def openBody(self) -> BinaryIO:
        """
        Open the body for reading (its plaintext, when it is stored
        sealed).  Call this only in a worker thread for a spilled message.

        @return: a binary file object.
        """
        if self.inline is not None:
            return io.BytesIO(self.inline)
        if self.opener is not None:
            return self.opener()
        return open(self.path, "rb")


class QueueIds:
    """
    Queue ids: time-ordered, unique on this node across restarts.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an C{IReactorTime}.
        """
        self._clock = clock
        self._counter = 0
        self._salt = secrets.token_hex(2)

    def next(self) -> str:
        """
        @return: a new queue id (hex: microseconds, salt, counter).
        """
        self._counter = (self._counter + 1) & 0xFFFF
        return f"{int(self._clock.seconds() * 1_000_000):x}{self._salt}{self._counter:04x}".upper()


PENDING = "pending"
DEFERRED = "deferred"
SENT = "sent"
BOUNCED = "bounced"
_WAITING = (PENDING, DEFERRED)
LEGACY_STATES = {"relay": PENDING, "delivered": SENT}


@attrs.define
class RecipientState:
    """
    Where one recipient of a queued message stands.

    @ivar address: the recipient.
    @ivar index: its position in the original envelope.
    @ivar state: one of C{pending}, C{deferred}, C{sent}, C{bounced}.
    @ivar attempts: delivery attempts so far.
    @ivar nextAttempt: POSIX time of the next attempt.
    @ivar lastReply: the last reply or reason, one line.
    """

    address: str
    index: int
    state: str = DEFERRED
    attempts: int = 0
    nextAttempt: float = 0.0
    lastReply: str = ""


@attrs.define
class QueueEntry:
    """
    One message in the deferred queue.

    @ivar message: the message, its body in C{<queueId>.msg}.
    @ivar recipients: the recipients still of interest.
    @ivar dkimHeader: the DKIM-Signature field made once for the message,
        sent before its body to every remote recipient (empty: unsigned).
    @ivar sealedBody: the version of the format its C{.msg} is sealed in
        (L{qutemail.queue.sealedbody}), 0 for a body in clear (every entry
        written before sealing existed).
    @ivar delayWarned: whether the sender was sent its delay notice
        (C{[relay] delay_warning}), so it never gets two.
    @ivar transit: for recipients at QKD peer sites, per peer SAE id, the
        transit copy made for it (L{qutemail.relay.transitout}):
        C{{"keyId": ..., "size": ..., "dkimHeader": ...}}; retries send
        the same copy.
    @ivar transitWarned: whether the once-per-message warning of
        C{peer_policy = prefer} (sent without transit encryption) was
        logged.
    """

    message: SpooledMessage
    recipients: list[RecipientState]
    dkimHeader: str = ""
    sealedBody: int = 0
    delayWarned: bool = False
    transit: dict[str, dict] = attrs.field(factory=dict)
    transitWarned: bool = False

    @property
    def queueId(self) -> str:
        """
        The message's queue id.
        """
        return self.message.queueId

    def pending(self) -> list[RecipientState]:
        """
        @return: recipients neither delivered nor bounced.
        """
        return [r for r in self.recipients if r.state in _WAITING]

    def due(self, now: float) -> list[RecipientState]:
        """
        @return: the recipients to try at C{now}.
        """
        return [r for r in self.recipients if r.state in _WAITING and r.nextAttempt <= now]

    def toJSON(self) -> bytes:
        """
        @return: the C{.json} file's contents.
        """
        return json.dumps(
            {
                "queueId": self.queueId,
                "size": self.message.size,
                "envelope": self.message.envelope.toJSON(),
                "recipients": [attrs.asdict(r) for r in self.recipients],
                "dkimHeader": self.dkimHeader,
                "sealedBody": self.sealedBody,
                "delayWarned": self.delayWarned,
                "transit": self.transit,
                "transitWarned": self.transitWarned,
            },
            indent=1,
        ).encode("utf-8")


def retryDelay(schedule: tuple[float, ...], attempts: int) -> float:
    """
    The wait before the next attempt.

    @param schedule: the configured intervals; the last one repeats.
    @param attempts: attempts made so far (at least 1).
    @return: seconds.
    """
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


@attrs.frozen
class FailedRecipient:
    """
    One recipient the report is about.

    @ivar address: the recipient.
    @ivar status: the enhanced status code, e.g. C{5.1.1}.
    @ivar diagnostic: the last reply, one line, e.g. C{452 4.2.2 Mailbox full}.
    """

    address: str
    status: str
    diagnostic: str


def dueEntries(entries: Iterable[QueueEntry], now: float, limit: int, busy: Any = ()) -> list[QueueEntry]:
    """
    The order in which due entries are tried, for every L{IRelayQueue}.

    @param entries: the queued entries.
    @return: at most C{limit} of those with a recipient due by C{now} and
        not in C{busy}: never-tried ones first, then the longest waiting.
    """
    due = [e for e in entries if e.queueId not in busy and e.due(now)]
    due.sort(key=lambda e: (min(r.attempts for r in e.due(now)) > 0, min(r.nextAttempt for r in e.due(now))))
    return due[:limit]
