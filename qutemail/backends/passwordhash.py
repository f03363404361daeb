# -*- test-case-name: tests.backends.test_passwordhash -*-
"""
Password hashes as the user file stores them: scrypt, in the form
C{scrypt$<log2 N>$<r>$<p>$<base64 salt>$<base64 key>}, so the cost
parameters travel with each hash and can be raised later without making old
hashes unreadable (see L{qutemail.backends.userfile}).

Hashing and verifying are blocking and slow (tens of milliseconds, by
design): call them through a runner.
"""

import base64
import binascii
import os
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

# scrypt cost: N = 2**14, r = 8, p = 1 takes 16 MiB and ~50 ms per hash
# (the parameters RFC 7914 §2 and OWASP suggest for interactive logins).
DEFAULT_WORK_FACTOR = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

# The most threads the server hashes and checks passwords in (a pool of
# their own, see passwordThreads).
MAX_PASSWORD_THREADS = 8

# Bounds on the parameters accepted from the file, so that an edited or
# damaged file cannot make one login allocate gigabytes.
MAX_WORK_FACTOR = 20
_MAX_R = 32
_MAX_P = 16

_SCHEME = "scrypt"


def _b64encode(data: bytes) -> str:
    """
    @return: C{data} in standard base64 without padding.
    """
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    """
    Decode base64 written by L{_b64encode}.

    @raise ValueError: C{text} is not base64.
    """
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(f"bad base64: {e}") from None


def _scrypt(salt: bytes, workFactor: int, r: int, p: int, length: int) -> Scrypt:
    """
    @return: a one-use scrypt KDF with these parameters.
    """
    return Scrypt(salt=salt, length=length, n=2**workFactor, r=r, p=p)


def deriveKey(password: bytes, salt: bytes, workFactor: int) -> bytes:
    """
    Derive a key as L{hashPassword} does, with the default C{r} and C{p}.
    Blocking and slow: call it through a runner.

    @param password: the password.
    @param salt: the salt.
    @param workFactor: log2 of scrypt's N.
    @return: the key, L{KEY_BYTES} long.
    """
    return _scrypt(salt, workFactor, SCRYPT_R, SCRYPT_P, KEY_BYTES).derive(password)


def hashPassword(password: bytes, workFactor: int = DEFAULT_WORK_FACTOR) -> str:
    """
    Hash a password with scrypt and a fresh random salt.  Blocking and slow:
    call it through a runner.

    @param password: the password.
    @param workFactor: log2 of scrypt's N.
    @return: C{scrypt$<log2 N>$<r>$<p>$<base64 salt>$<base64 key>}.
    """
    salt = os.urandom(SALT_BYTES)
    key = deriveKey(password, salt, workFactor)
    return "$".join(
        [_SCHEME, str(workFactor), str(SCRYPT_R), str(SCRYPT_P), _b64encode(salt), _b64encode(key)]
    )


def parsePasswordHash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """
    Split a hash written by L{hashPassword}, checking every part.

    @param encoded: the stored hash.
    @return: C{(workFactor, r, p, salt, key)}.
    @raise ValueError: it is not such a hash, or its parameters are out of
        the range this server accepts.
    """
    if not isinstance(encoded, str):
        raise ValueError("the password hash is not a string")
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("the password hash is not of the form scrypt$N$r$p$salt$key")
    numbers = []
    for part in parts[1:4]:
        if not part.isascii() or not part.isdigit():
            raise ValueError(f"the password hash has a bad parameter {part!r}")
        numbers.append(int(part))
    workFactor, r, p = numbers
    if not 1 <= workFactor <= MAX_WORK_FACTOR or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise ValueError(f"the password hash's parameters N=2**{workFactor} r={r} p={p} are out of range")
    salt, key = _b64decode(parts[4]), _b64decode(parts[5])
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        raise ValueError("the password hash's salt or key has a bad length")
    return workFactor, r, p, salt, key


def verifyPassword(encoded: str, password: bytes) -> bool:
    """
    Check a password against a stored hash, comparing in constant time.
    Blocking and slow: call it through a runner.

    @param encoded: a hash written by L{hashPassword}.
    @param password: the candidate.
    @return: whether it matches.
    @raise ValueError: C{encoded} is not a valid hash.
    """
    workFactor, r, p, salt, key = parsePasswordHash(encoded)
    try:
        _scrypt(salt, workFactor, r, p, len(key)).verify(password, key)
    except InvalidKey:
        return False
    return True


# A fixed salt for the work done on behalf of unknown users; what comes out
# is thrown away.
_DUMMY_SALT = b"\0" * SALT_BYTES


def dummyVerify(password: bytes, workFactor: int) -> bool:
    """
    Spend the time a L{verifyPassword} takes, for a user who does not exist.

    @return: C{False}, always.
    """
    deriveKey(password, _DUMMY_SALT, workFactor)
    return False


def passwordThreads(cores: int | None = None) -> int:
    """
    How many threads the server's password pool has: one per core (scrypt
    is CPU work and releases the interpreter lock, so more threads than
    cores make no more logins a second), at least 2, at most
    L{MAX_PASSWORD_THREADS}.

    The pool is the server's own rather than its general one because each
    thread that has run scrypt keeps the 16 MiB it took (the C allocator
    keeps the freed block for the next one of that size): a burst of eight
    parallel logins on the general pool of up to eight threads left the
    server 129 MiB larger for good (69 MiB before, 198 MiB after), and
    each of those threads' first login paid for mapping its 16 MiB afresh
    (4,100 page faults; 51-77 ms a login here where a thread that had
    hashed before took 32-35).  A login burst no longer holds every thread
    the file and Maildir work needs, either.

    @param cores: the number of cores (default: this machine's).
    """
    if cores is None:
        cores = os.cpu_count() or 2
    return min(MAX_PASSWORD_THREADS, max(2, cores))


def checkPasswordValue(password: bytes) -> None:
    """
    Refuse a password that cannot be stored.

    @raise TypeError: it is not bytes.
    @raise ValueError: it is empty.
    """
    if not isinstance(password, bytes):
        raise TypeError("passwords are bytes")
    if not password:
        raise ValueError("the password is empty")


async def hashInThread(runner: Any, password: bytes, workFactor: int) -> str:
    """
    Check a new password and hash it in a worker thread.

    @param runner: the L{qutemail.blocking.BlockingRunner}.
    @return: the hash (see L{hashPassword}).
    @raise ValueError: the password is empty.
    """
    checkPasswordValue(password)
    return await runner.run(hashPassword, password, workFactor)


async def verifyInThread(runner: Any, passwordHash: str | None, password: bytes, workFactor: int) -> bool:
    """
    Check a password against an account's hash in a worker thread; with no
    account (C{passwordHash} C{None}), spend the same scrypt work and say
    no, so that a login does not tell which addresses exist.

    @param runner: the L{qutemail.blocking.BlockingRunner}.
    @param workFactor: the directory's cost, for the dummy work.
    @return: whether the password is right.
    """
    if passwordHash is None:
        await runner.run(dummyVerify, password, workFactor)
        return False
    return await runner.run(verifyPassword, passwordHash, password)
