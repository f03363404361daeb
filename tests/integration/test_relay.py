"""
Outbound mail end to end (issue 5, acceptance item 1): bob submits over 587
to dave@remote.test; the server finds remote.test's exchanger through a real
DNS server on loopback, relays over STARTTLS, and the message arrives with
a DKIM signature that C{dkim.verify} accepts using the TXT record from the
same DNS server.
"""

import os

import dkim
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.pipeline.dkim import defaultKeyPath, dnsFunction, publicTXTValue
from tests.integration.support import waitFor
from tests.integration.test_mta import RunningServerMixin
from tests.relay.remote import startRemote

MESSAGE = (b"From: Bob <bob@example.test>\r\nTo: dave@remote.test\r\nSubject: signed and sent\r\n"
           b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <out-1@example.test>\r\n\r\n"
           b"Hello Dave,\r\n.a line with a leading dot\r\n\r\nBob\r\n")


class OutboundTests(RunningServerMixin, TestCase):
    """
    Submission to a remote domain, relayed and DKIM-signed.
    """

    def submitAsBob(self, recipients: list[str], message: bytes = MESSAGE):
        """
        Send a message as authenticated bob over 587 with STARTTLS.
        """
        return self.submit(lambda client: client.sendmail("bob@example.test", recipients, message))

    async def test_relayedWithValidSignature(self) -> None:
        """
        The remote receives the message once, over TLS, with a DKIM
        signature for example.test that verifies against the published key;
        a body changed after signing does not verify.
        """
        with open(defaultKeyPath(self.dataDir, "mail"), "rb") as f:
            self.dns.add("mail._domainkey.example.test", "TXT", publicTXTValue(f.read()))
        self.assertEqual(await self.submitAsBob(["dave@remote.test"]), {})
        [received] = await waitFor(lambda: self.remote.received)
        self.assertEqual((received.sender, received.recipients, received.tls),
                         ("bob@example.test", ["dave@remote.test"], True))
        self.assertTrue(received.data.startswith(b"DKIM-Signature: "), received.data[:200])
        self.assertIn(b"d=example.test", received.data.split(b"\r\n\r\n")[0])
        self.assertTrue(received.data.endswith(b"Hello Dave,\r\n.a line with a leading dot\r\n\r\nBob\r\n"))
        lookup = dnsFunction(self.dns.nameservers, 2.0)
        self.assertTrue(await deferToThread(dkim.verify, received.data, dnsfunc=lookup))
        tampered = received.data.replace(b"Hello Dave", b"Hello Eve")
        self.assertFalse(await deferToThread(dkim.verify, tampered, dnsfunc=lookup))
        await waitFor(lambda: not self.root.queue.entries)
        self.assertEqual(len(self.remote.received), 1)

    async def test_nullMXBouncesAtOnce(self) -> None:
        """
        A domain publishing a null MX (RFC 7505) bounces at once with
        5.1.10, without any connection attempt.
        """
        self.dns.add("nomail.test", "MX", (0, "."))
        self.assertEqual(await self.submitAsBob(["dave@nomail.test"]), {})
        paths = await waitFor(lambda: [p for p in _files(self.dataDir, "bob") if p])
        with open(paths[0], "rb") as f:
            report = f.read()
        self.assertIn(b"Status: 5.1.10", report)
        self.assertIn(b"Final-Recipient: rfc822; dave@nomail.test", report)
        self.assertEqual(self.remote.commands, [])


class RoutesTests(RunningServerMixin, TestCase):
    """
    C{[relay] routes}: a domain's mail goes to a fixed host and port.
    """

    async def test_routedWithoutDNS(self) -> None:
        """
        Mail for a routed domain that has no DNS records at all reaches the
        host and port of its route; other domains still go by MX.
        """
        branch = await startRemote(self)
        # The configuration ends with its [relay] section.
        with open(self.configPath, "a") as f:
            f.write(f"routes = Branch.test=127.0.0.1:{branch.port}\n")
        await self.restartServer()
        message = MESSAGE.replace(b"dave@remote.test", b"erin@branch.test")
        self.assertEqual(await self.submit(
            lambda client: client.sendmail("bob@example.test", ["erin@branch.test"], message)), {})
        [received] = await waitFor(lambda: branch.received)
        self.assertEqual((received.sender, received.recipients), ("bob@example.test", ["erin@branch.test"]))
        self.assertTrue(received.data.endswith(b"Bob\r\n"))
        self.assertEqual(await self.submit(
            lambda client: client.sendmail("bob@example.test", ["dave@remote.test"], MESSAGE)), {})
        await waitFor(lambda: self.remote.received)
        self.assertEqual(len(branch.received), 1)


def _files(dataDir: str, user: str) -> list[str]:
    """
    @return: the files in a local user's C{new/}.
    """
    new = os.path.join(dataDir, "mail", "example.test", user, "new")
    return [os.path.join(new, n) for n in os.listdir(new)] if os.path.isdir(new) else []
