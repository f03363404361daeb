# -*- test-case-name: tests.qkd.test_kmeservice -*-
"""
The embedded KME's HTTP face: ETSI GS QKD 014 §5 over JSON.

  - C{GET /api/v1/keys/{slave_SAE_ID}/status}
  - C{POST} (or C{GET ?number=&size=}) C{/api/v1/keys/{slave_SAE_ID}/enc_keys}
  - C{POST} (or C{GET ?key_ID=}) C{/api/v1/keys/{master_SAE_ID}/dec_keys}

The calling SAE is the CN of the TLS client certificate (§4.2), never
anything in the request.  Errors are JSON C{{"message", "details"}} objects
(400, 503), and a 401 carries only a C{message} (§6 allows an empty
body, which some clients fail to handle); unknown paths get 404, other
methods 405, an oversized body 400 with an error object like any other
bad request, and a fault of ours a bare 500 (never a traceback).
Each request logs one line: caller, operation, key count, status; key
material is never logged.
"""

import base64
import io
import json
import re
from collections.abc import Callable

from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from qutemail.interfaces import KMEStatus
from qutemail.qkd.kmecore import BAD_PARAMETERS, KME, DeliveredKey, KMEError

# Request bodies past this are discarded as they arrive: a dec_keys for 128
# UUIDs is about 6 kB.
MAX_BODY_BYTES = 64 * 1024
# The body of a 401: §6 lets it be empty, but a message helps the operator.
_UNAUTHORISED = {"message": "the SAE is not authorised for this request"}

_ALLOWED = {b"status": (b"GET",), b"enc_keys": (b"GET", b"POST"), b"dec_keys": (b"GET", b"POST")}
_INTEGER = re.compile(rb"[0-9]{1,9}\Z")
_MAX_KEY_ID_CHARS = 64


class _BadRequest(Exception):
    """
    The request cannot be parsed; the message says what is wrong.
    """


def peerCommonName(request: Request) -> str | None:
    """
    Find the calling SAE: the subject CN of the TLS client certificate.

    @return: the CN, or C{None} with no certificate or not exactly one CN.
    """
    getPeerCertificate = getattr(request.transport, "getPeerCertificate", None)
    certificate = getPeerCertificate() if getPeerCertificate is not None else None
    if certificate is None:
        return None
    names = certificate.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


class _CappedContent(io.BytesIO):
    """
    A request body buffer that stops storing past a limit.

    @ivar overflowed: whether the body was longer than the limit.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most bytes kept.
        """
        super().__init__()
        self._limit = limit
        self.overflowed = False

    def write(self, data: bytes) -> int:
        """
        Keep C{data} if it fits, else drop it and every later chunk.
        """
        if self.overflowed or self.tell() + len(data) > self._limit:
            self.overflowed = True
            return len(data)
        return super().write(data)


class KMESite(Site):
    """
    A L{Site} for a KME: bodies capped, no form parsing, no access log
    (L{KMEResource} logs its own line), no tracebacks.
    """

    displayTracebacks = False
    noisy = False

    def __init__(self, resource: Resource, reactor: IReactorTime, maxBodyBytes: int = MAX_BODY_BYTES,
                 idleTimeoutSeconds: float = 60) -> None:
        """
        @param resource: the root resource.
        @param reactor: for the idle timeout.
        @param maxBodyBytes: the largest request body accepted.
        @param idleTimeoutSeconds: when an idle connection is closed.
        """
        super().__init__(resource, reactor=reactor, timeout=idleTimeoutSeconds, parsePOSTFormSubmission=False)
        self.maxBodyBytes = maxBodyBytes

    def getContentFile(self, length: int | None) -> _CappedContent:
        """
        @return: a buffer for a request body, whatever its announced length.
        """
        return _CappedContent(self.maxBodyBytes)

    def log(self, request: Request) -> None:
        """
        No access log.
        """


def _keysBody(keys: list[DeliveredKey]) -> dict:
    """
    @return: an ETSI GS QKD 014 §6.2 Key container.
    """
    return {"keys": [{"key_ID": k.keyId, "key": base64.b64encode(k.key).decode("ascii")} for k in keys]}


def _statusBody(status: KMEStatus) -> dict:
    """
    @return: an ETSI GS QKD 014 §6.1 Status object.
    """
    return {
        "source_KME_ID": status.sourceKMEId, "target_KME_ID": status.targetKMEId,
        "master_SAE_ID": status.masterSAEId, "slave_SAE_ID": status.slaveSAEId,
        "key_size": status.keySize, "stored_key_count": status.storedKeyCount,
        "max_key_count": status.maxKeyCount, "max_key_per_request": status.maxKeyPerRequest,
        "max_key_size": status.maxKeySize, "min_key_size": status.minKeySize,
        "max_SAE_ID_count": status.maxSAEIdCount,
    }


def _rejectConstant(name: str):
    """
    Refuse C{NaN} and C{Infinity}, which JSON (RFC 8259) does not have.
    """
    raise ValueError(f"{name} is not JSON")


def _jsonObject(request: Request) -> dict:
    """
    @return: the request body as a JSON object (an empty body is C{{}}).
    @raise _BadRequest: it is not one.
    """
    request.content.seek(0)
    raw = request.content.read()
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_rejectConstant)
    except (ValueError, RecursionError):
        raise _BadRequest("the body is not valid JSON")
    if not isinstance(value, dict):
        raise _BadRequest("the body is not a JSON object")
    return value


def _integer(value, name: str) -> int | None:
    """
    @return: C{value} if it is a JSON integer (or absent: C{None}).
    @raise _BadRequest: it is something else.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _BadRequest(f"{name} shall be an integer")


def _queryValue(request: Request, name: bytes) -> bytes | None:
    """
    @return: the one value of a query parameter, or C{None}.
    @raise _BadRequest: it is given more than once.
    """
    values = request.args.get(name, [])
    if len(values) > 1:
        raise _BadRequest(f"{name.decode()} is given more than once")
    return values[0] if values else None


def _queryInteger(request: Request, name: bytes) -> int | None:
    """
    @return: an integer query parameter, or C{None}.
    @raise _BadRequest: it is not a decimal integer.
    """
    value = _queryValue(request, name)
    if value is None:
        return None
    if not _INTEGER.match(value):
        raise _BadRequest(f"{name.decode()} shall be an integer")
    return int(value)


def _keyId(value) -> str:
    """
    @return: C{value}, a plausible key id.
    @raise _BadRequest: it is not.
    """
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_KEY_ID_CHARS:
        raise _BadRequest("key_ID shall be a UUID")
    return value


def _unsupportedExtensions(extensions) -> list[dict]:
    """
    The C{details} of an C{extension_mandatory} refusal: one entry naming
    each parameter (we support none).
    """
    names = []
    for entry in extensions if isinstance(extensions, list) else [extensions]:
        names += list(entry) if isinstance(entry, dict) else [str(entry)]
    return [{"extension_mandatory_unsupported": name} for name in names]


class KMEResource(Resource):
    """
    The ETSI GS QKD 014 API of one L{KME}, as the root of a L{KMESite}.

    @ivar kme: the KME that answers.
    @ivar clock: gives the current time to the key pool.
    @ivar callerOf: finds the calling SAE id from a request.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, kme: KME, clock: IReactorTime,
                 callerOf: Callable[[Request], str | None] = peerCommonName) -> None:
        """
        @param kme: the KME that answers.
        @param clock: gives the current time to the key pool.
        @param callerOf: finds the calling SAE id from a request.
        """
        super().__init__()
        self.kme = kme
        self.clock = IReactorTime(clock)
        self.callerOf = callerOf

    def render(self, request: Request) -> bytes:
        """
        Answer one request, logging one line about it.
        """
        caller = operation = None
        try:
            caller = self.callerOf(request)
            operation, status, body, keyCount = self._answer(request, caller)
        except Exception:
            # The boundary of one request: log, answer 500, carry on.
            self._log.failure("KME request from SAE {caller} failed", caller=caller)
            status, body, keyCount = 500, {"message": "internal error"}, 0
        self._log.info("KME {kmeId}: {operation} from SAE {caller}: {status}, {keyCount} keys",
                       kmeId=self.kme.kmeId, operation=operation or "-", caller=caller or "-",
                       status=status, keyCount=keyCount)
        request.setResponseCode(status)
        if body is None:
            request.setHeader(b"content-length", b"0")
            return b""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode("utf-8")

    def _answer(self, request: Request, caller: str | None) -> tuple[str | None, int, dict | None, int]:
        """
        @return: C{(operation, status, body, keyCount)}; a body of C{None}
            means no body.
        """
        segments = request.postpath
        if (len(segments) != 5 or segments[:3] != [b"api", b"v1", b"keys"] or not segments[3]
                or segments[4] not in _ALLOWED):
            return None, 404, {"message": "not found"}, 0
        operation = segments[4].decode("ascii")
        if request.method not in _ALLOWED[segments[4]]:
            request.setHeader(b"allow", b", ".join(_ALLOWED[segments[4]]))
            return operation, 405, {"message": "method not allowed"}, 0
        if getattr(request.content, "overflowed", False):
            return operation, 400, {"message": BAD_PARAMETERS,
                                    "details": [{"request": "body too large"}]}, 0
        if caller not in self.kme.saeIds:
            return operation, 401, _UNAUTHORISED, 0
        try:
            target = segments[3].decode("utf-8")
            body = self._call(operation, request, caller, target)
        except UnicodeDecodeError:
            return operation, 400, {"message": BAD_PARAMETERS, "details": [{"request": "not UTF-8"}]}, 0
        except _BadRequest as e:
            return operation, 400, {"message": BAD_PARAMETERS, "details": [{"request": str(e)}]}, 0
        except KMEError as e:
            if e.status == 401:
                return operation, 401, _UNAUTHORISED, 0
            return operation, e.status, {"message": e.message, "details": e.details}, 0
        return operation, 200, body, len(body.get("keys", ()))

    def _call(self, operation: str, request: Request, caller: str, target: str) -> dict:
        """
        Parse the parameters and call the KME.

        @return: the response body.
        @raise _BadRequest: the parameters cannot be parsed.
        @raise KMEError: the KME refuses.
        """
        now = self.clock.seconds()
        if operation == "status":
            return _statusBody(self.kme.status(caller, target, now))
        if operation == "enc_keys":
            if request.method == b"GET":
                number, size = _queryInteger(request, b"number"), _queryInteger(request, b"size")
            else:
                parameters = _jsonObject(request)
                number = _integer(parameters.get("number"), "number")
                size = _integer(parameters.get("size"), "size")
                if parameters.get("additional_slave_SAE_IDs"):
                    raise KMEError(400, BAD_PARAMETERS, [{"additional_slave_SAE_IDs": "max_SAE_ID_count is 0"}])
                if parameters.get("extension_mandatory"):
                    raise KMEError(400, "not all extension_mandatory parameters are supported",
                                   _unsupportedExtensions(parameters["extension_mandatory"]))
            return _keysBody(self.kme.encKeys(caller, target, number, size, now))
        if request.method == b"GET":
            keyIds = [_keyId(k.decode("utf-8")) for k in request.args.get(b"key_ID", [])]
        else:
            entries = _jsonObject(request).get("key_IDs")
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise _BadRequest("key_IDs shall be a list of objects")
            keyIds = [_keyId(e.get("key_ID")) for e in entries]
        return _keysBody(self.kme.decKeys(caller, target, keyIds))
