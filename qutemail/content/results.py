# -*- test-case-name: tests.content.test_results -*-
"""
What the scanners answer: one result type per scanner, and the error every
scanner raises when it could not give an answer.
"""

import attrs

# rspamd's actions (https://rspamd.com/doc/faq.html#what-are-rspamd-actions).
NO_ACTION = "no action"
GREYLIST = "greylist"
ADD_HEADER = "add header"
REWRITE_SUBJECT = "rewrite subject"
SOFT_REJECT = "soft reject"
REJECT = "reject"
ACTIONS = frozenset((NO_ACTION, GREYLIST, ADD_HEADER, REWRITE_SUBJECT, SOFT_REJECT, REJECT))


class ScanError(Exception):
    """
    A scanner gave no usable answer: down, slow, or answering nonsense.
    C{str()} is one line saying which and why.
    """


@attrs.frozen
class RspamdResult:
    """
    rspamd's verdict on a message (the JSON of C{/checkv2}).

    @ivar action: one of L{ACTIONS}.
    @ivar score: the message's score.
    @ivar requiredScore: the score of the C{reject} action.
    @ivar symbols: the rules that matched, as C{(name, score)}, by name.
    @ivar smtpMessage: the reply text rspamd asks for (C{messages.smtp_message}),
        or C{""}.
    """

    action: str
    score: float
    requiredScore: float
    symbols: tuple[tuple[str, float], ...] = ()
    smtpMessage: str = ""

    def describe(self) -> str:
        """
        @return: one line for the log: action and score.
        """
        return f"{self.action} ({self.score:.2f}/{self.requiredScore:.2f})"


@attrs.frozen
class ClamdResult:
    """
    clamd's verdict on a message.

    @ivar virus: the name of the signature that matched, or C{None} for a
        clean message.
    """

    virus: str | None = None

    def describe(self) -> str:
        """
        @return: one line for the log.
        """
        return "clean" if self.virus is None else f"found {self.virus}"
