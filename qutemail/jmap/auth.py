# -*- test-case-name: tests.jmap.test_security -*-
"""
HTTP Basic authentication (RFC 7617) of JMAP requests, over TLS only,
through the IMAP portal (L{qutemail.access.imapaccount.imapPortal}: the
same checker, the same realm and avatar), with the same failed-login
throttle and lockout (L{qutemail.policy.throttle.AuthThrottle}) as IMAP
and POP3: each failure is answered after the throttle's delay; a client
that is locked out gets C{429} without its password being checked.

No cookies: every request carries its credentials, so a page of another
site cannot make a browser act on the API (CSRF).  To spare a password
hash per request, a correct password is remembered for
L{CACHE_SECONDS} as a keyed digest of the credentials (never the
password itself); a wrong one is never remembered.
"""

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

import attrs
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.mail.imap4 import IAccount

from qutemail.access.imapaccount import LoginContext

CACHE_SECONDS = 60.0
_MAX_CACHED = 10_000


class NotAuthenticated(Exception):
    """
    The request is not authenticated.

    @ivar status: C{401} (no or wrong credentials), C{429} (locked out) or
        C{503} (the user directory cannot say now).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def basicCredentials(header: bytes | None) -> tuple[bytes, bytes] | None:
    """
    @return: the user and password of a C{Basic} Authorization header, or
        C{None} when there is none or it is malformed.
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon or not user:
        return None
    return user, password


@attrs.define(eq=False)
class BasicAuthenticator:
    """
    Authenticates requests.

    @ivar portal: the IMAP portal.
    @ivar throttle: the L{qutemail.policy.throttle.AuthThrottle} IMAP uses.
    @ivar clock: an C{IReactorTime}.
    @ivar defaultQuotaBytes: the quota of accounts without their own.
    @ivar hostname: this server's name.
    """

    _log = Logger()

    portal: Any
    throttle: Any
    clock: Any
    defaultQuotaBytes: int = 0
    hostname: str = "localhost"
    _secret: bytes = attrs.field(factory=lambda: os.urandom(32))
    _cache: dict = attrs.field(factory=dict)

    def _key(self, user: bytes, password: bytes) -> bytes:
        """
        @return: the cache key of a pair of credentials.
        """
        return hmac.new(self._secret, user.lower() + b"\0" + password, hashlib.sha256).digest()

    async def authenticate(self, header: bytes | None, peer: str) -> tuple[Any, Any]:
        """
        @param header: the C{Authorization} header.
        @param peer: the client's IP address.
        @return: the account's avatar (an IMAP account) and its logout.
        @raise NotAuthenticated: see its statuses.
        """
        credentials = basicCredentials(header)
        if credentials is None:
            raise NotAuthenticated(401, "HTTP Basic credentials are required")
        user, password = credentials
        mind = LoginContext(self.clock, self.defaultQuotaBytes, self.hostname)
        key = self._key(user, password)
        now = self.clock.seconds()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            try:
                _, avatar, logout = await self.portal.realm.requestAvatar(cached[1], mind, IAccount)
                return avatar, logout
            except UnauthorizedLogin:
                self._cache.pop(key, None)
        name = user.decode("utf-8", "replace").lower()
        attempt = self.throttle.begin(peer, now)
        if attempt is None:
            self._log.info("JMAP login refused for {peer}: locked out after failures", peer=peer)
            raise NotAuthenticated(429, "too many failed logins; try again later")
        try:
            _, avatar, logout = await self.portal.login(UsernamePassword(user, password), mind, IAccount)
        except UnauthorizedLogin:
            delay = attempt.failed(self.clock.seconds(), name)
            self._log.info("JMAP login failed from {peer} for {user}", peer=peer, user=name)
            await deferLater(self.clock, delay, lambda: None)
            raise NotAuthenticated(401, "authentication failed") from None
        except Exception as e:
            self._log.warn("JMAP login from {peer} for {user} not checked: {reason}", peer=peer, user=name,
                           reason=str(e) or type(e).__name__)
            raise NotAuthenticated(503, "authentication temporarily unavailable; try again later") from None
        finally:
            attempt.release()
        attempt.succeeded(avatar.address, name)
        if len(self._cache) >= _MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + CACHE_SECONDS, avatar.address)
        return avatar, logout
