# -*- test-case-name: tests.access.test_imapnegotiate -*-
"""
Tests for ID (RFC 2971) and ENABLE (RFC 5161) in
L{qutemail.access.imapnegotiate} (issue 20: both answered C{BAD}).
"""

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.access.test_imapserver import SessionMixin


class IDTests(SessionMixin, SynchronousTestCase):
    """
    ID names the server and logs the client's fields at debug level.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_advertised(self) -> None:
        """
        CAPABILITY lists ID and ENABLE, before and after login.
        """
        proto, transport = self.connect()
        self.assertIn(b" ID ENABLE ", self.greeting)
        proto, transport = self.login()
        self.assertIn(b" ID ENABLE ", self.send(proto, transport, b"a CAPABILITY"))

    def test_idNil(self) -> None:
        """
        C{ID NIL} is answered with the server's name, in any state.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"a ID NIL"),
                         b'* ID ("name" "QutEmail")\r\na OK ID completed\r\n')
        proto, transport = self.selected()
        self.assertEqual(self.send(proto, transport, b"b id nil"),
                         b'* ID ("name" "QutEmail")\r\nb OK ID completed\r\n')

    def test_clientFieldsLogged(self) -> None:
        """
        The client's fields are logged once at debug level, NIL values as
        C{None}, control characters replaced and long values cut short.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.connect()
        long = b"v" * 1000
        command = b'a ID ("name" "Thunder\\"bird" "version" NIL "os" {5}'
        self.assertEqual(self.send(proto, transport, command), b"+ Ready for 5 octets of text\r\n")
        reply = self.send(proto, transport, b'Li\x01nx "x" "' + long + b'")')
        self.assertEqual(reply, b'* ID ("name" "QutEmail")\r\na OK ID completed\r\n')
        [event] = [e for e in events if "clientId" in e]
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(event["clientId"], {"name": 'Thunder"bird', "version": None, "os": "Li?nx", "x": "v" * 200})
        self.assertEqual(event["peer"], "192.0.2.1")

    def test_badArguments(self) -> None:
        """
        Anything but NIL or a list of field and value strings within the
        RFC's limits (30 pairs, 30-octet fields, 1024-octet values) is BAD.
        """
        proto, transport = self.connect()
        pairs = b" ".join(b'"f%d" "v"' % (i,) for i in range(31))
        for argument in (b"", b'("name")', b"(NIL \"x\")", b'("a" ("b"))', b'"name"', b"NIL NIL", b"(" + pairs + b")",
                         b'("' + b"f" * 31 + b'" "v")', b'("f" "' + b"v" * 1025 + b'")'):
            self.assertTrue(self.send(proto, transport, b"a ID " + argument).startswith(b"a BAD "), argument)
        thirty = b" ".join(b'"f%d" "v"' % (i,) for i in range(30))
        self.assertTrue(self.send(proto, transport, b"b ID (" + thirty + b")").endswith(b"b OK ID completed\r\n"))


class EnableTests(SessionMixin, SynchronousTestCase):
    """
    ENABLE enables nothing yet, and says so.
    """

    def setUp(self) -> None:
        """
        Accounts and a factory.
        """
        self.setUpSessions()

    def test_enableNothing(self) -> None:
        """
        ENABLE of extensions we do not have answers an empty C{ENABLED}
        and OK, logged in or with a folder selected.
        """
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"a ENABLE CONDSTORE QRESYNC UTF8=ACCEPT"),
                         b"* ENABLED\r\na OK ENABLE completed\r\n")
        self.send(proto, transport, b"b SELECT INBOX")
        self.assertEqual(self.send(proto, transport, b"c enable X-UNKNOWN"),
                         b"* ENABLED\r\nc OK ENABLE completed\r\n")

    def test_enableRefused(self) -> None:
        """
        ENABLE before login is not valid; without names, or with a list
        or a string, it is BAD.
        """
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"a ENABLE CONDSTORE"),
                         b"a BAD Command not valid in this state\r\n")
        proto, transport = self.login()
        for argument in (b"", b" (CONDSTORE)", b' "CONDSTORE"'):
            self.assertTrue(self.send(proto, transport, b"b ENABLE" + argument).startswith(b"b BAD "), argument)
