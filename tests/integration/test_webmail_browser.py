"""
The webmail in a real browser (issue 16, acceptance item 4): Debian's
C{chromium}, headless, driven by selenium through Debian's
C{chromium-driver}, against the whole server on loopback with JMAP over
TLS.  Alice logs in, opens bob's internal message (encrypted at rest), sees
its plaintext and the QKD badge with the key id the stored file carries,
and replies with an attachment; the reply lands in bob's Maildir,
encrypted, with the reply's headers and the attachment inside.

The browser trusts exactly the test server's certificate: its SPKI hash is
passed in C{--ignore-certificate-errors-spki-list} (no blanket
C{--ignore-certificate-errors}), and the server's host name is mapped to
127.0.0.1, so the name in the certificate matches too.

A screenshot of the message view is saved in the test's directory under
C{_trial_temp} and its path logged (C{test.log}).
"""

import base64
import email
import email.policy
import hashlib
import os
import re
import shutil
import smtplib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from qutemail.config import loadConfig
from qutemail.service import buildService
from tests.integration.support import (
    CLIENT_TIMEOUT,
    addTestUsers,
    insecureContext,
    maildirFiles,
    readAsOwner,
    waitFor,
    writeConfig,
)
from tests.support import requireCommand, requireInstalled

HOSTNAME = "mail.example.test"
SUBJECT = "Quarterly keys"
BODY_LINE = "The new QKD link to the second site is up."
REPLY_LINE = "Thanks, reading it in the webmail."
ATTACHMENT_BYTES = b"key rotation log\nline 2\n"
ORIGINAL = (
    "From: Bob <bob@example.test>\r\nTo: Alice <alice@example.test>\r\n"
    f"Subject: {SUBJECT}\r\nMessage-ID: <webmail-original@example.test>\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    f"Hello Alice,\r\n\r\n{BODY_LINE}\r\n\r\nBob\r\n"
).encode("utf-8")
# An HTML newsletter with everything the sanitiser must take out; TRACKER
# is replaced by the URL of a loopback server that counts requests.
HTML_SUBJECT = "Newsletter in HTML"
HTML_MESSAGE = (
    "From: Bob <bob@example.test>\r\nTo: Alice <alice@example.test>\r\n"
    f"Subject: {HTML_SUBJECT}\r\nMessage-ID: <webmail-html@example.test>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    "<html><head><style>p { color: red }</style></head><body>\r\n"
    "<p>Hello <b>in bold</b> from the newsletter.</p>\r\n"
    "<script>parent.document.title = 'script ran'; document.title = 'script ran';</script>\r\n"
    "<img src=\"TRACKER/pixel.gif\" onerror=\"document.title = 'onerror ran'\" alt=\"pixel\">\r\n"
    "<a href=\"javascript:document.title = 'link ran'\">a link</a>\r\n"
    "<div style=\"background: url(TRACKER/css.gif)\">styled</div>\r\n"
    "</body></html>\r\n"
)
# How long the browser waits for one step (the server answers each JMAP
# call in well under a second on loopback).
STEP_SECONDS = 20
# The listeners the test starts, each on a free loopback port.
LISTENERS = ("mta", "submission", "jmap")


def spkiHash(certificatePath: str) -> str:
    """
    @return: the base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo,
        as chromium's C{--ignore-certificate-errors-spki-list} takes it.
    """
    with open(certificatePath, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def storedKeyId(path: str) -> str:
    """
    @return: the QKD key id in a stored (encrypted) message's control part.
    """
    with open(path, "rb") as f:
        found = re.search(rb"Key-Id: ([A-Za-z0-9_-]+)", f.read())
    if found is None:
        raise AssertionError(f"{path} has no Key-Id")
    return found.group(1).decode("ascii")


class Browser:
    """
    Headless chromium under selenium; every method blocks, so the test runs
    them in a thread while the reactor serves.

    @ivar driver: the selenium WebDriver.
    """

    def __init__(self, chromium: str, chromedriver: str, profile: str, spki: str, port: int) -> None:
        """
        Start the browser.

        @param profile: an empty directory for its profile (chromium honours
            the SPKI list only with an explicit profile directory).
        @param spki: the server certificate's SPKI hash.
        @param port: the JMAP listener's port.
        """
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                         "--disable-extensions", "--disable-background-networking", "--window-size=1280,900",
                         f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={spki}",
                         f"--host-resolver-rules=MAP {HOSTNAME} 127.0.0.1"):
            options.add_argument(argument)
        if os.geteuid() == 0:
            # Chromium refuses to start as root with its own process
            # sandbox; CI runs as root.  The page's iframe sandbox is the
            # renderer's and stays on.
            options.add_argument("--no-sandbox")
        # Keep the page's console, where Content-Security-Policy violations
        # are reported.
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        self.driver.set_page_load_timeout(STEP_SECONDS)
        self.base = f"https://{HOSTNAME}:{port}/"

    def quit(self) -> None:
        """
        Close the browser.
        """
        self.driver.quit()

    def wait(self, condition, what: str):
        """
        Wait until C{condition(driver)} is true, failing with the page's
        status line and browser log.

        @return: what the condition returned.
        """
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            # The page redraws its lists whole: an element found a moment
            # ago may be gone; look again.
            return WebDriverWait(self.driver, STEP_SECONDS,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(condition)
        except TimeoutException:
            raise AssertionError(f"timed out waiting for {what}; status {self.status()!r}; "
                                 f"console {self.console()!r}") from None

    def element(self, selector: str):
        """
        @return: the first element that matches a CSS selector.
        """
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def visible(self, selector: str):
        """
        Wait for an element to be shown.

        @return: the element.
        """
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions

        return self.wait(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, selector)),
                         selector)

    def status(self) -> str:
        """
        @return: the page's C{#status} line.
        """
        from selenium.common.exceptions import WebDriverException

        try:
            return self.element("#status").text
        except WebDriverException as e:
            return f"(no status: {e.msg})"

    def console(self) -> list:
        """
        @return: what the page logged (errors, CSP violations).
        """
        from selenium.common.exceptions import WebDriverException

        try:
            return [entry["message"] for entry in self.driver.get_log("browser")]
        except WebDriverException as e:
            return [f"(no log: {e.msg})"]

    def policyViolations(self) -> list[str]:
        """
        @return: the Content-Security-Policy violations the page logged
            (an inline script or style, a load from elsewhere).
        """
        return [line for line in self.console() if "Content Security Policy" in line]

    def logIn(self, user: str, password: str) -> None:
        """
        Open the page and log in.
        """
        self.driver.get(self.base)
        self.visible("#login-user").send_keys(user)
        self.element("#login-password").send_keys(password)
        self.element("#login-submit").click()
        self.visible(".mailbox[data-role=inbox].selected")

    def openMessage(self, subject: str) -> None:
        """
        Open the message with C{subject} from the list shown (the inbox's,
        after logging in).
        """
        row = self.wait(lambda d: next((r for r in d.find_elements("css selector", ".message-row")
                                        if subject in r.text), False), f"a row for {subject!r}")
        row.click()
        self.visible("#message-body pre, #message-body iframe")

    def reply(self, text: str, attachment: str) -> tuple[str, str]:
        """
        Reply to the open message with C{text} above the quote and a file
        attached, and wait until the page says it was sent.

        @return: the prefilled C{To} and C{Subject}.
        """
        self.element("#reply").click()
        to = self.visible("#compose-to").get_attribute("value")
        subject = self.element("#compose-subject").get_attribute("value")
        body = self.element("#compose-body")
        body.send_keys(text)
        self.element("#compose-attachment").send_keys(attachment)
        self.element("#send").click()
        self.wait(lambda d: "sent" in self.status().lower() or "error" in self.status().lower(), "sending")
        if "error" in self.status().lower():
            raise AssertionError(f"sending failed: {self.status()!r}; console {self.console()!r}")
        return to, subject


class Tracker(Resource):
    """
    A remote image server: records every request it gets.

    @ivar requests: the paths asked for.
    """

    isLeaf = True

    def __init__(self) -> None:
        """
        Nothing asked for yet.
        """
        super().__init__()
        self.requests: list[bytes] = []

    def render_GET(self, request) -> bytes:
        """
        Record the request.
        """
        self.requests.append(request.path)
        return b""


class WebmailBrowserTests(TestCase):
    """
    Acceptance item 4 of issue 16.
    """

    timeout = 240
    _log = Logger()

    async def setUp(self):
        """
        Find chromium, its driver and selenium; create alice and bob; start
        the server with the MTA, submission and JMAP listeners on free
        loopback ports; and have bob send alice an internal message.
        """
        self.chromium = requireCommand(self, "chromium")
        self.chromedriver = requireCommand(self, "chromedriver")
        try:
            import selenium  # noqa: F401
        except ImportError:
            requireInstalled(self, False, "selenium", "pip install -e '.[test]'")
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.dataDir = os.path.join(self.base, "var")
        os.makedirs(self.dataDir)
        # Every listener, JMAP's too, is on port 0 through buildService's
        # listen argument; the file's ports stay off.
        self.configPath = writeConfig(os.path.join(self.base, "qutemail.ini"), self.dataDir)
        addTestUsers(self.configPath)
        config = loadConfig(self.configPath, environ={})
        root = buildService(config, reactor, listen={name: "tcp:0:interface=127.0.0.1" for name in LISTENERS})
        root.startService()
        self.addCleanup(lambda: root.stopService() if root.running else None)
        self.ports = {}

        def listening(port, name):
            self.ports[name] = port.getHost().port

        await gatherResults([root.listeners[name].whenListening().addCallback(listening, name)
                             for name in LISTENERS])
        await deferToThread(self.submitOriginal)
        [self.originalPath] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))

    def submitOriginal(self, message: bytes = ORIGINAL) -> None:
        """
        Bob submits a message (the original by default) to alice
        (STARTTLS, AUTH).
        """
        client = smtplib.SMTP("127.0.0.1", self.ports["submission"], local_hostname="client.test",
                              timeout=CLIENT_TIMEOUT)
        try:
            client.starttls(context=insecureContext())
            client.login("bob@example.test", "pw-bob")
            client.sendmail("bob@example.test", ["alice@example.test"], message)
        finally:
            client.quit()

    def startBrowser(self) -> Browser:
        """
        Start chromium, trusting the server's certificate only; closed when
        the test ends.
        """
        spki = spkiHash(os.path.join(self.dataDir, "keys", "tls-cert.pem"))
        profile = os.path.join(self.base, "chromium-profile")
        os.makedirs(profile)
        # Cleanups run last first: the browser quits, then its profile goes.
        self.addCleanup(shutil.rmtree, profile, True)
        browser = Browser(self.chromium, self.chromedriver, profile, spki, self.ports["jmap"])
        self.addCleanup(deferToThread, browser.quit)
        return browser

    async def test_readAndReply(self):
        """
        Alice reads bob's internal message in the webmail, in plain text
        with the QKD badge naming the key the stored file was encrypted
        with, and replies with an attachment; the reply reaches bob's
        Maildir encrypted, addressed and threaded as a reply; the message
        is marked read and alice's copy of the reply is filed in Sent.
        """
        with open(self.originalPath, "rb") as f:
            stored = f.read()
        self.assertIn(b"multipart/encrypted", stored)
        self.assertNotIn(BODY_LINE.encode(), stored)
        keyId = storedKeyId(self.originalPath)
        attachment = os.path.join(self.base, "rotation.log")
        with open(attachment, "wb") as f:
            f.write(ATTACHMENT_BYTES)
        screenshot = os.path.join(self.base, "webmail-message.png")
        browser = await deferToThread(self.startBrowser)

        def read():
            browser.logIn("alice@example.test", "pw-alice")
            browser.openMessage(SUBJECT)
            badge = browser.visible(".qkd-badge")
            shown = browser.element("#message-body").text, badge.text, badge.get_attribute("data-key-id")
            browser.driver.save_screenshot(screenshot)
            return shown

        text, badgeText, badgeKeyId = await deferToThread(read)
        self._log.info("webmail screenshot of the message view: {path}", path=screenshot)
        self.assertIn(BODY_LINE, text)
        self.assertIn("QKD protected", badgeText)
        self.assertIn(keyId, badgeText)
        self.assertEqual(badgeKeyId, keyId)
        self.assertTrue(os.path.getsize(screenshot) > 0)

        to, subject = await deferToThread(browser.reply, REPLY_LINE, attachment)
        self.assertEqual(to, "bob@example.test")
        self.assertEqual(subject, f"Re: {SUBJECT}")
        self.assertEqual(await deferToThread(browser.policyViolations), [])

        [replyPath] = await waitFor(lambda: maildirFiles(self.dataDir, "bob@example.test"))
        with open(replyPath, "rb") as f:
            storedReply = f.read()
        self.assertIn(b"multipart/encrypted", storedReply)
        self.assertNotIn(REPLY_LINE.encode(), storedReply)
        reply = email.message_from_bytes(await readAsOwner(self.dataDir, replyPath), policy=email.policy.default)
        self.assertEqual(reply["Subject"], f"Re: {SUBJECT}")
        self.assertIn("alice@example.test", reply["From"])
        self.assertIn("bob@example.test", reply["To"])
        self.assertEqual(reply["In-Reply-To"].strip(), "<webmail-original@example.test>")
        self.assertIn("<webmail-original@example.test>", reply["References"])
        self.assertIn(REPLY_LINE, reply.get_body(("plain",)).get_content())
        [part] = list(reply.iter_attachments())
        self.assertEqual(part.get_filename(), "rotation.log")
        self.assertEqual(part.get_content() if isinstance(part.get_content(), bytes)
                         else part.get_content().encode(), ATTACHMENT_BYTES)

        # Opening the message marked it read (the Maildir S flag), and the
        # sent draft moved from Drafts to Sent.
        [original] = maildirFiles(self.dataDir, "alice@example.test")
        self.assertIn("S", original.rpartition(":2,")[2])
        self.assertEqual(self.folderFiles("alice@example.test", "Drafts"), [])
        self.assertEqual(len(self.folderFiles("alice@example.test", "Sent")), 1)

    async def test_markUnreadAndTrash(self):
        """
        "Mark unread" takes the Maildir S flag off the message that opening
        it set, "Mark read" puts it back, and "Move to Trash" moves the
        file into the Trash folder and out of the list.
        """
        browser = await deferToThread(self.startBrowser)

        def flags() -> str:
            [path] = maildirFiles(self.dataDir, "alice@example.test")
            return path.rpartition(":2,")[2]

        def openAndToggle():
            browser.logIn("alice@example.test", "pw-alice")
            browser.openMessage(SUBJECT)
            browser.wait(lambda d: browser.element("#toggle-seen").text == "Mark unread", "marked read")
            afterOpen = flags()
            browser.element("#toggle-seen").click()
            browser.wait(lambda d: browser.element("#toggle-seen").text == "Mark read", "marked unread")
            afterUnread = flags()
            browser.element("#toggle-seen").click()
            browser.wait(lambda d: browser.element("#toggle-seen").text == "Mark unread", "marked read again")
            afterRead = flags()
            browser.element("#trash").click()
            browser.wait(lambda d: "Trash" in browser.status(), "the move to Trash")
            rows = browser.driver.find_elements("css selector", ".message-row")
            return afterOpen, afterUnread, afterRead, len(rows)

        afterOpen, afterUnread, afterRead, rowsLeft = await deferToThread(openAndToggle)
        self.assertIn("S", afterOpen)
        self.assertNotIn("S", afterUnread)
        self.assertIn("S", afterRead)
        self.assertEqual(rowsLeft, 0)
        self.assertEqual(maildirFiles(self.dataDir, "alice@example.test"), [])
        self.assertEqual(len(self.folderFiles("alice@example.test", "Trash")), 1)

    async def test_newMailShownLive(self):
        """
        Mail that arrives while the list is open appears in it, with the
        inbox's unread count, without pressing Refresh: the page reads the
        server's push stream (push.js) with its Authorization header.
        """
        browser = await deferToThread(self.startBrowser)

        def logIn():
            browser.logIn("alice@example.test", "pw-alice")
            browser.wait(lambda d: len(d.find_elements("css selector", ".message-row")) == 1, "the first row")
            return browser.element(".mailbox[data-role=inbox] .unread-count").text

        self.assertEqual(await deferToThread(logIn), "1")
        await deferToThread(self.submitOriginal, ORIGINAL.replace(SUBJECT.encode(), b"Arrived live"))

        def seeIt():
            row = browser.wait(lambda d: next((r for r in d.find_elements("css selector", ".message-row")
                                               if "Arrived live" in r.text), False), "the new mail's row")
            return row.text, browser.element(".mailbox[data-role=inbox] .unread-count").text, \
                browser.policyViolations()

        rowText, unread, violations = await deferToThread(seeIt)
        self.assertIn("Arrived live", rowText)
        self.assertEqual(unread, "2")
        self.assertEqual(violations, [])

    async def test_htmlMailSandboxed(self):
        """
        An HTML message is shown sanitised in an iframe with an empty
        sandbox: its formatting stays, no script, handler or
        C{javascript:} link of it runs or remains, and neither its remote
        image nor its CSS background is fetched.
        """
        tracker = Tracker()
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(tracker))
        self.addCleanup(listening.stopListening)
        trackerURL = f"http://127.0.0.1:{listening.getHost().port}"
        await deferToThread(self.submitOriginal, HTML_MESSAGE.replace("TRACKER", trackerURL).encode("utf-8"))
        await waitFor(lambda: len(maildirFiles(self.dataDir, "alice@example.test")) == 2)
        browser = await deferToThread(self.startBrowser)

        def read():
            from selenium.webdriver.common.by import By

            browser.logIn("alice@example.test", "pw-alice")
            browser.openMessage(HTML_SUBJECT)
            frame = browser.visible("#message-html")
            sandbox = frame.get_attribute("sandbox")
            browser.driver.switch_to.frame(frame)
            try:
                text = browser.driver.find_element(By.TAG_NAME, "body").text
                bold = [b.text for b in browser.driver.find_elements(By.TAG_NAME, "b")]
                scripts = browser.driver.find_elements(By.TAG_NAME, "script")
                images = [(i.get_attribute("src"), i.get_attribute("onerror"))
                          for i in browser.driver.find_elements(By.TAG_NAME, "img")]
                links = [a.get_attribute("href") for a in browser.driver.find_elements(By.TAG_NAME, "a")]
                browser.driver.find_element(By.TAG_NAME, "a").click()
                inner = browser.driver.title
            finally:
                browser.driver.switch_to.default_content()
            return sandbox, text, bold, len(scripts), images, links, inner, browser.driver.title

        sandbox, text, bold, scripts, images, links, innerTitle, title = await deferToThread(read)
        self.assertEqual(sandbox, "")
        self.assertIn("Hello in bold from the newsletter.", text)
        self.assertIn("styled", text)
        self.assertEqual(bold, ["in bold"])
        self.assertEqual(scripts, 0)
        self.assertEqual(images, [(None, None)])
        self.assertEqual(links, [None])
        self.assertNotIn("ran", innerTitle)
        self.assertEqual(title, "QutEmail")
        self.assertEqual(tracker.requests, [])

    def folderFiles(self, address: str, folder: str) -> list[str]:
        """
        @return: the messages of a Maildir++ folder (C{.Folder/new} and
            C{cur}) of an account.
        """
        local, _, domain = address.partition("@")
        base = os.path.join(self.dataDir, "mail", domain, local, "." + folder)
        return [os.path.join(base, sub, name) for sub in ("new", "cur")
                if os.path.isdir(os.path.join(base, sub)) for name in sorted(os.listdir(os.path.join(base, sub)))]
