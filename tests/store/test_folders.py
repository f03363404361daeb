# -*- test-case-name: tests.store.test_folders -*-
"""
Tests for L{qutemail.store.folders}: IMAP folder names, their mapping to
Maildir++ directories, and folder operations.
"""

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.store.folders import (
    FOLDER_MARKER,
    INBOX,
    SPECIAL_FOLDERS,
    SUBSCRIPTIONS_FILE,
    FolderError,
    FolderExists,
    FolderHasChildren,
    InvalidFolderName,
    MaildirFolders,
    NoSuchFolder,
    decodeMailboxName,
    encodeMailboxName,
    isInbox,
    nameOfDirectory,
    validateMailboxName,
)
from qutemail.blocking import InlineRunner

TRAVERSALS = [
    "../bob", "../../bob/INBOX", "INBOX/../x", "..", ".", "/", "//", "/x", "x/", "a//b", "a/../b",
    "a/..", "a/.", ".hidden", "a/.b", "..a", "a..b", "a.b", "a\x00b", "\x00", "a\nb", "a\rb", "a\tb",
    "a\x7fb", "a\x85b", "x" * 300, "a/" * 200 + "a", "", "*", "a%", "\\..\\bob", "INBOX/x",
    "inbox/..", " a", "a /b", "\ud800", "~", "~/name", "~bob", "~/../bob",
]


def _makeFolders(case: SynchronousTestCase) -> MaildirFolders:
    """
    @return: folders of a new, empty mailbox in a temporary directory
        (C{data_dir/mail/example.test/alice}, beside C{bob}).
    """
    base = case.mktemp()
    os.makedirs(os.path.join(base, "mail", "example.test", "bob", "cur"))
    return MaildirFolders(os.path.join(base, "mail", "example.test", "alice"))


class NameCodingTests(SynchronousTestCase):
    """
    IMAP modified UTF-7 (RFC 3501 §5.1.3).
    """

    def test_rfcExample(self) -> None:
        """
        The RFC's example name encodes and decodes as the RFC shows.
        """
        wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        self.assertEqual(decodeMailboxName(wire), "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e")
        self.assertEqual(encodeMailboxName("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"), wire)

    def test_ampersand(self) -> None:
        """
        C{&} is written C{&-}.
        """
        self.assertEqual(encodeMailboxName("R&D"), "R&-D")
        self.assertEqual(decodeMailboxName("R&-D"), "R&D")

    def test_nonCanonicalRefused(self) -> None:
        """
        Malformed and non-canonical encodings are refused with
        L{InvalidFolderName}: an unclosed run, ASCII encoded in base64,
        two adjacent runs, bad base64, raw non-ASCII, bad padding bits.
        """
        for wire in ["&", "&U,BTFw", "&AGE-", "&U,A-&U,A-", "&*-", "caf\u00e9", "&U,B-", "&2AA-"]:
            e = self.assertRaises(InvalidFolderName, decodeMailboxName, wire)
            self.assertTrue(e.reason, wire)

    @given(st.text())
    def test_roundTrip(self, name: str) -> None:
        """
        Any text without lone surrogates round-trips, and its encoding is
        printable ASCII.
        """
        try:
            wire = encodeMailboxName(name)
        except InvalidFolderName:
            self.assertTrue(any(0xD800 <= ord(c) <= 0xDFFF for c in name))
            return
        self.assertTrue(all(0x20 <= ord(c) <= 0x7E for c in wire))
        self.assertEqual(decodeMailboxName(wire), name)

    @given(st.text(alphabet=st.sampled_from("&-AGEU,+/ab\u00e9")))
    def test_decodeNeverCrashes(self, wire: str) -> None:
        """
        Decoding any string gives text or L{InvalidFolderName}, never
        another exception.
        """
        try:
            decodeMailboxName(wire)
        except InvalidFolderName:
            pass


class ValidationTests(SynchronousTestCase):
    """
    Names are validated before they reach the file system.
    """

    def test_traversalsRefused(self) -> None:
        """
        Every traversal attempt and malformed name is refused by every
        operation with L{InvalidFolderName} and a reason, and nothing is
        created anywhere.
        """
        folders = _makeFolders(self)
        folders.ensureSpecialFolders()
        before = sorted(os.walk(os.path.dirname(folders.root)))
        for name in TRAVERSALS:
            for call in [folders.pathOf, folders.exists, folders.create, folders.delete, folders.subscribe,
                         folders.unsubscribe, lambda n: folders.rename("Sent", n),
                         lambda n: folders.rename(n, "Elsewhere")]:
                e = self.assertRaises(InvalidFolderName, call, name)
                self.assertTrue(e.reason, name)
                self.assertIsInstance(e, FolderError)
        self.assertEqual(sorted(os.walk(os.path.dirname(folders.root))), before)

    def test_reasons(self) -> None:
        """
        The reason says what is wrong with the name.
        """
        folders = _makeFolders(self)
        cases = {"../bob": "'..'", "a/./b": "'.'", "~/name": "'~'", "a/": "empty", "a//b": "empty", "a\x00b": "NUL", "a\x01": "control", "x" * 300: "too long",
                 "/a": "'/'", "INBOX/x": "INBOX", "": "empty"}
        for name, word in cases.items():
            self.assertIn(word, self.assertRaises(InvalidFolderName, folders.pathOf, name).reason)

    @given(st.text(alphabet=st.sampled_from("./\\\x00\n &-aB\u00e9\u53f0*%~"), max_size=12)
           | st.lists(st.sampled_from(["..", ".", "", "a", "INBOX", "b.c", "\u00e9"]), max_size=4).map("/".join))
    def test_insideOrRefused(self, name: str) -> None:
        """
        A name is either refused or maps to the mailbox itself (INBOX) or to
        a directory whose parent is the mailbox, named with a leading dot,
        and that directory maps back to the same name.
        """
        folders = MaildirFolders("/srv/mail/example.test/alice")
        try:
            path = folders.pathOf(name)
        except InvalidFolderName as e:
            self.assertTrue(e.reason)
            return
        if name.upper() == INBOX:
            self.assertEqual(path, folders.root)
            return
        self.assertEqual(os.path.dirname(os.path.normpath(path)), folders.root)
        base = os.path.basename(path)
        self.assertTrue(base.startswith(".") and base not in (".", ".."))
        self.assertEqual(nameOfDirectory(base), name)

    def test_inboxAnyCase(self) -> None:
        """
        C{INBOX} is case-insensitive and is the mailbox directory.
        """
        folders = _makeFolders(self)
        for name in ["INBOX", "inbox", "InBoX"]:
            self.assertEqual(folders.pathOf(name), folders.root)

    def test_directoryNames(self) -> None:
        """
        Levels become Maildir++ C{.a.b} directories, in modified UTF-7.
        """
        folders = _makeFolders(self)
        self.assertEqual(folders.pathOf("Sent"), os.path.join(folders.root, ".Sent"))
        self.assertEqual(folders.pathOf("a/b/c"), os.path.join(folders.root, ".a.b.c"))
        self.assertEqual(folders.pathOf("caf\u00e9/R&D"), os.path.join(folders.root, ".caf&AOk-.R&-D"))


class MailboxNameTests(SynchronousTestCase):
    """
    L{validateMailboxName}: the names IMAP clients send, checked before any
    file-system call (issue 20).
    """

    def test_refusedClasses(self) -> None:
        """
        Each class of refused name (as the client sends it, in modified
        UTF-7) raises L{InvalidFolderName} with a reason that names it.
        """
        cases = [
            ("~/name", "'~'"), ("~", "'~'"), ("~bob/INBOX", "'~'"), ("/etc", "'/'"), ("/", "'/'"),
            ("..", "'..'"), ("a/../b", "'..'"), ("../bob", "'..'"), (".", "'.'"), ("a/./b", "'.'"),
            ("a//b", "empty"), ("a/", "empty"), ("", "empty"), ("a\x00b", "modified UTF-7"),
            ("a&AAA-b", "NUL"), ("a&AAE-b", "control"), ("&AB8-", "control"), ("a&AH8-", "control"),
            ("&AIU-", "control"), ("a\tb", "modified UTF-7"), ("&U,BTFw", "modified UTF-7"),
            ("caf\u00e9", "modified UTF-7"), (b"caf\xc3\xa9", "modified UTF-7"), ("&AGE-", "canonical"),
            ("&2AA-", "modified UTF-7"), ("x" * 255, "too long"), ("a/" + "b" * 253, "too long"),
            ("&U,A-" * 50 + "x" * 5, "too long"), ("a.b", "'.'"), (".hidden", "'.'"), ("a*", "'*'"),
            ("a%", "'%'"), ("INBOX/x", "INBOX"), (" a", "white space"),
        ]
        for wire, word in cases:
            e = self.assertRaises(InvalidFolderName, validateMailboxName, wire)
            self.assertIn(word, e.reason, wire)
            self.assertTrue(e.reason.isascii(), wire)

    def test_accepted(self) -> None:
        """
        Names with spaces, non-ASCII letters, backslashes, a C{~} not at the
        start and nested levels are accepted, and map to one Maildir++
        directory directly in the mailbox; the INBOX is canonical; CREATE's
        trailing C{/} is dropped; 254 encoded octets is the longest name.
        """
        folders = _makeFolders(self)
        cases = {
            "My Folder": "My Folder", "a b/c d": "a b/c d", "Caf&AOk-/&ZeVnLIqe-": "Caf\u00e9/\u65e5\u672c\u8a9e",
            "R&-D": "R&D", "a/b/c/d": "a/b/c/d", "a\\b": "a\\b", "\\": "\\", "a\\b/\\c\\": "a\\b/\\c\\",
            "a~": "a~", "a/~b": "a/~b", "inbox": INBOX, "x" * 254: "x" * 254, "a/" + "b" * 252: "a/" + "b" * 252,
        }
        for wire, name in cases.items():
            self.assertEqual(validateMailboxName(wire), name)
            self.assertEqual(validateMailboxName(wire.encode("ascii")), name)
            if name != INBOX:
                self.assertEqual(folders.pathOf(name), os.path.join(folders.root, "." + wire.replace("/", ".")))
        self.assertEqual(validateMailboxName(b"work/2024/", trailingSeparator=True), "work/2024")
        self.assertEqual(validateMailboxName("x" * 254 + "/", trailingSeparator=True), "x" * 254)
        self.assertRaises(InvalidFolderName, validateMailboxName, "work/")
        self.assertFalse(os.path.exists(folders.root))

    def test_backslashFolders(self) -> None:
        """
        A folder with a backslash is created as C{.a\\b}, listed, renamed
        (children too) and deleted like any other, and its directory maps
        back to the one name.
        """
        folders = _makeFolders(self)
        folders.create("a\\b/c")
        self.assertTrue(os.path.isdir(os.path.join(folders.root, ".a\\b.c", "cur")))
        self.assertEqual(nameOfDirectory(".a\\b"), "a\\b")
        self.assertIn("a\\b/c", [e.name for e in folders.listFolders()])
        folders.rename("a\\b", "\\x")
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX, "\\x", "\\x/c"])
        folders.delete("\\x/c")
        self.assertEqual(sorted(os.listdir(folders.root)), [".\\x", "cur", "new", "tmp"])

    def test_tildeRefusedEverywhere(self) -> None:
        """
        C{~/name} is refused by every folder operation, and renaming the
        INBOX there leaves the INBOX's messages where they are.
        """
        folders = _makeFolders(self)
        folders.ensureSpecialFolders()
        with open(os.path.join(folders.root, "new", "1.M1.host"), "wb") as f:
            f.write(b"Subject: x\n\nbody\n")
        before = sorted(os.walk(os.path.dirname(folders.root)))
        for call in [folders.create, lambda n: folders.rename(INBOX, n), lambda n: folders.rename("Sent", n),
                     folders.subscribe, folders.pathOf, folders.exists, folders.delete]:
            self.assertIn("'~'", self.assertRaises(InvalidFolderName, call, "~/name").reason)
        self.assertEqual(sorted(os.walk(os.path.dirname(folders.root))), before)

    @given(st.tuples(st.sampled_from(["", "~", "/", "~/", "\\", "../", "./"]),
                     st.lists(st.sampled_from(["a", "B c", "\u00e9", "\u53f0", "&", "\\", "~", "..", ".", "",
                                               "x" * 100, "\x01", "INBOX"]), min_size=1, max_size=4))
           .map(lambda t: t[0] + "/".join(t[1]))
           | st.lists(st.sampled_from(["~", "/", ".", "..", "\\", "a", "B c", " ", "&", "-", "\u00e9", "\u53f0",
                                       "\U0001f600", "INBOX", "\x00", "\n", "\x1f", "\x7f", "\x85", "\u2028",
                                       "*", "%", "\ud800", "&AOk-", "x" * 60]), max_size=10).map("".join)
           | st.text(max_size=300))
    def test_acceptedNamesStayInside(self, name: str) -> None:
        """
        For any text, sent as is or encoded in modified UTF-7, either
        L{validateMailboxName} refuses it, or it is the INBOX, or it maps
        (L{MaildirFolders.pathOf}, nothing created) to one Maildir++ folder
        directory directly inside the mailbox, after symbolic links are
        resolved, that maps back to the same name; and an accepted name
        obeys the rules: no leading C{~} or C{/}, no empty, C{.} or C{..}
        level, no control character, at most 254 octets encoded.
        """
        base = os.path.realpath(self.mktemp())
        os.makedirs(base)
        folders = MaildirFolders(os.path.join(base, "alice"))
        root = os.path.realpath(folders.root)
        wires: list[str] = [name]
        try:
            wires.append(encodeMailboxName(name))
        except InvalidFolderName:
            pass
        for wire in wires:
            try:
                accepted = validateMailboxName(wire)
            except InvalidFolderName as e:
                self.assertTrue(e.reason)
                continue
            path = os.path.realpath(folders.pathOf(accepted))
            self.assertEqual(os.path.commonpath([root, path]), root)
            if isInbox(accepted):
                self.assertEqual(path, root)
                continue
            self.assertEqual(os.path.dirname(path), root)
            directory = os.path.basename(path)
            self.assertTrue(directory.startswith(".") and directory not in (".", ".."), directory)
            self.assertEqual(nameOfDirectory(directory), accepted)
            self.assertFalse(accepted.startswith(("~", "/")), accepted)
            self.assertFalse({"", ".", ".."} & set(accepted.split("/")), accepted)
            self.assertFalse([c for c in accepted if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F], accepted)
            self.assertLessEqual(len(encodeMailboxName(accepted)), 254)
        self.assertEqual(os.listdir(base), [])


class FolderOperationTests(SynchronousTestCase):
    """
    Create, list, rename and delete.
    """

    def test_create(self) -> None:
        """
        A created folder has C{cur/ new/ tmp/} and the C{maildirfolder}
        marker, and is listed; the INBOX is listed first, always.
        """
        folders = _makeFolders(self)
        path = InlineRunner().run(folders.create, "Projects")
        self.assertEqual(self.successResultOf(path), os.path.join(folders.root, ".Projects"))
        for sub in ["cur", "new", "tmp", FOLDER_MARKER]:
            self.assertTrue(os.path.exists(os.path.join(folders.root, ".Projects", sub)), sub)
        for sub in ["cur", "new", "tmp"]:
            self.assertTrue(os.path.isdir(os.path.join(folders.root, sub)))
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX, "Projects"])
        self.assertTrue(folders.exists("Projects"))

    def test_createExisting(self) -> None:
        """
        Creating an existing folder, or the INBOX, is refused.
        """
        folders = _makeFolders(self)
        folders.create("A")
        self.assertRaises(FolderExists, folders.create, "A")
        self.assertRaises(FolderExists, folders.create, "inbox")

    def test_createParents(self) -> None:
        """
        Creating C{a/b/c} creates C{a} and C{a/b} (RFC 3501 §6.3.3), and the
        list says which have children.
        """
        folders = _makeFolders(self)
        folders.create("a/b/c")
        entries = folders.listFolders()
        self.assertEqual([(e.name, e.hasChildren) for e in entries],
                         [(INBOX, False), ("a", True), ("a/b", True), ("a/b/c", False)])

    def test_listSkipsForeign(self) -> None:
        """
        Files and directories that are not valid folders are not listed.
        """
        folders = _makeFolders(self)
        folders.create("Real")
        os.mkdir(os.path.join(folders.root, "..x"))
        os.mkdir(os.path.join(folders.root, ".&AGE-"))
        open(os.path.join(folders.root, ".notadir"), "w").close()
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX, "Real"])

    def test_nonAsciiFolder(self) -> None:
        """
        Non-ASCII names are stored in modified UTF-7 and listed as text.
        """
        folders = _makeFolders(self)
        folders.create("\u53f0\u5317/\u65e5\u672c\u8a9e")
        self.assertTrue(os.path.isdir(os.path.join(folders.root, ".&U,BTFw-.&ZeVnLIqe-", "cur")))
        self.assertIn("\u53f0\u5317/\u65e5\u672c\u8a9e", [e.name for e in folders.listFolders()])

    def test_rename(self) -> None:
        """
        Renaming moves the folder, its messages and its children, and
        creates the new name's parents.
        """
        folders = _makeFolders(self)
        folders.create("a/b")
        folders.create("a/c")
        folders.create("ab")
        message = os.path.join(folders.pathOf("a/b"), "new", "1.M1Q1R0.host,S=3")
        with open(message, "w") as f:
            f.write("hi\n")
        folders.rename("a", "x/y")
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX, "ab", "x", "x/y", "x/y/b", "x/y/c"])
        self.assertTrue(os.path.exists(os.path.join(folders.pathOf("x/y/b"), "new", "1.M1Q1R0.host,S=3")))

    def test_renameRefused(self) -> None:
        """
        Renaming a missing folder, onto an existing one (or onto an existing
        child's new name), onto INBOX or into itself is refused, and nothing
        moves.
        """
        folders = _makeFolders(self)
        folders.create("a/b")
        folders.create("c")
        folders.create("c/b")
        folders.create("d")
        self.assertRaises(NoSuchFolder, folders.rename, "missing", "z")
        self.assertRaises(FolderExists, folders.rename, "a", "d")
        self.assertRaises(FolderExists, folders.rename, "a", "INBOX")
        self.assertRaises(FolderExists, folders.rename, "a", "a")
        self.assertRaises(InvalidFolderName, folders.rename, "a", "a/x")
        os.rename(folders.pathOf("d"), folders.pathOf("e"))
        folders.delete("c/b")
        folders.delete("c")
        folders.create("c/b")
        self.assertRaises(FolderExists, folders.rename, "a", "c")
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX, "a", "a/b", "c", "c/b", "e"])

    def test_renameInbox(self) -> None:
        """
        Renaming the INBOX moves its messages to the new folder and leaves
        it empty (RFC 3501 §6.3.5).
        """
        folders = _makeFolders(self)
        folders.ensureSpecialFolders()
        with open(os.path.join(folders.root, "new", "1.M1Q1R0.host,S=3"), "w") as f:
            f.write("hi\n")
        with open(os.path.join(folders.root, "cur", "2.M1Q1R0.host,S=3:2,S"), "w") as f:
            f.write("hi\n")
        folders.rename("INBOX", "Old")
        self.assertEqual(os.listdir(os.path.join(folders.root, "new")), [])
        self.assertEqual(os.listdir(os.path.join(folders.root, "cur")), [])
        self.assertEqual(os.listdir(os.path.join(folders.pathOf("Old"), "new")), ["1.M1Q1R0.host,S=3"])
        self.assertEqual(os.listdir(os.path.join(folders.pathOf("Old"), "cur")), ["2.M1Q1R0.host,S=3:2,S"])

    def test_delete(self) -> None:
        """
        Deleting removes the folder and its messages.
        """
        folders = _makeFolders(self)
        folders.create("Old")
        with open(os.path.join(folders.pathOf("Old"), "new", "1.M1Q1R0.host,S=3"), "w") as f:
            f.write("hi\n")
        folders.delete("old".capitalize())
        self.assertFalse(os.path.exists(folders.pathOf("Old")))
        self.assertEqual(os.listdir(os.path.join(folders.root, "tmp")), [])
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX])

    def test_deleteRefused(self) -> None:
        """
        Deleting the INBOX, a missing folder or a folder with children is
        refused.
        """
        folders = _makeFolders(self)
        folders.create("a/b")
        e = self.assertRaises(FolderError, folders.delete, "inbox")
        self.assertIn("INBOX", e.reason)
        self.assertRaises(NoSuchFolder, folders.delete, "nothing")
        self.assertRaises(FolderHasChildren, folders.delete, "a")
        folders.delete("a/b")
        folders.delete("a")
        self.assertEqual([e.name for e in folders.listFolders()], [INBOX])


class SpecialFolderTests(SynchronousTestCase):
    """
    The special-use folders (RFC 6154).
    """

    def test_createdOnFirstUse(self) -> None:
        """
        L{MaildirFolders.ensureSpecialFolders} creates the mailbox and the
        special folders, subscribed, once.
        """
        folders = _makeFolders(self)
        self.assertEqual(folders.ensureSpecialFolders(), list(SPECIAL_FOLDERS))
        self.assertEqual(folders.ensureSpecialFolders(), [])
        entries = {e.name: e.specialUse for e in folders.listFolders()}
        self.assertEqual(entries, {INBOX: None, "Sent": "\\Sent", "Drafts": "\\Drafts",
                                   "Trash": "\\Trash", "Junk": "\\Junk"})
        self.assertEqual(folders.subscriptions(), list(SPECIAL_FOLDERS))
        for sub in ["cur", "new", "tmp"]:
            self.assertTrue(os.path.isdir(os.path.join(folders.root, sub)))

    def test_onlyMissingOnes(self) -> None:
        """
        Only the missing special folders are created; an unsubscribed one
        stays unsubscribed.
        """
        folders = _makeFolders(self)
        folders.create("Sent")
        self.assertEqual(folders.ensureSpecialFolders(), ["Drafts", "Trash", "Junk"])
        self.assertEqual(folders.subscriptions(), ["Drafts", "Trash", "Junk"])


class SubscriptionTests(SynchronousTestCase):
    """
    The C{subscriptions} file.
    """

    def test_subscribe(self) -> None:
        """
        Subscriptions are kept in order, once each, one modified UTF-7 name
        a line; INBOX is spelt C{INBOX}; names need not exist.
        """
        folders = _makeFolders(self)
        folders.subscribe("Lists/caf\u00e9")
        folders.subscribe("inbox")
        folders.subscribe("Lists/caf\u00e9")
        self.assertEqual(folders.subscriptions(), ["Lists/caf\u00e9", INBOX])
        with open(os.path.join(folders.root, SUBSCRIPTIONS_FILE), "rb") as f:
            self.assertEqual(f.read(), b"Lists/caf&AOk-\nINBOX\n")

    def test_unsubscribe(self) -> None:
        """
        Unsubscribing removes a name; an unknown name is ignored.
        """
        folders = _makeFolders(self)
        folders.subscribe("a")
        folders.subscribe("b")
        folders.unsubscribe("a")
        folders.unsubscribe("zzz")
        self.assertEqual(folders.subscriptions(), ["b"])

    def test_badLinesIgnored(self) -> None:
        """
        Lines that are not valid names (written by hand or by another tool)
        are ignored.
        """
        folders = _makeFolders(self)
        os.makedirs(folders.root)
        with open(os.path.join(folders.root, SUBSCRIPTIONS_FILE), "wb") as f:
            f.write(b"good\n../bob\n\n&bad\n\xff\nalso/good\n")
        self.assertEqual(folders.subscriptions(), ["good", "also/good"])

    def test_noFile(self) -> None:
        """
        Without the file there are no subscriptions.
        """
        self.assertEqual(_makeFolders(self).subscriptions(), [])
