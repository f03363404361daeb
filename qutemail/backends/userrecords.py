# -*- test-case-name: tests.backends.test_userrecords -*-
"""
The contents of the user file (L{qutemail.backends.userfile}): UTF-8 JSON::

    {
      "users": {
        "bob@example.test": {
          "password": "scrypt$14$8$1$<salt>$<hash>",
          "quota": null
        }
      },
      "version": 1
    }

C{users} maps each normalised address (see L{qutemail.address}) to its
record: C{password} is a scrypt hash (see L{qutemail.backends.passwordhash});
C{quota} is the mailbox quota in bytes, or C{null} for the configured
default.
"""

import json
from typing import Any

import attrs

from qutemail.address import AddressInvalid, parseAccountAddress
from qutemail.backends.passwordhash import parsePasswordHash

FORMAT_VERSION = 1


class UserFileError(Exception):
    """
    The user file cannot be read or written: it is corrupt, or the
    operating system refused.  C{str()} is one line naming the file.
    """


@attrs.frozen
class UserRecord:
    """
    One account as stored.

    @ivar passwordHash: see L{hashPassword}.
    @ivar quotaBytes: the quota, or C{None} for the configured default.
    """

    passwordHash: str
    quotaBytes: int | None


def isQuota(value: Any) -> bool:
    """
    @return: whether C{value} is a valid stored quota.
    """
    return value is None or (type(value) is int and value >= 0)


def checkQuota(value: Any) -> None:
    """
    Refuse a quota that cannot be stored.

    @raise ValueError: C{value} is neither C{None} nor an C{int >= 0}.
    """
    if not isQuota(value):
        raise ValueError(f"{value!r} is not a quota in bytes")


def checkAddress(address: str) -> None:
    """
    Refuse an address that is not normalised.

    @raise AddressInvalid: it is not.
    """
    normal = str(parseAccountAddress(address))
    if normal != address:
        raise AddressInvalid(f"{address!r} is not in normal form ({normal!r})")


def parseUserFile(path: str, data: bytes) -> dict[str, UserRecord]:
    """
    Parse and check the file's contents.

    @param path: the file, for error messages.
    @param data: its contents.
    @return: the records by address.
    @raise UserFileError: the contents are not a valid user file.
    """

    def corrupt(reason: str) -> UserFileError:
        """
        @return: the error for this fault in the file.
        """
        return UserFileError(f"{path}: corrupt user file: {reason}")

    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise corrupt(f"not UTF-8 (byte {e.start})") from None
    except ValueError as e:
        raise corrupt(f"not JSON ({e})") from None
    if not isinstance(document, dict):
        raise corrupt("the top level is not an object")
    if document.get("version") != FORMAT_VERSION:
        raise corrupt(f"unsupported version {document.get('version')!r} (expected {FORMAT_VERSION})")
    entries = document.get("users")
    if not isinstance(entries, dict):
        raise corrupt('"users" is not an object')
    users = {}
    for address, entry in entries.items():
        try:
            checkAddress(address)
        except AddressInvalid as e:
            raise corrupt(str(e)) from None
        if not isinstance(entry, dict):
            raise corrupt(f"the entry for {address} is not an object")
        passwordHash = entry.get("password")
        try:
            parsePasswordHash(passwordHash)
        except ValueError as e:
            raise corrupt(f"{address}: {e}") from None
        quota = entry.get("quota")
        if not isQuota(quota):
            raise corrupt(f"{address}: quota {quota!r} is not null or a byte count")
        users[address] = UserRecord(passwordHash, quota)
    return users


def serialiseUserFile(users: dict[str, UserRecord]) -> bytes:
    """
    @return: the file's contents for these records.
    """
    document = {
        "version": FORMAT_VERSION,
        "users": {
            address: {"password": record.passwordHash, "quota": record.quotaBytes}
            for address, record in sorted(users.items())
        },
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
