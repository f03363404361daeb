# -*- test-case-name: tests.access.test_keywords -*-
"""
IMAP keywords (RFC 3501 §2.3.2: C{$Junk}, C{$NotJunk}, C{$MDNSent},
C{$label1}, any atom) in a Maildir++ folder, the way Dovecot keeps them,
so other Maildir tools agree: the folder's C{dovecot-keywords} file maps
an index to a keyword name, one C{<index> <name>} line each, and a
message carries the keyword as the lower-case letter C{a} + index in its
C{:2,} info, after the upper-case system flag letters
(C{:2,FSab}).

Only 26 letters exist, so a folder holds at most 26 keywords.  Dovecot
keeps more in its index files; we have none, so the 27th new keyword of
a folder is refused (L{KeywordLimit}, answered C{NO [LIMIT]}), and a
folder whose letters are all taken no longer announces C{\\*} in
PERMANENTFLAGS (RFC 3501 §7.1).  An index, once given to a name, is
never given to another: lines are only ever added, and lines we cannot
read as a keyword keep their index reserved (their letters are kept on
messages as they are, as other tools' letters are).

Keywords compare without regard to case (the first spelling given is the
one kept).  The file is replaced atomically (L{qutemail.durable.replaceFile})
under the folder's C{flock}, the lock L{qutemail.access.uids.sync} holds.

Every function here that touches files blocks: callers run them through
the runner.
"""

import os
import re
from collections.abc import Iterable, Mapping

import attrs

from qutemail.durable import replaceFile
from qutemail.store.dirlock import DirectoryLock
from qutemail.store.folders import KEYWORDS_FILE

MAX_KEYWORDS = 26
# Our own limit on a keyword's length (RFC 3501 sets none; Dovecot's
# clients use short ones: $Junk, $label1, $MDNSent, NonJunk).
MAX_KEYWORD_BYTES = 100
# RFC 3501 §9: flag-keyword = atom; ATOM-CHAR is any CHAR but
# atom-specials ( ) { SP CTL % * " \ ] (and resp-specials).
_KEYWORD = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")
_LINE = re.compile(r"([0-9]{1,2}) ([^\n]+)")


class KeywordLimit(Exception):
    """
    A folder has no free letter for a new keyword.
    """


def isKeyword(name: str) -> bool:
    """
    @return: whether C{name} is a valid keyword (an atom, not a system
        flag, at most L{MAX_KEYWORD_BYTES} long).
    """
    return len(name) <= MAX_KEYWORD_BYTES and _KEYWORD.fullmatch(name) is not None


def letterOfIndex(index: int) -> str:
    """
    @return: the info letter of a keyword index (0 is C{a}).
    """
    return chr(ord("a") + index)


@attrs.frozen
class KeywordMap:
    """
    A folder's keywords, as its C{dovecot-keywords} file says.

    @ivar lines: C{{index: name}} of every line read, names we cannot use
        included (their indexes stay reserved).
    @ivar names: the usable keywords, by index (for FLAGS and
        PERMANENTFLAGS); a name the file has twice (in two cases) is
        only its first spelling.
    """

    lines: Mapping[int, str] = attrs.field(factory=dict)
    names: tuple[str, ...] = attrs.field(init=False, eq=False)
    _letters: dict[str, str] = attrs.field(init=False, eq=False, repr=False)
    _spellings: dict[str, str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        """
        Index the usable lines by letter and by lower-case name (this is
        looked up for every letter of every message at each sync).
        """
        letters: dict[str, str] = {}
        spellings: dict[str, str] = {}
        for index in sorted(self.lines):
            name = self.lines[index]
            if isKeyword(name) and name.lower() not in spellings:
                spellings[name.lower()] = letterOfIndex(index)
                letters[letterOfIndex(index)] = name
        object.__setattr__(self, "names", tuple(letters.values()))
        object.__setattr__(self, "_letters", letters)
        object.__setattr__(self, "_spellings", spellings)

    @property
    def full(self) -> bool:
        """
        Whether every letter is taken.
        """
        return len(self.lines) >= MAX_KEYWORDS

    def letterOf(self, name: str) -> str | None:
        """
        @return: the letter of a keyword (any case), or C{None}.
        """
        return self._spellings.get(name.lower())

    def nameOf(self, letter: str) -> str | None:
        """
        @return: the keyword of a lower-case letter (its first spelling
            when the file has two), or C{None} when the letter is not one
            we can show.
        """
        return self._letters.get(letter)

    def canonical(self, name: str) -> str | None:
        """
        @return: a keyword as this folder spells it, or C{None} when the
            folder does not have it.
        """
        letter = self.letterOf(name)
        return None if letter is None else self._letters[letter]


EMPTY = KeywordMap()


def parseKeywordFile(data: bytes) -> dict[int, str]:
    """
    Read a C{dovecot-keywords} file's contents; lines that are not
    C{<index> <name>} with an index below 26 are skipped (the first line
    of an index wins).

    @return: C{{index: name}}.
    """
    lines: dict[int, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        match = _LINE.fullmatch(line.rstrip("\r"))
        if match is not None and int(match.group(1)) < MAX_KEYWORDS:
            lines.setdefault(int(match.group(1)), match.group(2))
    return lines


def formatKeywordFile(lines: Mapping[int, str]) -> bytes:
    """
    @return: the contents of a C{dovecot-keywords} file.
    """
    return "".join(f"{index} {lines[index]}\n" for index in sorted(lines)).encode("utf-8")


def readKeywords(folderPath: str) -> KeywordMap:
    """
    @return: a folder's keywords (none when it has no file).
    """
    try:
        with open(os.path.join(folderPath, KEYWORDS_FILE), "rb") as f:
            return KeywordMap(parseKeywordFile(f.read()))
    except FileNotFoundError:
        return EMPTY


def ensureKeywords(folderPath: str, names: Iterable[str]) -> KeywordMap:
    """
    Give every keyword in C{names} a letter in the folder, adding lines to
    its C{dovecot-keywords} (under the folder's lock) for those it lacks,
    in alphabetical order.

    @param names: valid keywords (see L{isKeyword}).
    @return: the folder's keywords, C{names} included.
    @raise KeywordLimit: there are not enough free letters (nothing is
        added).
    @raise FileNotFoundError: the folder is gone.
    """
    names = sorted(set(names), key=lambda n: (n.lower(), n))
    current = readKeywords(folderPath)
    if all(current.letterOf(n) is not None for n in names):
        return current
    with DirectoryLock(folderPath):
        lines = dict(readKeywords(folderPath).lines)
        known = KeywordMap(dict(lines))
        free = (i for i in range(MAX_KEYWORDS) if i not in lines)
        for name in names:
            if known.letterOf(name) is not None:
                continue
            index = next(free, None)
            if index is None:
                raise KeywordLimit(f"{folderPath} has no free keyword letter for {name!r}")
            lines[index] = name
            known = KeywordMap(dict(lines))
        replaceFile(os.path.join(folderPath, KEYWORDS_FILE), formatKeywordFile(lines))
    return known
