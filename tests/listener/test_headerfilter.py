"""
Tests for L{qutemail.listener.headerfilter}.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail.listener.headerfilter import MAX_FIELD_BYTES, SpoofedResultsFilter


def ours(field: bytes) -> bool:
    """
    A stand-in predicate: a field is forged when it names mx.example.test.
    """
    return b"mx.example.test" in field.lower()


def run(chunks: list[bytes]) -> tuple[bytes, SpoofedResultsFilter]:
    """
    Feed chunks through a filter and finish it.

    @return: everything it let through, and the filter.
    """
    f = SpoofedResultsFilter(ours)
    out = b"".join(f.feed(c) for c in chunks) + f.finish()
    return out, f


class SpoofedResultsFilterTests(SynchronousTestCase):
    """
    Forged C{Authentication-Results} fields are dropped as the header
    streams; everything else passes byte for byte.
    """

    def test_dropsForgedKeepsOthers(self) -> None:
        """
        A field naming our host is dropped, with its continuation lines;
        another server's and every other field are kept.
        """
        message = (b"From: a@b.test\n"
                   b"Authentication-Results: mx.example.test;\n\tdkim=pass header.d=b.test\n"
                   b"Authentication-Results: other.test; spf=fail\n"
                   b"Subject: hi\n\nbody\nAuthentication-Results: mx.example.test; in the body\n")
        out, f = run([message])
        self.assertEqual(out, b"From: a@b.test\nAuthentication-Results: other.test; spf=fail\n"
                              b"Subject: hi\n\nbody\nAuthentication-Results: mx.example.test; in the body\n")
        self.assertEqual(f.dropped, 1)

    def test_splitAcrossChunks(self) -> None:
        """
        A forged field whose continuation comes in a later chunk is still
        dropped whole, and the name matches in any case.
        """
        out, f = run([b"X: 1\nauthentication-RESULTS : mx.example.test;\n", b"  spf=pass\n", b"Y: 2\n\nbody\n"])
        self.assertEqual(out, b"X: 1\nY: 2\n\nbody\n")
        self.assertEqual(f.dropped, 1)

    def test_lastFieldWithoutBody(self) -> None:
        """
        A message ending with a held field: L{SpoofedResultsFilter.finish}
        decides about it.
        """
        self.assertEqual(run([b"A: 1\nAuthentication-Results: mx.example.test; x\n"])[0], b"A: 1\n")
        self.assertEqual(run([b"A: 1\nAuthentication-Results: b.test; x\n"])[0],
                         b"A: 1\nAuthentication-Results: b.test; x\n")

    def test_oversizedFieldDropped(self) -> None:
        """
        An C{Authentication-Results} field longer than L{MAX_FIELD_BYTES}
        is dropped even if the predicate never sees our name in it.
        """
        long = b"Authentication-Results: far.test;\n" + b"\tx\n" * (MAX_FIELD_BYTES // 3 + 1)
        out, f = run([long, b"Z: 1\n\nbody\n"])
        self.assertEqual(out, b"Z: 1\n\nbody\n")

    def test_bodyUntouched(self) -> None:
        """
        After the blank line nothing is looked at, in later chunks too.
        """
        out, _ = run([b"A: 1\n\n", b"Authentication-Results: mx.example.test; spf=pass\n"])
        self.assertEqual(out, b"A: 1\n\nAuthentication-Results: mx.example.test; spf=pass\n")

    def test_headerlessMessage(self) -> None:
        """
        A message whose first line is no field is passed through whole.
        """
        out, _ = run([b"just text\nAuthentication-Results: mx.example.test; x\n"])
        self.assertEqual(out, b"just text\nAuthentication-Results: mx.example.test; x\n")


class ScanFieldsTests(SynchronousTestCase):
    """
    With C{dropScanFields}, spam and virus scanners' verdict fields from
    outside are dropped whole; nothing else is.
    """

    MESSAGE = (b"From: a@b.test\n"
               b"X-Spam-Status: No, score=-100\n\ttests=FORGED\n"
               b"x-spamd-result: default: False [-100.00 / 15.00]\n"
               b"X-Spam-Flag: NO\n"
               b"X-Virus-Scanned: clamd; clean\n"
               b"X-Mailer: mutt\n"
               b"Authentication-Results: mx.example.test; dkim=pass\n"
               b"Subject: hi\n\nX-Spam-Status: No, in the body\n")

    def test_dropped(self) -> None:
        """
        Every C{X-Spam*} and C{X-Virus*} field goes, continuation lines
        included, as do forged results; other fields and the body stay.
        """
        f = SpoofedResultsFilter(ours, True)
        out = b"".join(f.feed(line + b"\n") for line in self.MESSAGE.split(b"\n")[:-1]) + f.finish()
        self.assertEqual(out, b"From: a@b.test\nX-Mailer: mutt\nSubject: hi\n\nX-Spam-Status: No, in the body\n")
        self.assertEqual(f.dropped, 5)

    def test_onlyScanFields(self) -> None:
        """
        Without a results predicate, C{Authentication-Results} fields are
        all kept; without C{dropScanFields}, verdict fields are.
        """
        f = SpoofedResultsFilter(None, True)
        out = f.feed(self.MESSAGE) + f.finish()
        self.assertIn(b"\nAuthentication-Results: mx.example.test; dkim=pass\n", out)
        self.assertNotIn(b"X-Virus-Scanned", out)
        f = SpoofedResultsFilter(ours)
        out = f.feed(self.MESSAGE) + f.finish()
        self.assertIn(b"\nX-Spam-Status: No, score=-100\n\ttests=FORGED\n", out)
        self.assertNotIn(b"Authentication-Results", out)
