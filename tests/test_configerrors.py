"""
Tests for L{qutemail.config}: how a bad configuration is reported (file,
section and key in one line).
"""

import os

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.config import (
    Config,
    ConfigError,
    loadConfig,
)

from tests.test_config import MINIMAL, ALL_KEYS, ConfigFileMixin


class ErrorReportingTests(ConfigFileMixin, SynchronousTestCase):
    """
    Problems with the file itself, and the shape of L{ConfigError}.
    """

    def test_unknownSection(self) -> None:
        """
        An unknown section, including C{[DEFAULT]}, is an error listing the
        known ones.
        """
        path, problems = self.problems(MINIMAL + "[smpt]\nmta_port = 25\n[DEFAULT]\nx = 1\n")
        known = "server, smtp, imap, pop3, tls, limits, mailbox, inbound, content, dkim, qkd, relay, redis, metrics, jmap"
        self.assertEqual(problems, [f"{path}: [smpt]: unknown section (known: {known})",
                                    f"{path}: [DEFAULT]: unknown section (known: {known})"])

    def test_unknownKey(self) -> None:
        """
        An unknown key is an error naming it, with a suggestion when one is
        close.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\nmta_prot = 25\nfrobnicate = yes\n")
        self.assertEqual(problems, [f"{path}: [smtp] mta_prot: unknown key (did you mean mta_port?)",
                                    f"{path}: [smtp] frobnicate: unknown key"])

    def test_missingRequired(self) -> None:
        """
        Each missing required key is an error naming it and its variable.
        """
        path, problems = self.problems("[server]\nhostname = mail.example.test\n")
        self.assertEqual(problems, [
            f"{path}: [server] domains: required but missing (set it in the file or as QUTEMAIL_SERVER_DOMAINS)",
            f"{path}: [server] data_dir: required but missing (set it in the file or as QUTEMAIL_SERVER_DATA_DIR)",
        ])

    def test_emptyFile(self) -> None:
        """
        An empty file lacks the three required keys.
        """
        path, problems = self.problems("")
        self.assertEqual([p.split(":")[1] for p in problems],
                         [" [server] hostname", " [server] domains", " [server] data_dir"])

    def test_missingFile(self) -> None:
        """
        A missing file is an error naming it.
        """
        path = os.path.join(self.mktemp(), "nothere.ini")
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: cannot read the file: No such file or directory")

    def test_directory(self) -> None:
        """
        A directory is not a readable configuration file.
        """
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: cannot read the file: Is a directory")

    def test_unreadable(self) -> None:
        """
        A file that cannot be read is an error naming it and the reason.
        (C{/proc/self/mem} fails to read even for root, who can read any
        file regardless of its mode.)
        """
        path = "/proc/self/mem"
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: cannot read the file: Input/output error")

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is an error giving the bad byte's line.
        """
        path = self.writeConfig(b"[server]\nhostname = caf\xe9\n")
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: line 2: not UTF-8 text")

    def test_syntaxErrors(self) -> None:
        """
        Every line that is not a section, key or comment is reported with its
        line number.
        """
        path, problems = self.problems(MINIMAL + "this is not ini\n[smtp]\n= 5\n")
        self.assertEqual(problems, [f"{path}: line 5: cannot parse 'this is not ini'",
                                    f"{path}: line 7: cannot parse '= 5'"])

    def test_lineNumbers(self) -> None:
        """
        Line numbers count only line ends (LF, CRLF or CR), not other
        characters Python treats as line breaks.
        """
        path, problems = self.problems(MINIMAL.replace("\n", "\r\n") + "[qkd]\r\nsae_id = a\x0cb\rjunk\n")
        self.assertEqual(problems, [f"{path}: line 7: cannot parse 'junk'"])

    def test_noSection(self) -> None:
        """
        A key before any section header is reported with its line number.
        """
        path, problems = self.problems("hostname = x\n" + MINIMAL)
        self.assertEqual(problems, [f"{path}: line 1: 'hostname = x' is outside any [section]"])

    def test_duplicateKey(self) -> None:
        """
        A key given twice in a section is an error naming it and the line.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\nmta_port = 25\nMTA_PORT = 26\n")
        self.assertEqual(problems, [f"{path}: line 7: [smtp] mta_port: duplicate key"])

    def test_duplicateSection(self) -> None:
        """
        A section given twice is an error naming it and the line.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\n[smtp]\n")
        self.assertEqual(problems, [f"{path}: line 6: [smtp]: duplicate section"])

    def test_severalProblems(self) -> None:
        """
        Every problem in the file is reported, in order, on one line joined
        by C{"; "}.
        """
        path = self.writeConfig(
            "[server]\nhostname = -x\ndomains = example.test\n[smtp]\nmta_port = abc\nmax_recipients = 0\n"
            "[tls]\ncert = c.pem\n[bogus]\n"
        )
        error = self.assertRaises(ConfigError, loadConfig, path, {"QUTEMAIL_NOPE": "1"})
        expected = [
            f"{path}: [bogus]: unknown section (known: server, smtp, imap, pop3, tls, limits, mailbox, inbound, "
            "content, dkim, qkd, relay, redis, metrics, jmap)",
            f"{path}: [server] hostname: '-x' is not a valid DNS name",
            f"{path}: [server] data_dir: required but missing (set it in the file or as QUTEMAIL_SERVER_DATA_DIR)",
            f"{path}: [smtp] mta_port: 'abc' is not a port number (0-65535)",
            f"{path}: [smtp] max_recipients: '0' is not a whole number >= 1",
            f"{path}: [tls]: cert is set but key is not; set both or neither",
            "environment QUTEMAIL_NOPE: unknown setting (the prefix QUTEMAIL_ is reserved for "
            "QUTEMAIL_<SECTION>_<KEY>)",
        ]
        self.assertEqual(error.problems, expected)
        self.assertEqual(str(error), "; ".join(expected))

    def test_messageExample(self) -> None:
        """
        A bad port gives the documented one-line message.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\nmta_port = abc\n")
        self.assertEqual(problems, [f"{path}: [smtp] mta_port: 'abc' is not a port number (0-65535)"])

    def test_newlinesQuoted(self) -> None:
        """
        A value continued onto a second line is quoted, so the message stays
        on one line.
        """
        path, problems = self.problems(MINIMAL + "[qkd]\nsae_id = one\n  two\n")
        self.assertEqual(problems, [f"{path}: [qkd] sae_id: 'one\\ntwo' contains control characters"])

    @given(st.text(st.characters(blacklist_categories=["Cs"])))
    def test_anyFile(self, text: str) -> None:
        """
        Whatever the file holds, L{loadConfig} returns a L{Config} or raises a
        L{ConfigError} whose message is one line.
        """
        try:
            self.assertIsInstance(self.load(text), Config)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            self.assertTrue(e.problems)

    @given(st.sampled_from(ALL_KEYS), st.text(st.characters(blacklist_categories=["Cs"])))
    def test_anyValue(self, setting: tuple[str, str], value: str) -> None:
        """
        Whatever a key's value, L{loadConfig} returns a L{Config} or raises a
        L{ConfigError} whose message is one line naming the variable (or,
        for a rule across keys such as C{cert} without C{key}, the section
        and the key).
        """
        variable = f"QUTEMAIL_{setting[0].upper()}_{setting[1].upper()}"
        try:
            self.assertIsInstance(self.load(MINIMAL, {variable: value}), Config)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            if f"environment {variable}: " not in str(e):
                # A rule across keys names the section, then both keys.
                self.assertRegex(str(e), rf"\[{setting[0]}\]: (\S+ and )?{setting[1]} ")
