# -*- test-case-name: tests.jmap -*-
"""
The JMAP tests' server and clients: the whole service tree of
L{qutemail.service.buildService} on loopback, with a certificate from a
test CA (for C{127.0.0.1} and C{mail.example.test}), and clients in
threads that verify it against that CA.
"""

import base64
import datetime
import http.client
import imaplib
import json
import os
import smtplib
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from qutemail.config import loadConfig
from qutemail.jmap.dispatch import CORE, MAIL, SUBMISSION
from qutemail.service import buildService
from tests.integration.support import CLIENT_TIMEOUT, addTestUsers, maildirFiles, waitFor, writeConfig

USING = [CORE, MAIL, SUBMISSION]
LISTENERS = ("jmap", "mta", "submission", "imaps")


def writeTestCA(directory: str) -> tuple[str, str, str]:
    """
    Make a CA and a server certificate it signs, for C{mail.example.test}
    and C{127.0.0.1}.

    @return: the paths of the CA certificate, the server certificate and
        the server key (PEM).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "QutEmail JMAP test CA")])
    ca = (x509.CertificateBuilder().subject_name(caName).issuer_name(caName).public_key(caKey.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()), critical=False)
          .sign(caKey, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.test")]))
            .issuer_name(caName).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.example.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), critical=False)
            .sign(caKey, hashes.SHA256()))
    paths = [os.path.join(directory, n) for n in ("ca.pem", "server.pem", "server.key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.open(paths[2], os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return tuple(paths)


class JMAPServerMixin:
    """
    Starts the whole server (JMAP, MTA, submission, IMAPS) on loopback with
    users alice and bob (passwords C{pw-alice}, C{pw-bob}).
    """

    maxMessageSize = "1M"
    configExtra = ""

    async def setUp(self):
        """
        Write the CA, the configuration and the users; start the server.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.dataDir = os.path.join(base, "var")
        os.makedirs(self.dataDir)
        self.caPath, cert, key = writeTestCA(base)
        extra = f"\n[tls]\ncert = {cert}\nkey = {key}\n[inbound]\nchecks = no\n" + self.configExtra
        self.configPath = writeConfig(os.path.join(base, "qutemail.ini"), self.dataDir,
                                      maxMessageSize=self.maxMessageSize, extra=extra)
        addTestUsers(self.configPath)
        await self.startServer()

    async def startServer(self) -> None:
        """
        Build and start the service tree, every listener on a free port.
        """
        config = loadConfig(self.configPath, environ={})
        self.root = buildService(config, reactor, listen={n: "tcp:0:interface=127.0.0.1" for n in LISTENERS})
        self.root.startService()
        self.addCleanup(lambda: self.root.stopService() if self.root.running else None)
        self.ports = {}

        def listening(port, name):
            self.ports[name] = port.getHost().port

        await gatherResults([self.root.listeners[n].whenListening().addCallback(listening, n) for n in LISTENERS])

    def clientContext(self) -> ssl.SSLContext:
        """
        @return: a client context that trusts the test CA (and checks the
            name).
        """
        return ssl.create_default_context(cafile=self.caPath)

    def request(self, method: str, path: str, body: bytes | None = None, user: str | None = "alice",
                password: str | None = None, headers: dict | None = None):
        """
        One HTTPS request to the JMAP listener, in a thread.

        @return: a Deferred firing with C{(status, headers, body)}; the
            header names are lower case.
        """
        def run():
            connection = http.client.HTTPSConnection("127.0.0.1", self.ports["jmap"], timeout=CLIENT_TIMEOUT,
                                                     context=self.clientContext())
            try:
                sent = dict(headers or {})
                if user is not None:
                    secret = f"{user}@example.test:{password or 'pw-' + user}".encode()
                    sent["Authorization"] = "Basic " + base64.b64encode(secret).decode()
                connection.request(method, path, body=body, headers=sent)
                response = connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            finally:
                connection.close()

        return deferToThread(run)

    async def api(self, calls: list, user: str = "alice", using: list | None = None) -> dict:
        """
        @return: the JMAP response to some method calls.
        """
        body = json.dumps({"using": using or USING, "methodCalls": calls}).encode()
        status, _, data = await self.request("POST", "/api/", body, user=user,
                                             headers={"Content-Type": "application/json"})
        self.assertEqual(status, 200, data)
        return json.loads(data)

    async def call(self, name: str, args: dict, user: str = "alice") -> dict:
        """
        @return: the arguments of the one response to one call.
        """
        args = {"accountId": await self.accountId(user), **args}
        response = await self.api([[name, args, "c0"]], user)
        [[responseName, result, _]] = response["methodResponses"]
        self.assertEqual(responseName, name, result)
        return result

    async def accountId(self, user: str = "alice") -> str:
        """
        @return: the account id of a user (from the session).
        """
        status, _, data = await self.request("GET", "/.well-known/jmap", user=user)
        self.assertEqual(status, 200, data)
        return json.loads(data)["primaryAccounts"][MAIL]

    async def mailboxes(self, user: str = "alice") -> dict:
        """
        @return: the user's mailbox ids by role (and by name).
        """
        result = await self.call("Mailbox/get", {"ids": None}, user)
        out = {}
        for box in result["list"]:
            out[box["name"]] = box["id"]
            if box["role"]:
                out[box["role"]] = box["id"]
        return out

    def deliver(self, message: bytes, recipient: str = "alice@example.test", sender: str = "carol@outside.test"):
        """
        Deliver a message from outside through the MTA port, in a thread.
        """
        def run():
            with smtplib.SMTP("127.0.0.1", self.ports["mta"], local_hostname="client.test",
                              timeout=CLIENT_TIMEOUT) as client:
                client.sendmail(sender, [recipient], message)

        return deferToThread(run)

    def submitSMTP(self, message: bytes, user: str = "bob", recipients: tuple = ("alice@example.test",)):
        """
        Send a message through SMTP submission (STARTTLS, AUTH) as a user.
        """
        def run():
            with smtplib.SMTP("127.0.0.1", self.ports["submission"], local_hostname="client.test",
                              timeout=CLIENT_TIMEOUT) as client:
                client.starttls(context=ssl.create_default_context(cafile=self.caPath))
                client.login(f"{user}@example.test", f"pw-{user}")
                client.sendmail(f"{user}@example.test", list(recipients), message)

        return deferToThread(run)

    def imap(self, f, user: str = "alice"):
        """
        Run C{f(client)} with a logged-in imaplib client (implicit TLS).
        """
        def run():
            client = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=self.clientContext(),
                                       timeout=CLIENT_TIMEOUT)
            try:
                client.login(f"{user}@example.test", f"pw-{user}")
                return f(client)
            finally:
                client.logout()

        return deferToThread(run)

    async def waitForMessages(self, count: int, user: str = "alice") -> list[str]:
        """
        Wait until a user's INBOX holds C{count} messages.
        """
        return await waitFor(lambda: len(maildirFiles(self.dataDir, f"{user}@example.test")) >= count
                             and maildirFiles(self.dataDir, f"{user}@example.test"), timeout=20)
