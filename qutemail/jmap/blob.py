# -*- test-case-name: tests.jmap.test_blob -*-
"""
Blobs (RFC 8620 §6): uploads, kept under C{data_dir/jmap/<accountId>/
uploads/} (mode 0600, per account, so one account's id names nothing in
another's), and the blobs of stored messages: a whole message, as its
owner reads it (decrypted), or one decoded body part.

Uploads are written and read in worker threads.
"""

import os
import secrets
import shutil
from typing import Any, BinaryIO

from qutemail.jmap import ids
from qutemail.jmap.state import EmailEntry

UPLOADS = "uploads"
_COPY_BYTES = 1024 * 1024


def uploadDirectory(context: Any) -> str:
    """
    @return: the account's directory of uploads.
    """
    return os.path.join(context.stateDirectory, UPLOADS)


def storeUpload(directory: str, source: BinaryIO, size: int, mediaType: str) -> str:
    """
    Copy an upload's body into the account's uploads.  Blocking.

    @return: its blob id.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    blobId = "u" + secrets.token_hex(16)
    path = os.path.join(directory, blobId)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        source.seek(0)
        copied = 0
        while copied < size:
            chunk = source.read(min(_COPY_BYTES, size - copied))
            if not chunk:
                break
            out.write(chunk)
            copied += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    with open(os.open(path + ".type", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(mediaType[:255])
    os.rename(path + ".tmp", path)
    return blobId


def readUpload(directory: str, blobId: str, maxBytes: int) -> tuple[bytes, str] | None:
    """
    @return: an upload's bytes and media type, or C{None} when it is not
        there.  Blocking.
    """
    if ids.parseBlobId(blobId) is None or not blobId.startswith("u"):
        return None
    path = os.path.join(directory, blobId)
    try:
        with open(path, "rb") as f:
            data = f.read(maxBytes + 1)
    except FileNotFoundError:
        return None
    try:
        with open(path + ".type") as f:
            mediaType = f.read()
    except FileNotFoundError:
        mediaType = "application/octet-stream"
    return data, mediaType


def copyFile(source: BinaryIO, target: BinaryIO) -> None:
    """
    Copy a file.  Blocking.
    """
    shutil.copyfileobj(source, target, _COPY_BYTES)


async def readBlob(context: Any, blobId: str) -> tuple[bytes, str] | None:
    """
    Any blob of the account.

    @return: its bytes and media type, or C{None} when the account has no
        such blob.
    """
    parsed = ids.parseBlobId(blobId)
    if parsed is None:
        return None
    kind, digest, partId = parsed
    if kind == "upload":
        return await context.runner.run(readUpload, uploadDirectory(context), blobId, context.limits.maxSizeUpload)
    snapshot = await context.snapshot()
    entry: EmailEntry | None = snapshot.emailsById().get("e" + digest)
    if entry is None:
        return None
    try:
        if kind == "message":
            data, _ = await context.rawMessage(entry)
            return data, "message/rfc822"
        email_, _, _ = await context.parsed(entry)
    except FileNotFoundError:
        return None
    part = email_.parts.get(partId)
    if part is None:
        return None
    return part.content(), part.type
