# -*- test-case-name: tests.queue.test_sealedbody -*-
"""
Sealed queue bodies: the C{.msg} file of a deferred internal message,
encrypted under the local queue key (see
L{qutemail.qkd.vault.deriveQueueKey}) so that internal mail waiting for a
QKD key (or for a mailbox, or for the relay) is never at rest in clear.

The format, version 1, is a chunked AEAD (the STREAM construction of Hoang,
Reyhanitabar, Rogaway and Vizár, with AES-256-GCM from C{cryptography})::

    header  = b"QQB1" || version (1 byte, 1) || salt (16 random bytes)
    records = AES-256-GCM(fileKey, nonce_i, chunk_i, header || final_i)
              for i = 0, 1, ...: each chunk L{CHUNK_BYTES} of plaintext
              except the last (0 to CHUNK_BYTES), each record its
              ciphertext then its 16-byte tag

    fileKey = HKDF-SHA256(queueKey, salt, info=b"qutemail-queue-body/1")
    nonce_i = i, 12 bytes big-endian
    final_i = 1 for the last record, else 0 (one byte)

A fresh random salt per file gives every file its own key, so the counter
nonces never repeat under one key however many files the queue key seals
(a random 96-bit nonce per chunk under one key would wear out after 2**32
chunks).  The header is associated data of every record, so the version
and salt cannot be changed; the index in the nonce detects reordered,
dropped or duplicated records; the final flag detects a file truncated at
a record boundary or with records appended.  There is always at least one
record (an empty body is one empty final record).

Reading (L{openSealedBody}) checks the header and the first record at
once, then decrypts one record at a time, checking its tag
before any of its plaintext is returned, with one record of look-ahead to
know which is the last: memory stays at two records whatever the body's
size, and the plaintext is never written anywhere.  A damaged file fails
with L{SealedBodyError} at the record that is wrong, so a reader may have
had the records before it; every reader here either discards what it
wrote (the QKD encryptor removes its partial sealed file) or aborts (the
relay session fails).  Both directions are blocking: run them in a worker
thread.
"""

import io
import os
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qutemail.durable import readUpTo

MAGIC = b"QQB1"
VERSION = 1
SALT_BYTES = 16
HEADER_BYTES = len(MAGIC) + 1 + SALT_BYTES
CHUNK_BYTES = 64 * 1024
TAG_BYTES = 16
RECORD_BYTES = CHUNK_BYTES + TAG_BYTES
KEY_BYTES = 32
# At most 2**32 records (256 TiB), far beyond any message size limit.
MAX_RECORDS = 2 ** 32
_FILE_KEY_INFO = b"qutemail-queue-body/1"


class SealedBodyError(Exception):
    """
    A sealed queue body cannot be opened: not this format or version,
    truncated, reordered, tampered with, or sealed under another key.
    C{str()} is one line and holds no key material or plaintext.
    """


def _fileKey(queueKey: bytes, salt: bytes) -> AESGCM:
    """
    @return: the AES-GCM cipher of one file's key.
    """
    if not isinstance(queueKey, bytes) or len(queueKey) != KEY_BYTES:
        raise ValueError(f"the queue key must be {KEY_BYTES} bytes")
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_FILE_KEY_INFO).derive(queueKey)
    return AESGCM(key)


def _nonce(index: int) -> bytes:
    """
    @return: the nonce of record C{index}.
    """
    return index.to_bytes(12, "big")


def _aad(header: bytes, final: bool) -> bytes:
    """
    @return: the associated data of a record.
    """
    return header + (b"\x01" if final else b"\x00")


def sealStream(source: BinaryIO, destination: BinaryIO, queueKey: bytes) -> int:
    """
    Seal a body from one binary file into another, a chunk at a time.
    Blocking.

    @param source: the plaintext, read to its end.
    @param destination: receives the sealed form; not flushed or synced.
    @param queueKey: the 32-byte queue key.
    @return: the number of plaintext bytes sealed.
    @raise ValueError: the key is not 32 bytes.
    """
    salt = os.urandom(SALT_BYTES)
    aead = _fileKey(queueKey, salt)
    header = MAGIC + bytes([VERSION]) + salt
    destination.write(header)
    current = readUpTo(source, CHUNK_BYTES)
    index = total = 0
    while True:
        following = readUpTo(source, CHUNK_BYTES) if len(current) == CHUNK_BYTES else b""
        final = not following
        if index >= MAX_RECORDS:
            raise ValueError("the body is too large to seal")
        destination.write(aead.encrypt(_nonce(index), current, _aad(header, final)))
        total += len(current)
        index += 1
        if final:
            return total
        current = following


class _SealedReader(io.RawIOBase):
    """
    The plaintext of a sealed body, decrypted a record at a time.
    """

    def __init__(self, raw: BinaryIO, queueKey: bytes) -> None:
        """
        Read and check the header.

        @param raw: the sealed file, at its start; closed with this reader.
        @param queueKey: the queue key.
        @raise SealedBodyError: the header is not this format's.
        """
        super().__init__()
        self._raw = raw
        header = readUpTo(raw, HEADER_BYTES)
        if len(header) < HEADER_BYTES or header[:len(MAGIC)] != MAGIC:
            raise SealedBodyError("not a sealed queue body (bad or missing header)")
        if header[len(MAGIC)] != VERSION:
            raise SealedBodyError(f"sealed queue body of unknown version {header[len(MAGIC)]}")
        self._header = header
        self._aead = _fileKey(queueKey, header[len(MAGIC) + 1:])
        self._index = 0
        self._plain = b""
        self._offset = 0
        self._done = False
        self._next = readUpTo(raw, RECORD_BYTES)
        # The first record now: a wrong key or a damaged start fails at
        # open, before a reader has started anything (a relay's DATA).
        self._advance()

    def readable(self) -> bool:
        """
        @return: C{True}.
        """
        return True

    def _advance(self) -> None:
        """
        Decrypt the next record into the buffer.

        @raise SealedBodyError: it is missing, or fails authentication.
        """
        record = self._next
        if len(record) < TAG_BYTES:
            raise SealedBodyError("sealed queue body is truncated")
        self._next = readUpTo(self._raw, RECORD_BYTES)
        final = not self._next
        try:
            self._plain = self._aead.decrypt(_nonce(self._index), record, _aad(self._header, final))
        except InvalidTag:
            raise SealedBodyError(
                f"sealed queue body fails authentication at record {self._index}"
                " (tampered, truncated, reordered, or sealed under another key)") from None
        self._offset = 0
        self._index += 1
        self._done = final

    def readinto(self, buffer) -> int:
        """
        Fill C{buffer} with plaintext that has been authenticated.

        @return: the number of bytes, 0 at the end.
        @raise SealedBodyError: see L{_advance}.
        """
        while self._offset >= len(self._plain):
            if self._done:
                return 0
            self._advance()
        n = min(len(buffer), len(self._plain) - self._offset)
        buffer[:n] = self._plain[self._offset:self._offset + n]
        self._offset += n
        return n

    def close(self) -> None:
        """
        Close the sealed file too.
        """
        if not self.closed:
            self._raw.close()
            self._plain = b""
        super().close()


def openSealedBody(path: str, queueKey: bytes) -> BinaryIO:
    """
    Open a sealed body for reading its plaintext.  Blocking.

    @param path: the sealed file.
    @param queueKey: the queue key it was sealed under.
    @return: a binary file reading the plaintext (not seekable); the
        caller closes it.
    @raise OSError: the file cannot be opened.
    @raise SealedBodyError: the header or the first record is wrong
        (another format or version, another key, damage); later damage
        raises it from C{read}.
    """
    raw = open(path, "rb")
    try:
        return io.BufferedReader(_SealedReader(raw, queueKey), CHUNK_BYTES)
    except BaseException:
        raw.close()
        raise
