"""
Tests for L{qutemail.stspolicy}: our own policy reads back as a valid
RFC 8461 policy, and its records announce it.
"""

from twisted.trial.unittest import SynchronousTestCase

from qutemail.relay.mtasts import parsePolicy, parseRecord
from qutemail.stspolicy import ownPolicy, policyId, stsRecords


class OwnPolicyTests(SynchronousTestCase):
    """
    L{ownPolicy}, L{policyId}, L{stsRecords}.
    """

    def test_valid(self) -> None:
        """
        The policy names our host as the one exchanger and parses.
        """
        policy = parsePolicy(ownPolicy("MX1.Example.TEST.", "enforce"))
        self.assertEqual((policy.mode, policy.mx, policy.maxAgeSeconds), ("enforce", ("mx1.example.test",), 604800))

    def test_idFollowsPolicy(self) -> None:
        """
        The id changes with the policy and is a valid RFC 8461 id.
        """
        testing, enforce = ownPolicy("mx.example.test", "testing"), ownPolicy("mx.example.test", "enforce")
        self.assertNotEqual(policyId(testing), policyId(enforce))
        record = stsRecords("example.test", "mx.example.test", "testing", 3600)[1]
        self.assertEqual(parseRecord([record.split('"')[1].encode()]), policyId(testing))

    def test_records(self) -> None:
        """
        The TLS-RPT record asks for reports at postmaster.
        """
        lines = stsRecords("example.test", "mx.example.test", "testing", 3600)
        self.assertEqual(lines[2],
                         '_smtp._tls.example.test. 3600 IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.test"')
        self.assertTrue(lines[0].startswith("; mta-sts.example.test. must serve"))
