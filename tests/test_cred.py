# -*- test-case-name: tests.test_cred -*-
"""
Tests for L{qutemail.cred}: a real L{Portal} with L{MailRealm} and
L{UserDirectoryChecker}.
"""

import os
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryUserDirectory
from qutemail.backends.userfile import FileUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.cred import BAD_CREDENTIALS, MailRealm, UserDirectoryChecker

PASSWORD = b"s3cret"


class IFirst(Interface):
    """
    An avatar interface the test factory serves.
    """


class ISecond(Interface):
    """
    Another avatar interface the test factory serves.
    """


class IUnserved(Interface):
    """
    An avatar interface the test factory never serves.
    """


class PortalTests(SynchronousTestCase):
    """
    Logging in through a portal over a user directory.
    """

    def setUp(self) -> None:
        """
        A directory with one account, and a portal whose avatar factory
        records what it is asked for.
        """
        self.directory = MemoryUserDirectory()
        self.successResultOf(self.directory.addUser("bob@example.test", PASSWORD))
        self.requests: list[tuple[str, Any]] = []
        self.portal = Portal(MailRealm(self.avatarFactory), [UserDirectoryChecker(self.directory)])

    def avatarFactory(self, avatarId: str, interface: Any) -> Any:
        """
        Serve L{IFirst} and L{ISecond} avatars, which are C{(id, interface)}.
        """
        self.requests.append((avatarId, interface))
        if interface in (IFirst, ISecond):
            return (avatarId, interface)
        return None

    def login(self, username: Any, password: Any, *interfaces: Any) -> Any:
        """
        @return: the Deferred of a portal login.
        """
        return self.portal.login(UsernamePassword(username, password), None, *(interfaces or (IFirst,)))

    def test_interfaces(self) -> None:
        """
        The checker and the realm provide their cred interfaces.
        """
        self.assertTrue(verifyObject(ICredentialsChecker, UserDirectoryChecker(self.directory)))
        self.assertTrue(verifyObject(IRealm, MailRealm(self.avatarFactory)))

    def test_checkerNeedsDirectory(self) -> None:
        """
        The checker refuses anything that is not a user directory.
        """
        self.assertRaises(TypeError, UserDirectoryChecker, object())

    def test_rightPassword(self) -> None:
        """
        The right password logs in with the normalised address as the
        avatar id, whatever the case of the username.
        """
        interface, avatar, logout = self.successResultOf(self.login(b"Bob@EXAMPLE.test", PASSWORD))
        self.assertIs(interface, IFirst)
        self.assertEqual(avatar, ("bob@example.test", IFirst))
        self.assertIsInstance(avatar[0], str)
        self.assertIsNone(logout())

    def test_textCredentials(self) -> None:
        """
        Usernames and passwords given as text work too.
        """
        _, avatar, _ = self.successResultOf(self.login("bob@example.test", PASSWORD.decode()))
        self.assertEqual(avatar[0], "bob@example.test")

    def test_wrongPassword(self) -> None:
        """
        A wrong password fails with L{UnauthorizedLogin} and asks the realm
        for nothing.
        """
        failure = self.failureResultOf(self.login(b"bob@example.test", b"wrong"), UnauthorizedLogin)
        self.assertEqual(str(failure.value), BAD_CREDENTIALS)
        self.assertEqual(self.requests, [])

    def test_unknownUser(self) -> None:
        """
        An unknown user fails exactly as a wrong password does.
        """
        failure = self.failureResultOf(self.login(b"eve@example.test", PASSWORD), UnauthorizedLogin)
        self.assertEqual(str(failure.value), BAD_CREDENTIALS)

    def test_invalidUsername(self) -> None:
        """
        A username that is not an address, or not UTF-8, fails with
        L{UnauthorizedLogin}.
        """
        for username in [b"bob", b"", b"bob@@example.test", b"\xff@example.test", b"a/b@example.test"]:
            failure = self.failureResultOf(self.login(username, PASSWORD), UnauthorizedLogin)
            self.assertEqual(str(failure.value), BAD_CREDENTIALS)

    def test_firstServedInterface(self) -> None:
        """
        The realm answers with the first requested interface the factory
        serves, asking about them in order.
        """
        interface, avatar, _ = self.successResultOf(
            self.login(b"bob@example.test", PASSWORD, IUnserved, ISecond, IFirst)
        )
        self.assertIs(interface, ISecond)
        self.assertEqual(self.requests, [("bob@example.test", IUnserved), ("bob@example.test", ISecond)])

    def test_noServedInterface(self) -> None:
        """
        When the factory serves none of the requested interfaces, the login
        fails with L{NotImplementedError}.
        """
        self.failureResultOf(self.login(b"bob@example.test", PASSWORD, IUnserved), NotImplementedError)


class FileDirectoryPortalTests(SynchronousTestCase):
    """
    The checker over the file-backed directory.
    """

    def test_login(self) -> None:
        """
        An account in the user file logs in with its password only.
        """
        directory = FileUserDirectory(os.path.join(self.mktemp(), "users"), InlineRunner(), Clock(), workFactor=4)
        self.successResultOf(directory.addUser("bob@example.test", PASSWORD))
        portal = Portal(MailRealm(lambda avatarId, interface: avatarId), [UserDirectoryChecker(directory)])
        _, avatar, _ = self.successResultOf(
            portal.login(UsernamePassword(b"BOB@example.test", PASSWORD), None, IFirst)
        )
        self.assertEqual(avatar, "bob@example.test")
        self.failureResultOf(
            portal.login(UsernamePassword(b"bob@example.test", b"nope"), None, IFirst), UnauthorizedLogin
        )
        self.failureResultOf(
            portal.login(UsernamePassword(b"eve@example.test", PASSWORD), None, IFirst), UnauthorizedLogin
        )
