# -*- test-case-name: tests.jmap.test_api -*-
"""
JMAP over a real HTTPS socket against the whole server: the session,
mailboxes, emails, back-references, */changes after IMAP and SMTP, and
the request-level and method-level errors of RFC 8620.
"""

import json
import os
import socket

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.config import loadConfig
from qutemail.jmap.dispatch import CORE, MAIL, SUBMISSION
from qutemail.service import buildService
from tests.integration.support import freePort
from tests.jmap.support import USING, JMAPServerMixin

PLAIN = (b"From: Carol <carol@outside.test>\r\nTo: alice@example.test\r\nSubject: Hello there\r\n"
         b"Message-ID: <m1@outside.test>\r\nDate: Mon, 07 Dec 2026 03:00:00 +0000\r\n\r\nFirst body line.\r\n")


class SessionTests(JMAPServerMixin, TestCase):
    """
    The session resource.
    """

    async def test_session(self):
        """
        C{/.well-known/jmap} names the core, mail and submission
        capabilities, the account, and URLs on the host the client used.
        """
        status, headers, data = await self.request("GET", "/.well-known/jmap")
        self.assertEqual(status, 200)
        session = json.loads(data)
        for capability in (CORE, MAIL, SUBMISSION):
            self.assertIn(capability, session["capabilities"])
        self.assertEqual(session["capabilities"][CORE]["maxSizeUpload"], 1024 * 1024)
        self.assertEqual(session["username"], "alice@example.test")
        accountId = session["primaryAccounts"][MAIL]
        self.assertIn(accountId, session["accounts"])
        self.assertEqual(session["apiUrl"], f"https://127.0.0.1:{self.ports['jmap']}/api/")
        self.assertIn("{accountId}", session["uploadUrl"])
        self.assertIn("{blobId}", session["downloadUrl"])


    async def test_alpn(self):
        """
        A client offering ALPN (as requests and browsers do) gets
        HTTP/1.1.
        """
        def connect():
            context = self.clientContext()
            context.set_alpn_protocols(["h2", "http/1.1"])
            with socket.create_connection(("127.0.0.1", self.ports["jmap"]), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return tls.selected_alpn_protocol()

        self.assertEqual(await deferToThread(connect), "http/1.1")


class ConfiguredPortTests(JMAPServerMixin, TestCase):
    """
    The listener comes from C{[jmap] port}, on C{[server] bind}.
    """

    async def startServer(self) -> None:
        """
        Start the service tree with the JMAP port from the configuration
        (no listen override), the others as usual.
        """
        port = freePort()
        with open(self.configPath, "a") as f:
            f.write(f"\n[jmap]\nport = {port}\n")
        config = loadConfig(self.configPath, environ={})
        self.assertEqual(config.jmap.port, port)
        self.root = buildService(config, reactor, listen={"mta": "tcp:0:interface=127.0.0.1"})
        self.root.startService()
        self.addCleanup(lambda: self.root.stopService() if self.root.running else None)
        listening = await self.root.listeners["jmap"].whenListening()
        self.assertEqual((listening.getHost().host, listening.getHost().port), ("127.0.0.1", port))
        self.ports = {"jmap": port}

    async def test_servesSession(self):
        """
        The configured port serves the session over TLS; the development
        configuration turns JMAP on at 8443 (the default, 0, is in
        tests.test_config).
        """
        status, _, data = await self.request("GET", "/.well-known/jmap")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(data)["username"], "alice@example.test")
        development = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "qutemail.ini")
        self.assertEqual(loadConfig(development, environ={}).jmap.port, 8443)


class MailboxTests(JMAPServerMixin, TestCase):
    """
    Mailbox/get, /query, /set, /changes.
    """

    async def test_mailboxes(self):
        """
        Mailbox/get lists the INBOX and the special folders with their
        roles; counts follow a delivery.
        """
        boxes = await self.call("Mailbox/get", {"ids": None})
        roles = {b["role"]: b for b in boxes["list"]}
        self.assertEqual(set(roles), {"inbox", "sent", "drafts", "trash", "junk"})
        self.assertEqual(roles["inbox"]["totalEmails"], 0)
        await self.deliver(PLAIN)
        await self.waitForMessages(1)
        after = await self.call("Mailbox/get", {"ids": [roles["inbox"]["id"]], "properties": ["totalEmails",
                                                                                               "unreadEmails"]})
        self.assertEqual(after["list"], [{"id": roles["inbox"]["id"], "totalEmails": 1, "unreadEmails": 1}])
        self.assertNotEqual(after["state"], boxes["state"])

    async def test_setAndChanges(self):
        """
        Mailbox/set creates, renames and destroys a folder that IMAP sees
        (but not the folders with a role); Mailbox/changes reports the
        creation.
        """
        state = (await self.call("Mailbox/get", {"ids": []}))["state"]
        created = await self.call("Mailbox/set", {"create": {"k1": {"name": "Projects", "parentId": None}}})
        newId = created["created"]["k1"]["id"]
        changes = await self.call("Mailbox/changes", {"sinceState": state})
        self.assertEqual(changes["created"], [newId])
        listed = await self.imap(lambda c: c.list()[1])
        self.assertTrue(any(b'"Projects"' in line or line.endswith(b" Projects") for line in listed), listed)
        query = await self.call("Mailbox/query", {"filter": {"role": "inbox"}})
        self.assertEqual(len(query["ids"]), 1)
        renamed = await self.call("Mailbox/set", {"update": {newId: {"name": "Work"}}})
        self.assertEqual(renamed["updated"], {newId: None})
        boxes = await self.mailboxes()
        self.assertNotIn("Projects", boxes)
        workId = boxes["Work"]
        listed = await self.imap(lambda c: c.list()[1])
        self.assertTrue(any(line.endswith(b" Work") or b'"Work"' in line for line in listed), listed)
        refused = await self.call("Mailbox/set", {"update": {boxes["sent"]: {"name": "Elsewhere"}},
                                                  "destroy": [boxes["inbox"], boxes["trash"]]})
        self.assertEqual(refused["notUpdated"][boxes["sent"]]["type"], "forbidden")
        self.assertEqual({v["type"] for v in refused["notDestroyed"].values()}, {"forbidden"})
        rights = (await self.call("Mailbox/get", {"ids": [boxes["sent"]], "properties": ["myRights"]}))["list"][0]
        self.assertFalse(rights["myRights"]["mayDelete"])
        destroyed = await self.call("Mailbox/set", {"destroy": [workId]})
        self.assertEqual(destroyed["destroyed"], [workId])


class EmailTests(JMAPServerMixin, TestCase):
    """
    Email/query, /get, /set, /changes; Thread/get; back-references.
    """

    async def test_queryAndGetWithBackReference(self):
        """
        Email/query then Email/get of its C{#ids} in one request gives the
        newest email with its headers, body value and keywords.
        """
        await self.deliver(PLAIN)
        await self.deliver(PLAIN.replace(b"Hello there", b"Second one"))
        await self.waitForMessages(2)
        accountId = await self.accountId()
        response = await self.api([
            ["Email/query", {"accountId": accountId, "sort": [{"property": "receivedAt", "isAscending": False}],
                             "limit": 1, "calculateTotal": True}, "q"],
            ["Email/get", {"accountId": accountId, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                           "properties": ["subject", "from", "keywords", "textBody", "bodyValues", "messageId",
                                          "header:Subject:asText", "qutemailQkd", "threadId"],
                           "fetchTextBodyValues": True}, "g"],
            ["Thread/get", {"accountId": accountId,
                            "#ids": {"resultOf": "g", "name": "Email/get", "path": "/list/*/threadId"}}, "t"],
        ])
        query, get, thread = [r[1] for r in response["methodResponses"]]
        self.assertEqual(query["total"], 2)
        [email] = get["list"]
        self.assertEqual(email["id"], query["ids"][0])
        self.assertEqual(email["from"], [{"name": "Carol", "email": "carol@outside.test"}])
        self.assertEqual(email["messageId"], ["m1@outside.test"])
        self.assertEqual(email["keywords"], {})
        self.assertIsNone(email["qutemailQkd"])
        partId = email["textBody"][0]["partId"]
        self.assertEqual(email["bodyValues"][partId]["value"].strip(), "First body line.")
        self.assertIn(email["subject"], ("Hello there", "Second one"))
        self.assertEqual(email["header:Subject:asText"], email["subject"])
        self.assertEqual(thread["list"], [{"id": email["threadId"], "emailIds": [email["id"]]}])

    async def test_filters(self):
        """
        Email/query filters by mailbox, text, from, subject, keyword,
        date, and operators.
        """
        await self.deliver(PLAIN)
        await self.deliver(PLAIN.replace(b"Hello there", b"Invoice 42").replace(b"Carol", b"Dave")
                           .replace(b"carol@", b"dave@"), sender="dave@outside.test")
        await self.waitForMessages(2)
        boxes = await self.mailboxes()

        async def ids(filter_):
            return (await self.call("Email/query", {"filter": filter_}))["ids"]

        everything = await ids({"inMailbox": boxes["inbox"]})
        self.assertEqual(len(everything), 2)
        self.assertEqual(await ids({"inMailbox": boxes["trash"]}), [])
        [invoice] = await ids({"subject": "invoice"})
        self.assertEqual(await ids({"from": "dave@outside"}), [invoice])
        self.assertEqual(await ids({"text": "INVOICE 42"}), [invoice])
        self.assertEqual(await ids({"operator": "NOT", "conditions": [{"subject": "invoice"}]}),
                         [i for i in everything if i != invoice])
        self.assertEqual(await ids({"hasKeyword": "$seen"}), [])
        self.assertEqual(len(await ids({"notKeyword": "$seen"})), 2)
        self.assertEqual(await ids({"before": "2000-01-01T00:00:00Z"}), [])
        self.assertEqual(len(await ids({"after": "2000-01-01T00:00:00Z"})), 2)
        self.assertEqual(sorted(await ids({"operator": "OR", "conditions": [{"subject": "invoice"},
                                                                             {"subject": "hello"}]})),
                         sorted(everything))

    async def test_changesAfterImapStoreAndSmtp(self):
        """
        Email/changes reports an IMAP STORE as an update and an SMTP
        delivery as a creation; a JMAP keyword change is seen by IMAP.
        """
        await self.deliver(PLAIN)
        await self.waitForMessages(1)
        first = await self.call("Email/query", {})
        [emailId] = first["ids"]
        state = first["queryState"]
        await self.imap(lambda c: (c.select("INBOX"), c.store("1", "+FLAGS", "(\\Flagged)")))
        changes = await self.call("Email/changes", {"sinceState": state})
        self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([], [emailId], []))
        await self.deliver(PLAIN.replace(b"Hello", b"Again"))
        await self.waitForMessages(2)
        later = await self.call("Email/changes", {"sinceState": changes["newState"]})
        self.assertEqual(len(later["created"]), 1)
        self.assertEqual(later["updated"], [])
        got = await self.call("Email/get", {"ids": [emailId], "properties": ["keywords"]})
        self.assertEqual(got["list"][0]["keywords"], {"$flagged": True})
        await self.call("Email/set", {"update": {emailId: {"keywords/$seen": True}}})
        flags = await self.imap(lambda c: (c.select("INBOX"), c.fetch("1", "(FLAGS)"))[1][1])
        self.assertIn(b"\\Seen", flags[0])
        self.assertIn(b"\\Flagged", flags[0])

    async def test_changesAcrossRestart(self):
        """
        A state from before a restart still gives Email/changes.
        """
        await self.deliver(PLAIN)
        await self.waitForMessages(1)
        state = (await self.call("Email/get", {"ids": []}))["state"]
        await self.root.stopService()
        await self.startServer()
        await self.deliver(PLAIN)
        await self.waitForMessages(2)
        changes = await self.call("Email/changes", {"sinceState": state})
        self.assertEqual(len(changes["created"]), 1)
        unknown = await self.api([["Email/changes", {"accountId": await self.accountId(), "sinceState": "sNone"},
                                   "c"]])
        self.assertEqual(unknown["methodResponses"][0][1]["type"], "cannotCalculateChanges")

    async def test_moveAndDestroy(self):
        """
        Email/set moves an email to Trash (the same id, now in IMAP's
        Trash) and destroys it.
        """
        await self.deliver(PLAIN)
        await self.waitForMessages(1)
        boxes = await self.mailboxes()
        [emailId] = (await self.call("Email/query", {}))["ids"]
        moved = await self.call("Email/set", {"update": {emailId: {
            f"mailboxIds/{boxes['inbox']}": None, f"mailboxIds/{boxes['trash']}": True}}})
        self.assertEqual(moved["updated"], {emailId: None})
        self.assertEqual((await self.call("Email/query", {"filter": {"inMailbox": boxes["trash"]}}))["ids"],
                         [emailId])
        count = await self.imap(lambda c: c.select("Trash")[1][0])
        self.assertEqual(count, b"1")
        gone = await self.call("Email/set", {"destroy": [emailId, "enothere"]})
        self.assertEqual(gone["destroyed"], [emailId])
        self.assertEqual(gone["notDestroyed"]["enothere"]["type"], "notFound")
        self.assertEqual((await self.call("Email/query", {}))["ids"], [])

    async def test_htmlBodyValues(self):
        """
        Of a multipart/alternative email, C{fetchHTMLBodyValues} gives the
        HTML part's value only, C{fetchTextBodyValues} the plain part's
        only, and C{fetchAllBodyValues} both; C{maxBodyValueBytes} cuts a
        value and says so.
        """
        await self.deliver(b"From: carol@outside.test\r\nTo: alice@example.test\r\nSubject: both\r\n"
                           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n"
                           b"--b1\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
                           b"--b1\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--b1--\r\n")
        await self.waitForMessages(1)
        [emailId] = (await self.call("Email/query", {}))["ids"]

        async def values(**fetch) -> dict:
            email = (await self.call("Email/get", {"ids": [emailId], "properties": ["htmlBody", "textBody",
                                                                                    "bodyValues"], **fetch}))
            email = email["list"][0]
            parts = {part["partId"]: part["type"] for part in email["htmlBody"] + email["textBody"]}
            return {parts[partId]: value for partId, value in email["bodyValues"].items()}

        html = await values(fetchHTMLBodyValues=True)
        self.assertEqual(list(html), ["text/html"])
        self.assertIn("<p>html words</p>", html["text/html"]["value"])
        self.assertEqual(list(await values(fetchTextBodyValues=True)), ["text/plain"])
        self.assertEqual(set(await values(fetchAllBodyValues=True)), {"text/plain", "text/html"})
        cut = (await values(fetchHTMLBodyValues=True, maxBodyValueBytes=4))["text/html"]
        self.assertEqual(cut["value"], "<p>h")
        self.assertTrue(cut["isTruncated"])

    async def test_createWrongTypes(self):
        """
        An Email/set create whose properties have the wrong JSON types is
        not created (C{invalidProperties}, naming them), not a server
        failure.
        """
        created = await self.call("Email/set", {"create": {
            "x": {"mailboxIds": "nope"},
            "y": {"mailboxIds": {}, "subject": 5, "bodyValues": [], "textBody": {"partId": "t"}}}})
        self.assertEqual(created["created"], {})
        self.assertEqual(created["notCreated"]["x"]["type"], "invalidProperties")
        self.assertEqual(created["notCreated"]["x"]["properties"], ["mailboxIds"])
        self.assertEqual(created["notCreated"]["y"]["properties"], ["bodyValues", "subject", "textBody"])

    async def test_createDraft(self):
        """
        Email/set creates a draft in Drafts with C{$draft}; its body reads
        back.
        """
        boxes = await self.mailboxes()
        created = await self.call("Email/set", {"create": {"d1": {
            "mailboxIds": {boxes["drafts"]: True}, "keywords": {"$draft": True},
            "from": [{"email": "alice@example.test"}], "to": [{"name": "Bob", "email": "bob@example.test"}],
            "subject": "Draft subject", "textBody": [{"partId": "t", "type": "text/plain"}],
            "bodyValues": {"t": {"value": "Draft body"}}}}})
        draft = created["created"]["d1"]
        got = await self.call("Email/get", {"ids": [draft["id"]], "fetchTextBodyValues": True,
                                            "properties": ["subject", "keywords", "mailboxIds", "to", "bodyValues"]})
        [email] = got["list"]
        self.assertEqual(email["keywords"], {"$draft": True})
        self.assertEqual(email["mailboxIds"], {boxes["drafts"]: True})
        self.assertEqual(email["to"], [{"name": "Bob", "email": "bob@example.test"}])
        self.assertEqual([v["value"].strip() for v in email["bodyValues"].values()], ["Draft body"])


class ErrorTests(JMAPServerMixin, TestCase):
    """
    The RFC 8620 errors.
    """

    async def test_methodErrors(self):
        """
        unknownMethod, invalidArguments, invalidResultReference, notFound
        and forbidden (another account's id) are method-level errors; the
        other calls of the request still run.
        """
        accountId = await self.accountId()
        bobId = await self.accountId("bob")
        response = await self.api([
            ["Foo/bar", {"accountId": accountId}, "a"],
            ["Email/get", {"accountId": accountId, "ids": "nope"}, "b"],
            ["Email/get", {"accountId": accountId,
                           "#ids": {"resultOf": "zz", "name": "Email/query", "path": "/ids"}}, "c"],
            ["Email/get", {"accountId": accountId, "ids": ["e0000"]}, "d"],
            ["Mailbox/get", {"accountId": bobId, "ids": None}, "e"],
            ["Mailbox/get", {"accountId": accountId, "ids": []}, "f"],
        ])
        results = {r[2]: r for r in response["methodResponses"]}
        self.assertEqual(results["a"][:2], ["error", {"type": "unknownMethod",
                                                      "description": results["a"][1].get("description")}])
        self.assertEqual(results["b"][1]["type"], "invalidArguments")
        self.assertEqual(results["c"][1]["type"], "invalidResultReference")
        self.assertEqual(results["d"][1]["notFound"], ["e0000"])
        self.assertEqual(results["e"][1]["type"], "forbidden")
        self.assertEqual(results["f"][0], "Mailbox/get")

    async def test_badFiltersRefused(self):
        """
        A malformed Email/query filter is refused even when the mailbox is
        empty (nothing to match it against): an unknown operator, a date
        that is none, a size that is no number, a text that is no string
        and a filter nested too deep are C{invalidArguments}; an unknown
        condition is C{unsupportedFilter}.
        """
        accountId = await self.accountId()
        deep: dict = {"subject": "x"}
        for _ in range(40):
            deep = {"operator": "NOT", "conditions": [deep]}
        filters = {
            "a": {"operator": "XOR", "conditions": []},
            "b": {"before": "garbage"},
            "c": {"minSize": "big"},
            "d": {"operator": "OR", "conditions": [{"subject": 5}]},
            "e": deep,
            "f": {"colour": "blue"},
        }
        response = await self.api([["Email/query", {"accountId": accountId, "filter": f}, callId]
                                   for callId, f in filters.items()])
        types = {r[2]: (r[0], r[1].get("type")) for r in response["methodResponses"]}
        self.assertEqual(types, {**{callId: ("error", "invalidArguments") for callId in "abcde"},
                                 "f": ("error", "unsupportedFilter")})

    async def test_requestTooLarge(self):
        """
        More ids than maxObjectsInGet is requestTooLarge; more calls than
        maxCallsInRequest is a request-level limit error.
        """
        accountId = await self.accountId()
        response = await self.api([["Email/get", {"accountId": accountId, "ids": ["e1"] * 501}, "a"]])
        self.assertEqual(response["methodResponses"][0][1]["type"], "requestTooLarge")
        calls = [["Mailbox/get", {"accountId": accountId, "ids": []}, str(i)] for i in range(17)]
        status, headers, data = await self.request("POST", "/api/", json.dumps(
            {"using": USING, "methodCalls": calls}).encode(), headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertEqual(headers["content-type"], "application/problem+json")
        body = json.loads(data)
        self.assertEqual((body["type"], body["limit"]), ("urn:ietf:params:jmap:error:limit", "maxCallsInRequest"))

    async def test_requestErrors(self):
        """
        Not JSON, not a request, and an unknown capability get RFC 7807
        problem details.
        """
        for body, kind in ((b"{nope", "notJSON"), (b"[1]", "notRequest"),
                           (json.dumps({"using": ["urn:x"], "methodCalls": []}).encode(), "unknownCapability")):
            status, headers, data = await self.request("POST", "/api/", body,
                                                       headers={"Content-Type": "application/json"})
            self.assertEqual(status, 400)
            self.assertEqual(json.loads(data)["type"], "urn:ietf:params:jmap:error:" + kind)
        status, _, data = await self.request("POST", "/api/", b"x" * (10 * 2**20 + 10),
                                             headers={"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(data)["limit"], "maxSizeRequest")
