# -*- test-case-name: tests.qkd.test_cipher -*-
"""
Tests for L{qutemail.qkd.cipher}: the stored format of messages encrypted at
rest, its round trip, and its refusal of anything tampered with.
"""

import base64
import email.parser
import email.policy
import hashlib
import io
import os
import re
import uuid

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.qkd.cipher import (
    HEADER_CAP_BYTES, PLACEHOLDER_SUBJECT, PROTOCOL, DecryptionError, Envelope, SealedMessage, base64Lines,
    decryptBytes, decryptFile, decryptStream, encryptBytes, encryptStream, readEnvelope,
)
from qutemail.qkd.vault import InvalidKeyId

KEY_ID = "5b0f4a55-8c1e-4d5e-9a47-0e6f1c2d3b4a"
KEY = bytes(range(32))

_LINE_END = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
_NAMES = st.sampled_from([b"Received", b"From", b"To", b"Cc", b"Date", b"Message-ID", b"Subject", b"Return-Path",
                          b"Content-Type", b"MIME-Version", b"X-Thing", b"from", b"MESSAGE-ID"])


@st.composite
def messages(draw) -> bytes:
    """
    Messages as they may arrive: header fields (sane or not, folded or not,
    with 8-bit bytes and mixed line ends), maybe a blank line, and a body of
    text, 8-bit, very long lines or MIME-like parts; or any bytes at all.
    """
    if draw(st.booleans()):
        return draw(st.binary(max_size=2000))
    out = []
    for _ in range(draw(st.integers(0, 8))):
        value = draw(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(lambda t: t.encode("utf-8"))))
        out.append(draw(_NAMES) + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + value + draw(_LINE_END))
        if draw(st.booleans()):
            out.append(b" " + draw(st.binary(max_size=40)) + b"\n")
    if draw(st.booleans()):
        out.append(draw(st.sampled_from([b"\n", b"\r\n"])))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            line = draw(st.text(max_size=120)).encode("utf-8")
        elif kind == 1:
            line = draw(st.binary(max_size=120))
        elif kind == 2:
            line = b"x" * draw(st.integers(990, 20000))
        else:
            line = (b"--b\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
                    + base64.encodebytes(draw(st.binary(max_size=300))) + b"--b--")
        out.append(line + draw(_LINE_END))
    return b"".join(out)


_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789", min_size=3, max_size=12)


@st.composite
def readableMessages(draw) -> tuple[bytes, list[bytes]]:
    """
    A plain-text message with a secret Subject and body lines of words.

    @return: C{(message, secret lines)}.
    """
    lines = [" ".join(draw(st.lists(_WORDS, min_size=3, max_size=12))).encode("ascii")
             for _ in range(draw(st.integers(1, 20)))]
    subject = b"secret plans " + draw(_WORDS).encode("ascii")
    message = (b"From: a@example.test\nTo: b@example.test\nSubject: " + subject
               + b"\nMessage-ID: <x@example.test>\n\n" + b"\n".join(lines) + b"\n")
    return message, lines + [subject]


def splitStored(stored: bytes) -> tuple[bytes, bytes, bytes]:
    """
    @return: a stored message's bytes before its base64 text, the decoded
        ciphertext and tag, and the bytes after.
    """
    start = stored.index(b"Content-Transfer-Encoding: base64\n\n") + 35
    end = stored.rindex(b"\n--qutemail-qkd-") + 1
    return stored[:start], base64.b64decode(stored[start:end]), stored[end:]


def flipBit(data: bytes, bit: int) -> bytes:
    """
    @return: C{data} with bit C{bit} (counted from the first byte's low
        bit) inverted.
    """
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class RoundTripTests(SynchronousTestCase):
    """
    Encrypting then decrypting gives back the original, and the stored form
    is a well-formed C{multipart/encrypted} message.
    """

    def assertParses(self, stored: bytes, plaintextBytes: int) -> None:
        """
        C{stored} parses with the C{email} package as our
        C{multipart/encrypted}, without defects.
        """
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(stored)
        self.assertEqual(message.get_content_type(), "multipart/encrypted")
        self.assertEqual(message.get_param("protocol"), PROTOCOL)
        self.assertEqual(message.defects, [])
        control, data = list(message.iter_parts())
        self.assertEqual(control.get_content_type(), PROTOCOL)
        self.assertIn(f"Key-Id: {KEY_ID}".encode(), control.get_content())
        self.assertEqual(data.get_content_type(), "application/octet-stream")
        self.assertEqual(len(data.get_payload(decode=True)), plaintextBytes + 16)
        self.assertEqual(message["Subject"], PLACEHOLDER_SUBJECT)
        self.assertNotIn(b"\r", stored)

    @given(messages())
    def test_roundTrip(self, message):
        """
        Any message, however malformed, round-trips byte for byte, and the
        stored form always parses as C{multipart/encrypted}.
        """
        stored = encryptBytes(message, KEY_ID, KEY)
        self.assertParses(stored, len(message))
        self.assertEqual(decryptBytes(stored, KEY), message)

    @given(readableMessages())
    def test_nothingReadable(self, case):
        """
        No line of the body, nor the Subject, appears in the stored form.
        """
        message, secrets = case
        stored = encryptBytes(message, KEY_ID, KEY)
        for secret in secrets:
            self.assertNotIn(secret, stored)
        self.assertEqual(decryptBytes(stored, KEY), message)

    def test_outerHeaders(self):
        """
        Return-Path, every Received, From, To, Cc, Date and Message-ID are
        copied in order, folding kept, under canonical names; insane ones
        (8-bit, bare CR, overlong lines) and all others are left out.
        """
        message = (b"return-path: <a@example.test>\r\n"
                   b"Received: from one\r\n\tby two; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   b"X-Secret: hidden\r\nReceived: from three\r\n"
                   b"From: Andr\xc3\xa9 <a@example.test>\r\nTo: b@example.test\rx\r\n"
                   b"CC: c@example.test\r\nDate: " + b"9" * 1000 + b"\r\n"
                   b"MESSAGE-ID: <m@example.test>\r\nMessage-ID: <second@example.test>\r\n"
                   b"Subject: hidden\r\n\r\nbody\r\n")
        stored = encryptBytes(message, KEY_ID, KEY)
        head = stored.split(b"\nMIME-Version:")[0]
        self.assertEqual(head, b"Return-Path: <a@example.test>\n"
                               b"Received: from one\n\tby two; Mon, 1 Jan 2024 00:00:00 +0000\n"
                               b"Received: from three\nCc: c@example.test\nMessage-ID: <m@example.test>\n"
                               b"Subject: [encrypted message]")
        self.assertEqual(readEnvelope(io.BytesIO(stored)), Envelope(1, KEY_ID, "<m@example.test>",
                                                                    readEnvelope(io.BytesIO(stored)).nonce))

    def test_keepSubject(self):
        """
        With C{subject=None} the original Subject is kept; another
        placeholder may be given; one that is not a line of ASCII is
        refused.
        """
        message = b"From: a@example.test\nSubject: lunch?\n\nhi\n"
        self.assertIn(b"\nSubject: lunch?\n", encryptBytes(message, KEY_ID, KEY, subject=None))
        self.assertIn(b"\nSubject: (sealed)\n", encryptBytes(message, KEY_ID, KEY, subject="(sealed)"))
        for bad in ("a\nb", "caf\xe9", "x" * 901):
            self.assertRaises(ValueError, encryptBytes, message, KEY_ID, KEY, bad)

    def test_badKeyOrId(self):
        """
        An unsafe key id or a short key is refused before anything is
        written.
        """
        self.assertRaises(InvalidKeyId, encryptBytes, b"x", "../x", KEY)
        self.assertRaises(ValueError, encryptBytes, b"x", KEY_ID, b"short")

    def test_base64Lines(self):
        """
        The ciphertext is base64 in lines of 76 characters, the last one
        shorter or equal.
        """
        stored = encryptBytes(os.urandom(1000), KEY_ID, KEY)
        lines = stored[stored.index(b"base64\n\n") + 8:stored.rindex(b"\n--")].split(b"\n")
        self.assertEqual({len(line) for line in lines[:-1]}, {76})
        self.assertLessEqual(len(lines[-1]), 76)

    @given(st.binary(max_size=3000))
    def test_base64LinesAsEncodebytes(self, data):
        """
        L{base64Lines} gives exactly what C{base64.encodebytes} gives, for
        any length (including an exact number of lines, and none).
        """
        self.assertEqual(base64Lines(data), base64.encodebytes(data))
        whole = data[:len(data) // 57 * 57]
        self.assertEqual(base64Lines(whole), base64.encodebytes(whole))

    def test_streaming(self):
        """
        A 5.5 MB message goes from file to file in chunks (no read larger
        than the header cap) and back through a temporary file.
        """
        reads = []

        class Recorder(io.BytesIO):
            """
            Records the size of every read.
            """

            def read(self, size=-1):
                """
                Record C{size}, then read.
                """
                reads.append(size)
                return io.BytesIO.read(self, size)

        body = b"".join(os.urandom(57) + b"\nline of text\n" for _ in range(80000))
        message = b"From: a@example.test\nMessage-ID: <big@example.test>\n\n" + body
        self.assertGreater(len(message), 5 * 1024 * 1024)
        storedPath = self.mktemp()
        with open(storedPath, "wb") as out:
            sealed = encryptStream(Recorder(message), out, KEY_ID, KEY)
        self.assertTrue(0 < max(reads) <= HEADER_CAP_BYTES)
        self.assertEqual(sealed, SealedMessage(KEY_ID, "<big@example.test>", len(message),
                                               os.path.getsize(storedPath)))
        with open(storedPath, "rb") as source:
            self.assertEqual(readEnvelope(source).keyId, KEY_ID)
        with open(storedPath, "rb") as source, decryptStream(source, KEY) as plain:
            self.assertEqual(hashlib.sha256(plain.read()).digest(), hashlib.sha256(message).digest())

    def test_decryptFile(self):
        """
        L{decryptFile} writes the plaintext to its destination; on failure
        nothing is left there or beside it.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        source, destination = os.path.join(base, "stored"), os.path.join(base, "plain")
        with open(source, "wb") as f:
            f.write(encryptBytes(b"Message-ID: <d@e>\n\nhello\n", KEY_ID, KEY))
        self.assertEqual(decryptFile(source, destination, KEY).messageId, "<d@e>")
        with open(destination, "rb") as f:
            self.assertEqual(f.read(), b"Message-ID: <d@e>\n\nhello\n")
        os.unlink(destination)
        self.assertRaises(DecryptionError, decryptFile, source, destination, bytes(32))
        self.assertEqual(os.listdir(base), ["stored"])


class TamperTests(SynchronousTestCase):
    """
    Anything changed in a stored message, or the wrong key, fails with
    L{DecryptionError} and gives no plaintext.
    """

    message = (b"Received: from a.example.test\nFrom: a@example.test\nTo: b@example.test\n"
               b"Message-ID: <t@example.test>\nSubject: s\n\n" + b"body text\n" * 20)

    def setUp(self):
        """
        One stored message.
        """
        self.stored = encryptBytes(self.message, KEY_ID, KEY)

    def assertRefused(self, stored: bytes, key: bytes = KEY) -> DecryptionError:
        """
        Decrypting C{stored} fails with a one-line L{DecryptionError}
        holding no key material.
        """
        error = self.assertRaises(DecryptionError, decryptBytes, stored, key)
        self.assertNotIn("\n", str(error))
        self.assertNotIn(key.hex()[:8], str(error))
        return error

    @given(st.data())
    def test_ciphertextAndTag(self, data):
        """
        Flipping any bit of the ciphertext or of the tag is detected.
        """
        head, payload, tail = splitStored(self.stored)
        for region in (range(0, (len(payload) - 16) * 8), range((len(payload) - 16) * 8, len(payload) * 8)):
            bit = data.draw(st.sampled_from(region))
            self.assertRefused(head + base64.encodebytes(flipBit(payload, bit)) + tail)

    @given(st.integers(0, 95))
    def test_nonce(self, bit):
        """
        Flipping any bit of the nonce is detected.
        """
        nonce = re.search(rb"\nNonce: ([0-9a-f]{24})\n", self.stored).group(1)
        flipped = flipBit(bytes.fromhex(nonce.decode()), bit).hex().encode()
        self.assertRefused(self.stored.replace(nonce, flipped))

    @given(st.data())
    def test_storedFields(self, data):
        """
        Flipping any bit of the key id, the nonce, the version or either
        copy of the message id, as stored, is detected.
        """
        field = data.draw(st.sampled_from([b"\nKey-Id: ", b"\nNonce: ", b"\nVersion: ", b"\nMessage-Id: ",
                                           b"\nMessage-ID: "]))
        start = self.stored.index(field) + len(field)
        end = self.stored.index(b"\n", start)
        bit = data.draw(st.integers(start * 8, end * 8 - 1))
        self.assertRefused(flipBit(self.stored, bit))

    @given(st.integers(0, 10 ** 9))
    def test_anyBit(self, n):
        """
        Flipping any bit anywhere either is refused with
        L{DecryptionError} or (in the unauthenticated outer copies and
        structure) still gives exactly the original.
        """
        flipped = flipBit(self.stored, n % (len(self.stored) * 8))
        try:
            self.assertEqual(decryptBytes(flipped, KEY), self.message)
        except DecryptionError:
            pass

    @given(st.integers(0, 10 ** 9))
    def test_truncated(self, n):
        """
        A stored message cut short anywhere before its final line end is
        refused.
        """
        self.assertRefused(self.stored[:n % (len(self.stored) - 1)])

    @given(st.binary(max_size=3000) | messages())
    def test_notOurs(self, garbage):
        """
        Anything that is not a stored message is refused with
        L{DecryptionError}, and nothing else, by both readers.
        """
        self.assertRefused(garbage)
        self.assertRaises(DecryptionError, readEnvelope, io.BytesIO(garbage))

    def test_wrongKey(self):
        """
        The wrong key is refused.
        """
        self.assertIn("fails authentication", str(self.assertRefused(self.stored, bytes(32))))

    def test_unknownVersion(self):
        """
        A version other than 1 is refused, naming it.
        """
        error = self.assertRefused(self.stored.replace(b"\nVersion: 1\n", b"\nVersion: 2\n"))
        self.assertEqual(str(error), "unknown format version '2'")

    def test_missingParts(self):
        """
        Without the control part, the data part, or the outer
        C{multipart/encrypted}, the message is refused.
        """
        head, payload, tail = splitStored(self.stored)
        boundary = tail.strip()[:-2]
        control = self.stored.index(boundary + b"\nContent-Type: " + PROTOCOL.encode())
        data = self.stored.index(boundary + b"\nContent-Type: application/octet-stream")
        for broken in (self.stored[:control] + self.stored[data:],
                       self.stored[:data] + tail,
                       self.stored.replace(b"multipart/encrypted", b"multipart/mixed"),
                       self.stored.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: 7bit"),
                       head + b"!!!!\n" + tail):
            self.assertRefused(broken)

    def test_noPlaintextOnFailure(self):
        """
        L{decryptStream} hands over nothing when the tag fails, even though
        most of the ciphertext was decrypted first.
        """
        head, payload, tail = splitStored(self.stored)
        broken = head + base64.encodebytes(flipBit(payload, len(payload) * 8 - 1)) + tail
        self.assertRaises(DecryptionError, decryptStream, io.BytesIO(broken), KEY)
        with decryptStream(io.BytesIO(self.stored), KEY) as plain:
            self.assertEqual(plain.read(), self.message)

    def test_readEnvelope(self):
        """
        The key id and message id are read without the key.
        """
        envelope = readEnvelope(io.BytesIO(self.stored))
        self.assertEqual((envelope.version, envelope.keyId, envelope.messageId), (1, KEY_ID, "<t@example.test>"))
        self.assertEqual(len(envelope.nonce), 12)

    def test_differentKeyIdSameKey(self):
        """
        Each key id gives its own AES key: the same KME bytes under another
        id do not decrypt.
        """
        other = str(uuid.uuid4())
        self.assertRefused(self.stored.replace(KEY_ID.encode(), other.encode()))
