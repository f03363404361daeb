# -*- test-case-name: tests.qkd.test_kme -*-
"""
The embedded KME's logic, with no I/O: a key pool per QKD link and the
ETSI GS QKD 014 rules for who may take which key.

A L{QKDLink} is what two KMEs share in a real QKD network: a pool of keys
that both ends hold.  One or more L{KME} objects attach to a link; each has
its own KME id and serves its own set of SAEs.  With one KME on a link
("single mode") the master and the slave SAE talk to the same KME; with two
("pair mode") what one KME hands out by C{enc_keys} the other hands out by
C{dec_keys}.

The pool
========

The pool holds up to C{maxKeyCount} keys of C{keySizeBits} (the
C{key_size} of the status).  It starts full and refills at
C{refillKeysPerSecond}, computed from the C{now} each call is given, so a
test can empty it and then advance a L{twisted.internet.task.Clock}.  Key
material comes from C{os.urandom}, which stands in for the quantum channel.

A key of another size consumes C{ceil(size / keySizeBits)} pooled keys: a
512-bit key costs two 256-bit ones, a 64-bit key costs one.  This is what
a KME that concatenates (and truncates) pooled keys would do, and it keeps
C{stored_key_count} honest for every size.

Keys handed out by C{enc_keys} are owed to their slave SAE until it fetches
them with C{dec_keys}, once.  Owed keys are bounded (C{maxOwedKeys}): past
that the oldest are forgotten, as a KME with finite storage must; a slave
that never asks (QutEmail keeps its own copy in the key vault) then costs
nothing forever.

Every error is a L{KMEError} carrying the HTTP status of ETSI GS QKD 014
§6: 400 for a request the KME will not serve, 401 for a caller who may not
ask, 503 for an empty pool.
"""

import math
import os
import uuid
from collections.abc import Callable, Iterable

import attrs

from qutemail.interfaces import KMEStatus

# ETSI GS QKD 014 §7 uses these texts in its examples.
SIZE_NOT_MULTIPLE_OF_8 = "size shall be a multiple of 8"
KEYS_NOT_FOUND = "one or more keys specified are not found on KME"
BAD_PARAMETERS = "requested parameters do not adhere to KME configuration"
POOL_EMPTY = "keys are being generated, try again later"


class KMEError(Exception):
    """
    A request the KME refuses, with its HTTP status (ETSI GS QKD 014 §6).

    @ivar status: 400, 401 or 503.
    @ivar message: the C{message} of the error object (unused for 401).
    @ivar details: the C{details} list of the error object.
    """

    def __init__(self, status: int, message: str = "", details: Iterable[dict] = ()) -> None:
        """
        @param status: the HTTP status.
        @param message: the error object's C{message}.
        @param details: the error object's C{details}.
        """
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.details = list(details)


def _positive(instance, attribute, value) -> None:
    """
    An attrs validator: C{value} is a positive int.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _sizeBits(instance, attribute, value) -> None:
    """
    An attrs validator: C{value} is a positive multiple of 8.
    """
    _positive(instance, attribute, value)
    if value % 8:
        raise ValueError(f"{attribute.name} must be a multiple of 8, not {value}")


@attrs.frozen
class PoolSettings:
    """
    The shape of a link's key pool.

    @ivar keySizeBits: the size of pooled keys, and the default size.
    @ivar minKeySizeBits: the smallest key a request may ask for.
    @ivar maxKeySizeBits: the largest key a request may ask for.
    @ivar maxKeyCount: how many keys the pool holds when full.
    @ivar maxKeyPerRequest: the most keys one request may take.
    @ivar refillKeysPerSecond: how fast the pool refills (0: never).
    @ivar maxOwedKeys: how many keys may wait for their slave.
    @ivar allowSelfSlave: whether a master SAE may name itself as the
        slave (our single-site use: keys at rest); a KME pair between two
        sites refuses it, as real ones do.
    """

    keySizeBits: int = attrs.field(default=256, validator=_sizeBits)
    minKeySizeBits: int = attrs.field(default=64, validator=_sizeBits)
    maxKeySizeBits: int = attrs.field(default=1024, validator=_sizeBits)
    maxKeyCount: int = attrs.field(default=1000, validator=_positive)
    maxKeyPerRequest: int = attrs.field(default=128, validator=_positive)
    refillKeysPerSecond: float = attrs.field(default=10.0)
    maxOwedKeys: int = attrs.field(default=100_000, validator=_positive)
    allowSelfSlave: bool = True

    @refillKeysPerSecond.validator
    def _checkRate(self, attribute, value) -> None:
        """
        The rate is a finite number, zero or more.
        """
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"refillKeysPerSecond must be zero or more, not {value!r}")

    def __attrs_post_init__(self) -> None:
        """
        The sizes are ordered.
        """
        if not self.minKeySizeBits <= self.keySizeBits <= self.maxKeySizeBits:
            raise ValueError("key sizes must satisfy minKeySizeBits <= keySizeBits <= maxKeySizeBits")

    def unitsFor(self, sizeBits: int) -> int:
        """
        @return: how many pooled keys one key of C{sizeBits} consumes.
        """
        return -(-sizeBits // self.keySizeBits)


@attrs.frozen
class DeliveredKey:
    """
    A key as ETSI GS QKD 014 hands it out.

    @ivar keyId: a UUID, as text.
    @ivar key: the key material; never in a repr, never logged.
    """

    keyId: str
    key: bytes = attrs.field(repr=False)


@attrs.frozen
class _OwedKey:
    """
    A key taken by a master SAE, waiting for its slave.

    @ivar master: the master SAE id.
    @ivar slave: the slave SAE id.
    @ivar key: the material.
    """

    master: str
    slave: str
    key: bytes = attrs.field(repr=False)


@attrs.define(eq=False)
class QKDLink:
    """
    The key pool two KMEs share, and the keys owed to slave SAEs.

    @ivar settings: the pool's shape.
    @ivar randomBytes: where key material comes from.
    @ivar evictedKeyCount: owed keys forgotten because too many waited.
    """

    settings: PoolSettings = attrs.field(factory=PoolSettings)
    randomBytes: Callable[[int], bytes] = os.urandom
    evictedKeyCount: int = 0
    _stored: float = attrs.field(init=False)
    _updated: float | None = attrs.field(init=False, default=None)
    _owed: dict[str, _OwedKey] = attrs.field(init=False, factory=dict)
    _servedBy: dict[str, str] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        """
        The pool starts full.
        """
        self._stored = float(self.settings.maxKeyCount)

    def attach(self, kmeId: str, saeIds: Iterable[str]) -> None:
        """
        Record that a KME serves some SAEs on this link.

        @raise ValueError: an SAE is already served by another KME here.
        """
        for saeId in saeIds:
            if self._servedBy.get(saeId, kmeId) != kmeId:
                raise ValueError(f"SAE {saeId} is already served by KME {self._servedBy[saeId]}")
            self._servedBy[saeId] = kmeId

    def kmeServing(self, saeId: str) -> str | None:
        """
        @return: the id of the KME that serves C{saeId} on this link, or
            C{None}.
        """
        return self._servedBy.get(saeId)

    def storedKeyCount(self, now: float) -> int:
        """
        @return: how many keys the pool holds at C{now}.
        """
        self._refill(now)
        return int(self._stored)

    def _refill(self, now: float) -> None:
        """
        Add what was generated since the last call (a clock going backwards
        adds nothing).
        """
        if self._updated is not None and now > self._updated:
            gained = (now - self._updated) * self.settings.refillKeysPerSecond
            self._stored = min(float(self.settings.maxKeyCount), self._stored + gained)
        if self._updated is None or now > self._updated:
            self._updated = now

    def take(self, master: str, slave: str, number: int, sizeBits: int, now: float) -> list[DeliveredKey]:
        """
        Take keys out of the pool and owe them to C{slave}.

        @raise KMEError: 503 when the pool holds too few.
        """
        units = number * self.settings.unitsFor(sizeBits)
        if self.storedKeyCount(now) < units:
            raise KMEError(503, POOL_EMPTY, [{"stored_key_count": int(self._stored), "required": units}])
        self._stored -= units
        keys = [DeliveredKey(str(uuid.uuid4()), self.randomBytes(sizeBits // 8)) for _ in range(number)]
        for k in keys:
            self._owed[k.keyId] = _OwedKey(master, slave, k.key)
        while len(self._owed) > self.settings.maxOwedKeys:
            del self._owed[next(iter(self._owed))]
            self.evictedKeyCount += 1
        return keys

    def release(self, caller: str, master: str, keyIds: list[str]) -> list[DeliveredKey]:
        """
        Hand owed keys to their slave, once, all or none.

        @param caller: the SAE asking, which must be the slave.
        @param master: the master SAE named in the request.
        @raise KMEError: 401 when the caller is not the slave of every key;
            400 when one is unknown, taken by another master, already
            delivered, or named twice.
        """
        # UUIDs compare without regard to case (RFC 4122 §3); ours are
        # handed out in lower case.
        keyIds = [k.lower() for k in keyIds]
        if len(set(keyIds)) != len(keyIds):
            raise KMEError(400, KEYS_NOT_FOUND, [{"key_IDs": "a key_ID is named more than once"}])
        found = [self._owed.get(k) for k in keyIds]
        if any(o is not None and o.slave != caller for o in found):
            raise KMEError(401)
        missing = [k for k, o in zip(keyIds, found) if o is None or o.master != master]
        if missing:
            raise KMEError(400, KEYS_NOT_FOUND, [{"key_ID": k} for k in missing])
        for k in keyIds:
            del self._owed[k]
        return [DeliveredKey(k, o.key) for k, o in zip(keyIds, found)]


@attrs.define(eq=False)
class KME:
    """
    One KME on a link: its id, the SAEs it serves, and the three ETSI GS QKD
    014 methods, each given the calling SAE (from its certificate) and the
    current time.

    @ivar kmeId: this KME's id.
    @ivar saeIds: the SAEs it serves; any other caller gets 401.
    @ivar link: the link it is on.
    """

    kmeId: str
    saeIds: frozenset[str] = attrs.field(converter=frozenset)
    link: QKDLink

    def __attrs_post_init__(self) -> None:
        """
        Join the link.
        """
        self.link.attach(self.kmeId, self.saeIds)

    def _authorise(self, caller: str | None) -> str:
        """
        @return: C{caller}.
        @raise KMEError: 401 when this KME does not serve it.
        """
        if caller is None or caller not in self.saeIds:
            raise KMEError(401)
        return caller

    def _peerKME(self, saeId: str, role: str) -> str:
        """
        @return: the id of the KME serving C{saeId}.
        @raise KMEError: 400 when no KME on the link serves it.
        """
        kmeId = self.link.kmeServing(saeId)
        if kmeId is None:
            raise KMEError(400, BAD_PARAMETERS, [{role: f"{saeId} is not reachable from this KME"}])
        return kmeId

    def status(self, caller: str | None, slave: str, now: float) -> KMEStatus:
        """
        ETSI GS QKD 014 §5.1 Get status, asked by a master SAE.

        @raise KMEError: 401 or 400.
        """
        master = self._authorise(caller)
        settings = self.link.settings
        return KMEStatus(
            sourceKMEId=self.kmeId, targetKMEId=self._peerKME(slave, "slave_SAE_ID"),
            masterSAEId=master, slaveSAEId=slave, keySize=settings.keySizeBits,
            storedKeyCount=self.link.storedKeyCount(now), maxKeyCount=settings.maxKeyCount,
            maxKeyPerRequest=settings.maxKeyPerRequest, maxKeySize=settings.maxKeySizeBits,
            minKeySize=settings.minKeySizeBits, maxSAEIdCount=0,
        )

    def encKeys(self, caller: str | None, slave: str, number: int | None, sizeBits: int | None,
                now: float) -> list[DeliveredKey]:
        """
        ETSI GS QKD 014 §5.2 Get key, asked by a master SAE.

        @param number: how many keys (C{None}: one).
        @param sizeBits: their size (C{None}: the pool's key size).
        @raise KMEError: 401, 400 or 503.
        """
        master = self._authorise(caller)
        self._peerKME(slave, "slave_SAE_ID")
        settings = self.link.settings
        number = 1 if number is None else number
        sizeBits = settings.keySizeBits if sizeBits is None else sizeBits
        if sizeBits % 8:
            raise KMEError(400, SIZE_NOT_MULTIPLE_OF_8)
        details = []
        if slave == master and not settings.allowSelfSlave:
            details.append({"slave_SAE_ID": "shall be another SAE than the master"})
        if not 1 <= number <= settings.maxKeyPerRequest:
            details.append({"number_unsupported":
                            f"number shall be between 1 and max_key_per_request ({settings.maxKeyPerRequest})"})
        if not settings.minKeySizeBits <= sizeBits <= settings.maxKeySizeBits:
            details.append({"size_unsupported": f"size shall be between min_key_size ({settings.minKeySizeBits})"
                                                f" and max_key_size ({settings.maxKeySizeBits})"})
        if details:
            raise KMEError(400, BAD_PARAMETERS, details)
        return self.link.take(master, slave, number, sizeBits, now)

    def decKeys(self, caller: str | None, master: str, keyIds: list[str]) -> list[DeliveredKey]:
        """
        ETSI GS QKD 014 §5.3 Get key with key IDs, asked by the slave SAE.

        @param master: the master SAE that took the keys (in the path).
        @raise KMEError: 401 or 400.
        """
        slave = self._authorise(caller)
        if not keyIds:
            raise KMEError(400, BAD_PARAMETERS, [{"key_IDs": "at least one key_ID is required"}])
        if len(keyIds) > self.link.settings.maxKeyPerRequest:
            raise KMEError(400, BAD_PARAMETERS, [{"key_IDs": "more key_IDs than max_key_per_request"}])
        return self.link.release(slave, master, keyIds)
