# -*- test-case-name: tests.test_config -*-
"""
The sections of the configuration that issues 15, 16 and 18 added (content
scanning, JMAP, metrics): attrs classes like those of L{qutemail.config}, which
imports them into its L{qutemail.config.Config} tree.
"""

import attrs

from qutemail.configvalues import (
    DURATION_FIELD, PORT_FIELD, intValidator, parseClamdSocket, parseIpLiteral, parserValidator, pathValidator,
    urlParser,
)


@attrs.frozen
class ContentConfig:
    """
    C{[content]}: spam and malware scanning before the 250.

    @ivar rspamdUrl: rspamd's normal worker, or empty for none (C{rspamd_url}).
    @ivar rspamdPasswordFile: a file holding rspamd's controller password,
        or empty (C{rspamd_password}).
    @ivar clamdSocket: clamd's Unix socket path or C{host:port}, or empty
        for none (C{clamd_socket}).
    @ivar maxScanBytes: larger messages are not scanned (C{max_scan_size}).
    @ivar onError: C{"tempfail"} (451 4.3.0) or C{"accept"}: what a message
        gets when a scanner is down or slow (C{on_error}).
    @ivar timeoutSeconds: how long a scanner may take (C{timeout}).
    @ivar scanSubmission: scan our own users' mail too (C{scan_submission}).
    """

    rspamdUrl: str = attrs.field(default="", validator=parserValidator(urlParser("http://", "https://"), "a URL"))
    rspamdPasswordFile: str = attrs.field(default="", validator=pathValidator())
    clamdSocket: str = attrs.field(default="", validator=parserValidator(parseClamdSocket, "a socket"))
    maxScanBytes: int = attrs.field(default=25 * 2**20, validator=intValidator(1))
    onError: str = attrs.field(default="tempfail", validator=attrs.validators.in_(("tempfail", "accept")))
    timeoutSeconds: float = attrs.field(default=30.0, validator=DURATION_FIELD)
    scanSubmission: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))

    @property
    def enabled(self) -> bool:
        """
        Whether any scanner is configured.
        """
        return bool(self.rspamdUrl or self.clamdSocket)


@attrs.frozen
class MetricsConfig:
    """
    C{[metrics]}: the Prometheus exposition and health endpoint.

    @ivar port: the HTTP port of C{/metrics} and C{/healthz}, 0 for none
        (C{port}).
    @ivar bind: the address it listens on (C{bind}).
    @ivar mtaStsMode: the mode of our own MTA-STS policy, served there at
        C{/.well-known/mta-sts.txt} (C{mta_sts_mode}).
    """

    port: int = attrs.field(default=0, validator=PORT_FIELD)
    bind: str = attrs.field(default="127.0.0.1", validator=parserValidator(parseIpLiteral, "an IP address"))
    mtaStsMode: str = attrs.field(default="testing", validator=attrs.validators.in_(("testing", "enforce", "none")))


@attrs.frozen
class JMAPConfig:
    """
    C{[jmap]}: the JMAP API (RFC 8620, RFC 8621) over HTTPS, on C{[server]
    bind}.

    @ivar port: its port, 0 for none (C{port}).
    """

    port: int = attrs.field(default=0, validator=PORT_FIELD)
