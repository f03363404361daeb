"""
The L{IMessageStore} contract, run against the Maildir store and the memory
store.
"""

import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from qutemail.backends.memory import MemoryMessageStore
from qutemail.blocking import InlineRunner
from qutemail.interfaces import Account, IMessageStore
from qutemail.message import Envelope, SpooledMessage
from qutemail.replies import MAILBOX_FULL, ReplyError
from qutemail.store.maildir import MaildirStore

ALICE = Account("alice@example.test")
BOB = Account("bob@example.test")
BODY = b"Subject: hi\n\n" + b"x" * 987 + b"\n"
# Room for one copy of BODY (1000 bytes) with any header fields a store
# adds, but not for two.
ONE_COPY_BYTES = 1500


def message(queueId: str = "18B2C0FFEE0001", body: bytes = BODY) -> SpooledMessage:
    """
    @return: an inline message to alice and bob.
    """
    envelope = Envelope("sender@remote.test", (ALICE.address, BOB.address), "client.test", "192.0.2.7",
                        1700000000.25)
    return SpooledMessage(queueId, envelope, len(body), inline=body)


class MessageStoreContractMixin:
    """
    The behaviour every L{IMessageStore} has.  Subclasses provide
    C{makeStore(defaultQuotaBytes)}, returning an empty store whose
    accounts without a quota of their own get C{defaultQuotaBytes} (0: no
    limit), and whose Deferreds have fired when it returns them.
    """

    def setUp(self):
        """
        A fresh, empty store without a default quota.
        """
        self.store = self.makeStore(0)

    def deliver(self, message: SpooledMessage, account: Account = ALICE, index: int = 0,
                checkExisting: bool = False, store=None) -> str:
        """
        Deliver, and check the result is a stored id.

        @return: the stored id.
        """
        storedId = self.successResultOf((store or self.store).deliver(message, account, index, checkExisting))
        self.assertIsInstance(storedId, str)
        self.assertTrue(storedId)
        return storedId

    def usage(self, account: Account = ALICE, store=None) -> tuple[int, int]:
        """
        @return: the account's usage, C{(bytes, messages)}.
        """
        return self.successResultOf((store or self.store).usage(account))

    def assertMailboxFull(self, d):
        """
        Assert that C{d} failed with L{ReplyError} carrying C{MAILBOX_FULL}.
        """
        self.assertEqual(self.failureResultOf(d, ReplyError).value.reply, MAILBOX_FULL)

    def test_provides(self):
        """
        The backend provides the interface.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))

    def test_emptyMailbox(self):
        """
        An account nothing was delivered to uses nothing.
        """
        self.assertEqual(self.usage(), (0, 0))

    def test_deliverCounts(self):
        """
        A delivered copy gets a stored id and counts in its account's usage:
        one more message and at least its body's bytes.
        """
        self.deliver(message())
        size, count = self.usage()
        self.assertEqual(count, 1)
        self.assertGreaterEqual(size, len(BODY))
        self.deliver(message("18B2C0FFEE0002"))
        size2, count2 = self.usage()
        self.assertEqual(count2, 2)
        self.assertGreaterEqual(size2, size + len(BODY))

    def test_spilledMessage(self):
        """
        A message whose body is in a spill file is stored and counted like
        the same message held inline.
        """
        self.deliver(message())
        inline = self.usage()
        spill = os.path.abspath(self.mktemp())
        with open(spill, "wb") as f:
            f.write(BODY)
        spilled = SpooledMessage("18B2C0FFEE0002", message().envelope, len(BODY), path=spill)
        self.deliver(spilled)
        self.assertEqual(self.usage(), (2 * inline[0], 2))

    def test_ownIds(self):
        """
        Each copy has its own stored id: another recipient index of the same
        message, or another message, is stored again under another id.
        """
        ids = [self.deliver(message(), index=0), self.deliver(message(), index=1),
               self.deliver(message("18B2C0FFEE0002"), index=0)]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(self.usage()[1], 3)

    def test_accountsApart(self):
        """
        Each account has its own mailbox: a delivery to one does not count
        in another's usage.
        """
        self.deliver(message(), ALICE, 0)
        self.deliver(message(), ALICE, 1)
        self.deliver(message(), BOB, 1)
        self.assertEqual(self.usage(ALICE)[1], 2)
        self.assertEqual(self.usage(BOB)[1], 1)
        self.assertEqual(self.usage(Account("carol@example.test")), (0, 0))

    def test_checkExistingFindsCopy(self):
        """
        With C{checkExisting}, a copy stored before (say, before a crash) is
        found: its id comes back and nothing more is stored.
        """
        first = self.deliver(message(), index=1)
        before = self.usage()
        self.assertEqual(self.deliver(message(), index=1, checkExisting=True), first)
        self.assertEqual(self.usage(), before)

    def test_checkExistingStoresNew(self):
        """
        With C{checkExisting} and no earlier copy (none at all, or only one
        for another recipient index), the message is stored.
        """
        self.deliver(message(), index=0, checkExisting=True)
        self.assertEqual(self.usage()[1], 1)
        self.deliver(message(), index=1, checkExisting=True)
        self.assertEqual(self.usage()[1], 2)

    def test_overQuota(self):
        """
        A copy that would take the mailbox over the account's quota is
        refused with C{ReplyError(MAILBOX_FULL)} and counts nothing; another
        account is not held back by it.
        """
        full = Account(ALICE.address, ONE_COPY_BYTES)
        self.deliver(message(), full)
        before = self.usage(full)
        self.assertMailboxFull(self.store.deliver(message("18B2C0FFEE0002"), full))
        self.assertEqual(self.usage(full), before)
        self.deliver(message("18B2C0FFEE0002"), Account(BOB.address, ONE_COPY_BYTES))

    def test_defaultQuota(self):
        """
        An account without a quota of its own gets the store's default; one
        with its own gets that instead.
        """
        store = self.makeStore(ONE_COPY_BYTES)
        self.deliver(message(), ALICE, store=store)
        self.assertMailboxFull(store.deliver(message("18B2C0FFEE0002"), ALICE))
        roomy = Account(BOB.address, 100 * ONE_COPY_BYTES)
        self.deliver(message(), roomy, store=store)
        self.deliver(message("18B2C0FFEE0002"), roomy, store=store)
        self.assertEqual(self.usage(roomy, store=store)[1], 2)

    def test_checkExistingWhenFull(self):
        """
        A copy stored before is found with C{checkExisting} even when the
        mailbox has filled up since: recovering a delivery is not refused.
        """
        full = Account(ALICE.address, ONE_COPY_BYTES)
        first = self.deliver(message(), full)
        self.assertMailboxFull(self.store.deliver(message("18B2C0FFEE0002"), full))
        self.assertEqual(self.deliver(message(), full, checkExisting=True), first)


class MaildirStoreTests(MessageStoreContractMixin, SynchronousTestCase):
    """
    The contract for the Maildir store.
    """

    def makeStore(self, defaultQuotaBytes: int):
        """
        @return: a L{MaildirStore} in a new data directory, running inline.
        """
        return MaildirStore(os.path.abspath(self.mktemp()), InlineRunner(), "mail.example.test", defaultQuotaBytes)


class MemoryMessageStoreTests(MessageStoreContractMixin, SynchronousTestCase):
    """
    The contract for the memory store.
    """

    def makeStore(self, defaultQuotaBytes: int):
        """
        @return: an empty L{MemoryMessageStore}.
        """
        return MemoryMessageStore(defaultQuotaBytes)
