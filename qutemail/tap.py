# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and C{makeService}: C{twistd -n qutemail --config PATH}.
"""

import sys

from twisted.python import usage


class Options(usage.Options):
    """
    Command-line options of C{twistd qutemail}.
    """

    optParameters = [["config", "c", "etc/qutemail.ini", "The configuration file."]]
    optFlags = [
        ["mta-only", None, "Run only the MTA (port 25) listener."],
        ["msa-only", None, "Run only the submission listeners (587, 465)."],
    ]

    def postOptions(self) -> None:
        """
        The two "only" flags exclude each other.
        """
        if self["mta-only"] and self["msa-only"]:
            raise usage.UsageError("--mta-only and --msa-only exclude each other")


def makeService(options: Options, reactor=None):
    """
    Load the configuration and build the service tree.

    A bad configuration ends the start with one line on stderr naming the
    file, section and key, and exit status 1.

    @param options: the parsed L{Options}.
    @param reactor: the reactor; the global one when not given.
    @return: the root service.
    """
    from qutemail.config import ConfigError, loadConfig
    from qutemail.backends.redislimiter import RedisURLError
    from qutemail.tlsserver import TLSConfigError
    from qutemail.assembly import ServiceConfigError
    from qutemail.service import NoListeners, buildService

    if reactor is None:
        from twisted.internet import reactor
    try:
        config = loadConfig(options["config"])
        return buildService(config, reactor, mtaOnly=options["mta-only"], msaOnly=options["msa-only"])
    except (ConfigError, NoListeners, TLSConfigError, RedisURLError, ServiceConfigError) as e:
        sys.stderr.write(f"qutemail: {e}\n")
        raise SystemExit(1)
