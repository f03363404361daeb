"""
Tests for L{qutemail.pipeline.signing}.
"""

import os

import dkim
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from qutemail.blocking import InlineRunner
from qutemail.pipeline.dkim import FileDKIMKeys, defaultKeyPath, publicTXTValue
from qutemail.pipeline.signing import OutboundSigner, ensureKey
from qutemail.message import Envelope, SpooledMessage

BODY = b"From: bob@example.test\nTo: dave@remote.test\nSubject: s\n\nbody\n"


class SignerTests(SynchronousTestCase):
    """
    L{OutboundSigner} signs mail from our domains with the key on disk.
    """

    def setUp(self):
        """
        A data directory whose default key L{ensureKey} creates.
        """
        self.dataDir = self.mktemp()
        self.records = ensureKey(self.dataDir, "", "mail", ("example.test",))
        keys = FileDKIMKeys.fromConfig(_DKIM, self.dataDir, ("example.test",), InlineRunner())
        self.signer = OutboundSigner(keys, InlineRunner(), ("example.test",), 1024 * 1024)

    def header(self, sender: str, body: bytes = BODY) -> str:
        """
        @return: the signer's header for a message from C{sender}.
        """
        message = SpooledMessage("Q1", Envelope(sender, ("dave@remote.test",)), len(body), inline=body)
        return self.successResultOf(ensureDeferred(self.signer.headerFor(message)))

    def test_keyCreatedOnce(self):
        """
        The first call creates a 0600 key and returns its TXT record; the
        next one leaves it alone.
        """
        path = defaultKeyPath(self.dataDir, "mail")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertIn("mail._domainkey.example.test.", self.records)
        self.assertIsNone(ensureKey(self.dataDir, "", "mail", ("example.test",)))
        self.assertIsNone(ensureKey(self.dataDir, "/configured.pem", "mail", ("example.test",)))

    def test_signsOurs(self):
        """
        A message from one of our domains gets a signature that verifies.
        """
        header = self.header("bob@example.test")
        with open(defaultKeyPath(self.dataDir, "mail"), "rb") as f:
            txt = publicTXTValue(f.read()).encode()
        self.assertTrue(dkim.verify(header.encode() + BODY, dnsfunc=lambda name, timeout=5: txt))

    def test_foreignAndNullUnsigned(self):
        """
        Bounces (null sender) and foreign senders go unsigned.
        """
        self.assertEqual(self.header(""), "")
        self.assertEqual(self.header("x@remote.test"), "")

    def test_failureUnsigned(self):
        """
        A message dkimpy cannot sign (no From) goes unsigned, with a log
        line, rather than failing.
        """
        self.assertEqual(self.header("bob@example.test", b"Subject: no from\n\nx\n"), "")


class _DKIM:
    """
    The C{[dkim]} section's defaults.
    """

    selector = "mail"
    privateKey = ""
