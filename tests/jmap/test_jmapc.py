# -*- test-case-name: tests.jmap.test_jmapc -*-
"""
Acceptance of issue 16 with a third-party client: jmapc (PyPI), run in a
thread against the whole server over HTTPS, trusting the test CA (no
verification is turned off).  It fetches the session, lists mailboxes,
queries and gets the newest email, reads an internal message's text
decrypted, sets C{$seen}, and sends a message with EmailSubmission/set
that lands encrypted in the recipient's Maildir.
"""

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import maildirFiles, readAsOwner, waitFor
from tests.jmap.support import JMAPServerMixin
from tests.support import requireInstalled

try:
    import jmapc
    from jmapc.methods import (
        EmailGet, EmailQuery, EmailSet, EmailSubmissionSet, IdentityGet, MailboxGet,
    )
except ImportError:  # the "test" extra installs it
    jmapc = None

SECRET = (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: for alice only\r\n\r\n"
          b"Decrypted for its owner by the server.\r\n")


class JmapcTests(JMAPServerMixin, TestCase):
    """
    jmapc drives the JMAP listener.
    """

    def setUp(self):
        """
        Fail under CI (skip elsewhere) without jmapc, else start the server.
        """
        requireInstalled(self, jmapc is not None, "jmapc", "pip install -e '.[test]'")
        return JMAPServerMixin.setUp(self)

    def client(self, user: str = "alice") -> "jmapc.Client":
        """
        @return: a jmapc client that verifies the server against the test
            CA.
        """
        client = jmapc.Client.create_with_password(host=f"127.0.0.1:{self.ports['jmap']}",
                                                   user=f"{user}@example.test", password=f"pw-{user}")
        # requests lets REQUESTS_CA_BUNDLE from the environment replace a
        # session's own verify: take nothing from the environment.
        client.requests_session.trust_env = False
        client.requests_session.verify = self.caPath
        return client

    async def test_readAndSend(self):
        """
        The whole acceptance scenario.
        """
        await self.submitSMTP(SECRET)
        [stored] = await self.waitForMessages(1)
        with open(stored, "rb") as f:
            self.assertNotIn(b"Decrypted for its owner", f.read())

        def read():
            client = self.client()
            session = client.jmap_session
            boxes = client.request(MailboxGet(ids=None)).data
            inbox = next(b for b in boxes if b.role == "inbox")
            responses = client.request([
                EmailQuery(filter=jmapc.EmailQueryFilterCondition(in_mailbox=inbox.id),
                           sort=[jmapc.Comparator(property="receivedAt", is_ascending=False)], limit=1),
                EmailGet(ids=jmapc.Ref("/ids"), fetch_text_body_values=True,
                         properties=["subject", "from", "textBody", "bodyValues", "keywords"]),
            ], raise_errors=True)
            [email] = responses[1].response.data
            seen = client.request(EmailSet(update={email.id: {"keywords/$seen": True}}), raise_errors=True)
            return session, boxes, inbox, email, seen

        session, boxes, inbox, email, seen = await deferToThread(read)
        self.assertEqual(session.username, "alice@example.test")
        self.assertEqual({b.role for b in boxes} >= {"inbox", "sent", "drafts", "trash"}, True)
        self.assertEqual(email.subject, "for alice only")
        self.assertEqual(email.mail_from[0].email, "bob@example.test")
        text = email.body_values[email.text_body[0].part_id].value
        self.assertIn("Decrypted for its owner by the server.", text)
        self.assertEqual(seen.updated, {email.id: None})
        flags = await self.imap(lambda c: (c.select("INBOX"), c.fetch("1", "(FLAGS)"))[1][1])
        self.assertIn(b"\\Seen", flags[0])

        def send():
            client = self.client()
            drafts = next(b for b in client.request(MailboxGet(ids=None)).data if b.role == "drafts")
            identity = client.request(IdentityGet()).data[0]
            return client.request([
                EmailSet(create={"draft": jmapc.Email(
                    mail_from=[jmapc.EmailAddress(name="Alice", email="alice@example.test")],
                    to=[jmapc.EmailAddress(name="Bob", email="bob@example.test")],
                    subject="Sent by jmapc", keywords={"$draft": True}, mailbox_ids={drafts.id: True},
                    body_values={"body": jmapc.EmailBodyValue(value="Hello Bob, from jmapc.")},
                    text_body=[jmapc.EmailBodyPart(part_id="body", type="text/plain")])}),
                EmailSubmissionSet(on_success_destroy_email=["#emailToSend"], create={"emailToSend": (
                    jmapc.EmailSubmission(email_id="#draft", identity_id=identity.id, envelope=jmapc.Envelope(
                        mail_from=jmapc.Address(email="alice@example.test"),
                        rcpt_to=[jmapc.Address(email="bob@example.test")])))}),
            ], raise_errors=True)

        responses = await deferToThread(send)
        submitted = responses[1].response
        self.assertIn("emailToSend", submitted.created)
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "bob@example.test"), timeout=20)
        with open(path, "rb") as f:
            ciphertext = f.read()
        self.assertIn(b"multipart/encrypted", ciphertext)
        self.assertNotIn(b"from jmapc", ciphertext)
        self.assertIn(b"Hello Bob, from jmapc.", await readAsOwner(self.dataDir, path))
        # onSuccessDestroyEmail removed the draft.
        drafts = (await self.mailboxes())["drafts"]
        self.assertEqual((await self.call("Email/query", {"filter": {"inMailbox": drafts}}))["ids"], [])
