# -*- test-case-name: tests.qkd.test_etsi014 -*-
"""
Strict parsing of ETSI GS QKD 014 answers (§6 data formats), for
L{qutemail.qkd.etsi014}.

Every function raises L{KeySourceError} (temporary: a KME answering
nonsense may be fixed) with one line that names the request and never
holds key material.
"""

import base64
import binascii
import json
import re
import uuid
from typing import Any

from qutemail.interfaces import KeySourceError, KMEStatus

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
MAX_MESSAGE_CHARS = 200

# The Status object's members (ETSI GS QKD 014 §6.1) and our names for them.
_STATUS_TEXT = {"source_KME_ID": "sourceKMEId", "target_KME_ID": "targetKMEId",
                "master_SAE_ID": "masterSAEId", "slave_SAE_ID": "slaveSAEId"}
_STATUS_INTEGERS = {"key_size": "keySize", "stored_key_count": "storedKeyCount", "max_key_count": "maxKeyCount",
                    "max_key_per_request": "maxKeyPerRequest", "max_key_size": "maxKeySize",
                    "min_key_size": "minKeySize", "max_SAE_ID_count": "maxSAEIdCount"}


def oneLine(text: str) -> str:
    """
    Make text from a peer fit for one log line: printable ASCII, bounded.

    @return: C{text} with each run of other characters as one space, cut to
        L{MAX_MESSAGE_CHARS}.
    """
    text = _UNPRINTABLE.sub(" ", text).strip()
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 3] + "..."
    return text


def _refuseConstant(name: str):
    """
    Refuse C{NaN} and C{Infinity}, which JSON (RFC 8259) does not have.
    """
    raise ValueError(f"{name} is not JSON")


def _uniqueMembers(pairs: list[tuple[str, Any]]) -> dict:
    """
    Build an object, refusing a member named twice.
    """
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a member is named twice")
    return result


def parseJSON(raw: bytes, what: str) -> Any:
    """
    Parse an answer as strict JSON (UTF-8, no duplicate members, no NaN).

    @param what: names the request in errors.
    @return: the value.
    @raise KeySourceError: it is not JSON.
    """
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuseConstant, object_pairs_hook=_uniqueMembers)
    except (ValueError, RecursionError):
        raise KeySourceError(f"{what}: the answer is not valid JSON")


def statusObject(answer: Any, what: str) -> KMEStatus:
    """
    Read a Status object (§6.1).

    @return: the status.
    @raise KeySourceError: a member is missing or of the wrong type.
    """
    if not isinstance(answer, dict):
        raise KeySourceError(f"{what}: the answer is not a JSON object")
    fields = {}
    for name, attribute in _STATUS_TEXT.items():
        value = answer.get(name)
        if not isinstance(value, str):
            raise KeySourceError(f"{what}: {name} is missing or not a string")
        fields[attribute] = value
    for name, attribute in _STATUS_INTEGERS.items():
        value = answer.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise KeySourceError(f"{what}: {name} is missing or not an integer")
        fields[attribute] = value
    return KMEStatus(**fields)


def keyContainer(answer: Any, what: str, count: int, sizeBits: int | None) -> list[tuple[str, bytes]]:
    """
    Read a Key container (§6.3), spelled C{keys} or (as some KMEs do)
    C{Keys}.

    @param count: how many keys were asked for.
    @param sizeBits: their size, or C{None} for any whole number of bytes.
    @return: C{(keyId, key)} for each key, in order.
    @raise KeySourceError: the container or a key is malformed, or the
        count or a size is wrong.
    """
    if not isinstance(answer, dict):
        raise KeySourceError(f"{what}: the answer is not a JSON object")
    keys = answer["keys"] if "keys" in answer else answer.get("Keys")
    if not isinstance(keys, list):
        raise KeySourceError(f"{what}: the answer has no key list")
    if len(keys) != count:
        raise KeySourceError(f"{what}: asked for {count} keys, got {len(keys)}")
    result = []
    for entry in keys:
        if not isinstance(entry, dict):
            raise KeySourceError(f"{what}: a key is not a JSON object")
        keyId, material = entry.get("key_ID"), entry.get("key")
        try:
            uuid.UUID(keyId)
        except (TypeError, ValueError, AttributeError):
            raise KeySourceError(f"{what}: a key_ID is not a UUID")
        if not isinstance(material, str):
            raise KeySourceError(f"{what}: key {keyId} has no key material")
        try:
            key = base64.b64decode(material.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise KeySourceError(f"{what}: key {keyId} is not valid base64")
        if (sizeBits is not None and len(key) * 8 != sizeBits) or not key:
            expected = "at least 8" if sizeBits is None else str(sizeBits)
            raise KeySourceError(f"{what}: key {keyId} has {len(key) * 8} bits, expected {expected}")
        result.append((keyId, key))
    return result
