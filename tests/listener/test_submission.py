"""
Tests of the submission listeners (587 with STARTTLS, 465 with implicit
TLS): AUTH, its throttle, sender rules and relaying, over real sockets.
The throttle's own unit tests are in L{tests.policy.test_throttle}.
"""

import base64
import smtplib
import threading

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.listener.auth import SASLError, parsePlain
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


def plain(user: str, password: str) -> str:
    """
    @return: the arguments of an C{AUTH PLAIN} command with an initial
        response.
    """
    return "PLAIN " + base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


class AuthThrottleTests(RunningServerMixin, TestCase):
    """
    The AUTH lockout on port 587, from 127.0.0.1, with a valid account
    (alice) and a target (bob).  No limit on sessions per IP, so that many
    guesses can run in parallel.
    """

    configExtra = "\n[limits]\nconnections_per_ip = 0\n"

    async def setUp(self):
        """
        Start the server, and answer failures without delay.
        """
        await super().setUp()
        self.root.listeners["submission"].smtpFactory.settings.throttle.failureDelaySeconds = 0.0

    def session(self) -> smtplib.SMTP:
        """
        @return: an smtplib session to port 587 after EHLO, STARTTLS, EHLO.
        """
        client = smtplib.SMTP("127.0.0.1", self.ports["submission"], local_hostname="client.test",
                              timeout=CLIENT_TIMEOUT)
        client.ehlo()
        client.starttls(context=insecureContext())
        client.ehlo()
        return client

    async def test_otherAccountLoginsDoNotReset(self):
        """
        A correct AUTH as alice before each wrong one for bob, all from one
        IP, does not save it: after ten wrong ones the IP is locked out, and
        even alice's right password gets 454 4.7.0.
        """

        def run():
            guesser = self.session()
            codes = []
            try:
                for _ in range(10):
                    valid = self.session()
                    codes.append(valid.docmd("AUTH", plain("alice@example.test", "pw-alice"))[0])
                    valid.quit()
                    codes.append(guesser.docmd("AUTH", plain("bob@example.test", "guess"))[0])
                after = guesser.docmd("AUTH", plain("bob@example.test", "guess"))
                valid = self.session()
                alice = valid.docmd("AUTH", plain("alice@example.test", "pw-alice"))
                valid.quit()
                return codes, after, alice
            finally:
                guesser.quit()

        codes, after, alice = await deferToThread(run)
        self.assertEqual(codes, [235, 535] * 10)
        locked = (454, b"4.7.0 Too many failed authentications, try again later")
        self.assertEqual((after, alice), (locked, locked))

    async def test_parallelGuesses(self):
        """
        Forty wrong passwords sent at the same moment on forty sessions from
        one IP: at most ten are checked (535 5.7.8); the others are refused
        as locked out (454 4.7.0) without being checked.
        """
        count = 40
        barrier = threading.Barrier(count, timeout=CLIENT_TIMEOUT)

        def guess(i, results):
            try:
                client = self.session()
                try:
                    barrier.wait()
                    results[i] = client.docmd("AUTH", plain("bob@example.test", f"guess-{i}"))[0]
                finally:
                    client.quit()
            except Exception as e:
                results[i] = repr(e)

        def run():
            results = [None] * count
            threads = [threading.Thread(target=guess, args=(i, results), daemon=True) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(3 * CLIENT_TIMEOUT)
            return results

        results = await deferToThread(run)
        self.assertEqual(sorted(set(map(str, results)) - {"535", "454"}), [])
        self.assertLessEqual(results.count(535), 10)
        self.assertGreaterEqual(results.count(535), 1)
        self.assertEqual(results.count(535) + results.count(454), count)


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
