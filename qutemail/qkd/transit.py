# -*- test-case-name: tests.qkd.test_transit -*-
"""
The inter-site transit form of a message (QutEmail transit format 1): how
mail from one QutEmail site to a peer site travels, encrypted with a key
the two sites' KMEs share (the sender's from C{enc_keys} naming the peer's
SAE, the receiver's from C{dec_keys} naming the sender's SAE as master).

It is built exactly like the stored form (L{qutemail.qkd.cipher}): an
RFC 5322 C{multipart/encrypted} message whose outer header carries the same
minimum (Received, From, To, Cc, Date, Message-ID, a placeholder Subject),
a control part and the base64 AES-256-GCM ciphertext of the whole
original.  What differs::

    Content-Type: multipart/encrypted;
     protocol="application/x-qutemail-qkd-transit"; boundary="..."

    --qutemail-qkd-transit-<32 hex digits>
    Content-Type: application/x-qutemail-qkd-transit

    Scheme: qutemail-qkd-transit
    Version: 1
    Key-Id: <the KME key id, a UUID>
    Master-Sae: <the sending site's SAE id>
    Slave-Sae: <the receiving site's SAE id>
    Nonce: <24 lower-case hex digits>
    Message-Id: <1@a.example.test>

    - AES key = HKDF-SHA256(the KME key, no salt,
      info = C{"qutemail-qkd-transit/1 aes-256-gcm key-id=" + key id}).
    - Associated data: C{"qutemail-qkd-transit"}, the byte 0x01, then the
      key id, the master SAE id, the slave SAE id and the message id, each
      as a 2-byte big-endian length and its ASCII bytes.

So a transit message cannot be replayed under another key id, passed off
as coming from another site or meant for another one, or given another
Message-ID, without failing the tag check.  The envelope (MAIL FROM, RCPT
TO) is not encrypted; it cannot be.

Everything here blocks (CPU and files): run it through
L{qutemail.blocking.BlockingRunner.run}.
"""

import email.message
import os
from typing import BinaryIO, Callable

from qutemail.durable import PRIVATE_FILE_MODE, removeFile, syncDirectory
from qutemail.headerblock import namesEncrypted
from qutemail.qkd.cipher import (
    PLACEHOLDER_SUBJECT, DecryptionError, Envelope, Format, SealedMessage, decryptInto, encryptStream, readEnvelope,
)
from qutemail.qkd.mimehead import firstSane, headerFields, unfolded

TRANSIT = Format(
    "qutemail-qkd-transit", "application/x-qutemail-qkd-transit", 1,
    "This message is encrypted for transit between two QutEmail sites with a QKD key "
    "(QutEmail transit format 1).",
    ("Master-Sae", "Slave-Sae"),
)


def isTransit(head: bytes) -> bool:
    """
    Whether a message says it is in the transit form (its top-level
    Content-Type is C{multipart/encrypted} of the transit protocol).  This
    only says how to read it; reading checks the rest.

    @param head: the start of the message (its header block, at least).
    """
    # Every message from outside comes here: most are not encrypted at
    # all, which one pass in C over the header block tells before any
    # header is parsed (the body, up to 64 KiB of it here, is not looked at).
    if not namesEncrypted(head):
        return False
    lines = firstSane(headerFields(head, False), "content-type")
    if lines is None:
        return False
    parsed = email.message.Message()
    parsed["Content-Type"] = unfolded("content-type", lines).decode("ascii")
    return parsed.get_content_type() == "multipart/encrypted" and parsed.get_param("protocol") == TRANSIT.protocol


def _writeDurably(path: str, fill: Callable[[BinaryIO], object], syncDir: bool = True) -> object:
    """
    Create C{path} (mode 0600, replacing it) with what C{fill(out)}
    writes, synced (with its directory when C{syncDir}); nothing is left
    at C{path}, nor beside it, when C{fill} raises.

    @return: what C{fill} returned.
    """
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        with open(fd, "wb") as out:
            result = fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, path)
    except BaseException:
        removeFile(temporary)
        raise
    if syncDir:
        syncDirectory(os.path.dirname(path))
    return result


def sealTransit(openSource: Callable[[], BinaryIO], path: str, keyId: str, key: bytes, master: str,
                slave: str) -> SealedMessage:
    """
    Write the transit form of a message to a new file, mode 0600, its data
    synced (a copy a retry sends must be whole).  Its directory entry is
    not: a copy lost in a crash is missing or short, which the sealer
    sees (it records the size) and seals again under a new key.

    @param openSource: opens the original (LF line ends).
    @param path: the file to create (replaced if it exists).
    @param master: our SAE id.
    @param slave: the peer site's SAE id.
    @return: what was written.
    """

    def fill(out: BinaryIO) -> SealedMessage:
        with openSource() as source:
            return encryptStream(source, out, keyId, key, PLACEHOLDER_SUBJECT, TRANSIT, (master, slave))

    return _writeDurably(path, fill, syncDir=False)


def readTransitEnvelope(source: BinaryIO) -> Envelope:
    """
    Read a transit message's key id, parties and message id, without the
    key.

    @return: the envelope; C{parties} is C{(master, slave)}.
    @raise DecryptionError: it is not a well-formed transit message.
    """
    return readEnvelope(source, TRANSIT)


def openTransit(sourcePath: str, destinationPath: str, key: bytes, traceBytes: int = 0) -> int:
    """
    Decrypt a transit message to a new file, mode 0600, which appears
    (synced) only once the plaintext is authenticated.

    @param traceBytes: how many first bytes of the source are trace fields
        added on receipt (outside the transit form): they are copied to
        the top of the output as they are.
    @return: the output's size.
    @raise DecryptionError: damaged, tampered with, or the wrong key;
        nothing is left at C{destinationPath}.
    """

    def fill(out: BinaryIO) -> int:
        with open(sourcePath, "rb") as source:
            out.write(source.read(traceBytes))
            # Unauthenticated until decryptInto returns: the file is
            # private and removed on failure, and renamed only after.
            decryptInto(source, key, out.write, TRANSIT)
        return out.tell()

    return _writeDurably(destinationPath, fill)


__all__ = ["TRANSIT", "DecryptionError", "isTransit", "openTransit", "readTransitEnvelope", "sealTransit"]
