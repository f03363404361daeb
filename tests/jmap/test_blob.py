# -*- test-case-name: tests.jmap.test_blob -*-
"""
Blobs over HTTPS: upload, Email/import of an upload, byte-exact
download of a message and of a part, the upload limit, and overQuota.
"""

import json

from twisted.trial.unittest import TestCase

from tests.jmap.support import JMAPServerMixin

# Bytes a text transformation would change: CRLF and bare LF, 8-bit, NUL.
ATTACHMENT = bytes(range(256)) * 4 + b"\r\nend\n"
MESSAGE = (b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: imported\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached \xc3\xa9.\r\n"
           b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n"
           + __import__("base64").encodebytes(ATTACHMENT).replace(b"\n", b"\r\n") + b"--XX--\r\n")


class BlobTests(JMAPServerMixin, TestCase):
    """
    Upload, import, download.
    """

    async def upload(self, data: bytes, user: str = "alice", accountId: str | None = None,
                     mediaType: str = "message/rfc822"):
        """
        @return: C{(status, parsed body)} of an upload.
        """
        accountId = accountId or await self.accountId(user)
        status, headers, body = await self.request("POST", f"/upload/{accountId}/", data, user=user,
                                                   headers={"Content-Type": mediaType})
        return status, json.loads(body)

    async def test_importAndDownload(self):
        """
        An uploaded message imported into the INBOX reads back byte for
        byte as its blob, its attachment part downloads decoded and exact,
        and IMAP sees it.
        """
        status, blob = await self.upload(MESSAGE)
        self.assertEqual(status, 201)
        self.assertEqual((blob["size"], blob["type"]), (len(MESSAGE), "message/rfc822"))
        boxes = await self.mailboxes()
        imported = await self.call("Email/import", {"emails": {"i1": {
            "blobId": blob["blobId"], "mailboxIds": {boxes["inbox"]: True}, "keywords": {"$seen": True},
            "receivedAt": "2026-01-02T03:04:05Z"}}})
        created = imported["created"]["i1"]
        got = await self.call("Email/get", {"ids": [created["id"]], "properties": [
            "blobId", "attachments", "subject", "receivedAt", "keywords", "hasAttachment"]})
        [email] = got["list"]
        self.assertEqual((email["subject"], email["receivedAt"], email["keywords"], email["hasAttachment"]),
                         ("imported", "2026-01-02T03:04:05Z", {"$seen": True}, True))
        accountId = await self.accountId()
        status, headers, raw = await self.request("GET", f"/download/{accountId}/{email['blobId']}/m.eml")
        self.assertEqual(status, 200)
        self.assertEqual(raw, MESSAGE)
        [attachment] = email["attachments"]
        self.assertEqual(attachment["name"], "a.bin")
        status, headers, data = await self.request(
            "GET", f"/download/{accountId}/{attachment['blobId']}/a.bin?type=application/octet-stream")
        self.assertEqual(status, 200)
        self.assertEqual(data, ATTACHMENT)
        self.assertEqual(headers["content-type"], "application/octet-stream")
        fetched = await self.imap(lambda c: (c.select("INBOX"), c.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))[1][1])
        self.assertIn(b"imported", fetched[0][1])
        self.assertIn(b"\\Seen", fetched[0][0])

    async def test_uploadByteExact(self):
        """
        An uploaded blob downloads exactly as it was sent.
        """
        status, blob = await self.upload(ATTACHMENT, mediaType="application/octet-stream")
        accountId = await self.accountId()
        status, headers, data = await self.request(
            "GET", f"/download/{accountId}/{blob['blobId']}/x.bin?type=text/html")
        self.assertEqual((status, data), (200, ATTACHMENT))
        # Even as text/html, a blob can run nothing on our origin.
        self.assertEqual(headers["content-type"], "text/html")
        self.assertIn("sandbox", headers["content-security-policy"])
        self.assertIn("default-src 'none'", headers["content-security-policy"])
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertTrue(headers["content-disposition"].startswith("attachment;"))

    async def test_draftWithAttachment(self):
        """
        A draft created with an uploaded blob as its attachment (as the
        webmail composes) carries it, byte for byte.
        """
        status, blob = await self.upload(ATTACHMENT, mediaType="application/octet-stream")
        boxes = await self.mailboxes()
        created = await self.call("Email/set", {"create": {"d": {
            "mailboxIds": {boxes["drafts"]: True}, "keywords": {"$draft": True},
            "to": [{"email": "bob@example.test"}], "subject": "with a file",
            "textBody": [{"partId": "t", "type": "text/plain"}], "bodyValues": {"t": {"value": "see file"}},
            "attachments": [{"blobId": blob["blobId"], "type": "application/pdf", "name": "r\u00e9sum\u00e9.pdf"}]}}})
        emailId = created["created"]["d"]["id"]
        [email] = (await self.call("Email/get", {"ids": [emailId], "properties": ["attachments", "from"]}))["list"]
        self.assertEqual(email["from"], [{"name": None, "email": "alice@example.test"}])
        [attachment] = email["attachments"]
        self.assertEqual((attachment["type"], attachment["name"], attachment["size"]),
                         ("application/pdf", "r\u00e9sum\u00e9.pdf", len(ATTACHMENT)))
        accountId = await self.accountId()
        status, _, data = await self.request("GET", f"/download/{accountId}/{attachment['blobId']}/r.pdf")
        self.assertEqual((status, data), (200, ATTACHMENT))

    async def test_uploadLimit(self):
        """
        An upload over maxSizeUpload ([smtp] max_message_size) gets 413
        and a limit problem.
        """
        status, body = await self.upload(b"x" * (1024 * 1024 + 1))
        self.assertEqual(status, 413)
        self.assertEqual(body["limit"], "maxSizeUpload")

    async def test_otherAccounts(self):
        """
        Another user can neither download nor import alice's blobs, nor
        upload into her account.
        """
        status, blob = await self.upload(MESSAGE)
        aliceId = await self.accountId()
        status, _, _ = await self.request("GET", f"/download/{aliceId}/{blob['blobId']}/x", user="bob")
        self.assertEqual(status, 404)
        bobId = await self.accountId("bob")
        status, _, _ = await self.request("GET", f"/download/{bobId}/{blob['blobId']}/x", user="bob")
        self.assertEqual(status, 404)
        status, _ = await self.upload(MESSAGE, user="bob", accountId=aliceId)
        self.assertEqual(status, 404)
        boxes = await self.mailboxes("bob")
        imported = await self.call("Email/import", {"emails": {"i": {
            "blobId": blob["blobId"], "mailboxIds": {boxes["inbox"]: True}}}}, user="bob")
        self.assertEqual(imported["notCreated"]["i"]["type"], "blobNotFound")


class QuotaTests(JMAPServerMixin, TestCase):
    """
    overQuota.
    """

    configExtra = "[mailbox]\ndefault_quota_mb = 1\n"

    async def test_overQuota(self):
        """
        An import that would pass the account's quota is not created:
        C{overQuota}.
        """
        accountId = await self.accountId()
        big = MESSAGE + b"x" * 700_000
        status, headers, body = await self.request("POST", f"/upload/{accountId}/", big,
                                                   headers={"Content-Type": "message/rfc822"})
        blobId = json.loads(body)["blobId"]
        boxes = await self.mailboxes()
        first = await self.call("Email/import", {"emails": {"a": {"blobId": blobId,
                                                                  "mailboxIds": {boxes["inbox"]: True}}}})
        self.assertIn("a", first["created"])
        second = await self.call("Email/import", {"emails": {"b": {"blobId": blobId,
                                                                   "mailboxIds": {boxes["inbox"]: True}}}})
        self.assertEqual(second["notCreated"]["b"]["type"], "overQuota")
