# -*- test-case-name: tests.qkd.test_transit -*-
"""
Tests for L{qutemail.qkd.transit}: the inter-site transit form of a
message, its round trip through files, what it shows outside the
encryption, and its binding of key id, sites and Message-ID.
"""

import base64
import io
import os
import stat
import uuid

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.qkd.cipher import AT_REST, CHUNK_BYTES, PLACEHOLDER_SUBJECT, decryptBytes, encryptBytes, readEnvelope
from qutemail.qkd.transit import (
    TRANSIT, DecryptionError, isTransit, openTransit, readTransitEnvelope, sealTransit,
)

KEY_ID = "0c4e7a52-3f1d-4b8a-9e26-5d7c1b0a9f3e"
OTHER_KEY_ID = "a7d3c9e1-6b2f-4e80-8c14-2f9b5e7d0a61"
KEY = bytes(range(32))
MASTER = "site-a"
SLAVE = "site-b"
MESSAGE_ID = b"<1@a.example.test>"
SECRET_LINE = b"The launch code is 0000, tell nobody."


def originalMessage() -> bytes:
    """
    @return: a message with mixed CRLF and LF line ends, 8-bit bytes in
        its header and body, a secret Subject and a body of about 300 KB
        (several of the cipher's chunks).
    """
    head = (b"Received: from a.example.test by mx.a.example.test; Mon, 1 Jan 2024 12:00:00 +0000\r\n"
            b"From: Alice <alice@a.example.test>\r\n"
            b"To: bob@b.example.test\n"
            b"Date: Mon, 1 Jan 2024 12:00:00 +0000\n"
            b"Message-ID: " + MESSAGE_ID + b"\r\n"
            b"Subject: secret plans \xc3\xa9\n"
            b"X-Mixed: \xff\xfe\n"
            b"\r\n")
    body = [SECRET_LINE + b"\r\n"]
    for n in range(7500):
        body.append(b"line %05d \xe2\x82\xac \x80\xff %s" % (n, b"x" * (n % 40)) + (b"\r\n" if n % 3 else b"\n"))
    return head + b"".join(body)


ORIGINAL = originalMessage()


def replaceExactly(data: bytes, old: bytes, new: bytes, count: int = 1) -> bytes:
    """
    @return: C{data} with C{old} replaced by C{new}, which must occur
        exactly C{count} times (so a test cannot silently edit nothing).
    """
    if data.count(old) != count:
        raise AssertionError(f"{old!r} occurs {data.count(old)} times, not {count}")
    return data.replace(old, new)


def dataSpan(transit: bytes) -> tuple[int, int]:
    """
    @return: where the base64 text of a transit message starts and ends.
    """
    start = transit.index(b"Content-Transfer-Encoding: base64\n\n") + len(b"Content-Transfer-Encoding: base64\n\n")
    return start, transit.rindex(b"\n--qutemail-qkd-transit-") + 1


class SealAndOpenTests(SynchronousTestCase):
    """
    L{sealTransit} writes a private file that L{openTransit} turns back
    into the original, byte for byte.
    """

    def setUp(self) -> None:
        """
        A directory for the files.
        """
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.sealedPath = os.path.join(self.directory, "Q1-peer.msg")
        self.openedPath = os.path.join(self.directory, "Q1.plain")

    def seal(self, message: bytes = ORIGINAL) -> bytes:
        """
        Seal C{message} from MASTER to SLAVE.

        @return: the transit file's contents.
        """
        sealed = sealTransit(lambda: io.BytesIO(message), self.sealedPath, KEY_ID, KEY, MASTER, SLAVE)
        with open(self.sealedPath, "rb") as f:
            transit = f.read()
        self.assertEqual((sealed.keyId, sealed.plaintextBytes, sealed.storedBytes),
                         (KEY_ID, len(message), len(transit)))
        return transit

    def assertNothingOpened(self) -> None:
        """
        Neither the destination nor its temporary file exists.
        """
        self.assertFalse(os.path.exists(self.openedPath))
        self.assertFalse(os.path.exists(self.openedPath + ".tmp"))

    def test_roundTrip(self) -> None:
        """
        A sealed 300 KB message with CRLF, LF and 8-bit bytes opens back
        to exactly the original, and L{openTransit} returns its size.
        """
        self.seal()
        size = openTransit(self.sealedPath, self.openedPath, KEY)
        with open(self.openedPath, "rb") as f:
            opened = f.read()
        self.assertEqual(opened, ORIGINAL)
        self.assertEqual(size, len(ORIGINAL))
        self.assertGreater(len(ORIGINAL), 4 * CHUNK_BYTES)

    def test_filesArePrivate(self) -> None:
        """
        Both the transit file and the opened file are mode 0600, and no
        temporary file is left beside them.
        """
        self.seal()
        openTransit(self.sealedPath, self.openedPath, KEY)
        for path in (self.sealedPath, self.openedPath):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(self.directory)), ["Q1-peer.msg", "Q1.plain"])

    def test_sealReplaces(self) -> None:
        """
        Sealing to a path that exists replaces the file.
        """
        with open(self.sealedPath, "wb") as f:
            f.write(b"stale" * 100000)
        transit = self.seal(b"Message-ID: <2@a.example.test>\n\nshort\n")
        self.assertTrue(isTransit(transit))
        self.assertEqual(decryptBytes(transit, KEY, TRANSIT), b"Message-ID: <2@a.example.test>\n\nshort\n")

    def test_sealSourceFails(self) -> None:
        """
        When the original cannot be read, the error comes through and no
        file, temporary or final, is left.
        """
        def broken():
            """
            Fail to open the original.
            """
            raise OSError("spool gone")
        self.assertRaises(OSError, sealTransit, broken, self.sealedPath, KEY_ID, KEY, MASTER, SLAVE)
        self.assertEqual(os.listdir(self.directory), [])

    def test_outerHeader(self) -> None:
        """
        The outer header carries the copied fields and the placeholder
        Subject, declares the transit protocol, and shows no Subject or
        body line of the original.
        """
        transit = self.seal()
        header = transit.split(b"\n\n", 1)[0]
        lines = header.split(b"\n")
        self.assertIn(b"Subject: " + PLACEHOLDER_SUBJECT.encode("ascii"), lines)
        self.assertIn(b"Message-ID: " + MESSAGE_ID, lines)
        self.assertIn(b"To: bob@b.example.test", lines)
        self.assertIn(b'Content-Type: multipart/encrypted; protocol="application/x-qutemail-qkd-transit";', lines)
        self.assertEqual([line for line in lines if line.lower().startswith(b"subject:")],
                         [b"Subject: [encrypted message]"])
        self.assertNotIn(b"secret plans", transit)
        self.assertNotIn(b"X-Mixed", transit)
        self.assertNotIn(SECRET_LINE, transit)
        self.assertNotIn(b"line 00001", transit)
        for line in lines:
            self.assertTrue(line.isascii() and b"\r" not in line, line)

    def test_controlPart(self) -> None:
        """
        The control part names the scheme, version, key id, master and
        slave SAE ids, nonce and Message-ID, in that order.
        """
        transit = self.seal()
        boundary = b"--qutemail-qkd-transit-"
        control = transit.split(boundary)[1].split(b"\n")
        self.assertEqual(control[1], b"Content-Type: application/x-qutemail-qkd-transit")
        fields = [line for line in control[3:] if line]
        self.assertEqual([f.split(b":")[0] for f in fields],
                         [b"Scheme", b"Version", b"Key-Id", b"Master-Sae", b"Slave-Sae", b"Nonce", b"Message-Id"])
        self.assertEqual(fields[:5], [b"Scheme: qutemail-qkd-transit", b"Version: 1", b"Key-Id: " + KEY_ID.encode(),
                                      b"Master-Sae: " + MASTER.encode(), b"Slave-Sae: " + SLAVE.encode()])
        self.assertEqual(fields[6], b"Message-Id: " + MESSAGE_ID)

    def test_readTransitEnvelope(self) -> None:
        """
        L{readTransitEnvelope} gives the key id, the Message-ID and
        C{(master, slave)} without the key.
        """
        transit = self.seal()
        envelope = readTransitEnvelope(io.BytesIO(transit))
        self.assertEqual((envelope.version, envelope.keyId, envelope.messageId, envelope.parties),
                         (1, KEY_ID, MESSAGE_ID.decode(), (MASTER, SLAVE)))
        self.assertEqual(len(envelope.nonce), 12)

    def test_traceBytes(self) -> None:
        """
        Trace fields added on receipt before the transit form are copied,
        as they are, to the top of the opened original.
        """
        prefix = b"Received: by b\n"
        with open(self.sealedPath, "wb") as f:
            f.write(prefix + encryptBytes(ORIGINAL, KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE)))
        size = openTransit(self.sealedPath, self.openedPath, KEY, traceBytes=len(prefix))
        with open(self.openedPath, "rb") as f:
            self.assertEqual(f.read(), prefix + ORIGINAL)
        self.assertEqual(size, len(prefix) + len(ORIGINAL))

    def test_traceBytesTampered(self) -> None:
        """
        With trace bytes, a tampered transit form still fails and leaves
        nothing.
        """
        prefix = b"Received: by b\n"
        transit = encryptBytes(ORIGINAL, KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE))
        with open(self.sealedPath, "wb") as f:
            f.write(prefix + replaceExactly(transit, b"Slave-Sae: site-b\n", b"Slave-Sae: site-x\n"))
        self.assertRaises(DecryptionError, openTransit, self.sealedPath, self.openedPath, KEY, len(prefix))
        self.assertNothingOpened()


class BindingTests(SynchronousTestCase):
    """
    Key id, master and slave SAE ids and Message-ID are authenticated: a
    transit message edited in any of them, or in its ciphertext, or opened
    with the wrong key, fails and leaves nothing behind.
    """

    def setUp(self) -> None:
        """
        A sealed message in memory and file names to open it to.
        """
        self.transit = encryptBytes(ORIGINAL, KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE))
        directory = self.mktemp()
        os.makedirs(directory)
        self.sourcePath = os.path.join(directory, "in.msg")
        self.openedPath = os.path.join(directory, "out.plain")

    def assertRefused(self, transit: bytes, key: bytes = KEY) -> None:
        """
        C{transit} fails to open with L{DecryptionError}; nothing is left
        at the destination nor at its temporary name.
        """
        with open(self.sourcePath, "wb") as f:
            f.write(transit)
        self.assertRaises(DecryptionError, openTransit, self.sourcePath, self.openedPath, key)
        self.assertFalse(os.path.exists(self.openedPath))
        self.assertFalse(os.path.exists(self.openedPath + ".tmp"))
        self.assertRaises(DecryptionError, decryptBytes, transit, key, TRANSIT)

    def test_untouchedOpens(self) -> None:
        """
        The message the other tests edit opens as it is (so their failures
        come from the edit).
        """
        with open(self.sourcePath, "wb") as f:
            f.write(self.transit)
        self.assertEqual(openTransit(self.sourcePath, self.openedPath, KEY), len(ORIGINAL))

    def test_masterSae(self) -> None:
        """
        Another master SAE id reads as such, but fails the tag check.
        """
        edited = replaceExactly(self.transit, b"\nMaster-Sae: site-a\n", b"\nMaster-Sae: site-c\n")
        self.assertEqual(readTransitEnvelope(io.BytesIO(edited)).parties, ("site-c", SLAVE))
        self.assertRefused(edited)

    def test_slaveSae(self) -> None:
        """
        Another slave SAE id reads as such, but fails the tag check.
        """
        edited = replaceExactly(self.transit, b"\nSlave-Sae: site-b\n", b"\nSlave-Sae: site-c\n")
        self.assertEqual(readTransitEnvelope(io.BytesIO(edited)).parties, (MASTER, "site-c"))
        self.assertRefused(edited)

    def test_swappedParties(self) -> None:
        """
        Master and slave swapped (the reverse direction) fails the tag
        check.
        """
        edited = replaceExactly(self.transit, b"\nMaster-Sae: site-a\nSlave-Sae: site-b\n",
                                b"\nMaster-Sae: site-b\nSlave-Sae: site-a\n")
        self.assertEqual(readTransitEnvelope(io.BytesIO(edited)).parties, (SLAVE, MASTER))
        self.assertRefused(edited)

    def test_keyId(self) -> None:
        """
        Another key id reads as such, but fails (even with the same key).
        """
        edited = replaceExactly(self.transit, b"\nKey-Id: " + KEY_ID.encode() + b"\n",
                                b"\nKey-Id: " + OTHER_KEY_ID.encode() + b"\n")
        self.assertEqual(readTransitEnvelope(io.BytesIO(edited)).keyId, OTHER_KEY_ID)
        self.assertRefused(edited)

    def test_messageId(self) -> None:
        """
        Another Message-ID, changed consistently in the outer header and
        the control part, reads as such, but fails the tag check.
        """
        edited = replaceExactly(self.transit, MESSAGE_ID, b"<2@a.example.test>", count=2)
        self.assertEqual(readTransitEnvelope(io.BytesIO(edited)).messageId, "<2@a.example.test>")
        self.assertRefused(edited)

    def test_messageIdOuterOnly(self) -> None:
        """
        An outer Message-ID that differs from the control part's is
        refused while reading the envelope.
        """
        edited = replaceExactly(self.transit, b"Message-ID: " + MESSAGE_ID, b"Message-ID: <2@a.example.test>")
        self.assertRaises(DecryptionError, readTransitEnvelope, io.BytesIO(edited))
        self.assertRefused(edited)

    def test_ciphertextCharacter(self) -> None:
        """
        One base64 character of the ciphertext changed fails the tag
        check.
        """
        start, end = dataSpan(self.transit)
        middle = start + ((end - start) // 2 // 77) * 77
        edited = bytearray(self.transit)
        edited[middle] = ord(b"B") if edited[middle] != ord(b"B") else ord(b"C")
        edited = bytes(edited)
        self.assertNotEqual(base64.b64decode(edited[start:end]), base64.b64decode(self.transit[start:end]))
        self.assertRefused(edited)

    def test_wrongKey(self) -> None:
        """
        The wrong key fails the same way.
        """
        self.assertRefused(self.transit, key=bytes(32))


class FormatTests(SynchronousTestCase):
    """
    The transit and at-rest formats are told apart and never read as one
    another.
    """

    def test_isTransit(self) -> None:
        """
        A transit message says it is one; its header alone is enough.
        """
        transit = encryptBytes(ORIGINAL, KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE))
        self.assertTrue(isTransit(transit))
        self.assertTrue(isTransit(transit[:transit.index(b"\n\n") + 2]))

    def test_notTransit(self) -> None:
        """
        A plain message, an at-rest message, a plain message that quotes
        the transit Content-Type in its body, and garbage are not transit
        messages.
        """
        quoting = (b"From: a@a.example.test\n\n"
                   b'Content-Type: multipart/encrypted; protocol="application/x-qutemail-qkd-transit"\n')
        for head in (ORIGINAL, encryptBytes(ORIGINAL, KEY_ID, KEY), quoting, b"", b"\x00\xff\xfe garbage\n\n",
                     b'Content-Type: multipart/encrypted; protocol="application/x-qutemail-qkd-transit\xff"\n\n',
                     b'Content-Type: multipart/encrypted; protocol="application/x-qutemail-qkd"\n\n',
                     b'Content-Type: text/plain; protocol="application/x-qutemail-qkd-transit"\n\n'):
            self.assertFalse(isTransit(head), head[:80])

    @given(st.binary(max_size=500))
    @settings(max_examples=50)
    def test_isTransitAnyBytes(self, head: bytes) -> None:
        """
        L{isTransit} answers for any bytes without raising.
        """
        self.assertIn(isTransit(head), (True, False))

    def test_atRestRefused(self) -> None:
        """
        An at-rest message is not read as a transit message.
        """
        atRest = encryptBytes(ORIGINAL, KEY_ID, KEY)
        self.assertRaises(DecryptionError, readTransitEnvelope, io.BytesIO(atRest))
        self.assertRaises(DecryptionError, decryptBytes, atRest, KEY, TRANSIT)

    def test_transitRefusedAtRest(self) -> None:
        """
        A transit message is not read as an at-rest message.
        """
        transit = encryptBytes(ORIGINAL, KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE))
        self.assertRaises(DecryptionError, readEnvelope, io.BytesIO(transit))
        self.assertRaises(DecryptionError, readEnvelope, io.BytesIO(transit), AT_REST)
        self.assertRaises(DecryptionError, decryptBytes, transit, KEY)

    def test_partiesMustFit(self) -> None:
        """
        The transit format wants exactly two SAE ids of 1 to 128
        printable characters.
        """
        for parties in ((), (MASTER,), (MASTER, SLAVE, "site-c"), (MASTER, ""), (MASTER, "site b"),
                        (MASTER, "x" * 129)):
            self.assertRaises(ValueError, encryptBytes, ORIGINAL, KEY_ID, KEY, fmt=TRANSIT, parties=parties)
        self.assertRaises(ValueError, encryptBytes, ORIGINAL, KEY_ID, KEY, parties=(MASTER,))

    def test_otherSchemeRefused(self) -> None:
        """
        A transit-protocol message whose control part names another scheme
        (or version) is not read.
        """
        transit = encryptBytes(b"x\n", KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE))
        for old, new in ((b"\nScheme: qutemail-qkd-transit\n", b"\nScheme: qutemail-qkd\n"),
                         (b"\nVersion: 1\n", b"\nVersion: 2\n")):
            edited = replaceExactly(transit, old, new)
            self.assertTrue(isTransit(edited))
            self.assertRaises(DecryptionError, readTransitEnvelope, io.BytesIO(edited))

    def test_missingPartyRefused(self) -> None:
        """
        A control part without its Slave-Sae line is not well formed.
        """
        transit = encryptBytes(b"x\n", KEY_ID, KEY, fmt=TRANSIT, parties=(MASTER, SLAVE))
        edited = replaceExactly(transit, b"\nSlave-Sae: site-b\n", b"\n")
        self.assertRaises(DecryptionError, readTransitEnvelope, io.BytesIO(edited))

    @given(message=st.binary(max_size=3000),
           master=st.text(alphabet="ab.-_1", min_size=1, max_size=8),
           slave=st.text(alphabet="ab.-_1", min_size=1, max_size=8))
    @settings(max_examples=50)
    def test_roundTripProperty(self, message: bytes, master: str, slave: str) -> None:
        """
        Any bytes, between any two parties, round-trip; the parties read
        back in order and the result is recognised as transit.
        """
        keyId = str(uuid.UUID(int=len(message)))
        transit = encryptBytes(message, keyId, KEY, fmt=TRANSIT, parties=(master, slave))
        self.assertTrue(isTransit(transit))
        envelope = readTransitEnvelope(io.BytesIO(transit))
        self.assertEqual((envelope.keyId, envelope.parties), (keyId, (master, slave)))
        self.assertEqual(decryptBytes(transit, KEY, TRANSIT), message)
