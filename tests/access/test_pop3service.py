"""
POP3 through the whole server (issue 6, in part): bob submits to alice over
587; alice's Maildir holds ciphertext; alice reads the message with Python's
poplib over STLS and over implicit TLS, byte for byte as bob sent it apart
from the trace fields.
"""

import poplib

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, insecureContext, maildirFiles, waitFor
from tests.integration.test_mta import RunningServerMixin

SENT = (b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: over POP3\r\n"
        b"Message-ID: <pop-1@example.test>\r\n\r\nfirst line\r\n.a dotted line\r\n\r\nlast line\r\n")


class POP3ServiceTests(RunningServerMixin, TestCase):
    """
    The POP3 listeners of the service tree.
    """

    async def test_readEncryptedMail(self) -> None:
        """
        After STLS, alice lists, gets a stable UIDL and retrieves the
        message decrypted; USER before STLS is refused; the implicit-TLS
        port serves the same; the stored file is ciphertext.
        """

        await self.submit(lambda c: c.sendmail("bob@example.test", ["alice@example.test"], SENT))
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            self.assertNotIn(b"a dotted line", f.read())

        def session(implicit: bool):
            if implicit:
                client = poplib.POP3_SSL("127.0.0.1", self.ports["pop3s"], timeout=CLIENT_TIMEOUT,
                                         context=insecureContext())
                refused = None
            else:
                client = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=CLIENT_TIMEOUT)
                try:
                    client.user("alice@example.test")
                    refused = None
                except poplib.error_proto as e:
                    refused = e.args[0]
                client.stls(context=insecureContext())
            client.user("alice@example.test")
            client.pass_("pw-alice")
            uidl = client.uidl()[1]
            _, lines, _ = client.retr(1)
            client.quit()
            return refused, uidl, b"\r\n".join(lines) + b"\r\n"

        refused, uidl, message = await deferToThread(session, False)
        self.assertTrue(refused.startswith(b"-ERR"), refused)
        self.assertTrue(message.endswith(SENT), message[:300])
        self.assertTrue(message.startswith(b"Received: from "), message[:100])
        _, uidlAgain, messageAgain = await deferToThread(session, True)
        self.assertEqual((uidlAgain, messageAgain), (uidl, message))
