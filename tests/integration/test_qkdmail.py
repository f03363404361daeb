"""
Internal mail through the whole server (issue 4): submitted over 587,
sealed with keys from the embedded KME, stored encrypted, read back by the
owner; mail from outside stays as it came.
"""

import email

from twisted.trial.unittest import TestCase

from qutemail.qkd.cipher import readEnvelope
from tests.integration.support import maildirFiles, readAsOwner, waitFor
from tests.integration.test_mta import RunningServerMixin
from tests.listener.test_submission import insecureContext

COUNT = 200


class InternalMailTests(RunningServerMixin, TestCase):
    """
    Two hundred internal messages, each with its own key.
    """

    timeout = 120
    configExtra = "\n[qkd]\npool_keys = 500\nrefill_per_second = 0\n"

    async def poolCount(self) -> int:
        """
        @return: the embedded KME's stored key count, asked over ETSI 014.
        """
        source = self.root.getServiceNamed("qkd-client").source
        return (await source.status("mail.example.test")).storedKeyCount

    async def test_twoHundredDistinctKeys(self) -> None:
        """
        Bob sends alice 200 messages over 587: 200 stored files, each
        multipart/encrypted with no plaintext line, 200 distinct key ids,
        the KME pool 200 keys smaller, and each reads back as sent.
        """
        before = await self.poolCount()

        def send(client):
            for i in range(COUNT):
                client.sendmail("bob@example.test", ["alice@example.test"],
                                b"From: bob@example.test\r\nSubject: secret %d\r\n\r\nconfidential body %d\r\n"
                                % (i, i))

        def prepare(client):
            client.ehlo()
            client.starttls(context=insecureContext())
            client.ehlo()
            client.login("bob@example.test", "pw-bob")

        await self.smtp(send, self.ports["submission"], prepare)
        paths = await waitFor(lambda: (lambda p: p if len(p) >= COUNT else None)(
            maildirFiles(self.dataDir, "alice@example.test")))
        self.assertEqual(len(paths), COUNT)
        keyIds = set()
        seen = set()
        for path in paths:
            with open(path, "rb") as f:
                stored = f.read()
            self.assertEqual(email.message_from_bytes(stored).get_content_type(), "multipart/encrypted")
            self.assertNotIn(b"confidential", stored)
            self.assertNotIn(b"Subject: secret", stored)
            with open(path, "rb") as f:
                keyIds.add(readEnvelope(f).keyId)
            plain = await readAsOwner(self.dataDir, path)
            self.assertIn(b"\nSubject: secret ", plain)
            seen.add(int(plain.split(b"confidential body ")[1].split(b"\n")[0]))
        self.assertEqual(len(keyIds), COUNT)
        self.assertEqual(seen, set(range(COUNT)))
        self.assertEqual(before - await self.poolCount(), COUNT)

    async def test_fromOutsideInClear(self) -> None:
        """
        A message from outside (port 25) to alice is stored as it came,
        apart from the trace headers.
        """
        body = b"From: x@remote.test\r\nSubject: hello from outside\r\n\r\nplain words\r\n"
        await self.smtp(lambda client: client.sendmail("x@remote.test", ["alice@example.test"], body))
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            stored = f.read()
        self.assertTrue(stored.endswith(body.replace(b"\r\n", b"\n")))
        self.assertTrue(stored.startswith(b"Return-Path: <x@remote.test>\nReceived: "))
