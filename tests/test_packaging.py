"""
The package list of C{setup.cfg} names every subpackage, so that a plain
(not editable) install carries all of the server.
"""

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

import qutemail

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(qutemail.__file__)))


class PackageListTests(SynchronousTestCase):
    """
    C{[options] packages} against the tree.
    """

    def test_everySubpackageListed(self) -> None:
        """
        Each directory of C{qutemail/} with an C{__init__.py} is listed.
        """
        parser = configparser.ConfigParser()
        parser.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(parser["options"]["packages"].split())
        found = set()
        for directory, _, files in os.walk(os.path.join(ROOT, "qutemail")):
            if "__init__.py" in files:
                found.add(os.path.relpath(directory, ROOT).replace(os.sep, "."))
        self.assertEqual(found - listed, set())
