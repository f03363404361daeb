"""
IMAPClient (the de facto Python IMAP client library, from PyPI) against
the whole server over implicit TLS on loopback (issue 20): the operations
of IMAPClient's own live test suite (its C{livetest.py}, which ships only
in its source repository), written again here as trial tests.

Covered: capabilities, NAMESPACE, ID, ENABLE, NOOP, quota; LIST (with the
RFC 6154 attributes that C{find_special_folder} reads), CREATE, RENAME,
DELETE, with unicode (modified UTF-7), C{&}, backslash and quote in
names; SUBSCRIBE (refused for a missing folder) and UNSUBSCRIBE; SELECT
and EXAMINE; APPEND with flags, keywords and INTERNALDATE; FETCH of
flags, body, envelope, body structure and size; SEARCH, simple, with
OR/NOT, with a UTF-8 charset and by keyword; STORE of flags and keywords;
COPY, MOVE, EXPUNGE and UID EXPUNGE; IDLE seeing an APPEND made by another
connection; STATUS (RECENT, UNSEEN, UIDNEXT).  Every operation runs with
UIDs and with sequence numbers, as the live tests do.

Not supported, so IMAPClient refuses them itself with C{CapabilityError}
before sending anything (checked): SORT and THREAD (RFC 5256), XLIST
(Gmail's pre-RFC 6154 listing), MULTIAPPEND, ACL, Gmail's X-GM-EXT-1.
"""

import os
from datetime import datetime

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from qutemail.store.folders import MaildirFolders
from tests.integration.support import CLIENT_TIMEOUT, insecureContext
from tests.integration.test_mta import RunningServerMixin
from tests.support import requireInstalled

try:
    import imapclient
    from imapclient.exceptions import CapabilityError
except ImportError:  # the "test" extra installs it
    imapclient = None

SIMPLE_MESSAGE = b"Subject: something\r\n\r\nFoo\r\n"
MULTIPART_MESSAGE = (
    b"From: Bob Smith <bob@smith.com>\r\nTo: Some One <some@one.com>\r\n"
    b"Date: Tue, 16 Mar 2010 16:45:32 +0000\r\nMessage-ID: <1A472770E042064698CB5ADC83A12ACD39455AAB@ABC>\r\n"
    b"MIME-Version: 1.0\r\nSubject: A multipart message\r\n"
    b'Content-Type: multipart/mixed; boundary="===============1534046211=="\r\n\r\n'
    b"--===============1534046211==\r\nContent-Type: text/html; charset=\"us-ascii\"\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<html><body>\r\nHere is the first part.\r\n"
    b"</body></html>\r\n\r\n--===============1534046211==\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n\r\nHere is the second part.\r\n\r\n--===============1534046211==--\r\n"
)
UNICODE_FOLDERS = ["test & \u2622", "Gr\u00fc\u00dfe/\u65e5\u672c\u8a9e"]
ODD_FOLDERS = ["simple", "foo\\bar", 'test"folder"', "stuff & things"]
KEYWORDS = (b"$Junk", b"$NotJunk", b"$MDNSent", b"$label1", b"abc")


class IMAPClientTests(RunningServerMixin, TestCase):
    """
    IMAPClient drives the IMAP listener of the service tree, in threads.
    """

    def setUp(self):
        """
        Skip without IMAPClient (fail under CI), else start the server.
        """
        # CI installs the "test" extra.
        requireInstalled(self, imapclient is not None, "IMAPClient", "pip install -e '.[test]'")
        return RunningServerMixin.setUp(self)

    def connect(self, useUid: bool = True):
        """
        @return: an IMAPClient logged in as alice over implicit TLS
            (blocking: call in a thread).
        """
        client = imapclient.IMAPClient("127.0.0.1", port=self.ports["imaps"], ssl=True,
                                       ssl_context=insecureContext(), timeout=CLIENT_TIMEOUT, use_uid=useUid)
        client.login("alice@example.test", "pw-alice")
        return client

    def inSession(self, f, useUid: bool = True):
        """
        Run C{f(client)} in a thread with a fresh logged-in client, logged
        out after.
        """

        def session():
            client = self.connect(useUid)
            try:
                return f(client)
            finally:
                try:
                    client.logout()
                except (imapclient.IMAPClient.Error, OSError):
                    pass

        return deferToThread(session)

    def folderPath(self, name: str) -> str:
        """
        @return: alice's directory of a folder (modified UTF-7 levels).
        """
        return MaildirFolders(os.path.join(self.dataDir, "mail", "example.test", "alice")).pathOf(name)

    async def test_capabilitiesAndInfo(self):
        """
        The capabilities IMAPClient checks are there; NAMESPACE, ID,
        ENABLE, NOOP and the quota root answer; what we do not offer is
        refused by IMAPClient itself.
        """

        def session(client):
            caps = client.capabilities()
            self.assertTrue(all(client.has_capability(c) for c in caps))
            for name in ("IMAP4REV1", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "ID",
                         "ENABLE", "QUOTA"):
                self.assertTrue(client.has_capability(name), (name, caps))
            self.assertFalse(client.has_capability("WONT EXIST"))
            namespace = client.namespace()
            self.assertEqual((namespace.personal, namespace.other, namespace.shared), ((("", "/"),), None, None))
            self.assertEqual(client.id_({"name": "IMAPClient", "version": imapclient.__version__}),
                             ((b"name", b"QutEmail"),))
            self.assertEqual(client.id_(), ((b"name", b"QutEmail"),))
            self.assertEqual(client.enable("CONDSTORE", "UTF8=ACCEPT"), [])
            self.assertEqual(client.noop(), (b"NOOP completed", []))
            root, quotas = client.get_quota_root("INBOX")
            self.assertEqual(root.quota_roots, [""])
            self.assertEqual([(q.quota_root, q.resource) for q in quotas], [("", "STORAGE")])
            client.select_folder("INBOX")
            # RFC 5256 SORT and THREAD, Gmail's XLIST and X-GM-EXT-1,
            # MULTIAPPEND and ACL are not offered: IMAPClient refuses them
            # without sending anything.
            refused = [(client.sort, ("ARRIVAL",)), (client.thread, ()), (client.xlist_folders, ()),
                       (client.gmail_search, ("x",)), (client.multiappend, ("INBOX", [b"x"])),
                       (client.getacl, ("INBOX",))]
            for method, args in refused:
                self.assertRaises(CapabilityError, method, *args)
            self.assertEqual(client.noop()[0], b"NOOP completed")

        await self.inSession(session)

    async def test_folders(self):
        """
        Folders with unicode names (modified UTF-7 on the wire and on
        disk), C{&}, a backslash and quotes are created, listed, selected,
        examined, renamed and deleted; the special folders are found by
        their RFC 6154 attributes.
        """

        def session(client):
            self.assertTrue(client.folder_exists("INBOX"))
            self.assertFalse(client.folder_exists("this is very unlikely to exist"))
            for flag, name in ((imapclient.imapclient.SENT, "Sent"), (imapclient.imapclient.DRAFTS, "Drafts"),
                               (imapclient.imapclient.TRASH, "Trash"), (imapclient.imapclient.JUNK, "Junk")):
                self.assertEqual(client.find_special_folder(flag), name)
            for name in ODD_FOLDERS + UNICODE_FOLDERS:
                self.assertFalse(client.folder_exists(name), name)
                client.create_folder(name)
                self.assertTrue(client.folder_exists(name), name)
                self.assertTrue(os.path.isdir(os.path.join(self.folderPath(name), "cur")), name)
                selected = client.select_folder(name)
                self.assertEqual(selected[b"EXISTS"], 0)
                self.assertIn(b"\\*", selected[b"PERMANENTFLAGS"])
                client.close_folder()
                examined = client.select_folder(name, readonly=True)
                self.assertEqual((examined[b"PERMANENTFLAGS"], examined[b"READ-ONLY"]), ((), [b""]))
                client.unselect_folder()
            listed = {name: flags for flags, _, name in client.list_folders()}
            self.assertEqual(set(listed), {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Gr\u00fc\u00dfe"}
                             | set(ODD_FOLDERS) | set(UNICODE_FOLDERS))
            self.assertIn(b"\\HasChildren", listed["Gr\u00fc\u00dfe"])
            self.assertIn(b"\\Sent", listed["Sent"])
            self.assertEqual(os.path.basename(self.folderPath("test & \u2622")), ".test &- &JiI-")
            self.assertEqual([n for _, _, n in client.list_folders(pattern="Gr\u00fc\u00dfe/%")],
                             ["Gr\u00fc\u00dfe/\u65e5\u672c\u8a9e"])
            client.rename_folder("Gr\u00fc\u00dfe", "Stra\u00dfe")
            self.assertTrue(client.folder_exists("Stra\u00dfe/\u65e5\u672c\u8a9e"))
            self.assertFalse(client.folder_exists("Gr\u00fc\u00dfe"))
            self.assertRaises(imapclient.IMAPClient.Error, client.create_folder, "simple")
            self.assertRaises(imapclient.IMAPClient.Error, client.delete_folder, "nothing here")
            for name in ODD_FOLDERS + ["test & \u2622", "Stra\u00dfe/\u65e5\u672c\u8a9e", "Stra\u00dfe"]:
                client.delete_folder(name)
                self.assertFalse(client.folder_exists(name), name)
            self.assertEqual({n for _, _, n in client.list_folders()}, {"INBOX", "Sent", "Drafts", "Trash", "Junk"})

        await self.inSession(session)

    async def test_subscriptions(self):
        """
        Every folder can be subscribed and unsubscribed; subscribing to a
        folder that does not exist is refused, as Dovecot refuses it.
        """

        def session(client):
            for name in ("foobar", "stuff & things", "test & \u2622"):
                client.create_folder(name)
            for _, _, name in client.list_sub_folders():
                client.unsubscribe_folder(name)
            self.assertEqual(client.list_sub_folders(), [])
            folders = sorted(n for _, _, n in client.list_folders())
            for name in folders:
                client.subscribe_folder(name)
            self.assertEqual(sorted(n for _, _, n in client.list_sub_folders()), folders)
            for name in folders:
                client.unsubscribe_folder(name)
            self.assertEqual(client.list_sub_folders(), [])
            with self.assertRaises(imapclient.IMAPClient.Error) as refused:
                client.subscribe_folder("this folder is not likely to exist")
            self.assertIn("NONEXISTENT", str(refused.exception))
            self.assertEqual(client.list_sub_folders(), [])

        await self.inSession(session)

    def appendFetchAndFlags(self, client):
        """
        APPEND with flags, keywords and a date; STATUS counts it RECENT
        and UNSEEN; FETCH gives it back; STORE sets, adds and removes
        flags and keywords.
        """
        client.create_folder("appended")
        before = client.folder_status("appended")
        self.assertEqual((before[b"MESSAGES"], before[b"RECENT"], before[b"UNSEEN"], before[b"UIDNEXT"]),
                         (0, 0, 0, 1))
        when = datetime.now().replace(microsecond=0)
        answer = client.append("appended", SIMPLE_MESSAGE, (b"\\Flagged",) + KEYWORDS, when)
        self.assertIn(b"APPEND completed", answer)
        status = client.folder_status("appended")
        self.assertEqual((status[b"MESSAGES"], status[b"RECENT"], status[b"UNSEEN"], status[b"UIDNEXT"]),
                         (1, 1, 1, 2))
        selected = client.select_folder("appended")
        self.assertEqual((selected[b"EXISTS"], selected[b"RECENT"]), (1, 1))
        self.assertTrue(set(KEYWORDS) <= set(selected[b"FLAGS"]), selected[b"FLAGS"])
        self.assertTrue(set(KEYWORDS) | {b"\\*"} <= set(selected[b"PERMANENTFLAGS"]))
        [msgid] = client.search()
        info = client.fetch(msgid, ["RFC822", "FLAGS", "INTERNALDATE", "RFC822.SIZE"])[msgid]
        self.assertEqual(info[b"INTERNALDATE"], when)
        # FETCH RFC822 sets \Seen (RFC 3501 §6.4.5)
        self.assertEqual(set(info[b"FLAGS"]), set(KEYWORDS) | {b"\\Flagged", b"\\Recent", b"\\Seen"})
        self.assertEqual(info[b"RFC822"], SIMPLE_MESSAGE)
        self.assertEqual(info[b"RFC822.SIZE"], len(SIMPLE_MESSAGE))
        self.assertEqual(sorted(client.set_flags(msgid, [b"abc", b"def"])[msgid]), [b"\\Recent", b"abc", b"def"])
        self.assertEqual(sorted(client.get_flags(msgid)[msgid]), [b"\\Recent", b"abc", b"def"])
        self.assertEqual(sorted(client.add_flags(msgid, [b"boo", b"\\Seen"])[msgid]),
                         [b"\\Recent", b"\\Seen", b"abc", b"boo", b"def"])
        self.assertEqual(sorted(client.remove_flags(msgid, [b"boo", b"$Junk"])[msgid]),
                         [b"\\Recent", b"\\Seen", b"abc", b"def"])
        self.assertEqual(client.search(["KEYWORD", "def"]), [msgid])
        self.assertEqual(client.search(["UNKEYWORD", "def"]), [])
        client.close_folder()
        client.delete_folder("appended")

    async def test_appendFetchAndFlags(self):
        """
        See L{appendFetchAndFlags}, with UIDs.
        """
        await self.inSession(self.appendFetchAndFlags)

    async def test_appendFetchAndFlagsBySequence(self):
        """
        See L{appendFetchAndFlags}, with sequence numbers.
        """
        await self.inSession(self.appendFetchAndFlags, useUid=False)

    def search(self, client):
        """
        SEARCH: everything, flags, size, subject, OR and NOT, a UTF-8
        subject, and a keyword.
        """
        client.create_folder("searched")
        for subject, flags in ((b"a", ()), (b"b", (b"$label1",)), (b"c", (b"\\Deleted",)),
                               ("Gr\u00fc\u00dfe".encode("utf-8"), ())):
            client.append("searched", b"Subject: " + subject + b"\r\n\r\nBody\r\n", flags)
        client.select_folder("searched")
        every = client.search("ALL")
        self.assertEqual(len(every), 4)
        self.assertEqual(client.search(), every)
        self.assertEqual(len(client.search("DELETED")), 1)
        self.assertEqual(client.search("NOT DELETED"), client.search(["NOT", "DELETED"]))
        self.assertEqual(len(client.search(["NOT", "DELETED", "SMALLER", 100])), 3)
        self.assertEqual(len(client.search(["NOT", "DELETED", "SUBJECT", "a"])), 1)
        self.assertEqual(len(client.search(["NOT", "DELETED", "SUBJECT", "c"])), 0)
        self.assertEqual(client.search(["OR", "SUBJECT", "a", "SUBJECT", "b"]), every[:2])
        self.assertEqual(client.search(["SUBJECT", "Gr\u00fc\u00dfe"], charset="UTF-8"), every[3:])
        self.assertEqual(client.search(["KEYWORD", "$label1"]), every[1:2])
        self.assertEqual(client.search(["NOT", ["OR", "KEYWORD", "$label1", "DELETED"]]), [every[0], every[3]])
        client.close_folder()
        client.delete_folder("searched")

    async def test_search(self):
        """
        See L{search}, with UIDs.
        """
        await self.inSession(self.search)

    async def test_searchBySequence(self):
        """
        See L{search}, with sequence numbers.
        """
        await self.inSession(self.search, useUid=False)

    def fetchCopyMoveExpunge(self, client):
        """
        FETCH of the multipart message of the live tests (envelope, body
        structure, sections); COPY, MOVE, EXPUNGE and UID EXPUNGE.
        """
        client.create_folder("source")
        client.create_folder("target")
        client.append("source", MULTIPART_MESSAGE, (b"$Junk",))
        client.append("source", SIMPLE_MESSAGE)
        client.select_folder("source")
        first, second = client.search()
        fields = [b"RFC822", b"FLAGS", b"INTERNALDATE", b"ENVELOPE", b"BODYSTRUCTURE", b"RFC822.SIZE"]
        info = client.fetch(first, fields)[first]
        self.assertEqual(info[b"SEQ"], 1)
        self.assertEqual(info[b"RFC822"], MULTIPART_MESSAGE)
        self.assertIsInstance(info[b"INTERNALDATE"], datetime)
        self.assertEqual(info[b"RFC822.SIZE"], len(MULTIPART_MESSAGE))
        envelope = info[b"ENVELOPE"]
        self.assertEqual(envelope.subject, b"A multipart message")
        self.assertEqual([(a.name, a.mailbox, a.host) for a in envelope.from_], [(b"Bob Smith", b"bob", b"smith.com")])
        self.assertEqual([(a.name, a.mailbox, a.host) for a in envelope.to], [(b"Some One", b"some", b"one.com")])
        self.assertEqual(envelope.message_id, b"<1A472770E042064698CB5ADC83A12ACD39455AAB@ABC>")
        structure = info[b"BODYSTRUCTURE"]
        self.assertTrue(structure.is_multipart)
        self.assertEqual([part[:2] for part in structure[0]], [(b"text", b"html"), (b"text", b"plain")])
        sections = client.fetch(first, [b"BODY.PEEK[2]", b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[first]
        self.assertEqual(sections[b"BODY[2]"], b"Here is the second part.\r\n")
        self.assertEqual(sections[b"BODY[HEADER.FIELDS (SUBJECT)]"], b"Subject: A multipart message\r\n\r\n")
        client.copy(first, "target")
        self.assertEqual(client.folder_status("target", ["MESSAGES", "RECENT"]), {b"MESSAGES": 1, b"RECENT": 1})
        if client.use_uid:
            client.move(second, "target")
        else:
            # IMAPClient sends a sequence-number MOVE through imaplib,
            # which has no MOVE: it can only do UID MOVE.
            self.assertRaises(AttributeError, client.move, second, "target")
            client.copy(second, "target")
            client.delete_messages(second)
            client.expunge()
        self.assertEqual(client.search(), [first])
        client.delete_messages(first)
        client.expunge()
        self.assertEqual(client.search(), [])
        client.select_folder("target")
        copied = client.search()
        self.assertEqual(len(copied), 2)
        fetched = client.fetch(copied, ["BODY.PEEK[]", "FLAGS"])
        self.assertEqual(sorted(m[b"BODY[]"] for m in fetched.values()), sorted([MULTIPART_MESSAGE, SIMPLE_MESSAGE]))
        # the first was fetched (so \Seen) before COPY; the second never
        self.assertEqual(sorted(m[b"FLAGS"] for m in fetched.values()),
                         [(b"$Junk", b"\\Seen", b"\\Recent"), (b"\\Recent",)])
        client.delete_messages(copied)
        if client.use_uid:
            client.uid_expunge(copied[:1])
            self.assertEqual(client.search(), copied[1:])
        client.expunge()
        self.assertEqual(client.search(), [])
        client.close_folder()
        for name in ("source", "target"):
            client.delete_folder(name)

    async def test_fetchCopyMoveExpunge(self):
        """
        See L{fetchCopyMoveExpunge}, with UIDs.
        """
        await self.inSession(self.fetchCopyMoveExpunge)

    async def test_fetchCopyMoveExpungeBySequence(self):
        """
        See L{fetchCopyMoveExpunge}, with sequence numbers.
        """
        await self.inSession(self.fetchCopyMoveExpunge, useUid=False)

    async def test_idle(self):
        """
        A client in IDLE is told of a message another connection appends
        (EXISTS, then RECENT), and DONE ends IDLE.
        """

        def startIdle():
            client = self.connect()
            client.select_folder("INBOX")
            client.idle()
            return client

        idler = await deferToThread(startIdle)
        self.addCleanup(lambda: deferToThread(idler.logout))
        await self.inSession(lambda client: client.append("INBOX", SIMPLE_MESSAGE))

        def waitExists():
            seen = []
            for _ in range(3):
                seen += idler.idle_check(timeout=CLIENT_TIMEOUT)
                if (1, b"EXISTS") in seen:
                    break
            return seen

        seen = await deferToThread(waitExists)
        self.assertIn((1, b"EXISTS"), seen)
        text, rest = await deferToThread(idler.idle_done)
        self.assertEqual(text, b"IDLE terminated")
        self.assertIn((1, b"RECENT"), seen + rest)
        status = await self.inSession(lambda client: client.folder_status("INBOX", ["MESSAGES", "RECENT", "UIDNEXT"]))
        self.assertEqual(status, {b"MESSAGES": 1, b"RECENT": 0, b"UIDNEXT": 2})
