# -*- test-case-name: tests.backends.test_passwordhash -*-
"""
Tests for L{qutemail.backends.passwordhash}.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.backends.passwordhash import (
    DEFAULT_WORK_FACTOR, hashPassword, parsePasswordHash, passwordThreads, verifyPassword,
)

# Cheap scrypt (N = 16) so that the tests run fast; test_defaultParameters
# covers the real cost once.
CHEAP = 4
PASSWORD = b"correct horse battery staple"


class PasswordHashTests(SynchronousTestCase):
    """
    The scrypt hash and its stored form.
    """

    def test_defaultParameters(self) -> None:
        """
        By default hashes use N = 2**14, r = 8, p = 1, a 16-byte salt and a
        32-byte key, and verify.
        """
        self.assertEqual(DEFAULT_WORK_FACTOR, 14)
        encoded = hashPassword(PASSWORD)
        self.assertTrue(encoded.startswith("scrypt$14$8$1$"), encoded)
        workFactor, r, p, salt, key = parsePasswordHash(encoded)
        self.assertEqual((workFactor, r, p, len(salt), len(key)), (14, 8, 1, 16, 32))
        self.assertTrue(verifyPassword(encoded, PASSWORD))
        self.assertFalse(verifyPassword(encoded, PASSWORD[:-1]))

    def test_saltIsRandom(self) -> None:
        """
        The same password hashes differently each time.
        """
        self.assertNotEqual(hashPassword(PASSWORD, CHEAP), hashPassword(PASSWORD, CHEAP))

    def test_parseRejects(self) -> None:
        """
        Hashes of another scheme, with missing parts, bad base64 or
        parameters too costly to honour are refused with L{ValueError}.
        """
        good = hashPassword(PASSWORD, CHEAP)
        parts = good.split("$")
        bad = [
            "",
            "plain",
            "bcrypt$" + "$".join(parts[1:]),
            "$".join(parts[:-1]),
            "$".join(["scrypt", "40"] + parts[2:]),
            "$".join(["scrypt", "4", "0"] + parts[3:]),
            "$".join(["scrypt", "4", "8", "x"] + parts[4:]),
            "$".join(parts[:4] + ["!!!!", parts[5]]),
            "$".join(parts[:5] + ["AAAA"]),
        ]
        for encoded in bad:
            self.assertRaises(ValueError, parsePasswordHash, encoded)
        self.assertEqual(parsePasswordHash(good)[:3], (CHEAP, 8, 1))


class PasswordThreadsTests(SynchronousTestCase):
    """
    L{passwordThreads}: one per core, at least 2, at most 8.
    """

    def test_perCore(self) -> None:
        """
        The count follows the cores between the bounds.
        """
        self.assertEqual([passwordThreads(cores) for cores in (1, 2, 3, 4, 8, 9, 64)], [2, 2, 3, 4, 8, 8, 8])

    def test_thisMachine(self) -> None:
        """
        By default, this machine's cores.
        """
        self.assertEqual(passwordThreads(), min(8, max(2, os.cpu_count() or 2)))
