"""
Tests of the reply table and the exceptions Twisted needs per phase.
"""

from twisted.mail.smtp import Address, SMTPBadRcpt, SMTPBadSender, SMTPServerError, User
from twisted.trial.unittest import SynchronousTestCase

from qutemail import replies
from qutemail.replies import Reply, ReplyError


class ReplyTableTests(SynchronousTestCase):
    """
    Every reply in the table is well formed.
    """

    def test_classesMatch(self):
        """
        Every named reply's enhanced code has the class of its reply code
        (RFC 2034 §4) and the three-part form (RFC 3463).
        """
        named = [v for v in vars(replies).values() if isinstance(v, Reply)]
        self.assertGreater(len(named), 30)
        for reply in named:
            parts = reply.enhanced.split(".")
            self.assertEqual(len(parts), 3, reply)
            self.assertEqual(parts[0], str(reply.code)[0], reply)

    def test_mismatchRefused(self):
        """
        A reply whose enhanced code's class differs from its code is refused.
        """
        self.assertRaises(ValueError, Reply, 451, "5.3.0", "wrong")

    def test_defaults(self):
        """
        Replies Twisted composes get a default enhanced code of their class.
        """
        self.assertEqual(replies.enhancedFor(504), "5.5.4")
        self.assertEqual(replies.enhancedFor(454), "4.7.0")
        self.assertEqual(replies.enhancedFor(432), "4.0.0")


class PhaseExceptionTests(SynchronousTestCase):
    """
    Twisted wants C{str} for MAIL/RCPT and C{bytes} in DATA.
    """

    def test_types(self):
        """
        The sender and recipient forms carry text, the DATA form bytes, each
        starting with the enhanced code.
        """
        error = ReplyError(replies.NO_SUCH_USER)
        sender = error.forSender(Address(b"a@b.test"))
        recipient = error.forRecipient(User(b"a@b.test", None, None, None))
        data = error.forData()
        self.assertIsInstance(sender, SMTPBadSender)
        self.assertIsInstance(recipient, SMTPBadRcpt)
        self.assertIsInstance(data, SMTPServerError)
        self.assertEqual((sender.code, sender.resp), (550, "5.1.1 No such user here"))
        self.assertEqual((recipient.code, recipient.resp), (550, "5.1.1 No such user here"))
        self.assertEqual((data.code, data.resp), (550, b"5.1.1 No such user here"))
