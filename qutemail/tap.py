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

    In the real process (no C{reactor} given) the soft open-file limit is
    first raised to the hard limit, so C{[limits] max_sessions} fits,
    start-up's objects are kept out of later full garbage collections
    (L{qutemail.gcstartup}), and SIGTERM and SIGINT stop it without
    logging inside their handler (L{qutemail.stopsignals}).

    @param options: the parsed L{Options}.
    @param reactor: the reactor; the global one when not given.
    @return: the root service.
    """
    from qutemail.config import ConfigError, loadConfig
    from qutemail.backends.redislimiter import RedisURLError
    from qutemail.tlsserver import TLSConfigError
    from qutemail.assembly import ServiceConfigError
    from qutemail.service import NoListeners, buildService
    from qutemail.policy.sessions import checkHeadroom, raiseOpenFileLimit

    openFileLimit = None
    if reactor is None:
        from twisted.internet import reactor
        from qutemail.gcstartup import freezeWhenRunning
        from qutemail.stopsignals import installWhenRunning
        openFileLimit = raiseOpenFileLimit()[1]
        freezeWhenRunning(reactor)
        installWhenRunning(reactor)
    try:
        config = loadConfig(options["config"])
        if openFileLimit is not None:
            checkHeadroom(config.limits.maxSessions, openFileLimit)
        return buildService(config, reactor, mtaOnly=options["mta-only"], msaOnly=options["msa-only"])
    except (ConfigError, NoListeners, TLSConfigError, RedisURLError, ServiceConfigError) as e:
        sys.stderr.write(f"qutemail: {e}\n")
        raise SystemExit(1)
