"""
Tests for L{qutemail.access.imapfetch}: the FETCH of whole messages from
memory (L{WholeRenderer}) answers exactly as the general path (L{render})
does from the message's structure and file.
"""

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.mail.imap4 import _FetchParser
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.imapfetch import Literal, WholeRenderer, render, wholeOnly
from qutemail.access.imapmailbox import Slot
from qutemail.access.imapmessage import _convertedWhole, readConverted
from qutemail.access.imapmime import scanMessage


def parseItems(text: bytes) -> list:
    """
    @return: the parsed FETCH items of C{text}.
    """
    parser = _FetchParser()
    parser.parseString(text)
    return parser.result


def flatten(pieces: list) -> bytes:
    """
    @return: L{render}'s pieces as the client gets them.
    """
    out = []
    for piece in pieces:
        if isinstance(piece, Literal):
            data, _ = readConverted(piece.file, piece.start.raw, piece.end.raw, piece.end.raw)
            out.append(b"{%d}\r\n" % (piece.length,) + data[piece.skip:piece.skip + piece.length])
        else:
            out.append(piece)
    return b"".join(out)


SLOT = Slot(7, "1700000000.M1P1.test", "/nowhere", frozenset({"\\Seen"}), 1700000000.0)
WHOLE_ITEMS = [b"BODY[]", b"BODY.PEEK[]", b"RFC822", b"(UID RFC822.SIZE BODY.PEEK[])",
               b"(FLAGS INTERNALDATE BODY[]<5.20>)", b"BODY.PEEK[]<0.0>", b"(BODY[]<100000.4> UID)"]
LINES = st.lists(st.sampled_from([b"Subject: hi", b"From: a@b.test", b"", b"text\r", b"\r", b"x\ry",
                                  b"Content-Type: multipart/mixed; boundary=b", b"--b", b"--b--"]),
                 max_size=12)


class RenderWholeTests(SynchronousTestCase):
    """
    L{wholeOnly} and L{WholeRenderer}.
    """

    def test_wholeOnly(self):
        """
        Only items answered from the whole message's bytes qualify, and at
        least one of them must ask for the message.
        """
        for text in WHOLE_ITEMS:
            self.assertTrue(wholeOnly(parseItems(text)), text)
        for text in (b"(UID FLAGS)", b"BODY[TEXT]", b"BODY[1]", b"BODY[HEADER]", b"(BODY[] ENVELOPE)",
                     b"BODYSTRUCTURE", b"BODY", b"RFC822.HEADER", b"(RFC822.TEXT UID)"):
            self.assertFalse(wholeOnly(parseItems(text)), text)

    @settings(max_examples=150, deadline=None)
    @given(lines=LINES, ending=st.sampled_from([b"\n", b"\r\n"]), which=st.sampled_from(WHOLE_ITEMS),
           uid=st.booleans())
    def test_sameAsRender(self, lines, ending, which, uid):
        """
        For any message and whole-message items, L{WholeRenderer} sends the
        same bytes as L{render} does from the scanned structure and file.
        """
        message = ending.join(lines) + (ending if lines else b"")
        items = parseItems(which)
        f = io.BytesIO(message)
        root = scanMessage(f)
        expected = flatten(render(items, 3, SLOT, root, f, uid))
        rendered = WholeRenderer(items, uid).render(3, SLOT, _convertedWhole(message))
        self.assertEqual(b"".join(rendered), expected)
