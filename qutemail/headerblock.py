# -*- test-case-name: tests.test_headerblock -*-
"""
Where a message's header section ends, and cheap tests of it that run
before anything is parsed: most mail from outside is neither encrypted nor
signed, which one pass in C over its header section tells.
"""

import re

_BLANK_LINE = re.compile(rb"\n\r?\n")
_ENCRYPTED = re.compile(rb"encrypted", re.IGNORECASE)


def headerEnd(head: bytes, start: int = 0) -> int:
    """
    @param start: where to look for the blank line from: a caller that
        adds to C{head} looks again only from just before what it added.
    @return: where the header section of C{head} ends (at its blank line),
        or C{len(head)} when there is none within C{head}.
    """
    if head.startswith((b"\n", b"\r\n")):
        return 0
    blank = _BLANK_LINE.search(head, start)
    return len(head) if blank is None else blank.start() + 1


def namesEncrypted(head: bytes) -> bool:
    """
    @return: whether the header section of C{head} (all of C{head} when it
        holds no blank line) names "encrypted" anywhere, in any case: a
        message that does not cannot be C{multipart/encrypted}.
    """
    return _ENCRYPTED.search(head, 0, headerEnd(head)) is not None
