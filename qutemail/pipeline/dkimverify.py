# -*- test-case-name: tests.pipeline.test_dkimverify -*-
"""
DKIM verification (RFC 6376 §6) of incoming mail: every C{DKIM-Signature}
field of a message is checked with dkimpy, its key fetched from DNS through
L{qutemail.pipeline.dkim.dnsFunction}, and each gets an RFC 8601 §2.7.1
result:

  - C{pass}: the signature verifies.
  - C{fail}: the key was found but the body hash or the signature does
    not match (the message was changed, or forged).
  - C{neutral}: the signature cannot be processed: its syntax is wrong
    (missing or bad tags, an unknown algorithm, C{x=} in the past), it
    does not cover the From field (RFC 6376 §6.1.1), it uses Ed25519
    without PyNaCl installed, the message is over the size we verify, or
    dkimpy failed on it.
  - C{permerror}: the key record is missing (NXDOMAIN, no TXT), not a
    key, or an RSA key under 1024 bits (RFC 8301 §3.2).
  - C{temperror}: DNS did not answer for the key (timeout, SERVFAIL).
  - C{none}: the message has no signature (one result, no domain).

Verifying is blocking (dkimpy needs the whole message in memory, and its
key lookups are DNS queries): L{verifyBlocking} runs in a worker thread,
through the runner of L{DKIMVerifier}.  A message over C{maxBytes} is not
read whole: only its header is, and each signature is C{neutral}.

At most L{MAX_SIGNATURES} signatures are verified (RFC 6376 §6.1 lets a
verifier limit them); each key is looked up once per message, so one
message waits for DNS at most L{MAX_SIGNATURES} times C{timeoutSeconds}.

Stored messages have LF line ends; dkimpy canonicalises LF and CRLF lines
alike, so a signature made on the wire (CRLF) verifies on the stored copy.
A message that does not end in a line end gets one, as RFC 6376 §3.4.3 and
§3.4.4 ask (dkimpy would otherwise keep trailing blanks of the last line,
the same workaround L{qutemail.pipeline.dkim.signHeader} makes).
"""

import binascii
import re
from typing import Any

import attrs
import dkim
import dkim.util
from twisted.internet.defer import Deferred, succeed

from qutemail.headerblock import headerEnd
from qutemail.policy.authresults import quotedValue
from qutemail.pipeline.dkim import MIN_RSA_BITS, KeyLookupError, dnsFunction

PASS = "pass"
FAIL = "fail"
NEUTRAL = "neutral"
TEMPERROR = "temperror"
PERMERROR = "permerror"
NONE = "none"

MAX_SIGNATURES = 5
TOO_LARGE = "message too large to verify"
# How much of a dkimpy error text goes into a reason.
_MAX_REASON_CHARS = 80
# How many characters of b= go into header.b (RFC 6008 §4 asks for at
# least eight).
_SIGNATURE_PREFIX_CHARS = 8
_SIGNATURE_NAME = b"dkim-signature"


@attrs.frozen
class DKIMResult:
    """
    The verdict on one signature.

    @ivar result: L{PASS}, L{FAIL}, L{NEUTRAL}, L{TEMPERROR}, L{PERMERROR},
        or L{NONE} for a message without signatures.
    @ivar domain: the signing domain (C{d=}), lower case; C{""} when
        unknown.
    @ivar selector: the selector (C{s=}); C{""} when unknown.
    @ivar reason: a short text saying why, C{""} for a pass.
    @ivar signaturePrefix: the first characters of C{b=}, telling apart
        signatures of one domain (C{header.b}, RFC 6008); C{""} when
        unknown.
    """

    result: str
    domain: str
    selector: str
    reason: str
    signaturePrefix: str = ""

    def authResultsPart(self) -> str:
        """
        This result as a C{resinfo} of C{Authentication-Results} (RFC 8601
        §2.7.1, RFC 6008).

        @return: e.g. C{'dkim=pass header.d=a.test header.s=sel
            header.b=AbCdEfGh'} or C{'dkim=fail reason="body hash
            mismatch" header.d=a.test header.s=sel header.b=AbCdEfGh'}.
        """
        words = [f"dkim={self.result}"]
        if self.reason and self.result not in (PASS, NONE):
            words.append(f"reason={quotedValue(self.reason)}")
        if self.domain:
            words.append(f"header.d={quotedValue(self.domain)}")
        if self.selector:
            words.append(f"header.s={quotedValue(self.selector)}")
        if self.signaturePrefix:
            words.append(f"header.b={quotedValue(self.signaturePrefix)}")
        return " ".join(words)


def _printable(text: str) -> str:
    """
    @return: the text with anything but printable ASCII replaced by C{?},
        cut to L{_MAX_REASON_CHARS}.
    """
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:_MAX_REASON_CHARS]


def _ascii(value: bytes | None) -> str:
    """
    @return: a tag value as printable text.
    """
    return _printable((value or b"").decode("utf-8", "replace"))


def _headerFields(message: bytes) -> list[bytes]:
    """
    The header fields of a message, leniently: each with its continuation
    lines joined (line ends kept), up to the first empty line.  A line that
    is neither a field nor a continuation is skipped.
    """
    fields: list[bytes] = []
    for line in re.split(rb"(?<=\n)", message):
        if line in (b"\n", b"\r\n", b""):
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1] += line
        elif b":" in line:
            fields.append(line)
    return fields


def _tagsOf(value: bytes) -> dict[bytes, bytes]:
    """
    The tags of a C{DKIM-Signature} field's value; when the tag list
    cannot be parsed, the C{d=} and C{s=} a simple search finds (or none).
    """
    try:
        return dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        tags = {}
        for tag in (b"d", b"s"):
            match = re.search(rb"(?:^|;)\s*" + tag + rb"\s*=\s*([^;\s]*)", value)
            if match:
                tags[tag] = match.group(1)
        return tags


def _signatureTags(fields: list[bytes]) -> list[dict[bytes, bytes]]:
    """
    The tags of every C{DKIM-Signature} field, top first, at most
    L{MAX_SIGNATURES}.

    @param fields: whole header fields (see L{_headerFields}).
    """
    values = [field.partition(b":")[2] for field in fields
              if field.partition(b":")[0].rstrip(b" \t").lower() == _SIGNATURE_NAME]
    return [_tagsOf(value) for value in values[:MAX_SIGNATURES]]


def _unverified(header: bytes, reason: str) -> tuple[DKIMResult, ...]:
    """
    The results for a message whose signatures are not verified: each is
    C{neutral} for C{reason}.

    @param header: the message's header section (or a start of it).
    """
    signatures = _signatureTags(_headerFields(header))
    if not signatures:
        return (DKIMResult(NONE, "", "", ""),)
    return tuple(_result(NEUTRAL, tags, reason) for tags in signatures)


def _result(result: str, tags: dict[bytes, bytes], reason: str) -> DKIMResult:
    """
    @return: a L{DKIMResult} naming the signature by its tags.
    """
    signature = re.sub(rb"\s+", b"", tags.get(b"b", b""))
    return DKIMResult(result, _ascii(tags.get(b"d")).lower(), _ascii(tags.get(b"s")), reason,
                      _ascii(signature[:_SIGNATURE_PREFIX_CHARS]))


class _QuietLogger:
    """
    A logger for dkimpy that drops what it says: our results carry the
    reasons, and dkimpy would otherwise write to the stdlib root logger.
    """

    def isEnabledFor(self, level: int) -> bool:
        """
        @return: C{False}: nothing is wanted.
        """
        return False

    def debug(self, *args: Any, **kwargs: Any) -> None:
        """
        Drop a debug message.
        """

    info = warning = error = debug


def _verifyOne(verifier: dkim.DKIM, index: int, tags: dict[bytes, bytes], lookup: Any) -> DKIMResult:
    """
    Verify one signature.  Blocking (DNS).

    @param verifier: dkimpy's verifier holding the message.
    @param index: the signature's position, top first.
    @param tags: its tags, for naming it in the result.
    @param lookup: the caching key lookup (see L{verifyMessageBlocking}).
    """
    try:
        prepared = verifier.verify_headerprep(index)
    except dkim.DKIMException as e:
        return _result(NEUTRAL, tags, f"malformed signature: {_printable(str(e))}")
    if not prepared or b"from" not in prepared[1]:
        # RFC 6376 §6.1.1: a signature must cover From, or be ignored;
        # dkimpy would let it pass
        return _result(NEUTRAL, tags, "From field not signed")
    keys: list[bytes | None] = []

    def recordingLookup(name: bytes, timeout: float = 5) -> bytes | None:
        """
        Look the key up, remembering what DNS gave.
        """
        key = lookup(name)
        keys.append(key)
        return key

    try:
        if verifier.verify(idx=index, dnsfunc=recordingLookup):
            return _result(PASS, tags, "")
    except KeyLookupError:
        return _result(TEMPERROR, tags, "DNS lookup of the key failed")
    except dkim.ValidationError as e:
        # after verify_headerprep, dkimpy raises this for the body hash
        text = str(e)
        return _result(FAIL, tags, "body hash mismatch" if text.startswith("body hash") else _printable(text))
    except dkim.NaClNotFoundError:
        return _result(NEUTRAL, tags, "Ed25519 verification is not available")
    except (dkim.KeyFormatError, dkim.UnknownKeyTypeError) as e:
        return _result(PERMERROR, tags, f"unusable key: {_printable(str(e))}")
    except dkim.DKIMException as e:
        return _result(NEUTRAL, tags, _printable(str(e)))
    if keys and keys[-1] is None:
        return _result(PERMERROR, tags, "no key for signature")
    if keys:
        # dkimpy answers False, without saying why, for a bad key record too
        try:
            dkim.evaluate_pk(b"", keys[-1])
        except (dkim.KeyFormatError, binascii.Error, ValueError) as e:
            return _result(PERMERROR, tags, f"unusable key: {_printable(str(e))}")
    return _result(FAIL, tags, "signature did not verify")


def verifyMessageBlocking(message: bytes, nameservers: tuple[tuple[str, int], ...],
                          timeoutSeconds: float, cache: Any = None) -> tuple[DKIMResult, ...]:
    """
    Verify every DKIM signature of a message in memory.  Blocking: call it
    in a worker thread.

    @param message: the whole message, LF or CRLF line ends.
    @param nameservers: C{(ip, port)} pairs for the key lookups; none for
        the system's resolvers.
    @param timeoutSeconds: each key lookup's lifetime.
    @param cache: a shared DNS cache (L{qutemail.dns.makeResolver}).
    @return: one L{DKIMResult} per signature, top first (at most
        L{MAX_SIGNATURES}); C{(DKIMResult("none", "", "", ""),)} when there
        is none.  Never raises.
    """
    if not message.endswith(b"\n"):
        # RFC 6376 §3.4.3, §3.4.4: the body ends in a line end
        message += b"\n"
    try:
        verifier = dkim.DKIM(message, logger=_QuietLogger(), minkey=MIN_RSA_BITS, timeout=timeoutSeconds)
    except dkim.DKIMException as e:
        return _unverified(message, f"malformed message: {_printable(str(e))}")
    except Exception as e:
        # dkimpy's parser fails on some hostile input (a message starting
        # with a continuation line raises IndexError): never lose the message
        return _unverified(message, f"malformed message: {type(e).__name__}")
    # the fields dkimpy's verify(idx=...) counts, in its order
    values = [value for name, value in verifier.headers if name.lower() == _SIGNATURE_NAME]
    signatures = [_tagsOf(value) for value in values[:MAX_SIGNATURES]]
    if not signatures:
        return (DKIMResult(NONE, "", "", ""),)
    fetch = dnsFunction(nameservers, timeoutSeconds, cache)
    cache: dict[bytes, bytes | None | KeyLookupError] = {}

    def lookup(name: bytes) -> bytes | None:
        """
        Fetch a key once per message; a failed lookup fails again at once.
        """
        name = name.lower()
        if name not in cache:
            try:
                cache[name] = fetch(name)
            except KeyLookupError as e:
                cache[name] = e
        found = cache[name]
        if isinstance(found, KeyLookupError):
            raise found
        return found

    results = []
    for index, tags in enumerate(signatures):
        try:
            results.append(_verifyOne(verifier, index, tags, lookup))
        except Exception as e:
            # the boundary of one signature: dkimpy bugs on hostile input
            # must not lose the other verdicts, nor the message
            results.append(_result(NEUTRAL, tags, f"verifier error: {type(e).__name__}"))
    return tuple(results)


_DKIM_SIGNATURE = re.compile(rb"dkim-signature", re.IGNORECASE)


def isUnsigned(message: bytes) -> bool:
    """
    Whether a message certainly has no C{DKIM-Signature} field: the name
    appears nowhere in its header section (up to the first empty line, or
    the whole message when it has none).  Cheap enough for the reactor
    thread.
    """
    return _DKIM_SIGNATURE.search(message, 0, headerEnd(message)) is None


def _headerOnly(prefix: bytes) -> bytes:
    """
    The header section of a message's first bytes: up to the empty line,
    or up to the last whole line when the prefix ends inside the header.
    """
    match = re.search(rb"\r?\n\r?\n", prefix)
    if match:
        return prefix[:match.start()] + b"\n"
    return prefix[:prefix.rfind(b"\n") + 1]


def verifyBlocking(path: str, nameservers: tuple[tuple[str, int], ...], timeoutSeconds: float,
                   maxBytes: int, cache: Any = None) -> tuple[DKIMResult, ...]:
    """
    Verify every DKIM signature of a message file.  Blocking: call it in a
    worker thread.

    @param path: the message file (a spool file), LF or CRLF line ends.
    @param nameservers: C{(ip, port)} pairs for the key lookups; none for
        the system's resolvers.
    @param timeoutSeconds: each key lookup's lifetime.
    @param maxBytes: the largest message read whole; a larger one is not
        verified: each of its signatures is C{neutral} ("message too large
        to verify").
    @return: see L{verifyMessageBlocking}; a file that cannot be read gives
        one C{temperror} without a domain.  Never raises.
    """
    try:
        with open(path, "rb") as f:
            message = f.read(maxBytes + 1)
    except OSError as e:
        return (DKIMResult(TEMPERROR, "", "", f"cannot read the message: {e.strerror or e}"),)
    if len(message) <= maxBytes:
        return verifyMessageBlocking(message, nameservers, timeoutSeconds, cache)
    return _unverified(_headerOnly(message), TOO_LARGE)


@attrs.define(eq=False)
class DKIMVerifier:
    """
    Verifies the DKIM signatures of incoming messages in worker threads.

    @ivar nameservers: C{(ip, port)} pairs for the key lookups (C{[relay]
        nameservers}); none for the system's resolvers.
    @ivar timeoutSeconds: each key lookup's lifetime.
    @ivar maxBytes: the largest message verified (C{[smtp]
        max_message_size}); see L{verifyBlocking}.
    @ivar runner: the L{qutemail.blocking.BlockingRunner}.
    @ivar cache: a DNS cache shared by the verifications, or C{None} (see
        L{qutemail.dns.makeResolver}).
    """

    nameservers: tuple[tuple[str, int], ...]
    timeoutSeconds: float
    maxBytes: int
    runner: Any
    cache: Any = None

    def verify(self, path: str) -> Deferred:
        """
        Verify a message file's signatures.

        @param path: the spool file.
        @return: a Deferred firing with the tuple of L{DKIMResult}s of
            L{verifyBlocking}; it fails only when the runner does (not
            running).
        """
        return self.runner.run(verifyBlocking, path, tuple(self.nameservers), self.timeoutSeconds,
                               self.maxBytes, self.cache)

    def verifyBytes(self, message: bytes) -> Deferred:
        """
        Verify the signatures of a message held in memory (a small spooled
        message's C{inline} body).  A message without signatures needs no
        worker thread: its result comes at once.

        @param message: the whole message.
        @return: as L{verify}.
        """
        if isUnsigned(message):
            return succeed((DKIMResult(NONE, "", "", ""),))
        if len(message) > self.maxBytes:
            return succeed(_unverified(_headerOnly(message[:self.maxBytes + 1]), TOO_LARGE))
        return self.runner.run(verifyMessageBlocking, message, tuple(self.nameservers), self.timeoutSeconds,
                               self.cache)

