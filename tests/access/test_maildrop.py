# -*- test-case-name: tests.access.test_maildrop -*-
"""
Tests for L{qutemail.access.maildrop}.  The maildrop's behaviour in
sessions (sizes, notices, DELE and QUIT) is tested through the protocol in
L{tests.access.test_pop3}.
"""

import os

from twisted.mail.pop3 import IMailbox
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.access.maildrop import POP3Realm
from qutemail.blocking import InlineRunner
from tests.access.test_pop3 import makeMailbox


class POP3RealmTests(SynchronousTestCase):
    """
    L{POP3Realm} opens an account's INBOX.
    """

    def setUp(self) -> None:
        """
        Alice's mailbox.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        self.vault, self.keyId, self.encrypted = makeMailbox(self, self.dataDir)

    def test_mailboxProvidesIMailbox(self) -> None:
        """
        The realm's avatar provides L{IMailbox}.
        """
        realm = POP3Realm(self.dataDir, self.vault, InlineRunner())
        interface, mailbox, _ = self.successResultOf(realm.requestAvatar("alice@example.test", None, IMailbox))
        self.assertIs(interface, IMailbox)
        verifyObject(IMailbox, mailbox)
