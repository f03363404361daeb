"""
Tests of the sealed queue body format (L{qutemail.queue.sealedbody}).
"""

import io
import random

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.queue.sealedbody import (
    CHUNK_BYTES,
    HEADER_BYTES,
    MAGIC,
    RECORD_BYTES,
    SealedBodyError,
    openSealedBody,
    sealStream,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
MARKER = b"Zebra-Quokka-7731 quarterly numbers"


def _body(size: int, seed: int = 0) -> bytes:
    """
    @return: C{size} pseudo-random bytes, with L{MARKER} at the start when
        it fits.
    """
    data = random.Random(seed).randbytes(size)
    return (MARKER + data)[:size] if size >= len(MARKER) else data


def _sealed(plain: bytes, key: bytes = KEY) -> bytes:
    """
    @return: C{plain} sealed under C{key}.
    """
    out = io.BytesIO()
    total = sealStream(io.BytesIO(plain), out, key)
    assert total == len(plain)
    return out.getvalue()


# Sizes at and around chunk boundaries, where the last record is empty,
# full, or one byte long.
_BOUNDARY_SIZES = st.builds(
    lambda chunks, delta: max(0, chunks * CHUNK_BYTES + delta),
    st.integers(min_value=0, max_value=3), st.integers(min_value=-2, max_value=2))


class SealedBodyTests(SynchronousTestCase):
    """
    Sealing and opening a queue body.
    """

    def open(self, sealed: bytes, key: bytes = KEY, readSize: int = -1) -> bytes:
        """
        Write C{sealed} to a file and read its plaintext back.

        @param readSize: read in pieces of this size (-1: at once).
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(sealed)
        with openSealedBody(path, key) as body:
            if readSize < 0:
                return body.read()
            parts = []
            while data := body.read(readSize):
                parts.append(data)
            return b"".join(parts)

    @given(size=_BOUNDARY_SIZES, seed=st.integers(min_value=0, max_value=2 ** 16),
           readSize=st.sampled_from([-1, 1, 4096, CHUNK_BYTES - 1, CHUNK_BYTES + 7]))
    def test_roundTrip(self, size: int, seed: int, readSize: int) -> None:
        """
        Whatever the body's size around chunk boundaries and however it is
        read, opening gives back exactly what was sealed.
        """
        plain = _body(size, seed)
        self.assertEqual(self.open(_sealed(plain), readSize=readSize), plain)

    @given(size=st.integers(min_value=0, max_value=300))
    def test_roundTripSmall(self, size: int) -> None:
        """
        Small bodies (one record) round-trip, line by line too.
        """
        plain = b"line\n" * size
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(_sealed(plain))
        with openSealedBody(path, KEY) as body:
            self.assertEqual(list(body), plain.splitlines(keepends=True))

    def test_layout(self) -> None:
        """
        The sealed form is the header, then one record per chunk (the last
        shorter), each 16 bytes longer than its chunk; no plaintext shows.
        """
        plain = _body(2 * CHUNK_BYTES + 5)
        sealed = _sealed(plain)
        self.assertTrue(sealed.startswith(MAGIC + b"\x01"))
        self.assertEqual(len(sealed), HEADER_BYTES + 2 * RECORD_BYTES + 5 + 16)
        self.assertNotIn(MARKER, sealed)
        self.assertEqual(len(_sealed(b"")), HEADER_BYTES + 16)

    def test_freshSaltPerFile(self) -> None:
        """
        The same body sealed twice gives different files (a salt per file).
        """
        self.assertNotEqual(_sealed(b"same\n"), _sealed(b"same\n"))

    def assertRefused(self, sealed: bytes, key: bytes = KEY) -> None:
        """
        Opening C{sealed} fails with L{SealedBodyError}, a one-line reason
        holding no plaintext.
        """
        error = self.assertRaises(SealedBodyError, self.open, sealed, key)
        self.assertNotIn("\n", str(error))
        self.assertNotIn("Zebra", str(error))

    def test_tampered(self) -> None:
        """
        One flipped bit anywhere (header, ciphertext, tag) is refused.
        """
        sealed = _sealed(_body(CHUNK_BYTES + 100))
        for offset in (5, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + CHUNK_BYTES + 3,
                       HEADER_BYTES + RECORD_BYTES + 10, len(sealed) - 1):
            damaged = bytearray(sealed)
            damaged[offset] ^= 0x01
            self.assertRefused(bytes(damaged))

    def test_truncated(self) -> None:
        """
        A file cut anywhere, at a record boundary included, is refused.
        """
        sealed = _sealed(_body(2 * CHUNK_BYTES + 100))
        for length in (0, 3, HEADER_BYTES, HEADER_BYTES + 10, HEADER_BYTES + RECORD_BYTES,
                       HEADER_BYTES + 2 * RECORD_BYTES, len(sealed) - 1):
            self.assertRefused(sealed[:length])

    def test_truncatedExactMultiple(self) -> None:
        """
        A body of exactly two chunks cut after its first record is refused
        (the first record was not sealed as the last).
        """
        sealed = _sealed(_body(2 * CHUNK_BYTES))
        self.assertEqual(len(sealed), HEADER_BYTES + 2 * RECORD_BYTES)
        self.assertRefused(sealed[:HEADER_BYTES + RECORD_BYTES])

    def test_appended(self) -> None:
        """
        A record appended (a copy of the last, or of another file's) is
        refused.
        """
        sealed = _sealed(_body(CHUNK_BYTES + 100))
        self.assertRefused(sealed + sealed[HEADER_BYTES + RECORD_BYTES:])
        self.assertRefused(sealed + b"x")

    def test_reordered(self) -> None:
        """
        Records swapped, or one dropped from the middle, are refused.
        """
        sealed = _sealed(_body(3 * CHUNK_BYTES))
        header = sealed[:HEADER_BYTES]
        records = [sealed[HEADER_BYTES + i * RECORD_BYTES:HEADER_BYTES + (i + 1) * RECORD_BYTES] for i in range(3)]
        self.assertRefused(header + records[1] + records[0] + records[2])
        self.assertRefused(header + records[0] + records[2])

    def test_wrongKey(self) -> None:
        """
        A body sealed under another queue key is refused.
        """
        self.assertRefused(_sealed(b"hello\n"), OTHER_KEY)

    def test_otherFilesHeader(self) -> None:
        """
        Records moved under another file's header (its salt) are refused.
        """
        first, second = _sealed(b"one\n"), _sealed(b"two\n")
        self.assertRefused(second[:HEADER_BYTES] + first[HEADER_BYTES:])

    def test_wrongVersion(self) -> None:
        """
        Another version byte, or a file that is not sealed at all (a body
        in clear), is refused.
        """
        sealed = _sealed(b"hello\n")
        self.assertRefused(sealed[:4] + b"\x02" + sealed[5:])
        error = self.assertRaises(SealedBodyError, self.open, sealed[:4] + b"\x02" + sealed[5:])
        self.assertIn("version 2", str(error))
        self.assertRefused(b"From: bob@example.test\n\nhello\n")

    def test_keySize(self) -> None:
        """
        A queue key of the wrong size is a programming error.
        """
        self.assertRaises(ValueError, sealStream, io.BytesIO(b""), io.BytesIO(), KEY[:16])

    def test_closesFile(self) -> None:
        """
        Closing the plaintext reader closes the sealed file.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(_sealed(b"hello\n"))
        body = openSealedBody(path, KEY)
        raw = body.raw._raw
        body.close()
        self.assertTrue(raw.closed)
