"""
The L{IQKDKeySource} contract, run against the ETSI GS QKD 014 client and
the embedded KME's key source, both talking to an embedded KME over real
mutual TLS on loopback.
"""

import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from qutemail.interfaces import IQKDKeySource, KeySourceError, KMEStatus
from qutemail.qkd.kme import EmbeddedKeySource, EmbeddedKMEService
from qutemail.qkd.kmecore import KME, PoolSettings, QKDLink
from tests.integration.support import freePort
from tests.qkd.test_etsi014 import keySource
from tests.qkd.test_kmeservice import SAES, makePKI, startKME

# The KME's pool: full at first, one more key per second of its clock.
POOL_KEYS = 5


class QKDKeySourceContractMixin:
    """
    The behaviour every L{IQKDKeySource} has, against an embedded KME
    serving SAEs A, B and C.  Subclasses provide C{makeSource(saeId)},
    returning the key source of an SAE of C{self.service}, and
    C{unreachableSource()}, returning (in a Deferred) SAE A's key source
    for a KME that cannot answer.
    """

    timeout = 10

    def setUp(self):
        """
        Start the KME; key sources for SAE A (master) and SAE B (slave).
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self):
        """
        See L{setUp}.
        """
        self.pki = makePKI(self)
        self.clock = Clock()
        link = QKDLink(PoolSettings(maxKeyCount=POOL_KEYS, refillKeysPerSecond=1.0))
        self.service = await startKME(self, self.pki, KME("kme-1", SAES, link), self.clock)
        self.master = self.makeSource("sae-a")
        self.slave = self.makeSource("sae-b")

    async def assertKeySourceError(self, d: Deferred, temporary: bool) -> KeySourceError:
        """
        Assert that C{d} fails with a L{KeySourceError} that is (or is not)
        temporary.

        @return: the error.
        """
        e = await self.assertFailure(d, KeySourceError)
        self.assertEqual(e.temporary, temporary, str(e))
        return e

    def test_provides(self):
        """
        The key source provides the interface.
        """
        self.assertTrue(verifyObject(IQKDKeySource, self.master))

    async def test_encKeySizes(self):
        """
        C{encKey} gives a UUID key id and a key of C{sizeBits // 8} bytes,
        256 bits when no size is asked.
        """
        keyId, key = await self.master.encKey("sae-b")
        self.assertIsInstance(keyId, str)
        self.assertEqual(str(uuid.UUID(keyId)), keyId.lower())
        self.assertIsInstance(key, bytes)
        self.assertEqual(len(key), 32)
        for sizeBits in (64, 128, 512):
            keyId, key = await self.master.encKey("sae-b", sizeBits)
            uuid.UUID(keyId)
            self.assertEqual(len(key), sizeBits // 8)

    async def test_keyIdsNeverRepeat(self):
        """
        No key id is given twice, across pool refills; each key is fresh.
        """
        taken = []
        for _ in range(3):
            for _ in range(POOL_KEYS):
                taken.append(await self.master.encKey("sae-b"))
            self.clock.advance(POOL_KEYS)
        self.assertEqual(len({keyId for keyId, _ in taken}), len(taken))
        self.assertEqual(len({key for _, key in taken}), len(taken))

    async def test_decKeyOnce(self):
        """
        The slave's C{decKey} gives the very key the master took, once;
        asking again is a lasting error.
        """
        keyId, key = await self.master.encKey("sae-b")
        self.assertEqual(await self.slave.decKey("sae-a", keyId), key)
        await self.assertKeySourceError(self.slave.decKey("sae-a", keyId), temporary=False)

    async def test_decKeyUnknown(self):
        """
        C{decKey} for a key id that was never given is a lasting error.
        """
        await self.assertKeySourceError(self.slave.decKey("sae-a", str(uuid.uuid4())), temporary=False)

    async def test_decKeyOnlyThePeer(self):
        """
        Only the slave the key was taken for gets it, naming its master:
        another SAE, or the slave naming another master, gets a lasting
        error, and the key stays for the right request.
        """
        keyId, key = await self.master.encKey("sae-b")
        await self.assertKeySourceError(self.makeSource("sae-c").decKey("sae-a", keyId), temporary=False)
        await self.assertKeySourceError(self.slave.decKey("sae-c", keyId), temporary=False)
        self.assertEqual(await self.slave.decKey("sae-a", keyId), key)

    async def test_status(self):
        """
        C{status} gives the link's L{KMEStatus} from the caller's side; each
        key taken leaves one fewer in the pool.
        """
        status = await self.master.status("sae-b")
        self.assertIsInstance(status, KMEStatus)
        self.assertEqual((status.masterSAEId, status.slaveSAEId, status.sourceKMEId),
                         ("sae-a", "sae-b", "kme-1"))
        self.assertEqual((status.storedKeyCount, status.maxKeyCount, status.keySize), (POOL_KEYS, POOL_KEYS, 256))
        await self.master.encKey("sae-b")
        self.assertEqual((await self.master.status("sae-b")).storedKeyCount, POOL_KEYS - 1)

    async def test_emptyPool(self):
        """
        With the pool empty, C{encKey} is a temporary error; once the pool
        refills, keys come again.
        """
        for _ in range(POOL_KEYS):
            await self.master.encKey("sae-b")
        await self.assertKeySourceError(self.master.encKey("sae-b"), temporary=True)
        self.clock.advance(1)
        self.assertEqual(len((await self.master.encKey("sae-b"))[1]), 32)

    async def test_badSize(self):
        """
        A size that is not a positive multiple of 8 is a lasting error.
        """
        for sizeBits in (100, 0, -8):
            await self.assertKeySourceError(self.master.encKey("sae-b", sizeBits), temporary=False)

    async def test_unreachable(self):
        """
        A KME that cannot answer makes C{status} and C{encKey} fail with a
        temporary error.
        """
        source = await self.unreachableSource()
        await self.assertKeySourceError(source.status("sae-b"), temporary=True)
        await self.assertKeySourceError(source.encKey("sae-b"), temporary=True)


class ETSI014KeySourceTests(QKDKeySourceContractMixin, TestCase):
    """
    The contract for the ETSI GS QKD 014 client.
    """

    def makeSource(self, saeId: str):
        """
        @return: an L{ETSI014KeySource} for C{saeId} at the KME's URL, its
            connections closed after the test.
        """
        return keySource(self, self.pki, self.service.baseURL, saeId)

    async def unreachableSource(self):
        """
        @return: a client for a loopback port nothing listens on.
        """
        return keySource(self, self.pki, f"https://localhost:{freePort()}", "sae-a")


class EmbeddedKeySourceTests(QKDKeySourceContractMixin, TestCase):
    """
    The contract for the key source of an embedded KME's SAE.
    """

    def makeSource(self, saeId: str):
        """
        @return: the L{EmbeddedKeySource} of C{saeId}, closed after the test.
        """
        source = EmbeddedKeySource.forSAE(self.service, saeId)
        self.addCleanup(source.close)
        return source

    async def unreachableSource(self):
        """
        @return: SAE A's source on a second KME that cannot listen (its
            port is taken by the first).
        """
        service = EmbeddedKMEService(reactor, KME("kme-2", SAES, QKDLink()), self.pki,
                                     endpoint=f"tcp:{self.service.portNumber}:interface=127.0.0.1")
        source = EmbeddedKeySource.forSAE(service, "sae-a")
        self.addCleanup(source.close)
        service.startService()
        self.addCleanup(service.stopService)
        # The service logs why it cannot listen; the source says so too.
        self.addCleanup(self.flushLoggedErrors, CannotListenError)
        return source
