"""
Tests of the reply table.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail import replies
from qutemail.replies import Reply


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

