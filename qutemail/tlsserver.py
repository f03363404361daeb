# -*- test-case-name: tests.test_tlsserver -*-
"""
TLS for the listeners: the server certificate and its context factory.

With C{[tls] cert} and C{key} empty, a self-signed certificate for the
server's host name is created on first start under C{data_dir/keys/} and
reused afterwards.  A certificate that cannot be read, does not match its
key, or is expired or not yet valid stops the start with one line naming
the file.  Only TLS 1.2 and later are offered (RFC 8996 deprecates the
rest), with OpenSSL's default modern cipher list.

This runs once, at start-up, before the reactor: key generation and file
reads here block nobody.
"""

import datetime
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.logger import Logger

from qutemail.durable import PRIVATE_FILE_MODE, PUBLIC_CERTIFICATE_MODE, makeDirectories, replaceFile

# How long a generated certificate is valid (the CA/Browser limit of 825
# days is a sensible ceiling even for a private certificate).
GENERATED_VALID_DAYS = 825

_log = Logger()


class TLSConfigError(Exception):
    """
    The certificate or key cannot be used; the message is one line.
    """


@attrs.frozen
class ServerCredentials:
    """
    A certificate chain and its key, checked.

    @ivar certPath: the PEM certificate (chain) file.
    @ivar keyPath: the PEM private key file.
    @ivar generated: whether we created them.
    """

    certPath: str
    keyPath: str
    generated: bool = False


def generatedPaths(dataDir: str) -> tuple[str, str]:
    """
    @return: where a generated certificate and key live.
    """
    keys = os.path.join(dataDir, "keys")
    return os.path.join(keys, "tls-cert.pem"), os.path.join(keys, "tls-key.pem")


def generateSelfSigned(hostname: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    """
    Make a self-signed certificate for C{hostname} (EC P-256).

    @return: the certificate and the private key, PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=GENERATED_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def serverCredentials(certPath: str, keyPath: str, hostname: str, dataDir: str,
                      now: datetime.datetime) -> ServerCredentials:
    """
    Find (or, when none is configured, create) the server's certificate.

    @param certPath: C{[tls] cert}, or C{""}.
    @param keyPath: C{[tls] key}, or C{""}.
    @param hostname: the server's name, for a generated certificate.
    @param dataDir: C{data_dir}.
    @param now: the current time, UTC.
    @return: the paths to use.
    """
    if certPath:
        return ServerCredentials(certPath, keyPath)
    certPath, keyPath = generatedPaths(dataDir)
    if os.path.exists(certPath) and os.path.exists(keyPath):
        try:
            contextFactory(ServerCredentials(certPath, keyPath), now)
            return ServerCredentials(certPath, keyPath)
        except TLSConfigError as e:
            # Ours to replace (expired, say): a configured one never is.
            _log.warn("replacing the generated TLS certificate: {reason}", reason=str(e))
    makeDirectories(os.path.dirname(certPath))
    certificate, key = generateSelfSigned(hostname, now)
    replaceFile(keyPath, key, mode=PRIVATE_FILE_MODE)
    # Public: every client gets it in the handshake (see qutemail.durable).
    replaceFile(certPath, certificate, mode=PUBLIC_CERTIFICATE_MODE)
    _log.info("created a self-signed TLS certificate for {hostname} in {certPath}",
              hostname=hostname, certPath=certPath)
    return ServerCredentials(certPath, keyPath, generated=True)


def _read(path: str, what: str) -> bytes:
    """
    @return: a file's bytes.
    @raise TLSConfigError: it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"[tls] {what} {path}: cannot read it: {e.strerror}")


def contextFactory(credentials: ServerCredentials, now: datetime.datetime, metrics: Any = None):
    """
    Check the credentials and build the server's TLS context factory.

    @param credentials: the certificate and key.
    @param now: the current time, UTC.
    @param metrics: counts completed handshakes by TLS version, or C{None}.
    @return: an C{IOpenSSLServerConnectionCreator} (TLS 1.2 and later).
    @raise TLSConfigError: unreadable, mismatched, expired or not yet valid.
    """
    certPEM = _read(credentials.certPath, "cert")
    keyPEM = _read(credentials.keyPath, "key")
    try:
        chain = x509.load_pem_x509_certificates(certPEM)
    except ValueError:
        raise TLSConfigError(f"[tls] cert {credentials.certPath}: not a PEM certificate")
    try:
        key = serialization.load_pem_private_key(keyPEM, password=None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"[tls] key {credentials.keyPath}: not an unencrypted PEM private key")
    leaf = chain[0]
    if leaf.not_valid_after_utc < now:
        raise TLSConfigError(
            f"[tls] cert {credentials.certPath}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise TLSConfigError(
            f"[tls] cert {credentials.certPath}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    publicBytes = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*publicBytes) != key.public_key().public_bytes(*publicBytes):
        raise TLSConfigError(
            f"[tls] key {credentials.keyPath}: does not match the certificate {credentials.certPath}")
    certificate = ssl.Certificate.loadPEM(leaf.public_bytes(serialization.Encoding.PEM))
    extra = [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)).original for c in chain[1:]]
    privateKey = ssl.KeyPair.load(keyPEM, crypto.FILETYPE_PEM)
    options = ssl.CertificateOptions(
        privateKey=privateKey.original,
        certificate=certificate.original,
        extraCertChain=extra,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    if metrics is not None:
        def handshakeDone(connection: Any, where: int, ret: int) -> None:
            # Every server connection is made from this one context.
            if where & SSL.SSL_CB_HANDSHAKE_DONE:
                metrics.tlsHandshake(connection.get_protocol_version_name())

        options.getContext().set_info_callback(handshakeDone)
    return options
