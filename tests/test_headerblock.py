"""
Tests for L{qutemail.headerblock}.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail.headerblock import headerEnd, namesEncrypted


class HeaderBlockTests(SynchronousTestCase):
    """
    L{headerEnd} and L{namesEncrypted}.
    """

    def test_headerEnd(self) -> None:
        """
        The header section ends after its last line, before the blank line
        (LF or CRLF); an empty section ends at 0; without a blank line, at
        the end of what was given.
        """
        self.assertEqual(headerEnd(b"A: b\nC: d\n\nbody\n\n"), 10)
        self.assertEqual(headerEnd(b"A: b\r\n\r\nbody"), 6)
        self.assertEqual(headerEnd(b"\nA: b\n\n"), 0)
        self.assertEqual(headerEnd(b"\r\nA: b\n\n"), 0)
        self.assertEqual(headerEnd(b"A: b\nC: d"), 9)

    def test_namesEncrypted(self) -> None:
        """
        Only the header section is looked at, in any case.
        """
        self.assertTrue(namesEncrypted(b"Content-Type: multipart/ENCRYPTED; p=x\n\nbody\n"))
        self.assertFalse(namesEncrypted(b"Subject: hi\n\nContent-Type: multipart/encrypted\n"))
        self.assertFalse(namesEncrypted(b"\nContent-Type: multipart/encrypted\n"))
        self.assertTrue(namesEncrypted(b"Subject: an encrypted hello"))
