# -*- test-case-name: tests.jmap.test_submission -*-
"""
Internal (encrypted at rest) mail read through JMAP, and sending with
EmailSubmission/set through the intake: the recipient's copy is
encrypted, the sender rules and the From check hold, and the
onSuccess* changes apply.
"""

import os

from twisted.trial.unittest import TestCase

from qutemail.qkd.cipher import readEnvelope
from tests.integration.support import maildirFiles, readAsOwner, waitFor
from tests.jmap.support import JMAPServerMixin

SECRET = (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: internal secret\r\n\r\n"
          b"The plaintext body of an internal message.\r\n")


class EncryptedReadingTests(JMAPServerMixin, TestCase):
    """
    Mail between our users is stored encrypted and shown decrypted to its
    owner.
    """

    async def test_decryptedForOwner(self):
        """
        An internal message is ciphertext on disk; Email/get shows its
        plaintext body and its QKD key id; once the key is erased it shows
        the notice IMAP shows.
        """
        await self.submitSMTP(SECRET)
        [path] = await self.waitForMessages(1)
        with open(path, "rb") as f:
            stored = f.read()
            f.seek(0)
            keyId = readEnvelope(f).keyId
        self.assertNotIn(b"plaintext body", stored)
        [emailId] = (await self.call("Email/query", {}))["ids"]
        got = await self.call("Email/get", {"ids": [emailId], "fetchTextBodyValues": True,
                                            "properties": ["subject", "bodyValues", "qutemailQkd", "preview"]})
        [email] = got["list"]
        self.assertEqual(email["subject"], "internal secret")
        self.assertEqual(email["qutemailQkd"], {"keyId": keyId, "mode": "at-rest"})
        self.assertIn("The plaintext body of an internal message.", list(email["bodyValues"].values())[0]["value"])
        os.unlink(os.path.join(self.dataDir, "keys", "vault", keyId + ".key"))
        # A new request reads again (nothing is cached across requests).
        again = await self.call("Email/get", {"ids": [emailId], "fetchTextBodyValues": True,
                                              "properties": ["subject", "bodyValues", "qutemailQkd"]})
        [email] = again["list"]
        self.assertEqual(email["subject"], "[QutEmail] unreadable message")
        self.assertIn("cannot be shown", list(email["bodyValues"].values())[0]["value"])
        self.assertEqual(email["qutemailQkd"]["keyId"], keyId)
        imap = await self.imap(lambda c: (c.select("INBOX"), c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))[1][1])
        self.assertIn(b"[QutEmail] unreadable message", imap[0][1])
        self.flushLoggedErrors()


class SubmissionTests(JMAPServerMixin, TestCase):
    """
    EmailSubmission/set.
    """

    async def draft(self, user: str = "alice", sender: str = "alice@example.test",
                    to: str = "bob@example.test", body: str = "Sent over JMAP") -> tuple[str, dict]:
        """
        @return: the id of a new draft, and the mailbox ids.
        """
        boxes = await self.mailboxes(user)
        created = await self.call("Email/set", {"create": {"d": {
            "mailboxIds": {boxes["drafts"]: True}, "keywords": {"$draft": True, "$seen": True},
            "from": [{"email": sender}], "to": [{"email": to}], "bcc": [{"email": "alice@example.test"}],
            "subject": "via jmap", "textBody": [{"partId": "1"}], "bodyValues": {"1": {"value": body}}}}}, user)
        self.assertIn("d", created["created"], created)
        return created["created"]["d"]["id"], boxes

    async def test_sendInternal(self):
        """
        A submission with onSuccessUpdateEmail sends the draft through the
        intake: bob's copy is encrypted at rest and decrypts to the text
        (without Bcc); the draft moves to Sent without $draft.
        """
        emailId, boxes = await self.draft()
        identities = await self.call("Identity/get", {})
        [identity] = identities["list"]
        self.assertEqual(identity["email"], "alice@example.test")
        accountId = await self.accountId()
        response = await self.api([
            ["EmailSubmission/set", {"accountId": accountId, "create": {"s": {
                "identityId": identity["id"], "emailId": emailId}},
                "onSuccessUpdateEmail": {"#s": {f"mailboxIds/{boxes['drafts']}": None,
                                                f"mailboxIds/{boxes['sent']}": True, "keywords/$draft": None}}},
             "c"]])
        [submitted, implicit] = response["methodResponses"]
        self.assertEqual(submitted[0], "EmailSubmission/set")
        self.assertIn("s", submitted[1]["created"], submitted)
        self.assertEqual(implicit[0], "Email/set")
        self.assertEqual(implicit[1]["updated"], {emailId: None})
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "bob@example.test"), timeout=20)
        with open(path, "rb") as f:
            stored = f.read()
        self.assertNotIn(b"Sent over JMAP", stored)
        self.assertIn(b"multipart/encrypted", stored)
        plain = await readAsOwner(self.dataDir, path)
        self.assertIn(b"Sent over JMAP", plain)
        self.assertNotIn(b"Bcc:", plain)
        self.assertIn(b"with HTTPSA", plain)
        got = await self.call("Email/get", {"ids": [emailId], "properties": ["mailboxIds", "keywords"]})
        self.assertEqual(got["list"][0], {"id": emailId, "mailboxIds": {boxes["sent"]: True},
                                          "keywords": {"$seen": True}})
        # The Bcc recipient (alice herself) got her copy too.
        await self.waitForMessages(1, "alice")

    async def test_forbiddenFrom(self):
        """
        A message whose From is not the user's is refused (forbiddenFrom),
        as SMTP submission refuses it; an envelope sender not the user's
        is forbiddenMailFrom; nothing is delivered.
        """
        emailId, _ = await self.draft(sender="bob@example.test")
        identity = (await self.call("Identity/get", {}))["list"][0]["id"]
        result = await self.call("EmailSubmission/set", {"create": {"s": {"identityId": identity,
                                                                          "emailId": emailId}}})
        self.assertEqual(result["notCreated"]["s"]["type"], "forbiddenFrom")
        emailId, _ = await self.draft()
        result = await self.call("EmailSubmission/set", {"create": {"s": {
            "identityId": identity, "emailId": emailId, "envelope": {
                "mailFrom": {"email": "bob@example.test"}, "rcptTo": [{"email": "bob@example.test"}]}}}})
        self.assertEqual(result["notCreated"]["s"]["type"], "forbiddenMailFrom")
        unknown = await self.call("EmailSubmission/set", {"create": {"s": {
            "identityId": identity, "emailId": emailId, "envelope": {
                "mailFrom": {"email": "alice@example.test"}, "rcptTo": [{"email": "nobody@example.test"}]}}}})
        self.assertEqual(unknown["notCreated"]["s"]["type"], "invalidRecipients")
        self.assertEqual(maildirFiles(self.dataDir, "bob@example.test"), [])


class RateLimitTests(JMAPServerMixin, TestCase):
    """
    The per-user message rate limit of SMTP submission counts JMAP too.
    """

    configExtra = "[limits]\nmessages_per_user_hour = 1\n"

    async def test_rateLimited(self):
        """
        With one message an hour, a JMAP submission after an SMTP one is
        refused (forbiddenToSend, naming the rate limit).
        """
        await self.submitSMTP(SECRET.replace(b"bob@", b"alice@", 1).replace(b"To: alice", b"To: bob"),
                              user="alice", recipients=("bob@example.test",))
        emailId, _ = await SubmissionTests.draft(self)
        identity = (await self.call("Identity/get", {}))["list"][0]["id"]
        result = await self.call("EmailSubmission/set", {"create": {"s": {"identityId": identity,
                                                                          "emailId": emailId}}})
        self.assertEqual(result["notCreated"]["s"]["type"], "forbiddenToSend")
        self.assertIn("Rate limit", result["notCreated"]["s"]["description"])
