# -*- test-case-name: tests.access.test_imapserver -*-
"""
The IMAP commands of the not-authenticated state (RFC 3501 §6.2), as a
mixin of L{qutemail.access.imapserver.IMAPServer}: STARTTLS, LOGIN and
AUTHENTICATE PLAIN (RFC 4616, with SASL-IR, RFC 4959).

Passwords are taken only over TLS (C{NO [PRIVACYREQUIRED]} before), go
through the portal, and failed attempts are throttled with
L{qutemail.policy.throttle.AuthThrottle}: each failure is answered after
the throttle's delay, a locked-out client is refused at once, and the
log names the user tried, never the password.
"""

import base64
import binascii

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import deferLater
from twisted.mail.imap4 import IAccount

from qutemail.access.imapaccount import LoginContext
from qutemail.access.imapwire import bad, no


class AuthCommands:
    """
    The not-authenticated commands (a mixin of the server).
    """

    async def imap_STARTTLS(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        STARTTLS (RFC 3501 §6.2.1); cleartext pipelined after it is
        dropped (command injection, CVE-2011-0411).
        """
        if self.secure:
            raise bad(b"TLS is active already")
        if self.ctx is None or not self.canStartTLS:
            raise no(b"[UNAVAILABLE] TLS is not available")
        self._tagged(tag, b"OK", b"Begin TLS negotiation now")
        self.transport.startTLS(self.ctx)
        self.secure = self.startedTLS = True
        self._buffer = b""
        self._discardLines = True

    async def imap_LOGIN(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        LOGIN user password, after TLS only.
        """
        if not self.secure:
            raise no(b"[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS")
        tokens, _ = await self._arguments(rest)
        if len(tokens) != 2 or not all(isinstance(t, bytes) for t in tokens):
            raise bad(b"LOGIN needs a user name and a password")
        await self._login(tag, bytes(tokens[0]), bytes(tokens[1]))

    async def imap_AUTHENTICATE(self, tag: bytes, rest: bytes, uid: bool) -> None:
        """
        AUTHENTICATE PLAIN (RFC 4616), with an initial response or after
        an empty challenge; after TLS only.
        """
        if not self.secure:
            raise no(b"[PRIVACYREQUIRED] AUTHENTICATE is disabled before STARTTLS")
        tokens, _ = await self._arguments(rest)
        if not 1 <= len(tokens) <= 2 or not all(isinstance(t, bytes) for t in tokens):
            raise bad(b"AUTHENTICATE needs a mechanism")
        if tokens[0].upper() != b"PLAIN":
            raise no(b"Unsupported authentication mechanism")
        if len(tokens) == 2:
            response = bytes(tokens[1])
        else:
            self.sendLine(b"+ ")
            response = await self._nextLine()
        if response.strip() == b"*":
            raise bad(b"Authentication cancelled")
        try:
            decoded = base64.b64decode(b"" if response == b"=" else response.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise bad(b"Authentication data is not base64") from None
        parts = decoded.split(b"\0")
        if len(parts) != 3:
            raise bad(b"Malformed PLAIN authentication data")
        authorize, user, password = parts
        if authorize and authorize.lower() != user.lower():
            raise no(b"[AUTHORIZATIONFAILED] Acting as another user is not allowed")
        await self._login(tag, user, password)

    async def _login(self, tag: bytes, user: bytes, password: bytes) -> None:
        """
        Ask the portal; failures are answered after the throttle's delay.
        """
        factory = self.factory
        clock, throttle = factory.clock, factory.throttle
        name = user.decode("utf-8", "replace").lower()
        # The guess counts from now, before the hash (see AuthThrottle.begin).
        attempt = throttle.begin(self._peer, clock.seconds())
        if attempt is None:
            self._log.info("IMAP login refused for {peer}: locked out after failures", peer=self._peer)
            raise no(b"[UNAVAILABLE] Too many failed logins; try again later")
        mind = LoginContext(clock, factory.defaultQuotaBytes, factory.hostname)
        try:
            _, account, logout = await factory.portal.login(UsernamePassword(user, password), mind, IAccount)
        except UnauthorizedLogin:
            delay = attempt.failed(clock.seconds(), name)
            self._log.info("IMAP login failed from {peer} for {user}", peer=self._peer, user=name)
            await deferLater(clock, delay, lambda: None)
            raise no(b"[AUTHENTICATIONFAILED] Authentication failed") from None
        except Exception as e:
            # The user directory cannot say (Redis down): fail closed, for now.
            self._log.warn("IMAP login from {peer} for {user} not checked: {reason}", peer=self._peer, user=name,
                           reason=str(e) or type(e).__name__)
            raise no(b"[UNAVAILABLE] Authentication temporarily unavailable; try again later") from None
        finally:
            attempt.release()
        if self._lost:
            logout()
            return
        attempt.succeeded(account.address, name)
        self.account, self._onLogout = account, logout
        self.state = "auth"
        self.setTimeout(factory.authenticatedTimeoutSeconds)
        self._log.info("IMAP login as {user} from {peer}", user=account.address, peer=self._peer)
        self._tagged(tag, b"OK", b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in")
