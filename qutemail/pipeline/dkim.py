# -*- test-case-name: tests.pipeline.test_dkim -*-
"""
DKIM (RFC 6376; Ed25519 keys per RFC 8463): signing keys, signing with
dkimpy, and the DNS records a domain publishes.

Signing is blocking (dkimpy works on the whole message in memory, which the
style guide allows for dkimpy only, bounded by C{maxBytes}): call
L{signHeader} in a worker thread.  So is L{dnsFunction}'s lookup, which
C{dkim.verify} calls.

Key files are PEM: an RSA key (PKCS#1 or PKCS#8) signs with C{rsa-sha256},
an Ed25519 key (PKCS#8) with C{ed25519-sha256}.  dkimpy needs PyNaCl for
Ed25519; without it, signing with an Ed25519 key raises
C{dkim.NaClNotFoundError}.
"""

import base64
import os
from typing import Any, BinaryIO, Callable

import attrs
import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from qutemail.config import DKIMConfig
from qutemail.interfaces import IDKIMKeys
from qutemail.dns import FAILED, FOUND, queryBlocking

RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"

# RFC 6376 §5.4.1 (and §5.4's MIME and Resent- fields): what a signer
# should sign when present.  Each is signed as often as it occurs.
SIGNED_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id", "content-description",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-message-id",
    "in-reply-to", "references",
    "list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
)
# RFC 6376 §5.4.2: signing a field once more than it occurs stops anyone
# adding another; a second From would change who the mail claims to be from.
OVERSIGNED_HEADERS = ("from",)

# RFC 8301 §3.2: verifiers must refuse RSA keys under 1024 bits.
MIN_RSA_BITS = 1024
DEFAULT_TTL = 3600


@attrs.frozen
class SigningKey:
    """
    What a domain signs with; what L{IDKIMKeys.keyFor} returns.

    @ivar selector: the selector (C{s=}), a DNS label.
    @ivar domain: the signing domain (C{d=}), lower case.
    @ivar privateKeyPEM: the private key, PEM (see L{loadPrivateKey}).
    @ivar algorithm: L{RSA_SHA256} or L{ED25519_SHA256}, matching the key.
    """

    selector: str
    domain: str
    privateKeyPEM: bytes = attrs.field(repr=False)
    algorithm: str = attrs.field(default=RSA_SHA256, validator=attrs.validators.in_((RSA_SHA256, ED25519_SHA256)))


def loadPrivateKey(pem: bytes) -> tuple[bytes, str]:
    """
    Check a PEM private key and put it in the form dkimpy reads.

    @param pem: an unencrypted RSA or Ed25519 private key, PEM.
    @return: C{(pem, algorithm)}: RSA keys as PKCS#1 PEM, Ed25519 keys as
        PKCS#8 PEM, both with LF line ends; the algorithm for the key.
    @raise ValueError: for anything else: not PEM, encrypted, another key
        type, an RSA key under L{MIN_RSA_BITS}.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as e:  # cryptography's way of saying "encrypted"
        raise ValueError(f"cannot use the key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"the RSA key has {key.key_size} bits; DKIM needs at least {MIN_RSA_BITS}")
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption()), RSA_SHA256
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()), ED25519_SHA256
    raise ValueError(f"DKIM keys are RSA or Ed25519, not {type(key).__name__}")


def readKeyFile(path: str) -> tuple[bytes, str] | None:
    """
    Read a key file.  Blocking.

    @return: what L{loadPrivateKey} returns, or C{None} when there is no
        such file.
    @raise OSError: when the file cannot be read.
    @raise ValueError: when it holds no usable key.
    """
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except FileNotFoundError:
        return None
    return loadPrivateKey(pem)


def defaultKeyPath(dataDir: str, selector: str) -> str:
    """
    @return: where the key lives when C{[dkim] private_key} is empty:
        C{data_dir/keys/dkim-<selector>.key}.
    """
    return os.path.join(dataDir, "keys", f"dkim-{selector}.key")


@implementer(IDKIMKeys)
@attrs.define(eq=False)
class FileDKIMKeys:
    """
    One key file signs for every local domain.

    The file is read once, through the runner, on the first lookup; the
    result (a key, or none) is kept until restart.  A missing file means no
    signing; an unusable one is logged and also means no signing.

    @ivar path: the key file.
    @ivar selector: the selector (C{[dkim] selector}).
    @ivar domains: the local domains, which it signs for.
    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    """

    path: str
    selector: str
    domains: tuple[str, ...] = attrs.field(converter=lambda ds: tuple(d.lower().rstrip(".") for d in ds))
    runner: Any
    _loaded: tuple | None = None

    _log = Logger()

    @classmethod
    def fromConfig(cls, config: DKIMConfig, dataDir: str, domains: tuple[str, ...], runner: Any) -> "FileDKIMKeys":
        """
        @param config: the C{[dkim]} section, a L{qutemail.config.DKIMConfig}.
        @param dataDir: C{[server] data_dir}.
        @param domains: C{[server] domains}.
        @param runner: the L{qutemail.blocking.BlockingRunner}.
        @return: keys from C{[dkim] private_key}, or from L{defaultKeyPath}
            when that is empty.
        """
        path = config.privateKey or defaultKeyPath(dataDir, config.selector)
        return cls(path, config.selector, domains, runner)

    def keyFor(self, domain: str) -> Deferred:
        """
        See L{IDKIMKeys.keyFor}.
        """
        return Deferred.fromCoroutine(self._keyFor(domain))

    async def _keyFor(self, domain: str) -> SigningKey | None:
        """
        @return: the key for a local domain, or C{None}.
        """
        domain = domain.lower().rstrip(".")
        if domain not in self.domains:
            return None
        if self._loaded is None:
            self._loaded = (await self._read(),)
        found = self._loaded[0]
        if found is None:
            return None
        pem, algorithm = found
        return SigningKey(self.selector, domain, pem, algorithm)

    async def _read(self) -> tuple[bytes, str] | None:
        """
        Read the key file in a worker thread; log why it is unusable.
        """
        try:
            found = await self.runner.run(readKeyFile, self.path)
        except (OSError, ValueError) as e:
            self._log.error("DKIM key {path} is unusable, mail goes unsigned: {error}", path=self.path, error=str(e))
            return None
        if found is None:
            self._log.info("no DKIM key at {path}, mail goes unsigned", path=self.path)
        return found


def _dkimpyKey(key: SigningKey) -> bytes:
    """
    The private key as dkimpy takes it: PEM for RSA, the base64 raw seed for
    Ed25519.
    """
    if key.algorithm == RSA_SHA256:
        return key.privateKeyPEM
    private = serialization.load_pem_private_key(key.privateKeyPEM, password=None)
    return base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                  serialization.NoEncryption()))


def _readBounded(source: str | BinaryIO, maxBytes: int) -> bytes:
    """
    Read a whole message, refusing one over C{maxBytes}.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _readBounded(f, maxBytes)
    data = source.read(maxBytes + 1)
    if len(data) > maxBytes:
        raise ValueError(f"the message is over {maxBytes} bytes")
    return data


def signHeader(source: str | BinaryIO, key: SigningKey, maxBytes: int, lineEnd: bytes = b"\n") -> bytes:
    """
    Sign a message (relaxed/relaxed canonicalisation).  Blocking: CPU and
    file reads.

    The message may have LF or CRLF line ends: canonicalisation works on
    CRLF lines either way, so the signature verifies on the wire.

    @param source: the message: a path, or a binary file at its start
        (left open).
    @param key: the signing key.
    @param maxBytes: the largest message read.
    @param lineEnd: the line end of the result, within its folding and at
        its end; LF, to go in front of a message stored with LF.
    @return: the C{DKIM-Signature} header field, folded, ending in
        C{lineEnd}.
    @raise ValueError: when the message is over C{maxBytes}.
    @raise dkim.DKIMException: when dkimpy cannot sign: no From field, a
        bad key, Ed25519 without PyNaCl.
    """
    message = _readBounded(source, maxBytes)
    if not message.endswith(b"\n"):
        # SMTP sends a final line end anyway (RFC 5321 §4.1.1.4), and RFC 6376
        # §3.4.4 adds one; dkimpy would keep trailing blanks on the last line
        message += b"\n"
    signer = dkim.DKIM(message, signature_algorithm=key.algorithm.encode("ascii"), linesep=lineEnd)
    signer.should_sign = {name.encode("ascii") for name in SIGNED_HEADERS}
    signer.frozen_sign = {name.encode("ascii") for name in OVERSIGNED_HEADERS}
    return signer.sign(key.selector.encode("ascii"), key.domain.encode("idna"), _dkimpyKey(key),
                       canonicalize=(b"relaxed", b"relaxed"))


def publicTXTValue(privateKeyPEM: bytes) -> str:
    """
    The DKIM key record's value for a private key (RFC 6376 §3.6.1).

    @param privateKeyPEM: an RSA or Ed25519 private key, PEM.
    @return: C{"v=DKIM1; k=rsa; p=..."}: for RSA the base64 DER
        SubjectPublicKeyInfo, for Ed25519 the base64 raw public key (RFC
        8463 §4.2).
    @raise ValueError: as L{loadPrivateKey}.
    """
    pem, algorithm = loadPrivateKey(privateKeyPEM)
    public = serialization.load_pem_private_key(pem, password=None).public_key()
    if algorithm == RSA_SHA256:
        data = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(data).decode('ascii')}"
    data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(data).decode('ascii')}"


def generateKey(algorithm: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """
    Make a new signing key.  Blocking (CPU).

    @param algorithm: C{"rsa"} or C{"ed25519"}.
    @param bits: the RSA key size (ignored for Ed25519).
    @return: C{(privateKeyPEM, txtValue)}: the key as L{loadPrivateKey}
        gives it, and its L{publicTXTValue}.
    @raise ValueError: for another algorithm, or fewer than
        L{MIN_RSA_BITS} bits.
    """
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"DKIM RSA keys need at least {MIN_RSA_BITS} bits")
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    else:
        raise ValueError(f"DKIM keys are rsa or ed25519, not {algorithm!r}")
    return pem, publicTXTValue(pem)


def _quoted(value: str) -> str:
    """
    A TXT value as zone-file character-strings: quoted pieces of at most
    255 bytes (RFC 1035 §3.3.14), with C{"} and C{\\} escaped and other
    non-printable bytes as C{\\DDD} (RFC 1035 §5.1).
    """
    data = value.encode("utf-8")
    pieces = []
    for start in range(0, len(data), 255) if data else (0,):
        text = ""
        for byte in data[start:start + 255]:
            if byte in (0x22, 0x5C):
                text += "\\" + chr(byte)
            elif 0x20 <= byte < 0x7F:
                text += chr(byte)
            else:
                text += f"\\{byte:03d}"
        pieces.append(f'"{text}"')
    return " ".join(pieces)


def _absolute(name: str) -> str:
    """
    @return: the name in lower case with one final dot.
    """
    return name.lower().rstrip(".") + "."


def txtRecord(selector: str, domain: str, publicKeyTXT: str, ttl: int = DEFAULT_TTL) -> str:
    """
    The zone-file line publishing a DKIM key.

    @param selector: the selector.
    @param domain: the signing domain.
    @param publicKeyTXT: the record's value, from L{publicTXTValue}.
    @param ttl: the record's TTL in seconds.
    @return: C{'<selector>._domainkey.<domain>. 3600 IN TXT ( "v=DKIM1; k=rsa; p=..." "..." )'}.
    """
    return f"{_absolute(f'{selector}._domainkey.{domain}')} {ttl} IN TXT ( {_quoted(publicKeyTXT)} )"


def dnsRecords(domain: str, hostname: str, selector: str, publicKeyTXT: str, ttl: int = DEFAULT_TTL) -> list[str]:
    """
    The zone-file lines a local domain needs so that mail to it reaches
    this server and mail from it passes SPF, DKIM and DMARC.  The host
    name's own A/AAAA (and PTR) records are not included: only the
    administrator knows the server's public addresses.

    @param domain: the local domain.
    @param hostname: this server's host name (C{[server] hostname}).
    @param selector: the DKIM selector.
    @param publicKeyTXT: the DKIM record's value, from L{publicTXTValue}.
    @param ttl: every record's TTL in seconds.
    @return: the MX, SPF, DKIM and DMARC lines, in that order.
    """
    owner = _absolute(domain)
    return [
        f"{owner} {ttl} IN MX 10 {_absolute(hostname)}",
        # RFC 7208: the hosts named by the MX records may send for the domain
        f"{owner} {ttl} IN TXT {_quoted('v=spf1 mx -all')}",
        txtRecord(selector, domain, publicKeyTXT, ttl),
        # RFC 7489 §6.3: relaxed alignment; reporting addresses are the
        # administrator's choice
        f"_dmarc.{owner} {ttl} IN TXT {_quoted('v=DMARC1; p=quarantine; adkim=r; aspf=r')}",
    ]


class KeyLookupError(Exception):
    """
    DNS did not answer a DKIM key query (timeout, SERVFAIL): the verdict is
    C{temperror} (RFC 8601 §2.7.1), not a failed signature.  Raised through
    C{dkim.verify}, which lets it pass.
    """


def dnsFunction(nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float = 10.0,
                cache: Any = None) -> Callable[..., bytes | None]:
    """
    A C{dnsfunc} for C{dkim.verify} that asks our nameservers.  The
    function blocks: call C{dkim.verify} in a worker thread.

    @param nameservers: C{(ip, port)} pairs; none for the system's
        resolvers.
    @param timeoutSeconds: each lookup's lifetime (dkimpy's own timeout is
        ignored).
    @return: C{dnsfunc(name, timeout=...)}: the first TXT record of C{name}
        with its character-strings joined, or C{None} when the name does
        not exist or has no TXT record (RFC 6376 §6.1.2: no key).
    """

    def lookupTXT(name: bytes | str, timeout: float = timeoutSeconds) -> bytes | None:
        """
        @raise KeyLookupError: when DNS does not answer.
        """
        text = name if isinstance(name, str) else name.decode("ascii", "replace")
        answer = queryBlocking(nameservers, timeoutSeconds, text, "TXT", cache)
        if answer.status == FAILED:
            raise KeyLookupError(f"DNS lookup of {text} failed: {answer.detail}")
        return answer.records[0] if answer.status == FOUND else None

    return lookupTXT
