# -*- test-case-name: tests.jmap.test_security -*-
"""
Security of the JMAP listener: HTTP Basic through the IMAP portal with
IMAP's throttle, no access to another account's data by id, and the
security headers on every response.
"""

import json

from twisted.trial.unittest import TestCase

from tests.jmap.support import USING, JMAPServerMixin

MESSAGE = b"From: carol@outside.test\r\nTo: alice@example.test\r\nSubject: private\r\n\r\nAlice only\r\n"


class SecurityTests(JMAPServerMixin, TestCase):
    """
    Authentication, isolation, headers.
    """

    def assertSecurityHeaders(self, headers: dict) -> None:
        """
        The CSP and nosniff headers are there.
        """
        csp = headers.get("content-security-policy", "")
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(headers.get("x-content-type-options"), "nosniff")

    async def test_headersEverywhere(self):
        """
        Every response has the headers: the session, the API, a 401, a
        404, an error problem, the webmail's page at /, a download.
        """
        accountId = await self.accountId()
        body = json.dumps({"using": USING, "methodCalls": []}).encode()
        for method, path, kwargs, status in (
                ("GET", "/.well-known/jmap", {}, 200),
                ("GET", "/.well-known/jmap", {"user": None}, 401),
                ("GET", "/.well-known/jmap", {"password": "wrong"}, 401),
                ("POST", "/api/", {"body": body, "headers": {"Content-Type": "application/json"}}, 200),
                ("POST", "/api/", {"body": body, "headers": {"Content-Type": "text/plain"}}, 400),
                ("GET", "/nothing-here", {}, 404),
                ("GET", "/", {"user": None}, 200),
                ("GET", f"/download/{accountId}/bnope/x", {}, 404)):
            got, headers, _ = await self.request(method, path, **kwargs)
            self.assertEqual(got, status, path)
            self.assertSecurityHeaders(headers)
            if status == 401:
                self.assertTrue(headers["www-authenticate"].startswith("Basic realm="))
            self.assertNotIn("set-cookie", headers)
        status, headers, _ = await self.request("GET", "/.well-known/jmap", password="wrong",
                                                headers={"X-Requested-With": "XMLHttpRequest"})
        self.assertEqual(status, 401)
        self.assertTrue(headers["www-authenticate"].startswith("X-Basic realm="))
        self.assertSecurityHeaders(headers)

    async def test_throttledAsImap(self):
        """
        Failed logins share IMAP's throttle: after ten failures from one
        address it is locked out, for JMAP (429, without checking the
        password) and for IMAP alike.
        """
        throttle = self.root.listeners["jmap"].smtpFactory.jmap.authenticator.throttle
        throttle.failureDelaySeconds = 0.0
        for _ in range(throttle.maxFailures):
            status, _, _ = await self.request("GET", "/.well-known/jmap", password="wrong")
            self.assertEqual(status, 401)
        status, headers, _ = await self.request("GET", "/.well-known/jmap")
        self.assertEqual(status, 429)
        self.assertSecurityHeaders(headers)

        def login(client):
            return client

        import imaplib
        with self.assertRaises(imaplib.IMAP4.error) as caught:
            await self.imap(login)
        self.assertIn("Too many failed logins", str(caught.exception))

    async def test_noCrossAccountAccess(self):
        """
        Bob, given the ids of alice's mailbox, email, thread and blob,
        gets notFound or nothing, and her account id is forbidden.
        """
        await self.deliver(MESSAGE)
        await self.waitForMessages(1)
        aliceBoxes = await self.mailboxes()
        [emailId] = (await self.call("Email/query", {}))["ids"]
        email = (await self.call("Email/get", {"ids": [emailId], "properties": ["blobId", "threadId"]}))["list"][0]
        bob = await self.accountId("bob")
        got = await self.call("Email/get", {"ids": [emailId]}, user="bob")
        self.assertEqual((got["list"], got["notFound"]), ([], [emailId]))
        boxes = await self.call("Mailbox/get", {"ids": [aliceBoxes["inbox"]]}, user="bob")
        # Mailbox ids are per folder name, so bob's own INBOX has the same
        # id: he sees his own, empty, INBOX.
        self.assertEqual(boxes["list"][0]["totalEmails"], 0)
        threads = await self.call("Thread/get", {"ids": [email["threadId"]]}, user="bob")
        self.assertEqual(threads["notFound"], [email["threadId"]])
        changed = await self.call("Email/set", {"update": {emailId: {"keywords/$seen": True}},
                                                "destroy": [emailId]}, user="bob")
        self.assertEqual(changed["notUpdated"][emailId]["type"], "notFound")
        self.assertEqual(changed["notDestroyed"][emailId]["type"], "notFound")
        status, _, _ = await self.request("GET", f"/download/{bob}/{email['blobId']}/x", user="bob")
        self.assertEqual(status, 404)
        alice = await self.accountId()
        response = await self.api([["Email/get", {"accountId": alice, "ids": [emailId]}, "c"]], user="bob")
        self.assertEqual(response["methodResponses"][0][1]["type"], "forbidden")
        self.assertEqual(len((await self.call("Email/query", {}))["ids"]), 1)
