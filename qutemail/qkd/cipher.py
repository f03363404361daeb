# -*- test-case-name: tests.qkd.test_cipher -*-
"""
The stored form of a message encrypted at rest with a QKD key (format 1).

One KME key encrypts one message.  The stored file is itself an RFC 5322
message with LF line ends (as our spool and Maildir store mail), shaped
like RFC 1847 C{multipart/encrypted}::

    Received: from a.example.test ...       (outer headers, copied)
    From: Alice <alice@example.test>
    To: bob@example.test
    Date: Mon, 1 Jan 2024 12:00:00 +0000
    Message-ID: <1@example.test>
    Subject: [encrypted message]
    MIME-Version: 1.0
    Content-Type: multipart/encrypted; protocol="application/x-qutemail-qkd";
     boundary="qutemail-qkd-<32 hex digits>"

    This message is stored encrypted with a QKD key (QutEmail format 1).

    --qutemail-qkd-<32 hex digits>
    Content-Type: application/x-qutemail-qkd

    Scheme: qutemail-qkd
    Version: 1
    Key-Id: <the KME key id>
    Nonce: <24 lower-case hex digits>
    Message-Id: <1@example.test>
    --qutemail-qkd-<32 hex digits>
    Content-Type: application/octet-stream
    Content-Transfer-Encoding: base64

    <base64 of ciphertext || tag, in lines of 76 characters>
    --qutemail-qkd-<32 hex digits>--

Outer headers.  The original's header block (up to its first empty line or
first line that is not a header field, read at most 1 MiB) is searched for
Return-Path, Received, From, To, Cc, Date and Message-ID; every Received
field and the first of each other name are copied, in their original order,
folding kept, under their canonical names.  A field is copied only if it is
sane: printable US-ASCII and tabs only (no 8-bit, no bare CR; a CR before
an LF is dropped), lines of at most 998 bytes, at most 8 KiB in all, a
non-blank value and no blank continuation line; otherwise it is left out
(it is still inside the ciphertext).  Subject is replaced by a placeholder
(by default C{[encrypted message]}; the caller may keep a sane original).
The outer headers are a convenience copy for listing and tracing; the
authoritative ones are inside the ciphertext.

Control part.  Key-Id is 1 to 128 of C{A-Z a-z 0-9 _ -}, case-sensitive
(see L{qutemail.qkd.vault.checkKeyId}).  Message-Id is the outer
Message-ID's value, unfolded and trimmed, or empty when none was copied
(at most 900 bytes, else it is not copied).

Cryptography.
    - AES key = HKDF-SHA256(the KME key, no salt,
      info = C{"qutemail-qkd/1 aes-256-gcm key-id=" + key id}, 32 bytes).
    - Nonce: 12 random bytes.
    - Associated data: C{"qutemail-qkd"}, the byte 0x01 (the version), then
      the key id and the message id, each as a 2-byte big-endian length and
      its ASCII bytes.
    - AES-256-GCM over the whole original message, byte for byte (whatever
      it holds); the 16-byte tag is appended to the ciphertext.

Reading.  L{readEnvelope} gives the key id and message id without the key.
The outer Message-ID must equal the control part's, so the visible one is
authenticated too.  Every problem (not this format, unknown version, parts
missing or out of order, bad base64, a failed tag check, hence any change
to the ciphertext, tag, nonce, key id, message id or version, or a wrong
key) raises L{DecryptionError}, one line without key material.  Plaintext
is never handed over before the tag is checked: L{decryptStream} writes to
an anonymous temporary file and returns it only after GCM finalisation
succeeds, L{decryptFile} renames its output into place only then, and
L{decryptBytes} returns only then.

Everything here is blocking CPU and file work: callers run it through
L{qutemail.blocking.BlockingRunner.run}.  Large messages are streamed in
64 KiB chunks; only the outer header block is held in memory.
"""

import base64
import binascii
import email.message
import io
import os
import re
import struct
import tempfile
from typing import BinaryIO, Callable

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qutemail.durable import readUpTo
from qutemail.qkd.mimehead import (  # noqa: F401 (base64Lines: part of this API)
    MAX_FIELD_BYTES, base64Lines, firstSane, headerFields, outerHeader, unfolded,
)
from qutemail.qkd.vault import InvalidKeyId, checkKeyId

FORMAT_VERSION = 1
SCHEME = "qutemail-qkd"
PROTOCOL = "application/x-qutemail-qkd"
PLACEHOLDER_SUBJECT = "[encrypted message]"
MIN_KEY_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_CAP_BYTES = 1024 * 1024
# 57 bytes make one 76-character base64 line (RFC 2045 §6.8).
_LINE_BYTES = 57
CHUNK_BYTES = _LINE_BYTES * 1150

_NONCE = re.compile(r"[0-9a-f]{24}")
_VERSION = re.compile(r"[1-9][0-9]{0,5}")
# A party's SAE id in a control part (see L{Format.parties}).
_PARTY = re.compile(r"[\x21-\x7e]{1,128}")
# How many lines each structural part of a stored file may have.
_MAX_PART_LINES = 64


@attrs.frozen
class Format:
    """
    One QKD message format: the at-rest one described above
    (L{AT_REST}), or another built the same way, such as the inter-site
    transit format (L{qutemail.qkd.transit.TRANSIT}).

    @ivar scheme: the control part's C{Scheme}, also the start of the
        associated data, of the HKDF info and of the boundary.
    @ivar protocol: the C{multipart/encrypted} protocol and the control
        part's content type.
    @ivar version: the format version.
    @ivar preamble: the text before the first part.
    @ivar parties: the names of control fields carrying SAE ids (after
        Key-Id, in this order), each bound in the associated data after
        the key id: C{()} at rest.
    """

    scheme: str
    protocol: str
    version: int
    preamble: str
    parties: tuple[str, ...] = ()


AT_REST = Format(SCHEME, PROTOCOL, FORMAT_VERSION,
                 f"This message is stored encrypted with a QKD key (QutEmail format {FORMAT_VERSION}).")


class DecryptionError(Exception):
    """
    A stored message cannot be decrypted: not this format, damaged,
    tampered with, or the wrong key.  C{str()} is one line.
    """


@attrs.frozen
class Envelope:
    """
    What a stored message says about itself, readable without the key.

    @ivar version: the format version.
    @ivar keyId: the KME key id; fetch the key from the vault by it.
    @ivar messageId: the original's Message-ID, or C{""}.
    @ivar nonce: the GCM nonce.
    @ivar parties: the SAE ids of the format's L{Format.parties}.
    """

    version: int
    keyId: str
    messageId: str
    nonce: bytes
    parties: tuple[str, ...] = ()


@attrs.frozen
class SealedMessage:
    """
    The result of encrypting one message.

    @ivar keyId: the key id it was encrypted with.
    @ivar messageId: the Message-ID bound to it, or C{""}.
    @ivar plaintextBytes: the original's size.
    @ivar storedBytes: the stored file's size.
    """

    keyId: str
    messageId: str
    plaintextBytes: int
    storedBytes: int


def _aesKey(key: bytes, keyId: str, fmt: Format) -> bytes:
    """
    @return: the AES-256 key derived from a KME key.
    """
    info = f"{fmt.scheme}/{fmt.version} aes-256-gcm key-id={keyId}".encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _aad(fmt: Format, keyId: str, parties: tuple[str, ...], messageId: str) -> bytes:
    """
    @return: the associated data binding version, key id, the parties'
        SAE ids and message id, each of the last ones as a 2-byte length
        and its ASCII bytes.
    """
    fields = [value.encode("ascii") for value in (keyId, *parties, messageId)]
    return fmt.scheme.encode("ascii") + bytes([fmt.version]) + b"".join(struct.pack(">H", len(f)) + f for f in fields)


def encryptStream(source: BinaryIO, destination: BinaryIO, keyId: str, key: bytes,
                  subject: str | None = PLACEHOLDER_SUBJECT, fmt: Format = AT_REST,
                  parties: tuple[str, ...] = ()) -> SealedMessage:
    """
    Encrypt a message from one binary file to another, in chunks.

    @param source: the original message (any bytes), read to its end.
    @param destination: receives the stored form; not flushed or synced.
    @param keyId: the KME key id.
    @param key: the KME key (32 bytes expected; at least 16).
    @param subject: the outer Subject, or C{None} to copy the original's.
    @param fmt: the format (default: at rest).
    @param parties: the SAE ids its L{Format.parties} name.
    @return: a L{SealedMessage}.
    @raise InvalidKeyId: C{keyId} is not of the safe form.
    @raise ValueError: the key is too short, C{subject} is not one line
        of printable US-ASCII of at most 900 characters, or the parties do
        not fit the format.
    """
    checkKeyId(keyId)
    if len(parties) != len(fmt.parties) or not all(isinstance(p, str) and _PARTY.fullmatch(p) for p in parties):
        raise ValueError(f"the format wants {len(fmt.parties)} SAE ids of 1 to 128 printable characters")
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a message key must be at least {MIN_KEY_BYTES} bytes")
    if subject is not None and not (len(subject) <= 900 and re.fullmatch(r"[\x20-\x7e]*", subject)):
        raise ValueError("the placeholder subject must be printable US-ASCII, at most 900 characters")
    prefix = readUpTo(source, HEADER_CAP_BYTES)
    headerLines, messageId = outerHeader(headerFields(prefix, len(prefix) < HEADER_CAP_BYTES), subject)
    nonce = os.urandom(NONCE_BYTES)
    boundary = f"{fmt.scheme}-{os.urandom(16).hex()}"
    head = b"\n".join(headerLines + [
        b"MIME-Version: 1.0",
        f'Content-Type: multipart/encrypted; protocol="{fmt.protocol}";'.encode("ascii"),
        f' boundary="{boundary}"'.encode("ascii"),
        b"", fmt.preamble.encode("ascii"), b"",
        f"--{boundary}\nContent-Type: {fmt.protocol}\n".encode("ascii"),
        f"Scheme: {fmt.scheme}\nVersion: {fmt.version}\nKey-Id: {keyId}".encode("ascii"),
        *[f"{name}: {value}".encode("ascii") for name, value in zip(fmt.parties, parties)],
        f"Nonce: {nonce.hex()}".encode("ascii"),
        f"Message-Id: {messageId}".rstrip().encode("ascii"),
        f"--{boundary}\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n".encode("ascii"),
    ])
    destination.write(head)
    stored = len(head)
    encryptor = Cipher(algorithms.AES(_aesKey(key, keyId, fmt)), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(_aad(fmt, keyId, parties, messageId))
    carry = b""
    plaintextBytes = 0
    chunk = prefix
    while True:
        plaintextBytes += len(chunk)
        last = not chunk
        data = carry + (encryptor.finalize() + encryptor.tag if last else encryptor.update(chunk))
        cut = len(data) if last else len(data) - len(data) % _LINE_BYTES
        carry = data[cut:]
        encoded = base64Lines(data[:cut])
        destination.write(encoded)
        stored += len(encoded)
        if last:
            break
        chunk = source.read(CHUNK_BYTES)
    tail = f"--{boundary}--\n".encode("ascii")
    destination.write(tail)
    return SealedMessage(keyId, messageId, plaintextBytes, stored + len(tail))


def encryptBytes(message: bytes, keyId: str, key: bytes, subject: str | None = PLACEHOLDER_SUBJECT,
                 fmt: Format = AT_REST, parties: tuple[str, ...] = ()) -> bytes:
    """
    L{encryptStream} for a message in memory (small messages, tests).

    @return: the stored form.
    """
    out = io.BytesIO()
    encryptStream(io.BytesIO(message), out, keyId, key, subject, fmt, parties)
    return out.getvalue()


def _line(source: BinaryIO) -> bytes:
    """
    @return: the next line without its line end.
    @raise DecryptionError: at the end of the file, or on an overlong line.
    """
    line = source.readline(MAX_FIELD_BYTES + 2)
    if not line.endswith(b"\n"):
        raise DecryptionError("truncated stored message" if len(line) <= MAX_FIELD_BYTES else "overlong line")
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def _partLines(source: BinaryIO, end: bytes, what: str) -> list[bytes]:
    """
    @return: the lines up to (not including) the line C{end}.
    """
    lines = []
    while (line := _line(source)) != end:
        lines.append(line)
        if len(lines) > _MAX_PART_LINES:
            raise DecryptionError(f"{what} is too long")
    return lines


def _contentType(fields: list[tuple[str, list[bytes]]]) -> email.message.Message:
    """
    @return: a message carrying only the first Content-Type of C{fields}.
    """
    lines = firstSane(fields, "content-type")
    m = email.message.Message()
    if lines is not None:
        m["Content-Type"] = unfolded("content-type", lines).decode("ascii")
    return m


def _readHead(source: BinaryIO, fmt: Format) -> tuple[Envelope, bytes]:
    """
    Read a stored message up to its base64 text.

    @return: the L{Envelope} and the boundary.
    @raise DecryptionError: it is not a well-formed stored message.
    """
    block, blockBytes = [], 0
    while line := _line(source):
        block.append(line)
        blockBytes += len(line) + 1
        if blockBytes > HEADER_CAP_BYTES:
            raise DecryptionError("not an encrypted message (header too long)")
    fields = headerFields(b"\n".join(block + [b""]), True)
    outer = _contentType(fields)
    boundary = (outer.get_boundary() or "").encode("ascii", "replace")
    if outer.get_content_type() != "multipart/encrypted" or outer.get_param("protocol") != fmt.protocol \
            or not 0 < len(boundary) <= 70:
        raise DecryptionError("not an encrypted message (no multipart/encrypted of our protocol)")
    delimiter = b"--" + boundary
    _partLines(source, delimiter, "the preamble")
    controlHead = _partLines(source, b"", "the control part's header")
    if _contentType(headerFields(b"\n".join(controlHead + [b""]), True)).get_content_type() != fmt.protocol:
        raise DecryptionError("the control part is missing")
    control: dict[str, str] = {}
    for line in _partLines(source, delimiter, "the control part"):
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not line.isascii() or name.lower() in control:
            raise DecryptionError("the control part is malformed")
        control[name.lower()] = value.strip(" \t")
    if control.get("scheme") != fmt.scheme:
        raise DecryptionError("the control part names another scheme")
    version = control.get("version", "")
    if _VERSION.fullmatch(version) is None or int(version) != fmt.version:
        raise DecryptionError(f"unknown format version {version[:20]!r}")
    keyId, nonce, messageId = control.get("key-id", ""), control.get("nonce", ""), control.get("message-id")
    try:
        checkKeyId(keyId)
    except InvalidKeyId:
        raise DecryptionError("the control part has no valid Key-Id") from None
    if _NONCE.fullmatch(nonce) is None or messageId is None:
        raise DecryptionError("the control part has no valid Nonce or Message-Id")
    parties = tuple(control.get(name.lower(), "") for name in fmt.parties)
    if not all(_PARTY.fullmatch(p) for p in parties):
        raise DecryptionError(f"the control part lacks a valid {' or '.join(fmt.parties)}")
    outerId = firstSane(fields, "message-id")
    if (unfolded("message-id", outerId).decode("ascii") if outerId else "") != messageId:
        raise DecryptionError("the Message-ID does not match the control part")
    dataHead = headerFields(b"\n".join(_partLines(source, b"", "the data part's header") + [b""]), True)
    encoding = firstSane(dataHead, "content-transfer-encoding")
    if _contentType(dataHead).get_content_type() != "application/octet-stream" \
            or encoding is None or unfolded("content-transfer-encoding", encoding).lower() != b"base64":
        raise DecryptionError("the data part is missing")
    return Envelope(fmt.version, keyId, messageId, bytes.fromhex(nonce), parties), boundary


def readEnvelope(source: BinaryIO, fmt: Format = AT_REST) -> Envelope:
    """
    Read a stored message's key id and message id, without the key.

    @param source: the stored message, at its start (read partly).
    @param fmt: the format it must be in.
    @return: its L{Envelope}.
    @raise DecryptionError: it is not a well-formed stored message.
    """
    return _readHead(source, fmt)[0]


def decryptInto(source: BinaryIO, key: bytes, write: Callable[[bytes], object], fmt: Format) -> Envelope:
    """
    Decrypt, passing plaintext to C{write} as it comes: unauthenticated
    until this returns, so C{write} must go somewhere private.
    """
    envelope, boundary = _readHead(source, fmt)
    decryptor = Cipher(algorithms.AES(_aesKey(key, envelope.keyId, fmt)), modes.GCM(envelope.nonce)).decryptor()
    decryptor.authenticate_additional_data(_aad(fmt, envelope.keyId, envelope.parties, envelope.messageId))
    text, held, tail, lastByte = b"", b"", b"", b"\n"
    while True:
        chunk = source.read(CHUNK_BYTES)
        # The base64 alphabet has no "-": the first one starts the closing
        # delimiter line.
        dash = chunk.find(b"-")
        end = not chunk or dash >= 0
        if dash >= 0:
            tail = chunk[dash:]
            chunk = chunk[:dash]
        lastByte = chunk[-1:] or lastByte
        text += chunk.translate(None, b"\r\n")
        padded = text.find(b"=")
        cut = len(text) if end else (len(text) if padded < 0 else padded) // 4 * 4
        if padded >= 0 and len(text) - padded > 2:
            raise DecryptionError("bad base64 in the data part")
        try:
            data = base64.b64decode(text[:cut], validate=True)
        except binascii.Error:
            raise DecryptionError("bad base64 in the data part") from None
        if end and base64.b64encode(data) != text:
            raise DecryptionError("bad base64 in the data part")
        text = text[cut:]
        data = held + data
        held = data[-TAG_BYTES:]
        write(decryptor.update(data[:-TAG_BYTES]))
        if end:
            break
    while b"\n" not in tail and len(tail) <= len(boundary) + 8 and (more := source.read(len(boundary) + 8)):
        tail += more
    if lastByte != b"\n" or \
            tail.split(b"\n")[0].rstrip(b"\r") != b"--" + boundary + b"--":
        raise DecryptionError("truncated stored message (no closing boundary)")
    if len(held) < TAG_BYTES:
        raise DecryptionError("truncated stored message (no tag)")
    try:
        write(decryptor.finalize_with_tag(held))
    except InvalidTag:
        raise DecryptionError(f"message {envelope.keyId} fails authentication (tampered, or the wrong key)") \
            from None
    return envelope


def decryptStream(source: BinaryIO, key: bytes, directory: str | None = None, fmt: Format = AT_REST) -> BinaryIO:
    """
    Decrypt a stored message into an anonymous temporary file.

    @param source: the stored message, at its start.
    @param key: the KME key for its key id (see L{readEnvelope}).
    @param directory: where the temporary file lives (default: the
        system's); it has no name, so it vanishes when closed.
    @return: the temporary file, at its start, holding the authenticated
        plaintext; the caller closes it.
    @raise DecryptionError: see the module docstring; the partial output
        has been discarded.
    """
    out = tempfile.TemporaryFile(dir=directory)
    try:
        decryptInto(source, key, out.write, fmt)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out


def decryptFile(sourcePath: str, destinationPath: str, key: bytes, fmt: Format = AT_REST) -> Envelope:
    """
    Decrypt a stored file to another file, which appears only once the
    plaintext is authenticated (written beside it, then renamed).

    @return: the stored message's L{Envelope}.
    @raise DecryptionError: see the module docstring; nothing is left at
        C{destinationPath}.
    @raise OSError: either file cannot be opened or written.
    """
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(destinationPath) or ".", prefix=".decrypt-")
    try:
        with open(fd, "wb") as out, open(sourcePath, "rb") as source:
            envelope = decryptInto(source, key, out.write, fmt)
        os.rename(temp, destinationPath)
    except BaseException:
        os.unlink(temp)
        raise
    return envelope


def decryptBytes(stored: bytes, key: bytes, fmt: Format = AT_REST) -> bytes:
    """
    L{decryptStream} for a stored message in memory (small messages, tests).

    @return: the original message.
    @raise DecryptionError: see the module docstring.
    """
    out = io.BytesIO()
    decryptInto(io.BytesIO(stored), key, out.write, fmt)
    return out.getvalue()
