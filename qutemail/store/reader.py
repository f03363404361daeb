# -*- test-case-name: tests.store.test_reader -*-
"""
The owner's read path: list an account's INBOX and read a stored message,
decrypting it when it was stored encrypted (see
L{qutemail.store.encrypted}).  Used by C{qutemail mail show}, and by IMAP4
and POP3.

A stored file is one of ours when L{qutemail.qkd.cipher.readEnvelope}
accepts it; its key is fetched from the vault by the key id it carries and
the original is decrypted, streamed, into an anonymous temporary file that
is handed over only once GCM has authenticated all of it, so a large
message is never whole in memory and nothing unauthenticated is ever seen.
Any other file is returned as it is stored.

A file that says it is in our format (its outer C{Content-Type} is
C{multipart/encrypted} with our protocol) but cannot be decrypted is
L{MessageUnreadable}, never returned raw.  Mail from outside is stored as
it came, so a sender could imitate the format; such a message fails
authentication and is reported unreadable like a damaged one.

The decrypted message is the original exactly as it was sealed: the
C{Return-Path} line that the Maildir store adds in front of each copy is
outside the ciphertext (and so not authenticated); it is given apart, in
L{MessageInfo.returnPathLine}, for readers that show it.
"""

import email.parser
import email.policy
import os
from collections.abc import Iterable
from itertools import repeat
from typing import Any, BinaryIO, NamedTuple

import attrs

from qutemail.headerblock import headerEnd, namesEncrypted
from qutemail.interfaces import KeyGone
from qutemail.qkd.cipher import HEADER_CAP_BYTES, PROTOCOL, DecryptionError, Envelope, decryptStream, readEnvelope
from qutemail.qkd.vault import KeyVaultError
from qutemail.store.mailbox import mailboxPath, messageEntries

_MAX_RETURN_PATH_BYTES = 1000


class MessageUnreadable(Exception):
    """
    A stored encrypted message cannot be read.  C{str()} is one line and
    never holds key material.

    @ivar temporary: whether trying again may succeed (the vault failed,
        rather than the key being gone or the message damaged).
    """

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class StoredMessage(NamedTuple):
    """
    One message of a mailbox, as L{listMessages} finds it.

    @ivar id: the Maildir base name up to the info (C{:2,} and flags):
        stable while the message moves from C{new/} to C{cur/} and its flags
        change.
    @ivar path: the file.
    @ivar size: the stored file's size in bytes (for an encrypted message,
        the sealed form's).
    @ivar mtime: its modification time: when it was delivered.
    """

    id: str
    path: str
    size: int
    mtime: float


@attrs.frozen
class MessageInfo:
    """
    What L{readMessage} found out about a stored message.

    @ivar encrypted: whether it was stored encrypted (and was decrypted).
    @ivar size: the size in bytes of the message handed back.
    @ivar keyId: the key it was encrypted with, or C{None}.
    @ivar messageId: the Message-ID bound to its ciphertext (C{""}: none),
        or C{None} when not encrypted.
    @ivar returnPathLine: for an encrypted message, the stored file's first
        line, LF included, when it is a C{Return-Path} field (the one the
        Maildir store added: outside the ciphertext, not authenticated);
        else C{None}.
    """

    encrypted: bool
    size: int
    keyId: str | None = None
    messageId: str | None = None
    returnPathLine: bytes | None = None


# What ends a Maildir file's unique part, before its info.
_INFO_SEPARATOR = ":"


def storedId(name: str) -> str:
    """
    @param name: a Maildir file's base name.
    @return: its unique part, without the info (C{:2,} and flags).
    """
    return name.partition(_INFO_SEPARATOR)[0]


def splitStoredNames(names: Iterable[str]) -> list[tuple[str, str, str]]:
    """
    L{storedId} of many file names at once, with their info, split in C
    (a first look at a large folder splits thousands).

    @return: for each name, C{(unique part, ":" or "", info)}.
    """
    return list(map(str.partition, names, repeat(_INFO_SEPARATOR)))


def listMessages(dataDir: str, address: str) -> list[StoredMessage]:
    """
    List the messages in an account's INBOX (C{new/} and C{cur/}).
    Blocking.

    @param dataDir: the server's C{data_dir}.
    @param address: the account's normalised address.
    @return: the messages, oldest delivery first (by modification time,
        then id); empty for a mailbox that does not exist yet.  A message
        moved from C{new/} to C{cur/} during the scan is listed once.
    @raise OSError: a folder exists but cannot be read.
    """
    found: dict[str, StoredMessage] = {}
    # A message moving from new/ to cur/ meanwhile: the cur/ entry wins.
    for entry in messageEntries(mailboxPath(dataDir, address)):
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        key = storedId(entry.name)
        found[key] = StoredMessage(key, entry.path, info.st_size, info.st_mtime)
    return sorted(found.values(), key=lambda m: (m.mtime, m.id))


# How much of a message is read at a time looking for its header's end.
_SNIFF_BYTES = 16 * 1024


def _claimsOurFormat(source: BinaryIO) -> bool:
    """
    Whether a file's header says it is a sealed message of ours (read from
    where C{source} is, at most L{HEADER_CAP_BYTES}).  Blocking.
    """
    lines, total = [], 0
    while total <= HEADER_CAP_BYTES:
        line = source.readline(HEADER_CAP_BYTES + 1)
        if line in (b"", b"\n", b"\r\n"):
            break
        lines.append(line)
        total += len(line)
    header = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(b"".join(lines))
    return header.get_content_type() == "multipart/encrypted" and header.get_param("protocol") == PROTOCOL


def mayBeOurs(source: BinaryIO) -> bool:
    """
    Whether a message's header section (within L{HEADER_CAP_BYTES}) could
    declare it C{multipart/encrypted}: it names "encrypted" somewhere.
    Most mail does not, and is then known to be plain without parsing its
    header twice (L{readEnvelope}, L{_claimsOurFormat}), which was most of
    the cost of opening a small message.  Blocking.
    """
    seen = bytearray()
    while len(seen) <= HEADER_CAP_BYTES:
        chunk = source.read(_SNIFF_BYTES)
        if not chunk:
            break
        # A blank line may begin in the last two bytes already seen.
        again = max(len(seen) - 2, 0)
        seen += chunk
        if headerEnd(seen, again) < len(seen):
            break
    return namesEncrypted(seen)


def openStored(path: str) -> tuple[BinaryIO, Envelope | None, bytes | None, int]:
    """
    Open a stored message and see whether it is one of ours.  Blocking.

    @return: the open file, at its start; its envelope (C{None}: a plain
        message); its first line when that is a C{Return-Path} field; its
        size.
    @raise MessageUnreadable: it says it is ours but its envelope is bad.
    @raise OSError: it cannot be opened.
    """
    source = open(path, "rb")
    try:
        ours = mayBeOurs(source)
        source.seek(0)
        if not ours:
            return source, None, None, os.fstat(source.fileno()).st_size
        first = source.readline(_MAX_RETURN_PATH_BYTES)
        returnPath = first if first.lower().startswith(b"return-path:") and first.endswith(b"\n") else None
        source.seek(0)
        try:
            envelope = readEnvelope(source)
        except DecryptionError as e:
            source.seek(0)
            if _claimsOurFormat(source):
                raise MessageUnreadable(f"message {os.path.basename(path)} is damaged: {e}") from None
            envelope = returnPath = None
        source.seek(0)
        return source, envelope, returnPath, os.fstat(source.fileno()).st_size
    except BaseException:
        source.close()
        raise




def _decrypt(source: BinaryIO, key: bytes, directory: str | None) -> tuple[BinaryIO, int]:
    """
    Decrypt a stored message and close it.  Blocking.

    @return: the anonymous temporary file holding the original, at its
        start, and its size.
    @raise DecryptionError: see L{decryptStream}.
    """
    with source:
        plain = decryptStream(source, key, directory)
    return plain, os.fstat(plain.fileno()).st_size


def _close(f: BinaryIO) -> None:
    """
    Close a file.  Blocking.
    """
    f.close()


async def readMessage(path: str, vault: Any, runner: Any,
                      tempDirectory: str | None = None) -> tuple[BinaryIO, MessageInfo]:
    """
    Read a stored message for its owner, decrypting it if it was stored
    encrypted.

    @param path: the Maildir file (see L{listMessages}).
    @param vault: the L{qutemail.interfaces.IKeyVault} holding the keys.
    @param runner: runs the file and CPU work.
    @param tempDirectory: where the decrypted copy's anonymous temporary
        file lives (default: the system's); it has no name and vanishes
        when closed.
    @return: C{(body, info)}: C{body} is a binary file at its start, which
        the caller reads (in a worker thread, for a large one) and closes:
        the stored file itself for a plain message, or the decrypted
        original in an anonymous temporary file; C{info} is a
        L{MessageInfo}.
    @raise MessageUnreadable: the key is no longer in the vault, the vault
        cannot give it (C{temporary}), or the message is damaged or fails
        authentication (tampered with).
    @raise OSError: the file cannot be opened (for example, it was deleted
        or moved meanwhile).
    """
    source, envelope, returnPath, size = await runner.run(openStored, path)
    if envelope is None:
        return source, MessageInfo(encrypted=False, size=size)
    name = os.path.basename(path)
    try:
        key = await vault.fetch(envelope.keyId)
    except KeyGone:
        await runner.run(_close, source)
        raise MessageUnreadable(f"key {envelope.keyId} of message {name} is no longer in the vault") from None
    except KeyVaultError as e:
        await runner.run(_close, source)
        raise MessageUnreadable(f"key {envelope.keyId} of message {name} cannot be read from the vault: {e}",
                                temporary=True) from None
    except BaseException:
        await runner.run(_close, source)
        raise
    try:
        plain, plainSize = await runner.run(_decrypt, source, key, tempDirectory)
    except DecryptionError as e:
        raise MessageUnreadable(f"message {name} failed authentication or is damaged: {e}") from None
    return plain, MessageInfo(encrypted=True, size=plainSize, keyId=envelope.keyId,
                              messageId=envelope.messageId, returnPathLine=returnPath)
