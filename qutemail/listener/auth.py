# -*- test-case-name: tests.listener.test_submission -*-
"""
SMTP AUTH (RFC 4954) for the submission listeners: PLAIN (RFC 4616) and
LOGIN, checked through the twisted.cred portal, offered only once the
session is encrypted.

L{AuthMixin} is mixed into L{qutemail.listener.smtp.SMTPServer}; it uses the
session's C{reply}, C{write}, C{_error}, C{_wait} and C{_peer}, and the
session's C{portal}, C{throttle} and C{clock}.
"""

import base64
import binascii

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from qutemail import replies
from qutemail.cred import ISubmitter

MECHANISMS = (b"PLAIN", b"LOGIN")


class SASLError(ValueError):
    """
    A client response that does not decode.
    """


def decodeResponse(line: bytes) -> bytes:
    """
    Decode one base64 client response (RFC 4954 §4).

    @raise SASLError: it is not base64.
    """
    try:
        return base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("not base64")


def parsePlain(response: bytes) -> tuple[str, str]:
    """
    Split a PLAIN response (RFC 4616 §2): C{[authzid] NUL authcid NUL passwd}.

    @return: the user name and the password.
    @raise SASLError: malformed, or an authorisation identity that differs
        from the authentication identity (we do not let users act as others).
    """
    parts = response.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise SASLError("malformed PLAIN response")
    authzid, authcid, password = parts
    try:
        user = authcid.decode("utf-8")
        secret = password.decode("utf-8")
        if authzid and authzid.decode("utf-8") != user:
            raise SASLError("authorisation identity differs")
    except UnicodeDecodeError:
        raise SASLError("not UTF-8")
    return user, secret


class AuthMixin:
    """
    The AUTH command and its continuation lines.
    """

    _log = Logger()
    authenticatedAs: str | None = None
    _authStep = None

    def authOffered(self) -> bool:
        """
        Whether AUTH is offered now: on a submission listener, over TLS
        (RFC 8314 §3, RFC 6409: never a password in the clear), not yet done.
        """
        return self.portal is not None and self.startedTLS and self.authenticatedAs is None

    def do_AUTH(self, rest: bytes):
        """
        AUTH mechanism [initial-response].
        """
        if self.portal is None:
            return self._error(replies.NOT_IMPLEMENTED)
        if self.authenticatedAs is not None:
            return self._error(replies.AUTH_ALREADY)
        if not self.startedTLS:
            return self._error(replies.TLS_REQUIRED)
        if self._sender is not None:
            return self._error(replies.BAD_SEQUENCE.withText("AUTH not allowed during a mail transaction"))
        if not self.throttle.allowed(self._peer, self.clock.seconds()):
            self._log.info("AUTH refused for {peer}: locked out after failures", peer=self._peer)
            return self.reply(replies.AUTH_THROTTLED)
        words = rest.split()
        if not words or words[0].upper() not in MECHANISMS or len(words) > 2:
            return self._error(replies.AUTH_MECHANISM)
        mechanism = words[0].upper()
        initial = words[1] if len(words) == 2 else None
        if mechanism == b"PLAIN":
            if initial is None:
                return self._challenge(b"", self._plainResponse)
            return self._plainResponse(initial)
        if initial is not None:
            return self._loginUser(initial)
        return self._challenge(b"Username:", self._loginUser)

    def _challenge(self, text: bytes, step) -> None:
        """
        Send a 334 challenge; the next line from the client goes to C{step}.
        """
        self._authStep = step
        self.write(replies.authChallenge(text))

    def authLineReceived(self, line: bytes):
        """
        A continuation line: C{*} cancels (RFC 4954 §4).
        """
        step, self._authStep = self._authStep, None
        if line.strip() == b"*":
            return self.reply(replies.AUTH_ABORTED)
        return step(line)

    def _plainResponse(self, line: bytes):
        """
        The PLAIN response.
        """
        try:
            user, password = parsePlain(b"" if line.strip() == b"=" else decodeResponse(line))
        except SASLError:
            return self.reply(replies.AUTH_SYNTAX)
        return ensureDeferred(self._login(user, password))

    def _loginUser(self, line: bytes):
        """
        LOGIN's user name.
        """
        try:
            user = decodeResponse(line).decode("utf-8")
        except (SASLError, UnicodeDecodeError):
            return self.reply(replies.AUTH_SYNTAX)
        self._challenge(b"Password:", lambda reply: self._loginPassword(user, reply))

    def _loginPassword(self, user: str, line: bytes):
        """
        LOGIN's password.
        """
        try:
            password = decodeResponse(line).decode("utf-8")
        except (SASLError, UnicodeDecodeError):
            return self.reply(replies.AUTH_SYNTAX)
        return ensureDeferred(self._login(user, password))

    async def _login(self, user: str, password: str) -> None:
        """
        Ask the portal; answer 235, or 535 after a delay, or 454 when the
        client's IP is locked out (or has as many attempts in progress).
        """
        clock = self.clock
        # The guess counts from now, before the hash, so parallel guesses
        # cannot outrun the lockout.
        attempt = self.throttle.begin(self._peer, clock.seconds())
        if attempt is None:
            self._log.info("AUTH refused for {peer}: locked out after failures", peer=self._peer)
            self.reply(replies.AUTH_THROTTLED)
            return
        try:
            _, avatar, _ = await self.portal.login(UsernamePassword(user, password), None, ISubmitter)
        except UnauthorizedLogin:
            delay = attempt.failed(clock.seconds(), user.lower())
            self._log.info("AUTH failed from {peer} for {user}", peer=self._peer, user=user)
            # Slow guessing down; the session holds its input meanwhile.
            await deferLater(clock, delay, lambda: None)
            self.reply(replies.AUTH_FAILED)
            return
        except Exception as e:
            # The user directory cannot say (Redis down): fail closed, for
            # now.  No guess was made, so none is counted.
            self._log.warn("AUTH from {peer} for {user} not checked: {reason}", peer=self._peer, user=user,
                           reason=str(e) or type(e).__name__)
            self.reply(replies.AUTH_TEMPFAIL)
            return
        finally:
            # Frees the slot unless an outcome did: an error other than a
            # wrong password (a backend down) is no guess.
            attempt.release()
        attempt.succeeded(avatar.address, user.lower())
        self.authenticatedAs = avatar.address
        self._log.info("AUTH as {user} from {peer}", user=avatar.address, peer=self._peer)
        self.reply(replies.AUTH_OK)

    def inAuthExchange(self) -> bool:
        """
        Whether the next line is an AUTH continuation.
        """
        return self._authStep is not None
