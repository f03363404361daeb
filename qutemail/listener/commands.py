# -*- test-case-name: tests.listener.test_smtp -*-
"""
The SMTP commands that set up or look after a session rather than carry a
message: EHLO and HELO (and the extensions EHLO lists), STARTTLS, NOOP,
RSET, QUIT, VRFY and HELP.

L{SessionCommands} is mixed into L{qutemail.listener.smtp.SMTPServer}; it
uses the session's C{reply}, C{write}, C{_error}, C{_abortTransaction},
C{_buffer}, C{_peer}, C{settings} and TLS state.
"""

from qutemail import replies
from qutemail.listener.auth import MECHANISMS


class SessionCommands:
    """
    Session-level SMTP commands (RFC 5321 §4.1.1, RFC 3207).
    """

    def extensions(self) -> dict:
        """
        The EHLO keywords (RFC 5321 §4.1.1.1).
        """
        ext: dict[bytes, list[bytes] | None] = {
            b"PIPELINING": None,
            b"SIZE": [b"%d" % self.settings.maxMessageBytes],
            b"8BITMIME": None,
            b"ENHANCEDSTATUSCODES": None,
        }
        if self.canStartTLS and not self.startedTLS:
            ext[b"STARTTLS"] = None
        if self.authOffered():
            ext[b"AUTH"] = list(MECHANISMS)
        return ext

    def do_STARTTLS(self, rest: bytes) -> None:
        """
        STARTTLS (RFC 3207).
        """
        if rest.strip():
            return self._error(replies.BAD_ARGUMENTS.withText("STARTTLS takes no parameters"))
        if self.startedTLS:
            return self._error(replies.BAD_SEQUENCE.withText("TLS already active"))
        if self._heloName is None:
            return self._error(replies.NEED_HELO)
        # CVE-2011-0411: whatever the client pipelined after STARTTLS came in
        # the clear and must never run once the session is protected.
        self._buffer = b""
        # RFC 3207 §4.2: the server forgets everything it learnt before TLS.
        self._heloName = None
        self._esmtp = False
        self._abortTransaction()
        self.reply(replies.GO_AHEAD_TLS)
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    def do_EHLO(self, rest: bytes) -> None:
        """
        EHLO: greet and list extensions; resets any transaction.
        """
        if not self._hello(rest, True, "EHLO needs a domain or address literal"):
            return
        lines = [self.host + b" Hello " + self._peer.encode("ascii")]
        for keyword, args in self.extensions().items():
            lines.append(keyword + (b" " + b" ".join(args) if args else b""))
        # One write for the whole multi-line reply: one syscall, one segment.
        self.write(b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n")

    def do_HELO(self, rest: bytes) -> None:
        """
        HELO: greet; resets any transaction.
        """
        if self._hello(rest, False, "HELO needs a domain"):
            self.write(b"250 " + self.host + b"\r\n")

    def _hello(self, rest: bytes, esmtp: bool, missing: str) -> bool:
        """
        What EHLO and HELO share: note the client's name and the protocol,
        and reset any transaction.

        @param missing: the reply text when no name was given.
        @return: whether the greeting may go out.
        """
        if not rest.strip():
            self._error(replies.BAD_ARGUMENTS.withText(missing))
            return False
        self._heloName = rest.strip().decode("ascii", "replace")
        self._esmtp = esmtp
        self._abortTransaction()
        return True

    def do_NOOP(self, rest: bytes) -> None:
        """
        NOOP (RFC 5321 §4.1.1.9).
        """
        self.reply(replies.NOOP)

    def do_RSET(self, rest: bytes) -> None:
        """
        RSET: abandon the transaction (RFC 5321 §4.1.1.5).
        """
        self._abortTransaction()
        self.reply(replies.RESET)

    def do_QUIT(self, rest: bytes) -> None:
        """
        QUIT: say goodbye and close.
        """
        self.reply(replies.BYE)
        self.transport.loseConnection()

    def do_VRFY(self, rest: bytes) -> None:
        """
        VRFY: never disclose accounts (RFC 5321 §7.3).
        """
        self.reply(replies.VRFY_CANNOT)

    def do_HELP(self, rest: bytes) -> None:
        """
        HELP.
        """
        self.reply(replies.HELP)
