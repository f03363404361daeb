# -*- test-case-name: tests.access.test_keywords -*-
"""
Tests for L{qutemail.access.keywords}: IMAP keywords in a folder's
C{dovecot-keywords} file and lower-case Maildir info letters, as Dovecot
keeps them (issue 20).
"""

import os
import threading

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.access.keywords import (
    KEYWORDS_FILE,
    MAX_KEYWORDS,
    KeywordLimit,
    KeywordMap,
    ensureKeywords,
    formatKeywordFile,
    isKeyword,
    parseKeywordFile,
    readKeywords,
)
from qutemail.access.uids import flagsOfLetters, lettersOfFlags, setFlags, sync
from qutemail.store.folders import MaildirFolders

NOW = 1_700_000_000.0


def _folder(case: SynchronousTestCase) -> str:
    """
    @return: a new INBOX directory with C{cur/ new/ tmp/}.
    """
    root = os.path.join(os.path.abspath(case.mktemp()), "box")
    MaildirFolders(root).ensureSpecialFolders()
    return root


def _write(path: str, data: bytes) -> None:
    """
    Write a file as another tool would.
    """
    with open(path, "wb") as f:
        f.write(data)


def _read(path: str) -> bytes:
    """
    @return: a file's contents.
    """
    with open(path, "rb") as f:
        return f.read()


class KeywordFileTests(SynchronousTestCase):
    """
    The C{dovecot-keywords} file.
    """

    def test_isKeyword(self) -> None:
        """
        A keyword is an IMAP atom (RFC 3501 §9) of at most 100 characters,
        not a system flag.
        """
        for name in ("$Junk", "$NotJunk", "$MDNSent", "$label1", "NonJunk", "a[b", "x" * 100, "Junk/Spam"):
            self.assertTrue(isKeyword(name), name)
        for name in ("", "\\Seen", "\\*", "a]b", "a b", "a(b", "a)b", "a{b", "a%b", "a*b", 'a"b', "a\x01b",
                     "caf\xe9", "x" * 101, "a\nb"):
            self.assertFalse(isKeyword(name), name)

    def test_parseAndFormat(self) -> None:
        """
        Lines are C{<index> <name>}; other lines, and indexes past 25, are
        skipped; the first line of an index wins.
        """
        data = b"0 $Junk\n3 $label1\nbad line\n26 $TooFar\n3 $Other\n\n1 with space\r\n"
        self.assertEqual(parseKeywordFile(data), {0: "$Junk", 3: "$label1", 1: "with space"})
        self.assertEqual(formatKeywordFile({3: "$label1", 0: "$Junk"}), b"0 $Junk\n3 $label1\n")

    @given(st.dictionaries(st.integers(0, MAX_KEYWORDS - 1), st.from_regex(r"[!#$&'+\-.0-9A-Z^_a-z|}~]{1,20}",
                                                                            fullmatch=True)))
    def test_roundTrip(self, lines: dict) -> None:
        """
        Formatting then parsing gives the same mapping.
        """
        self.assertEqual(parseKeywordFile(formatKeywordFile(lines)), lines)

    def test_mapLookups(self) -> None:
        """
        Names are found in any case, spelt as the file has them; a line
        that is not a usable keyword keeps its index but gives no name.
        """
        keywords = KeywordMap({0: "$Junk", 1: "has space", 2: "$junk", 4: "$label1"})
        self.assertEqual(keywords.letterOf("$JUNK"), "a")
        self.assertEqual(keywords.canonical("$junk"), "$Junk")
        self.assertEqual(keywords.letterOf("$label1"), "e")
        self.assertIsNone(keywords.letterOf("has space"))
        self.assertEqual([keywords.nameOf(c) for c in "abcde"], ["$Junk", None, None, None, "$label1"])
        self.assertEqual(keywords.names, ("$Junk", "$label1"))
        self.assertFalse(keywords.full)

    def test_ensureAllocates(self) -> None:
        """
        New keywords get the lowest free indexes, in alphabetical order;
        known ones (any case) keep theirs; the file is replaced whole, and
        nothing is written when nothing is new.
        """
        folder = _folder(self)
        path = os.path.join(folder, KEYWORDS_FILE)
        _write(path, b"0 $Forwarded-old\n2 odd name\n")
        keywords = ensureKeywords(folder, ["$NotJunk", "$Junk", "$junk"])
        self.assertEqual(_read(path), b"0 $Forwarded-old\n1 $Junk\n2 odd name\n3 $NotJunk\n")
        self.assertEqual((keywords.letterOf("$junk"), keywords.letterOf("$NotJunk")), ("b", "d"))
        before = os.stat(path).st_ino
        self.assertEqual(ensureKeywords(folder, ["$JUNK"]), keywords)
        self.assertEqual(os.stat(path).st_ino, before)
        self.assertEqual(readKeywords(folder), keywords)
        self.assertEqual([n for n in os.listdir(folder) if n.startswith(KEYWORDS_FILE)], [KEYWORDS_FILE])

    def test_limit(self) -> None:
        """
        A folder takes 26 keywords; the 27th is refused and nothing of a
        refused batch is written.
        """
        folder = _folder(self)
        keywords = ensureKeywords(folder, [f"k{i:02d}" for i in range(MAX_KEYWORDS - 1)])
        self.assertFalse(keywords.full)
        before = _read(os.path.join(folder, KEYWORDS_FILE))
        self.assertRaises(KeywordLimit, ensureKeywords, folder, ["extra1", "extra2"])
        self.assertEqual(_read(os.path.join(folder, KEYWORDS_FILE)), before)
        self.assertTrue(ensureKeywords(folder, ["last"]).full)
        self.assertEqual(readKeywords(folder).letterOf("last"), "z")
        self.assertRaises(KeywordLimit, ensureKeywords, folder, ["more"])
        self.assertEqual(ensureKeywords(folder, ["K00", "last"]).letterOf("k00"), "a")

    def test_concurrentAllocations(self) -> None:
        """
        Threads adding keywords at once never give one index to two names,
        and lose none.
        """
        folder = _folder(self)
        errors = []

        def add(prefix: str) -> None:
            try:
                for i in range(6):
                    ensureKeywords(folder, [f"{prefix}{i}"])
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=add, args=(p,)) for p in ("a", "b", "c", "d")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        lines = parseKeywordFile(_read(os.path.join(folder, KEYWORDS_FILE)))
        self.assertEqual(sorted(lines.values()), sorted(f"{p}{i}" for p in "abcd" for i in range(6)))
        self.assertEqual(sorted(lines), list(range(24)))


class KeywordLetterTests(SynchronousTestCase):
    """
    Keyword letters in message file names, as Dovecot writes them.
    """

    def test_letters(self) -> None:
        """
        Keywords are lower-case letters after the system letters; letters
        with no usable line are kept as other tools' letters are.
        """
        keywords = KeywordMap({0: "$Junk", 1: "odd name", 2: "$label1"})
        self.assertEqual(flagsOfLetters("Sabcz", keywords), frozenset({"\\Seen", "$Junk", "$label1"}))
        self.assertEqual(lettersOfFlags(["$label1", "\\Seen", "$junk", "$Unknown"], keywords=keywords), "Sac")
        self.assertEqual(lettersOfFlags(["\\Seen"], keep="Sabcz", keywords=keywords), "Sbz")

    def test_dovecotFolderRead(self) -> None:
        """
        A message Dovecot flagged (C{:2,Sb} with C{1 $NotJunk} in the
        folder's file) has that keyword; setting other flags keeps it, and
        a new keyword is added to the file and the name.
        """
        folder = _folder(self)
        _write(os.path.join(folder, KEYWORDS_FILE), b"0 $Junk\n1 $NotJunk\n")
        path = os.path.join(folder, "cur", "1.M1P1.host,S=5:2,Sb")
        _write(path, b"x\n\ny\n")
        [message] = sync(folder, NOW).messages
        self.assertEqual(message.flags, frozenset({"\\Seen", "$NotJunk"}))
        path = setFlags(path, message.flags | {"\\Flagged", "$MDNSent"})
        self.assertEqual(os.path.basename(path), "1.M1P1.host,S=5:2,FSbc")
        self.assertEqual(_read(os.path.join(folder, KEYWORDS_FILE)), b"0 $Junk\n1 $NotJunk\n2 $MDNSent\n")
        path = setFlags(path, {"\\Seen"})
        self.assertEqual(os.path.basename(path), "1.M1P1.host,S=5:2,S")

    def test_setFlagsFull(self) -> None:
        """
        Setting a keyword the full folder lacks raises L{KeywordLimit} and
        leaves the file as it was.
        """
        folder = _folder(self)
        ensureKeywords(folder, [f"k{i:02d}" for i in range(MAX_KEYWORDS)])
        path = os.path.join(folder, "new", "1.M1P1.host,S=1")
        _write(path, b"x")
        self.assertRaises(KeywordLimit, setFlags, path, {"\\Seen", "another"})
        self.assertEqual(os.listdir(os.path.join(folder, "new")), ["1.M1P1.host,S=1"])
