# -*- test-case-name: tests.test_tlsclient -*-
"""
Client TLS that checks who answers: the one place that builds the options
for every outgoing connection we were told to verify (the KME client, the
relay's verified mode and smarthost AUTH).

L{twisted.internet.ssl.optionsForClientTLS} checks the peer's name inside
an OpenSSL verify callback that only treats
L{service_identity.VerificationError} as a failure.  A certificate signed
by the trusted CA but without a subjectAltName makes service_identity
raise L{service_identity.CertificateError} instead; Twisted logs that and
lets the handshake complete, so such a certificate passes for any host
name.  L{VerifyingClientTLS} keeps everything else of
C{optionsForClientTLS} (trust root, client certificate, SNI, TLS 1.2 or
later) and installs its own callback, which fails the handshake on any
problem with the leaf certificate's names: no subjectAltName, a wrong
name, or anything it cannot check.
"""

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch, IPAddress_ID, IPAddressMismatch, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()


def _identity(hostname: str) -> Any:
    """
    @return: the service_identity id a certificate must match.
    """
    if isIPAddress(hostname) or isIPv6Address(hostname):
        return IPAddress_ID(hostname)
    return DNS_ID(hostname)


def _mismatch(identity: Any) -> Any:
    """
    @return: the mismatch to report when the certificate names nothing.
    """
    if isinstance(identity, IPAddress_ID):
        return IPAddressMismatch(mismatched_id=identity)
    return DNSMismatch(mismatched_id=identity)


def checkPeerName(certificate: Any, hostname: str) -> None:
    """
    Check a peer certificate's subjectAltName against the name we
    connected to.

    @param certificate: the leaf certificate (pyOpenSSL C{X509}).
    @param hostname: the name (or IP address) we expected.
    @raise VerificationError: it does not match, or names nothing.
    """
    identity = _identity(hostname)
    try:
        verify_service_identity(extract_patterns(certificate), [identity], [])
    except CertificateError:
        # No subjectAltName at all: RFC 6125 leaves nothing to match.
        raise VerificationError(errors=[_mismatch(identity)]) from None


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingClientTLS:
    """
    Client TLS options that verify the peer's chain against C{trustRoot}
    and its leaf certificate's name against C{hostname}, failing closed.
    """

    def __init__(self, hostname: str, trustRoot: Any = None,
                 clientCertificate: ssl.PrivateCertificate | None = None, requiredId: str | None = None) -> None:
        """
        @param hostname: the name the peer must prove.
        @param trustRoot: the CA certificate (or any C{IOpenSSLTrustRoot});
            C{None} for the platform's trust store.
        @param clientCertificate: ours to show, or C{None}.
        @param requiredId: an identity the leaf certificate must carry as
            well (its subject CN, or a subjectAltName DNS or URI entry),
            such as a KME's id; C{None} for none.
        """
        self.hostname = hostname
        self.requiredId = requiredId
        self._options = ssl.optionsForClientTLS(
            hostname, trustRoot=trustRoot, clientCertificate=clientCertificate,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        See L{IOpenSSLClientConnectionCreator}: Twisted's connection, with
        our verify callback in place of Twisted's.
        """
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                              _verifyCallback(tlsProtocol, self.hostname, self.requiredId))
        return connection


def certificateIds(certificate: Any) -> set[str]:
    """
    @param certificate: a pyOpenSSL C{X509}.
    @return: the identities it carries: its subject CNs and its
        subjectAltName DNS and URI entries.
    """
    cert = certificate.to_cryptography()
    ids = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ids
    return ids | set(names.get_values_for_type(x509.DNSName)) | set(
        names.get_values_for_type(x509.UniformResourceIdentifier))


def checkRequiredId(certificate: Any, requiredId: str | None) -> None:
    """
    @raise VerificationError: C{requiredId} is set and the certificate
        does not carry it (see L{certificateIds}).
    """
    if requiredId is not None and requiredId not in certificateIds(certificate):
        raise VerificationError(errors=[f"the certificate does not carry the id {requiredId!r}"])


def _verifyCallback(tlsProtocol: Any, hostname: str, requiredId: str | None = None) -> Any:
    """
    @return: an OpenSSL verify callback that checks the chain (OpenSSL's
        verdict) and the leaf's name (ours), and fails the handshake
        through C{tlsProtocol} when the name is wrong.
    """
    protocols = [tlsProtocol]

    def verify(connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        if not ok or depth != 0:
            # A chain failure already fails the handshake; the names of
            # intermediate certificates are not ours to check.
            return bool(ok)
        try:
            checkPeerName(certificate, hostname)
            checkRequiredId(certificate, requiredId)
        except VerificationError:
            failure = Failure()
        except Exception:
            # Anything we cannot check counts as a failure: never open.
            failure = Failure()
            _log.failure("while checking the TLS certificate of {hostname}", failure, hostname=hostname)
        else:
            return True
        _log.warn("TLS peer {hostname} refused: its certificate does not name it ({reason})",
                  hostname=hostname, reason=failure.getErrorMessage())
        if protocols:
            protocols.pop().failVerification(failure)
        return False

    return verify

