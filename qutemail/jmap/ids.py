# -*- test-case-name: tests.jmap.test_state -*-
"""
JMAP ids (RFC 8620 §1.2: 1-255 characters of C{A-Za-z0-9-_}) derived from
what the Maildir++ store already names, so that they survive restarts and
need no table of their own:

  - an account: C{a} + a digest of its address;
  - a mailbox: C{m} + a digest of its IMAP folder name (a rename gives a
    new id, as a delete and a create would);
  - an email: C{e} + a digest of its Maildir unique name (the base name
    before C{:2,}), which stays while flags change and while JMAP moves it
    between folders; IMAP COPY and MOVE write a new file, so the copy is a
    new email, as it is a new UID for IMAP;
  - a thread: C{t} + the email's digest (one thread per email);
  - blobs: C{b} + the email's digest for a whole message, C{p} + the
    email's digest + C{_} + the part id for one body part, C{u} + random
    hex for an upload.

Ids are digests, so guessing one of another account's gives nothing: every
lookup happens inside the logged-in account's own folders.
"""

import hashlib
import re

_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _digest(text: str, length: int = 24) -> str:
    """
    @return: the first C{length} hex digits of C{text}'s SHA-256.
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def isId(value: object) -> bool:
    """
    @return: whether C{value} is a well-formed JMAP id.
    """
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def accountId(address: str) -> str:
    """
    @return: the account id of an address.
    """
    return "a" + _digest("account\0" + address.lower(), 20)


def mailboxId(folderName: str) -> str:
    """
    @return: the mailbox id of an IMAP folder name.
    """
    return "m" + _digest("folder\0" + folderName, 20)


def emailDigest(baseName: str) -> str:
    """
    @return: the digest part of the ids of a message (by Maildir base name).
    """
    return _digest("message\0" + baseName)


def emailId(baseName: str) -> str:
    """
    @return: the email id of a message.
    """
    return "e" + emailDigest(baseName)


def threadId(baseName: str) -> str:
    """
    @return: the thread id of a message (one thread per email).
    """
    return "t" + emailDigest(baseName)


def messageBlobId(baseName: str) -> str:
    """
    @return: the blob id of a whole message.
    """
    return "b" + emailDigest(baseName)


def partBlobId(baseName: str, partId: str) -> str:
    """
    @return: the blob id of one body part (part ids are digits only).
    """
    return "p" + emailDigest(baseName) + "_" + partId


def parseBlobId(blobId: str) -> tuple[str, str, str | None] | None:
    """
    @return: C{(kind, digest, partId)}: kind C{"message"} (digest of an
        email), C{"part"} (with its part id) or C{"upload"} (digest the
        upload's name); C{None} for no blob id of ours.
    """
    if not isId(blobId):
        return None
    kind, rest = blobId[0], blobId[1:]
    if kind == "b" and re.fullmatch(r"[0-9a-f]{24}", rest):
        return "message", rest, None
    if kind == "p":
        digest, _, part = rest.partition("_")
        if re.fullmatch(r"[0-9a-f]{24}", digest) and part.isdigit():
            return "part", digest, part
    if kind == "u" and re.fullmatch(r"[0-9a-f]{32}", rest):
        return "upload", rest, None
    return None
