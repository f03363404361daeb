"""
Tests of the server certificate handling and of STARTTLS on the MTA port.
"""

import datetime
import os
import socket
import ssl as stdssl

from cryptography import x509
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qutemail.tlsserver import (
    ServerCredentials,
    TLSConfigError,
    contextFactory,
    generateSelfSigned,
    generatedPaths,
    serverCredentials,
)
from tests.integration.support import CLIENT_TIMEOUT, maildirFiles, waitFor
from tests.integration.test_mta import RunningServerMixin

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc)


class CredentialTests(SynchronousTestCase):
    """
    Finding, generating and checking the certificate.
    """

    def setUp(self):
        """
        An empty data directory.
        """
        self.dataDir = os.path.abspath(self.mktemp())
        os.makedirs(self.dataDir)

    def write(self, name: str, data: bytes) -> str:
        """
        @return: the path of a new file in the data directory.
        """
        path = os.path.join(self.dataDir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_generatedOnceThenReused(self):
        """
        With nothing configured, a certificate for the host name is created
        under C{keys/} (key mode 0600) and the same one is used next time.
        """
        first = serverCredentials("", "", "mail.example.test", self.dataDir, NOW)
        self.assertEqual((first.certPath, first.keyPath), generatedPaths(self.dataDir))
        self.assertTrue(first.generated)
        self.assertEqual(os.stat(first.keyPath).st_mode & 0o777, 0o600)
        with open(first.certPath, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["mail.example.test"])
        again = serverCredentials("", "", "mail.example.test", self.dataDir, NOW)
        self.assertFalse(again.generated)
        with open(again.certPath, "rb") as f:
            self.assertEqual(f.read(), pem)
        self.assertIsNotNone(contextFactory(again, NOW))

    def test_generatedRenewedWhenExpired(self):
        """
        A generated certificate that has expired is replaced at the next
        start (a configured one never is).
        """
        old = serverCredentials("", "", "mail.example.test", self.dataDir, NOW - datetime.timedelta(days=900))
        renewed = serverCredentials("", "", "mail.example.test", self.dataDir, NOW)
        self.assertTrue(renewed.generated)
        self.assertEqual(renewed.certPath, old.certPath)
        self.assertIsNotNone(contextFactory(renewed, NOW))

    def test_missingFile(self):
        """
        A configured certificate that does not exist is one clear line.
        """
        key = self.write("k.pem", generateSelfSigned("a.test", NOW)[1])
        error = self.assertRaises(TLSConfigError, contextFactory,
                                  ServerCredentials(os.path.join(self.dataDir, "nope.pem"), key), NOW)
        self.assertEqual(str(error), f"[tls] cert {self.dataDir}/nope.pem: cannot read it: No such file or directory")

    def test_expired(self):
        """
        An expired certificate is refused, naming the file and the date.
        """
        cert, key = generateSelfSigned("a.test", NOW - datetime.timedelta(days=1000))
        credentials = ServerCredentials(self.write("c.pem", cert), self.write("k.pem", key))
        error = self.assertRaises(TLSConfigError, contextFactory, credentials, NOW)
        self.assertIn("c.pem: expired on ", str(error))
        self.assertNotIn("\n", str(error))

    def test_notYetValid(self):
        """
        A certificate that is not valid yet is refused.
        """
        cert, key = generateSelfSigned("a.test", NOW + datetime.timedelta(days=2))
        credentials = ServerCredentials(self.write("c.pem", cert), self.write("k.pem", key))
        self.assertIn("not valid before", str(self.assertRaises(TLSConfigError, contextFactory, credentials, NOW)))

    def test_mismatch(self):
        """
        A key that is not the certificate's is refused.
        """
        cert, _ = generateSelfSigned("a.test", NOW)
        _, otherKey = generateSelfSigned("a.test", NOW)
        credentials = ServerCredentials(self.write("c.pem", cert), self.write("k.pem", otherKey))
        self.assertIn("does not match", str(self.assertRaises(TLSConfigError, contextFactory, credentials, NOW)))

    def test_garbage(self):
        """
        Files that are not PEM are refused with a clear line.
        """
        cert, key = generateSelfSigned("a.test", NOW)
        bad = self.write("bad.pem", b"hello")
        self.assertIn("not a PEM certificate", str(self.assertRaises(
            TLSConfigError, contextFactory, ServerCredentials(bad, self.write("k.pem", key)), NOW)))
        self.assertIn("not an unencrypted PEM private key", str(self.assertRaises(
            TLSConfigError, contextFactory, ServerCredentials(self.write("c.pem", cert), bad), NOW)))


class StartTLSTests(RunningServerMixin, TestCase):
    """
    STARTTLS on the MTA port, over real sockets.
    """

    async def test_smtplibStartTLS(self):
        """
        EHLO offers STARTTLS; after it the session runs TLS 1.2 or later,
        STARTTLS is no longer offered, and a message sent over it is stored
        with C{with ESMTPS} in its Received header.
        """

        def session(client):
            client.ehlo()
            offered = client.has_extn("starttls")
            context = stdssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = stdssl.CERT_NONE
            client.starttls(context=context)
            version = client.sock.version()
            client.ehlo()
            again = client.has_extn("starttls")
            client.sendmail("x@remote.test", ["alice@example.test"], b"Subject: tls\r\n\r\nsecret\r\n")
            return offered, version, again

        offered, version, again = await self.smtp(session)
        self.assertTrue(offered)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertFalse(again)
        [path] = await waitFor(lambda: maildirFiles(self.dataDir, "alice@example.test"))
        with open(path, "rb") as f:
            self.assertIn(b"with ESMTPS id", f.read())

    async def test_oldTLSRefused(self):
        """
        A client limited to TLS 1.1 cannot complete the handshake.
        """

        def session():
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT)
            try:
                raw.recv(1000)
                raw.sendall(b"EHLO c.test\r\n")
                raw.recv(1000)
                raw.sendall(b"STARTTLS\r\n")
                raw.recv(1000)
                context = stdssl.SSLContext(stdssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = stdssl.CERT_NONE
                context.minimum_version = stdssl.TLSVersion.TLSv1
                context.maximum_version = stdssl.TLSVersion.TLSv1_1
                try:
                    context.wrap_socket(raw).close()
                except (stdssl.SSLError, OSError):
                    return "refused"
                return "accepted"
            finally:
                raw.close()

        self.assertEqual(await deferToThread(session), "refused")

    async def test_commandInjection(self):
        """
        CVE-2011-0411: a command pipelined after STARTTLS in the same packet
        is discarded, not run after the handshake; the server also forgets
        the EHLO, so MAIL right after TLS gets 503.
        """

        def session():
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT)
            raw.recv(1000)
            raw.sendall(b"EHLO c.test\r\n")
            raw.recv(1000)
            raw.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n")
            greeting = raw.recv(1000)
            context = stdssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = stdssl.CERT_NONE
            tls = context.wrap_socket(raw)
            tls.sendall(b"NOOP\r\n")
            first = tls.recv(1000)
            # Without EHLO again there is no PIPELINING: one command at a time.
            tls.sendall(b"MAIL FROM:<a@x.test>\r\n")
            rest = b""
            while not rest.endswith(b"\r\n"):
                rest += tls.recv(1000)
            tls.sendall(b"QUIT\r\n")
            while not rest.endswith(b"221 2.0.0 Bye\r\n"):
                data = tls.recv(1000)
                if not data:
                    break
                rest += data
            tls.close()
            return greeting, first, rest

        greeting, first, rest = await deferToThread(session)
        self.assertEqual(greeting, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(first, b"250 2.0.0 OK\r\n")
        self.assertEqual(rest, b"503 5.5.1 Send HELO or EHLO first\r\n221 2.0.0 Bye\r\n")
