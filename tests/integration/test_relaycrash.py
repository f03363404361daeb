"""
Issue 5, acceptance item 5: C{kill -9} of the real server in the middle of
a relay session; after a restart the message reaches each recipient exactly
once.
"""

import os
import smtplib
import time

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.dnsserver import startDNSServer
from tests.integration.support import (
    CLIENT_TIMEOUT,
    REMOTE_ZONE,
    ServerProcess,
    freePort,
    insecureContext,
    relaySection,
    runCLI,
    waitFor,
    writeConfig,
)
from tests.relay.remote import Script, startRemote


class RelayCrashTests(TestCase):
    """
    The queue entry of a message being relayed survives SIGKILL.
    """

    timeout = 120

    async def test_killNineMidSession(self) -> None:
        """
        The remote holds its reply to RCPT; the server is killed with
        SIGKILL meanwhile; after a restart the message is relayed again, and
        each recipient gets it exactly once.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        dataDir = os.path.join(base, "var")
        dns = await startDNSServer(self, REMOTE_ZONE)
        hold = Deferred()
        remote = await startRemote(self, Script(holdRcpt=hold))
        port, submission = freePort(), freePort()
        config = writeConfig(os.path.join(base, "qutemail.ini"), dataDir, mtaPort=port,
                             submissionPort=submission, extra=relaySection(dns, remote))
        added = await deferToThread(runCLI, config, "user", "add", "bob@example.test", "--password-stdin",
                                    stdin="pw-bob\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        server = ServerProcess(config, os.path.join(base, "twistd.log"), port)
        self.addCleanup(server.kill)
        await deferToThread(server.start)

        def submit():
            client = smtplib.SMTP("127.0.0.1", submission, local_hostname="client.test", timeout=CLIENT_TIMEOUT)
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw-bob")
            result = client.sendmail("bob@example.test", ["dave@remote.test", "erin@remote.test"],
                                     b"From: bob@example.test\r\nSubject: crash\r\n\r\nonce only\r\n")
            client.quit()
            return result

        self.assertEqual(await deferToThread(submit), {})
        await waitFor(lambda: any(c.startswith(b"RCPT") for c in remote.commands))
        await deferToThread(server.kill)
        await waitFor(lambda: not remote.connections)
        self.assertEqual(remote.received, [])

        remote.script.holdRcpt = None
        restarted = ServerProcess(config, os.path.join(base, "twistd.log"), port)
        self.addCleanup(restarted.kill)
        await deferToThread(restarted.start)
        await waitFor(lambda: remote.received)
        # Room for a duplicate to show up, if there were one.
        await deferToThread(time.sleep, 1.5)
        delivered = sorted(r for message in remote.received for r in message.recipients)
        self.assertEqual(delivered, ["dave@remote.test", "erin@remote.test"])
        self.assertTrue(all(m.data.endswith(b"\r\n\r\nonce only\r\n") for m in remote.received))
        listing = await deferToThread(runCLI, config, "queue", "list")
        self.assertEqual(listing.stdout, "queue is empty\n")
        hold.callback(None)
