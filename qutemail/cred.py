# -*- test-case-name: tests.test_cred -*-
"""
twisted.cred glue over an L{IUserDirectory}, shared by the SMTP AUTH, IMAP4
and POP3 listeners.

L{UserDirectoryChecker} turns a username and password into an avatar id: the
account's normalised address, a C{str}.  L{MailRealm} turns that id into
whatever avatar the protocol asks for, through a factory each listener
supplies.
"""

from typing import Any, Callable

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from qutemail.address import AddressInvalid, parseAccountAddress
from qutemail.interfaces import IUserDirectory

# One message for every refusal, so a client cannot tell an unknown user
# from a wrong password.
BAD_CREDENTIALS = "bad credentials"


class ISubmitter(Interface):
    """
    The avatar of a user authenticated for submission (SMTP AUTH).
    """

    address = Attribute("the account's normalised address, C{local@domain}")


def _text(value: str | bytes) -> str:
    """
    @return: C{value} as text.
    @raise UnicodeDecodeError: it is bytes that are not UTF-8.
    """
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _bytes(value: str | bytes) -> bytes:
    """
    @return: C{value} as bytes, UTF-8 encoded if it was text.
    """
    return value.encode("utf-8") if isinstance(value, str) else value


def _providesDirectory(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """
    attrs validator: C{value} must provide L{IUserDirectory}.
    """
    if not IUserDirectory.providedBy(value):
        raise TypeError(f"{attribute.name} must provide IUserDirectory, not {value!r}")


@implementer(ICredentialsChecker)
@attrs.define
class UserDirectoryChecker:
    """
    Checks usernames and passwords against a user directory.

    @ivar directory: the accounts.
    """

    _log = Logger()
    credentialInterfaces = (IUsernamePassword,)

    directory: Any = attrs.field(validator=_providesDirectory)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred:
        """
        See L{ICredentialsChecker.requestAvatarId}.

        @param credentials: the username (an address, in any case) and the
            password, as C{bytes} or C{str}.
        @return: a Deferred firing with the normalised address, or failing
            with L{UnauthorizedLogin} when the username is not an address,
            there is no such account, or the password is wrong.
        """
        return Deferred.fromCoroutine(self._requestAvatarId(credentials))

    async def _requestAvatarId(self, credentials: IUsernamePassword) -> str:
        """
        See L{requestAvatarId}.
        """
        try:
            address = str(parseAccountAddress(_text(credentials.username)))
        except (UnicodeDecodeError, AddressInvalid):
            self._log.info("authentication refused: the username is not an address")
            raise UnauthorizedLogin(BAD_CREDENTIALS) from None
        account = await self.directory.checkPassword(address, _bytes(credentials.password))
        if account is None:
            self._log.info("authentication failed for {address}", address=address)
            raise UnauthorizedLogin(BAD_CREDENTIALS)
        return account.address


def _logout() -> None:
    """
    Nothing to release when a session ends.
    """


@implementer(IRealm)
@attrs.define
class MailRealm:
    """
    Gives each protocol the avatar it asks for.

    @ivar avatarFactory: called with the avatar id and one requested
        interface; returns an avatar providing it, or C{None} when it cannot.
    """

    avatarFactory: Callable[[str, type[Interface]], Any]

    def requestAvatar(self, avatarId: str, mind: Any, *interfaces: type[Interface]) -> tuple:
        """
        See L{IRealm.requestAvatar}.

        @return: C{(interface, avatar, logout)} for the first interface,
            in the order requested, that the factory gives an avatar for.
        @raise NotImplementedError: the factory gives none.
        """
        for interface in interfaces:
            avatar = self.avatarFactory(avatarId, interface)
            if avatar is not None:
                return interface, avatar, _logout
        raise NotImplementedError(
            f"no avatar for {', '.join(i.__name__ for i in interfaces) or 'no interface'}"
        )


@implementer(ISubmitter)
@attrs.frozen
class Submitter:
    """
    The avatar of a user authenticated for submission.

    @ivar address: the account's normalised address.
    """

    address: str


def submitterFactory(avatarId: str, interface: type[Interface]) -> Any:
    """
    The L{MailRealm} avatar factory of the submission listeners.

    @return: a L{Submitter} for L{ISubmitter}, else C{None}.
    """
    return Submitter(avatarId) if interface is ISubmitter else None
