"""
Tests of the embedded KME's core: the key pool of a QKD link and the ETSI
GS QKD 014 rules for who gets which key (L{qutemail.qkd.kmecore}), with no
I/O and an explicit C{now}.

Its PKI is tested in L{tests.qkd.test_certs}, its HTTPS service in
L{tests.qkd.test_kmeservice}.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qutemail.qkd.kmecore import (
    BAD_PARAMETERS,
    KEYS_NOT_FOUND,
    KME,
    SIZE_NOT_MULTIPLE_OF_8,
    KMEError,
    PoolSettings,
    QKDLink,
)


def singleKME(**settings) -> KME:
    """
    @return: one KME, alone on its link, serving C{sae-a}, C{sae-b} and
        C{sae-c}, with a pool shaped by C{settings}.
    """
    return KME("kme-1", ["sae-a", "sae-b", "sae-c"], QKDLink(PoolSettings(**settings)))


class KMECoreTests(SynchronousTestCase):
    """
    The three methods of one KME alone on its link.
    """

    def assertKMEError(self, status: int, f, *args) -> KMEError:
        """
        Assert that C{f(*args)} raises a L{KMEError} with C{status}.

        @return: the error.
        """
        e = self.assertRaises(KMEError, f, *args)
        self.assertEqual(e.status, status)
        return e

    def test_status(self):
        """
        The status names both KMEs (the same one, alone on its link), both
        SAEs, and the pool's shape; the pool starts full.
        """
        kme = singleKME(maxKeyCount=50, maxKeyPerRequest=7)
        status = kme.status("sae-a", "sae-b", 0.0)
        self.assertEqual(
            (status.sourceKMEId, status.targetKMEId, status.masterSAEId, status.slaveSAEId),
            ("kme-1", "kme-1", "sae-a", "sae-b"))
        self.assertEqual(
            (status.keySize, status.storedKeyCount, status.maxKeyCount, status.maxKeyPerRequest,
             status.minKeySize, status.maxKeySize, status.maxSAEIdCount),
            (256, 50, 50, 7, 64, 1024, 0))

    def test_encThenDec(self):
        """
        Keys taken by the master with C{enc_keys} have fresh UUIDs and the
        asked size, leave the pool, and are handed to the slave with
        C{dec_keys} unchanged, in the order asked.
        """
        kme = singleKME(maxKeyCount=10)
        taken = kme.encKeys("sae-a", "sae-b", 3, None, 0.0)
        self.assertEqual([len(k.key) for k in taken], [32, 32, 32])
        self.assertEqual(len({k.keyId for k in taken}), 3)
        self.assertEqual(len({k.key for k in taken}), 3)
        self.assertEqual(kme.status("sae-a", "sae-b", 0.0).storedKeyCount, 7)
        ids = [k.keyId for k in reversed(taken)]
        self.assertEqual(kme.decKeys("sae-b", "sae-a", ids), list(reversed(taken)))

    def test_defaultsAndSizes(self):
        """
        Without C{number} or C{size} one key of the pool's size is taken; a
        512-bit key costs two pooled keys and a 64-bit key one.
        """
        kme = singleKME(maxKeyCount=10)
        [key] = kme.encKeys("sae-a", "sae-b", None, None, 0.0)
        self.assertEqual(len(key.key), 32)
        [key] = kme.encKeys("sae-a", "sae-b", 1, 512, 0.0)
        self.assertEqual(len(key.key), 64)
        self.assertEqual(kme.link.storedKeyCount(0.0), 7)
        [key] = kme.encKeys("sae-a", "sae-b", 1, 64, 0.0)
        self.assertEqual(len(key.key), 8)
        self.assertEqual(kme.link.storedKeyCount(0.0), 6)

    def test_deliveredOnce(self):
        """
        A key is handed to its slave once; asking again is 400 with the
        standard's message.
        """
        kme = singleKME()
        [key] = kme.encKeys("sae-a", "sae-b", 1, None, 0.0)
        kme.decKeys("sae-b", "sae-a", [key.keyId])
        e = self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [key.keyId])
        self.assertEqual(e.message, KEYS_NOT_FOUND)
        self.assertEqual(e.details, [{"key_ID": key.keyId}])

    def test_decByOtherSAE(self):
        """
        An SAE that the key was not taken for gets 401, the master itself
        included, and the key stays owed to its slave.
        """
        kme = singleKME()
        [key] = kme.encKeys("sae-a", "sae-b", 1, None, 0.0)
        self.assertKMEError(401, kme.decKeys, "sae-c", "sae-a", [key.keyId])
        self.assertKMEError(401, kme.decKeys, "sae-a", "sae-a", [key.keyId])
        self.assertEqual(kme.decKeys("sae-b", "sae-a", [key.keyId]), [key])

    def test_allOrNothing(self):
        """
        A request naming one unknown key, a key of another master, or one key
        twice is 400 and delivers none of the keys it names.
        """
        kme = singleKME()
        [key] = kme.encKeys("sae-a", "sae-b", 1, None, 0.0)
        [other] = kme.encKeys("sae-c", "sae-b", 1, None, 0.0)
        unknown = "00000000-0000-4000-8000-000000000000"
        e = self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [key.keyId, unknown])
        self.assertEqual(e.details, [{"key_ID": unknown}])
        self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [key.keyId, other.keyId])
        self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [key.keyId, key.keyId])
        self.assertEqual(kme.decKeys("sae-b", "sae-a", [key.keyId]), [key])
        self.assertEqual(kme.decKeys("sae-b", "sae-c", [other.keyId]), [other])

    def test_badParameters(self):
        """
        A size that is not a multiple of 8 gets the standard's message; a
        size or a number out of range, an empty or too long list of key ids,
        or a slave no KME on the link serves, get 400 with details naming
        the problem.
        """
        kme = singleKME(maxKeyPerRequest=4)
        e = self.assertKMEError(400, kme.encKeys, "sae-a", "sae-b", 1, 100, 0.0)
        self.assertEqual((e.message, e.details), (SIZE_NOT_MULTIPLE_OF_8, []))
        cases = [((0, 256), "number_unsupported"), ((5, 256), "number_unsupported"),
                 ((1, 56), "size_unsupported"), ((1, 1032), "size_unsupported")]
        for (number, size), detail in cases:
            e = self.assertKMEError(400, kme.encKeys, "sae-a", "sae-b", number, size, 0.0)
            self.assertEqual(e.message, BAD_PARAMETERS)
            self.assertEqual([list(d) for d in e.details], [[detail]])
        self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [])
        self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [str(i) for i in range(5)])
        self.assertKMEError(400, kme.encKeys, "sae-a", "sae-z", 1, 256, 0.0)
        self.assertKMEError(400, kme.status, "sae-a", "sae-z", 0.0)
        self.assertEqual(kme.link.storedKeyCount(0.0), 1000)

    def test_selfAsSlave(self):
        """
        A KME set to refuse it answers 400 naming C{slave_SAE_ID} when a
        master names itself as the slave; by default it serves it (the
        single-site use, keys at rest).
        """
        strict = KME("kme-s", ["sae-a", "sae-b"], QKDLink(PoolSettings(allowSelfSlave=False)))
        with self.assertRaises(KMEError) as caught:
            strict.encKeys("sae-a", "sae-a", 1, None, 0.0)
        self.assertEqual(caught.exception.status, 400)
        self.assertEqual(caught.exception.details, [{"slave_SAE_ID": "shall be another SAE than the master"}])
        self.assertEqual(len(strict.encKeys("sae-a", "sae-b", 1, None, 0.0)), 1)
        relaxed = KME("kme-r", ["sae-a"], QKDLink(PoolSettings()))
        self.assertEqual(len(relaxed.encKeys("sae-a", "sae-a", 1, None, 0.0)), 1)

    def test_callerNotServed(self):
        """
        An SAE the KME does not serve (or no SAE) gets 401 from every method.
        """
        kme = singleKME()
        [key] = kme.encKeys("sae-a", "sae-b", 1, None, 0.0)
        for caller in ("sae-z", None):
            self.assertKMEError(401, kme.status, caller, "sae-b", 0.0)
            self.assertKMEError(401, kme.encKeys, caller, "sae-b", 1, 256, 0.0)
            self.assertKMEError(401, kme.decKeys, caller, "sae-a", [key.keyId])

    def test_emptyPoolRefills(self):
        """
        An empty pool answers 503 and refills at the configured rate, up to
        its size; a request too big for what is left takes nothing.
        """
        kme = singleKME(maxKeyCount=4, refillKeysPerSecond=2.0)
        kme.encKeys("sae-a", "sae-b", 3, None, 100.0)
        e = self.assertKMEError(503, kme.encKeys, "sae-a", "sae-b", 2, None, 100.0)
        self.assertEqual(e.details, [{"stored_key_count": 1, "required": 2}])
        kme.encKeys("sae-a", "sae-b", 1, None, 100.0)
        self.assertKMEError(503, kme.encKeys, "sae-a", "sae-b", 1, None, 100.4)
        self.assertEqual(len(kme.encKeys("sae-a", "sae-b", 1, None, 100.5)), 1)
        self.assertEqual(kme.link.storedKeyCount(1000.0), 4)
        self.assertEqual(kme.link.storedKeyCount(10.0), 4)

    def test_noRefill(self):
        """
        With a refill rate of 0 an empty pool stays empty.
        """
        kme = singleKME(maxKeyCount=1, refillKeysPerSecond=0)
        kme.encKeys("sae-a", "sae-b", 1, None, 0.0)
        self.assertKMEError(503, kme.encKeys, "sae-a", "sae-b", 1, None, 1e9)

    def test_owedKeysBounded(self):
        """
        Past C{maxOwedKeys} waiting keys, the oldest is forgotten.
        """
        kme = singleKME(maxOwedKeys=2)
        first, second, third = (kme.encKeys("sae-a", "sae-b", 1, None, 0.0)[0] for _ in range(3))
        self.assertEqual(kme.link.evictedKeyCount, 1)
        self.assertKMEError(400, kme.decKeys, "sae-b", "sae-a", [first.keyId])
        self.assertEqual(kme.decKeys("sae-b", "sae-a", [second.keyId, third.keyId]), [second, third])

    def test_keyMaterialNotInRepr(self):
        """
        A delivered key's repr holds its id but not its material.
        """
        [key] = singleKME().encKeys("sae-a", "sae-b", 1, None, 0.0)
        self.assertIn(key.keyId, repr(key))
        self.assertNotIn(repr(key.key), repr(key))

    def test_settingsChecked(self):
        """
        Pool settings that make no sense are refused.
        """
        for bad in [{"keySizeBits": 100}, {"keySizeBits": 2048}, {"minKeySizeBits": 512},
                    {"maxKeyCount": 0}, {"maxKeyPerRequest": True}, {"refillKeysPerSecond": -1},
                    {"refillKeysPerSecond": float("nan")}]:
            self.assertRaises(ValueError, PoolSettings, **bad)

    @given(st.lists(st.one_of(st.none(), st.integers(1, 3), st.floats(0, 3)), max_size=40))
    def test_poolInvariants(self, steps):
        """
        Whatever mix of takes (an int: how many keys), fetches (C{None}: the
        oldest owed key) and waits (a float: seconds), the pool stays within
        its bounds, a take fails only when the pool is short, and every key
        reaches its slave once with the material the master got.
        """
        kme = singleKME(maxKeyCount=5, refillKeysPerSecond=1.5)
        now, owed = 0.0, []
        for step in steps:
            if isinstance(step, float):
                now += step
            elif step is None:
                if owed:
                    key = owed.pop(0)
                    self.assertEqual(kme.decKeys("sae-b", "sae-a", [key.keyId]), [key])
                    self.assertRaises(KMEError, kme.decKeys, "sae-b", "sae-a", [key.keyId])
            else:
                stored = kme.link.storedKeyCount(now)
                try:
                    owed.extend(kme.encKeys("sae-a", "sae-b", step, None, now))
                except KMEError as e:
                    self.assertEqual((e.status, stored < step), (503, True))
                else:
                    self.assertEqual(kme.link.storedKeyCount(now), stored - step)
            self.assertTrue(0 <= kme.link.storedKeyCount(now) <= 5)


class PairModeTests(SynchronousTestCase):
    """
    Two KMEs sharing one link, each serving its own SAEs.
    """

    def setUp(self):
        """
        KME 1 serves SAE A, KME 2 serves SAE B, on one link.
        """
        self.link = QKDLink(PoolSettings(maxKeyCount=10))
        self.one = KME("kme-1", ["sae-a"], self.link)
        self.two = KME("kme-2", ["sae-b"], self.link)

    def test_keyCrossesTheLink(self):
        """
        What SAE A takes from KME 1 for SAE B, SAE B gets from KME 2; the
        status names KME 2 as the target; both see one pool.
        """
        self.assertEqual(self.one.status("sae-a", "sae-b", 0.0).targetKMEId, "kme-2")
        taken = self.one.encKeys("sae-a", "sae-b", 2, None, 0.0)
        self.assertEqual(self.two.status("sae-b", "sae-a", 0.0).storedKeyCount, 8)
        self.assertEqual(self.two.decKeys("sae-b", "sae-a", [k.keyId for k in taken]), taken)

    def test_eachKMEServesItsOwn(self):
        """
        SAE B gets 401 from KME 1, SAE A gets 401 from KME 2, and an SAE
        cannot be attached to both.
        """
        [key] = self.one.encKeys("sae-a", "sae-b", 1, None, 0.0)
        self.assertRaises(KMEError, self.one.decKeys, "sae-b", "sae-a", [key.keyId])
        self.assertEqual(self.assertRaises(KMEError, self.two.encKeys, "sae-a", "sae-b", 1, None, 0.0).status,
                         401)
        self.assertRaises(ValueError, KME, "kme-3", ["sae-a"], self.link)
        self.assertEqual(self.two.decKeys("sae-b", "sae-a", [key.keyId]), [key])
