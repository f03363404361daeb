# -*- test-case-name: tests.qkd.test_certs -*-
"""
The embedded KME's private PKI.

ETSI GS QKD 014 §4.2 asks for HTTPS with mutual TLS: the KME knows the
calling SAE from its client certificate.  For the embedded KME we make our
own small PKI under a directory the caller chooses (the server uses
C{data_dir/keys/qkd/}):

  - C{ca-cert.pem}, C{ca-key.pem}: a private CA (EC P-256);
  - C{kme-cert.pem}, C{kme-key.pem}: the KME's server certificate, for
    C{localhost} and C{127.0.0.1}, signed by the CA;
  - C{sae-<id>-cert.pem}, C{sae-<id>-key.pem}: one client certificate per
    SAE, subject CN = the SAE id, signed by the CA.

Files are reused while they are valid (and, for leaves, issued by the
current CA for the right names); anything expired, unreadable or
mismatched is generated again, with a log line.  A new CA means new leaves
too.  Private keys are mode 0600, every file is written atomically.

Everything here blocks (key generation, fsync): call it before the reactor
runs or through L{qutemail.blocking.BlockingRunner}.
"""

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from qutemail.durable import replaceFile

CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 825
SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = ("127.0.0.1",)

# SAE ids become file names and certificate CNs: keep them to a safe,
# printable alphabet (and within the 64 characters a CN may hold).
_SAE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")

_log = Logger()


@attrs.frozen
class CertifiedKey:
    """
    A certificate and its private key, as files.

    @ivar certPath: the PEM certificate.
    @ivar keyPath: the PEM private key (PKCS#8, unencrypted, mode 0600).
    """

    certPath: str
    keyPath: str


@attrs.frozen
class KMEPKI:
    """
    The paths of the embedded KME's PKI.

    @ivar directory: where it all lives.
    @ivar ca: the CA; clients and the KME trust C{ca.certPath}.
    @ivar server: the KME's server certificate.
    @ivar clients: each SAE id's client certificate.
    """

    directory: str
    ca: CertifiedKey
    server: CertifiedKey
    clients: Mapping[str, CertifiedKey]

    def client(self, saeId: str) -> CertifiedKey:
        """
        @return: the client certificate of C{saeId}.
        @raise KeyError: there is none.
        """
        return self.clients[saeId]


def checkSAEId(saeId: str) -> str:
    """
    Check that an SAE id can name a certificate and a file.

    @return: C{saeId}.
    @raise ValueError: it cannot.
    """
    if not isinstance(saeId, str) or not _SAE_ID.match(saeId):
        raise ValueError(f"SAE id {saeId!r}: use 1 to 64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit")
    return saeId


def _newKey() -> ec.EllipticCurvePrivateKey:
    """
    @return: a fresh EC P-256 private key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    """
    @return: C{key} as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: str, issuer: x509.Name, publicKey, now: datetime.datetime,
             days: int) -> x509.CertificateBuilder:
    """
    @return: a certificate builder with the fields every certificate here
        shares.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False)
    )


def _leafUsage() -> x509.KeyUsage:
    """
    @return: the key usage of a TLS leaf certificate.
    """
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def makeCA(now: datetime.datetime,
           name: str = "QutEmail embedded KME CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    Make a self-signed CA that may sign leaves only (path length 0).

    @param now: the current time, UTC.
    @param name: its subject CN.
    @return: its certificate and private key.
    """
    key = _newKey()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        _builder(name, subject, key.public_key(), now, CA_VALID_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def makeLeaf(ca: x509.Certificate, caKey: ec.EllipticCurvePrivateKey, commonName: str, now: datetime.datetime,
             server: bool, dnsNames: Iterable[str] = (), ipAddresses: Iterable[str] = ()
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    Make a TLS certificate signed by C{ca}.

    @param commonName: the subject CN (for a client: the SAE id).
    @param server: a server certificate (with subject alternative names)
        rather than a client one.
    @param dnsNames: a server's DNS names.
    @param ipAddresses: a server's IP addresses, as text.
    @return: the certificate and its private key.
    """
    key = _newKey()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(commonName, ca.subject, key.public_key(), now, LEAF_VALID_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leafUsage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), critical=False)
    )
    names = [x509.DNSName(n) for n in dnsNames]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ipAddresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(caKey, hashes.SHA256()), key


def _load(paths: CertifiedKey) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """
    @return: the certificate and key in C{paths}, or C{None} when either
        is missing.
    @raise ValueError: they are not PEM, or the key does not match.
    """
    try:
        with open(paths.certPath, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(paths.keyPath, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        return None
    except TypeError:
        raise ValueError("the private key is encrypted")
    publicBytes = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*publicBytes) != key.public_key().public_bytes(*publicBytes):
        raise ValueError("the key does not match the certificate")
    return certificate, key


def _problem(certificate: x509.Certificate, now: datetime.datetime, issuer: x509.Certificate | None,
             commonName: str | None) -> str | None:
    """
    @param issuer: the CA that must have signed it (C{None}: self-signed is
        fine).
    @param commonName: the CN it must carry, if any.
    @return: why C{certificate} cannot be reused, or C{None}.
    """
    if certificate.not_valid_after_utc <= now:
        return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if certificate.not_valid_before_utc > now:
        return f"not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if issuer is not None:
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return "not issued by the current CA"
    if commonName is not None:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [commonName]:
            return f"its CN is not {commonName}"
    return None


def _ensure(paths: CertifiedKey, what: str, now: datetime.datetime, issuer: x509.Certificate | None,
            commonName: str | None, make) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    Reuse a certificate and key when usable, else make and write new ones.

    @param what: a name for logs.
    @param make: a callable returning a new C{(certificate, key)}.
    @return: the certificate and key in use.
    """
    try:
        existing = _load(paths)
        reason = None if existing is None else _problem(existing[0], now, issuer, commonName)
    except (OSError, ValueError) as e:
        existing, reason = None, f"unusable: {e}"
    if existing is not None and reason is None:
        return existing
    if reason is not None:
        _log.warn("replacing the {what} certificate {certPath}: {reason}",
                  what=what, certPath=paths.certPath, reason=reason)
    certificate, key = make()
    replaceFile(paths.keyPath, _keyPEM(key), mode=0o600)
    replaceFile(paths.certPath, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _log.info("created the {what} certificate {certPath}", what=what, certPath=paths.certPath)
    return certificate, key


def pkiPaths(directory: str, saeIds: Iterable[str]) -> KMEPKI:
    """
    Name the files of a PKI, without touching the disk.

    @param directory: where they live.
    @param saeIds: the SAEs that get a client certificate.
    @return: the paths.
    @raise ValueError: an SAE id is not fit for a file name.
    """
    def pair(stem: str) -> CertifiedKey:
        """
        @return: the certificate and key paths named by C{stem}.
        """
        return CertifiedKey(os.path.join(directory, f"{stem}-cert.pem"), os.path.join(directory, f"{stem}-key.pem"))

    clients = {checkSAEId(s): pair(f"sae-{s}") for s in saeIds}
    return KMEPKI(directory, pair("ca"), pair("kme"), clients)


def ensureHostCertificate(pki: KMEPKI, hostname: str, now: datetime.datetime) -> CertifiedKey:
    """
    Find or make a TLS server certificate from the PKI's CA for a mail
    host (C{tls-<hostname>-cert.pem}, C{tls-<hostname>-key.pem}): for
    sites on one machine that trust each other through this CA
    (C{[relay] tls_ca}).  It names C{hostname}, C{localhost} and
    C{127.0.0.1}.  Blocking; call after L{ensurePKI}.

    @raise ValueError: the host name is not fit for a file name.
    """
    checkSAEId(hostname)
    with open(pki.ca.certPath, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(pki.ca.keyPath, "rb") as f:
        caKey = serialization.load_pem_private_key(f.read(), None)
    paths = CertifiedKey(os.path.join(pki.directory, f"tls-{hostname}-cert.pem"),
                         os.path.join(pki.directory, f"tls-{hostname}-key.pem"))
    _ensure(paths, f"TLS {hostname}", now, ca, hostname,
            lambda: makeLeaf(ca, caKey, hostname, now, server=True, dnsNames=(hostname, *SERVER_DNS_NAMES),
                             ipAddresses=SERVER_IP_ADDRESSES))
    return paths


def ensurePKI(directory: str, saeIds: Iterable[str], now: datetime.datetime) -> KMEPKI:
    """
    Find or make the embedded KME's PKI under C{directory}.  Blocking.

    @param directory: created (mode 0700) if missing.
    @param saeIds: the SAEs that need a client certificate.
    @param now: the current time, UTC.
    @return: the paths, every file present and valid at C{now}.
    @raise ValueError: an SAE id is not fit for a file name.
    @raise OSError: the directory or files cannot be written.
    """
    pki = pkiPaths(directory, saeIds)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca, caKey = _ensure(pki.ca, "KME CA", now, None, None, lambda: makeCA(now))
    _ensure(pki.server, "KME server", now, ca, None,
            lambda: makeLeaf(ca, caKey, "QutEmail embedded KME", now, server=True,
                             dnsNames=SERVER_DNS_NAMES, ipAddresses=SERVER_IP_ADDRESSES))
    for saeId, paths in sorted(pki.clients.items()):
        _ensure(paths, f"SAE {saeId} client", now, ca, saeId,
                lambda: makeLeaf(ca, caKey, saeId, now, server=False))
    return pki
