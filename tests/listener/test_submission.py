"""
Tests of the submission listeners (587 with STARTTLS, 465 with implicit
TLS): AUTH, sender rules and relaying, over real sockets; and of the AUTH
throttle with a clock.
"""

import base64
import smtplib

from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.listener.auth import SASLError, parsePlain
from qutemail.policy.throttle import AuthThrottle
from tests.integration.support import CLIENT_TIMEOUT, insecureContext, maildirFiles, waitFor
from tests.integration.test_mta import RunningServerMixin


class SubmissionTests(RunningServerMixin, TestCase):
    """
    Port 587: STARTTLS, then AUTH, then mail.
    """

    def submit(self, f, starttls: bool = True, login: tuple | None = ("bob@example.test", "pw-bob")):
        """
        Run C{f(client)} on an smtplib session to the submission port,
        after STARTTLS and AUTH unless told otherwise.
        """

        def prepare(client):
            client.ehlo()
            if starttls:
                client.starttls(context=insecureContext())
                client.ehlo()
            if login:
                client.login(*login)

        return self.smtp(f, self.ports["submission"], prepare)

    async def test_beforeTLS(self):
        """
        Before STARTTLS, EHLO offers no AUTH, AUTH gets 530 5.7.0 and MAIL
        gets 530 5.7.0.
        """

        def session(client):
            features = dict(client.esmtp_features)
            return features, client.docmd("AUTH", "PLAIN AGJvYgBwdw=="), client.docmd("MAIL", "FROM:<bob@example.test>")

        features, auth, mail = await self.submit(session, starttls=False, login=None)
        self.assertNotIn("auth", features)
        self.assertIn("starttls", features)
        self.assertEqual(auth, (530, b"5.7.0 Must issue a STARTTLS command first"))
        self.assertEqual(mail, (530, b"5.7.0 Authentication required"))

    async def test_mailNeedsAuth(self):
        """
        After STARTTLS, AUTH PLAIN and LOGIN are offered, and MAIL without
        AUTH still gets 530 5.7.0.
        """

        def session(client):
            return client.esmtp_features["auth"], client.docmd("MAIL", "FROM:<bob@example.test>")

        mechanisms, mail = await self.submit(session, login=None)
        self.assertEqual(mechanisms.split(), ["PLAIN", "LOGIN"])
        self.assertEqual(mail, (530, b"5.7.0 Authentication required"))

    async def test_wrongPassword(self):
        """
        A wrong password gets 535 5.7.8.
        """

        def session(client):
            return client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0bob@example.test\0nope").decode())

        self.assertEqual(await self.submit(session, login=None), (535, b"5.7.8 Authentication credentials invalid"))

    async def test_submitLocalAndRemote(self):
        """
        Authenticated bob's message to alice is delivered; his message to an
        outside address is relayed to its exchanger (found through DNS) over
        STARTTLS, and leaves the queue.
        """

        def session(client):
            local = client.sendmail("bob@example.test", ["alice@example.test"],
                                    b"From: Bob <bob@example.test>\r\nSubject: hi\r\n\r\nhello\r\n")
            remote = client.sendmail("bob@example.test", ["dave@remote.test"],
                                     b"From: bob@example.test\r\nSubject: out\r\n\r\nhello\r\n")
            return local, remote

        self.assertEqual(await self.submit(session), ({}, {}))
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            self.assertIn(b"with ESMTPSA id", f.read())
        [received] = await waitFor(lambda: self.remote.received)
        self.assertEqual((received.sender, received.recipients, received.tls),
                         ("bob@example.test", ["dave@remote.test"], True))
        self.assertIn(b"Subject: out\r\n", received.data)
        self.assertTrue(received.data.endswith(b"\r\n\r\nhello\r\n"))
        await waitFor(lambda: not self.root.queue.entries)

    async def test_foreignSender(self):
        """
        Bob may not use alice's address as envelope sender (553 5.7.1) nor
        in the From header (550 5.7.1); nothing is stored.
        """

        def session(client):
            envelope = client.docmd("MAIL", "FROM:<alice@example.test>")
            client.rset()
            try:
                client.sendmail("bob@example.test", ["alice@example.test"],
                                b"From: alice@example.test\r\nSubject: forged\r\n\r\nx\r\n")
            except smtplib.SMTPDataError as e:
                return envelope, (e.smtp_code, e.smtp_error)
            return envelope, None

        envelope, header = await self.submit(session)
        self.assertEqual(envelope, (553, b"5.7.1 Sender address is not owned by the authenticated user"))
        self.assertEqual(header, (550, b"5.7.1 From header is not an address of the authenticated user"))
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])

    async def test_implicitTLSWithLogin(self):
        """
        Port 465: TLS from the first byte, AUTH LOGIN, and the message lands.
        """

        def run():
            client = smtplib.SMTP_SSL("127.0.0.1", self.ports["smtps"], local_hostname="c.test",
                                      timeout=CLIENT_TIMEOUT, context=insecureContext())
            try:
                client.ehlo()
                offered = client.esmtp_features.get("auth", "")
                client.user, client.password = "bob@example.test", "pw-bob"
                code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
                refused = client.sendmail("bob@example.test", ["alice@example.test"],
                                          b"From: bob@example.test\r\nSubject: 465\r\n\r\nx\r\n")
                return offered, code, refused, "starttls" in client.esmtp_features
            finally:
                client.quit()

        offered, code, refused, starttls = await deferToThread(run)
        self.assertEqual(offered.split(), ["PLAIN", "LOGIN"])
        self.assertEqual((code, refused, starttls), (235, {}, False))
        await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))

    async def test_authLockout(self):
        """
        Ten wrong passwords from one IP lock it out: the right password then
        gets 454 4.7.0 from that IP.
        """
        throttle = self.root.listeners["submission"].smtpFactory.settings.throttle
        throttle.failureDelaySeconds = 0.0
        bad = "PLAIN " + base64.b64encode(b"\0bob@example.test\0wrong").decode()
        good = "PLAIN " + base64.b64encode(b"\0bob@example.test\0pw-bob").decode()

        def session(client):
            codes = [client.docmd("AUTH", bad)[0] for _ in range(10)]
            return codes, client.docmd("AUTH", good)

        codes, last = await self.submit(session, login=None)
        self.assertEqual(codes, [535] * 10)
        self.assertEqual(last, (454, b"4.7.0 Too many failed authentications, try again later"))


class ThrottleTests(SynchronousTestCase):
    """
    The AUTH throttle, with a clock.
    """

    def test_lockoutAndExpiry(self):
        """
        Ten failures lock the IP out for fifteen minutes; other IPs are not
        affected; after the lockout the IP may try again.
        """
        clock = Clock()
        throttle = AuthThrottle()
        for _ in range(9):
            throttle.failed("192.0.2.1", clock.seconds())
            clock.advance(1)
        self.assertTrue(throttle.allowed("192.0.2.1", clock.seconds()))
        throttle.failed("192.0.2.1", clock.seconds())
        self.assertFalse(throttle.allowed("192.0.2.1", clock.seconds()))
        self.assertTrue(throttle.allowed("198.51.100.2", clock.seconds()))
        clock.advance(899)
        self.assertFalse(throttle.allowed("192.0.2.1", clock.seconds()))
        clock.advance(1)
        self.assertTrue(throttle.allowed("192.0.2.1", clock.seconds()))

    def test_oldFailuresForgotten(self):
        """
        Failures older than the window do not count toward a lockout, and
        a success clears the count.
        """
        clock = Clock()
        throttle = AuthThrottle()
        for _ in range(9):
            throttle.failed("192.0.2.1", clock.seconds())
        clock.advance(601)
        throttle.failed("192.0.2.1", clock.seconds())
        self.assertTrue(throttle.allowed("192.0.2.1", clock.seconds()))
        for _ in range(8):
            throttle.failed("192.0.2.1", clock.seconds())
        throttle.succeeded("192.0.2.1")
        throttle.failed("192.0.2.1", clock.seconds())
        self.assertTrue(throttle.allowed("192.0.2.1", clock.seconds()))


    def test_accountDelayGrows(self):
        """
        Failures against one account from many IPs lengthen the delay
        before each answer (capped), without locking any of those IPs; a
        success resets it.
        """
        throttle = AuthThrottle()
        delays = [throttle.failed(f"192.0.2.{i}", 0.0, "bob@example.test") for i in range(45)]
        self.assertEqual(delays[:9], [1.0] * 9)
        self.assertEqual(delays[9:11], [2.0, 2.0])
        self.assertEqual(delays[-1], 5.0)
        self.assertTrue(all(throttle.allowed(f"192.0.2.{i}", 0.0) for i in range(45)))
        self.assertEqual(throttle.failed("192.0.2.99", 0.0, "carol@example.test"), 1.0)
        throttle.succeeded("192.0.2.1", "bob@example.test")
        self.assertEqual(throttle.failed("192.0.2.1", 0.0, "bob@example.test"), 1.0)
        for _ in range(400):
            delay = throttle.failed("198.51.100.1", 1.0, "dave@example.test")
        self.assertEqual(delay, 30.0)


class PlainTests(SynchronousTestCase):
    """
    Parsing of AUTH PLAIN responses (RFC 4616).
    """

    def test_forms(self):
        """
        With and without an authorisation identity equal to the user; a
        different one, a missing part, or bad UTF-8 is refused.
        """
        self.assertEqual(parsePlain(b"\0bob\0pw"), ("bob", "pw"))
        self.assertEqual(parsePlain(b"bob\0bob\0pw"), ("bob", "pw"))
        for bad in (b"alice\0bob\0pw", b"bob\0pw", b"\0\0pw", b"\0bob\0", b"\0\xff\0pw"):
            self.assertRaises(SASLError, parsePlain, bad)
