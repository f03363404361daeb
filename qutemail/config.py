# -*- test-case-name: tests.test_config -*-
"""
The configuration: one INI file, every key overridable by the environment.

L{loadConfig} reads the file once, at startup, and returns a frozen L{Config}
tree (one class per section) or raises L{ConfigError} listing every problem.
The table L{_SETTINGS} maps each C{[section] key} to its attribute and parser.
Defaults live on the attrs classes, so hand-built configs get them too, and
the field validators reuse the parsers, so a hand-built config is checked the
same way a loaded one is.
"""

import codecs
import configparser
import difflib
import ipaddress
import math
import os
import re
import urllib.parse
from typing import Any, Callable, Mapping

import attrs

_ENV_PREFIX = "QUTEMAIL_"
# Used by other tools (tests/__init__.py, test helpers); not settings.
_ENV_IGNORED = ("QUTEMAIL_HYPOTHESIS_PROFILE", "QUTEMAIL_TEST_")
# configparser copies its DEFAULT section's keys into every section.  A name no
# header line can contain makes [DEFAULT] an ordinary, hence unknown, section.
_NO_DEFAULT_SECTION = "\n"

_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"([0-9]{1,30})\s*(?:([kmgt])(?:i?b)?|b)?", re.ASCII | re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)", re.ASCII | re.IGNORECASE)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)


class ConfigError(Exception):
    """
    The configuration cannot be used.  C{str()} is one line: every problem,
    joined with C{"; "}.

    @ivar problems: one line per problem, each naming the file (or the
        environment variable), the section and the key.
    """

    def __init__(self, problems: list[str]) -> None:
        """
        @param problems: the problems, in the order found.
        """
        super().__init__(problems)
        self.problems = list(problems)

    def __str__(self) -> str:
        """
        @return: all the problems on one line.
        """
        return "; ".join(self.problems)


def parseSize(text: str) -> int:
    """
    Parse a size: C{"26214400"}, C{"512B"}, C{"10k"}, C{"25M"}, C{"25MB"},
    C{"25MiB"}, C{"1G"}, C{"1T"}.  Units are binary and case-insensitive.

    @return: the number of bytes, C{>= 0}.
    @raise ValueError: C{text} is not a size, or is negative.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (bytes, or a whole number with K, M, G or T)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def formatSize(n: int) -> str:
    """
    Format a size exactly, in the largest unit that divides it: C{26214400}
    gives C{"25M"}, C{1536} gives C{"1536"}.

    @return: text that L{parseSize} turns back into C{n}.
    @raise ValueError: C{n} is not an C{int >= 0}.
    """
    if type(n) is not int or n < 0:
        raise ValueError(f"{n!r} is not a size")
    for unit in "TGMK":
        if n and n % _SIZE_UNITS[unit.lower()] == 0:
            return f"{n // _SIZE_UNITS[unit.lower()]}{unit}"
    return str(n)


def parseDuration(text: str) -> float:
    """
    Parse a duration: C{"300"} or C{"30s"} (seconds), C{"5m"}, C{"2h"},
    C{"5d"}, C{"1w"}, or a decimal such as C{"1.5h"}.

    @return: the duration in seconds, finite and C{> 0}.
    @raise ValueError: C{text} is not a duration, or is zero.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (seconds, or a number with s, m, h, d or w)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if not 0 < seconds < math.inf:
        raise ValueError(f"{text!r} is not a duration greater than zero")
    return seconds


def _port(text: str, minimum: int = 0) -> int:
    """Parse a port number from C{minimum} to 65535."""
    if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number ({minimum}-65535)")
    return int(text)


# More SMTP processes than this only add contention on a mail host.
MAX_WORKERS = 64


def _atLeast(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """Make a parser of whole numbers C{>= minimum} (and C{<= maximum})."""

    def parse(text: str) -> int:
        """Parse a whole number in range."""
        if not _DIGITS.fullmatch(text) or int(text) < minimum:
            raise ValueError(f"{text!r} is not a whole number >= {minimum}")
        if maximum is not None and int(text) > maximum:
            raise ValueError(f"{text!r} is more than {maximum}")
        return int(text)

    return parse


def _boolean(text: str) -> bool:
    """Parse yes/no, true/false, on/off, 1/0."""
    value = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError(f"{text!r} is not yes or no")
    return value


def _oneOf(*choices: str) -> Callable[[str], str]:
    """A parser of one of C{choices}, in any case."""

    def parse(text: str) -> str:
        """Parse one of the choices."""
        if text.lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.lower()

    return parse


def _positiveSize(text: str, bareUnit: str = "") -> int:
    """Parse a size (see L{parseSize}) C{> 0}; a bare number is in C{bareUnit}."""
    size = parseSize(text + bareUnit if text.isascii() and text.isdigit() else text)
    if size == 0:
        raise ValueError(f"{text!r} is not a size greater than zero")
    return size


def _text(text: str) -> str:
    """Check that C{text} is one line with no control characters."""
    if not text.isprintable():
        raise ValueError(f"{text!r} contains control characters")
    return text


def _nonEmpty(text: str) -> str:
    """Check that C{text} is one non-empty line."""
    if not text:
        raise ValueError("must not be empty")
    return _text(text)


def _dnsLabel(text: str) -> str:
    """Parse one DNS label (1-63 ASCII letters, digits, hyphens), lower case."""
    if not (text.isascii() and _LABEL.fullmatch(text.lower())):
        raise ValueError(f"{text!r} is not a valid DNS label")
    return text.lower()


def _dnsName(text: str) -> str:
    """
    Parse a DNS name: labels (see L{_dnsLabel}), 253 characters at most, the
    last label not all digits (RFC 3696 §2).  Return it lower case, without a
    trailing dot.
    """
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if not (text.isascii() and len(name) <= 253 and all(map(_LABEL.fullmatch, labels)) and not labels[-1].isdigit()):
        raise ValueError(f"{text!r} is not a valid DNS name")
    return name


def _ipLiteral(text: str) -> str:
    """Check that C{text} is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    return text


def _items(text: str) -> list[str]:
    """Split a comma (or newline) separated list, dropping empty items."""
    return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]


def _domains(text: str) -> tuple[str, ...]:
    """Parse at least one DNS name, dropping repeats."""
    names = tuple(dict.fromkeys(_dnsName(item) for item in _items(text)))
    if not names:
        raise ValueError("at least one domain is required")
    return names


def _tlsDomains(text: str) -> tuple[str, ...]:
    """Parse DNS names or C{"*"}, dropping repeats."""
    return tuple(dict.fromkeys(item if item == "*" else _dnsName(item) for item in _items(text)))


def _durations(text: str) -> tuple[float, ...]:
    """Parse at least one duration (see L{parseDuration})."""
    durations = tuple(parseDuration(item) for item in _items(text))
    if not durations:
        raise ValueError("at least one duration is required")
    return durations


def _bracketed(text: str, defaultPort: int) -> tuple[str, int]:
    """Split C{[ipv6]} or C{[ipv6]:port} into address and port."""
    address, _, rest = text[1:].partition("]")
    if rest and not rest.startswith(":"):
        raise ValueError(f"{text!r} is not [ipv6]:port")
    ipaddress.IPv6Address(address)
    return address, _port(rest[1:], 1) if rest else defaultPort


def _isIPv4(text: str) -> bool:
    """Whether C{text} is an IPv4 address literal."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _smarthost(text: str) -> str:
    """Check that C{text} is empty, C{host}, C{host:port} or C{[ipv6]:port}."""
    host, colon, port = text.partition(":")
    try:
        if text.startswith("["):
            _bracketed(text, 25)
        elif text:
            if not _isIPv4(host):
                _dnsName(host)
            if colon:
                _port(port, 1)
    except ValueError:
        raise ValueError(f"{text!r} is not host, host:port or [ipv6]:port") from None
    return text


def _nameservers(text: str) -> tuple[tuple[str, int], ...]:
    """Parse C{ip}, C{ip:port} or C{[ipv6]:port} items into C{(ip, port)}."""
    servers = []
    for item in _items(text):
        address, _, port = item.rpartition(":")
        try:
            if item.startswith("["):
                address, number = _bracketed(item, 53)
            elif item.count(":") != 1:  # no port, or a bare IPv6 address
                address, number = item, 53
            elif _isIPv4(address):
                number = _port(port, 1)
            else:
                raise ValueError()
            servers.append((str(ipaddress.ip_address(address)), number))
        except ValueError:
            raise ValueError(f"nameserver {item!r} is not ip, ip:port or [ipv6]:port") from None
    return tuple(servers)


def _url(*schemes: str) -> Callable[[str], str]:
    """
    Make a parser of URLs that are empty or start with one of C{schemes}, and
    name a host (C{unix://} may name only a path).
    """

    def parse(text: str) -> str:
        """Check a URL."""
        try:
            parts = urllib.parse.urlsplit(text)
            parts.port  # a bad port raises ValueError
            named = parts.hostname or text.startswith("unix://") and parts.path
        except ValueError:
            named = False
        if text and not (named and text.startswith(schemes) and text.isprintable() and " " not in text):
            raise ValueError(f"{text!r} is not a URL starting with {' or '.join(schemes)}")
        return text

    return parse


def _valid(predicate: Callable[[Any], Any], what: str) -> Callable[[Any, Any, Any], None]:
    """Make an attrs validator that raises C{ValueError} unless C{predicate(value)}."""

    def validate(instance: Any, attribute: Any, value: Any) -> None:
        """Raise C{ValueError} naming the class and field unless C{value} is good."""
        try:
            good = predicate(value)
        except (ValueError, TypeError, AttributeError):
            good = False
        if not good:
            raise ValueError(f"{type(instance).__name__}.{attribute.name}: {value!r} is not {what}")

    return validate


def _parsed(parse: Callable[[str], Any], what: str) -> Callable[[Any, Any, Any], None]:
    """
    Make a validator: C{parse} must give back the value unchanged (for a tuple,
    from its items joined with commas).
    """

    def predicate(value: Any) -> bool:
        """Whether C{parse} gives back C{value}."""
        if type(value) is tuple:
            return all(isinstance(item, str) for item in value) and parse(",".join(value)) == value
        return isinstance(value, str) and parse(value) == value

    return _valid(predicate, what)


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any, Any, Any], None]:
    """Make a validator of C{int}s from C{minimum} to C{maximum}."""
    what = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}-{maximum}"
    return _valid(lambda v: type(v) is int and minimum <= v and (maximum is None or v <= maximum), what)


def _path(required: bool = False) -> Callable[[Any, Any, Any], None]:
    """Make a validator of absolute paths (or, unless C{required}, empty)."""
    return _valid(lambda v: _text(v) and os.path.isabs(v) or v == "" and not required, "an absolute path")


def _isDuration(value: Any) -> bool:
    """Whether C{value} is a number of seconds, finite and C{> 0}."""
    return type(value) in (int, float) and 0 < value < math.inf


def _isNameserver(value: Any) -> bool:
    """Whether C{value} is an C{(ip, port)} pair as L{_nameservers} gives."""
    address, port = value
    return type(port) is int and _nameservers(f"[{address}]:{port}" if ":" in address else f"{address}:{port}") == (value,)


def _section(cls: type) -> Any:
    """Make a field holding a C{cls}, by default one with C{cls}'s defaults."""
    return attrs.field(factory=cls, validator=attrs.validators.instance_of(cls))


_PORT = _int(0, 65535)
_DURATION_FIELD = _valid(_isDuration, "a duration > 0")


@attrs.frozen
class ServerConfig:
    """
    C{[server]}.

    @ivar hostname: this server's name, lower case (C{hostname}).
    @ivar domains: the local mail domains, lower case (C{domains}).
    @ivar dataDir: the data directory, absolute (C{data_dir}).
    @ivar bind: the address every listener binds to (C{bind}).
    @ivar workers: SMTP processes sharing the MTA port (C{workers}): the
        reactor is one thread, so more than one process uses more cores.
    """

    hostname: str = attrs.field(validator=_parsed(_dnsName, "a DNS name"))
    domains: tuple[str, ...] = attrs.field(validator=_parsed(_domains, "DNS names"))
    dataDir: str = attrs.field(validator=_path(required=True))
    bind: str = attrs.field(default="0.0.0.0", validator=_parsed(_ipLiteral, "an IP address"))
    workers: int = attrs.field(default=1, validator=_int(1, MAX_WORKERS))


@attrs.frozen
class SMTPConfig:
    """
    C{[smtp]}.  A port of 0 disables that listener.

    @ivar mtaPort: the MTA port (C{mta_port}).
    @ivar submissionPort: the submission port, STARTTLS (C{submission_port}).
    @ivar smtpsPort: the implicit-TLS submission port (C{smtps_port}).
    @ivar maxMessageBytes: the largest message accepted (C{max_message_size}).
    @ivar maxRecipients: the most recipients in a transaction (C{max_recipients}).
    @ivar idleTimeoutSeconds: how long a session may idle (C{idle_timeout}).
    """

    mtaPort: int = attrs.field(default=25, validator=_PORT)
    submissionPort: int = attrs.field(default=587, validator=_PORT)
    smtpsPort: int = attrs.field(default=465, validator=_PORT)
    maxMessageBytes: int = attrs.field(default=26214400, validator=_int(1))
    maxRecipients: int = attrs.field(default=100, validator=_int(1))
    # RFC 5321 §4.5.3.2.7: the server timeout should be at least 5 minutes.
    idleTimeoutSeconds: float = attrs.field(default=300.0, validator=_DURATION_FIELD)


@attrs.frozen
class IMAPConfig:
    """
    C{[imap]}.  A port of 0 disables that listener.

    @ivar port: the IMAP4 port, STARTTLS (C{port}).
    @ivar tlsPort: the implicit-TLS IMAP4 port (C{tls_port}).
    """

    port: int = attrs.field(default=143, validator=_PORT)
    tlsPort: int = attrs.field(default=993, validator=_PORT)


@attrs.frozen
class POP3Config:
    """
    C{[pop3]}.  A port of 0 disables that listener.

    @ivar port: the POP3 port, STLS (C{port}).
    @ivar tlsPort: the implicit-TLS POP3 port (C{tls_port}).
    """

    port: int = attrs.field(default=110, validator=_PORT)
    tlsPort: int = attrs.field(default=995, validator=_PORT)


@attrs.frozen
class TLSConfig:
    """
    C{[tls]}: both paths, or neither (a self-signed pair is then generated).

    @ivar cert: the certificate path, absolute, or empty (C{cert}).
    @ivar key: the private key path, absolute, or empty (C{key}).
    """

    cert: str = attrs.field(default="", validator=_path())
    key: str = attrs.field(default="", validator=_path())

    def __attrs_post_init__(self) -> None:
        """
        @raise ValueError: only one of the two is set.
        """
        if bool(self.cert) != bool(self.key):
            have, lack = ("cert", "key") if self.cert else ("key", "cert")
            raise ValueError(f"{have} is set but {lack} is not; set both or neither")


@attrs.frozen
class LimitsConfig:
    """
    C{[limits]}.  0 is unlimited.

    @ivar messagesPerIpHour: messages a client IP may send an hour (C{messages_per_ip_hour}).
    @ivar messagesPerUserHour: messages a user may send an hour (C{messages_per_user_hour}).
    @ivar connectionsPerIp: connections a client IP may hold open (C{connections_per_ip}).
    """

    messagesPerIpHour: int = attrs.field(default=100, validator=_int(0))
    messagesPerUserHour: int = attrs.field(default=500, validator=_int(0))
    connectionsPerIp: int = attrs.field(default=20, validator=_int(0))


@attrs.frozen
class MailboxConfig:
    """
    C{[mailbox]}.

    @ivar defaultQuotaBytes: the default quota in bytes (C{default_quota_mb}).
    @ivar retentionDays: how many days mail is kept, 0 for ever (C{retention_days}).
    """

    defaultQuotaBytes: int = attrs.field(default=5120 * 2**20, validator=_int(1))
    retentionDays: int = attrs.field(default=365, validator=_int(0))


@attrs.frozen
class InboundConfig:
    """
    C{[inbound]}: the checks of mail from other servers (SPF, DKIM, DMARC).

    @ivar checks: check mail that arrives unauthenticated (C{checks}).
    @ivar spfFail: what an SPF C{fail} gets: C{"reject"} (550 5.7.23) or
        C{"tag"} (accepted, with the verdict in its headers) (C{spf_fail}).
    @ivar dmarcReject: what a DMARC failure under C{p=reject} gets:
        C{"reject"} (550 5.7.1) or C{"quarantine"} (delivered to Junk)
        (C{dmarc_reject}).
    @ivar dnsTimeoutSeconds: how long one check may wait for DNS before it
        is a temporary error (C{dns_timeout}).
    """

    checks: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    spfFail: str = attrs.field(default="reject", validator=attrs.validators.in_(("reject", "tag")))
    dmarcReject: str = attrs.field(default="reject", validator=attrs.validators.in_(("reject", "quarantine")))
    dnsTimeoutSeconds: float = attrs.field(default=10.0, validator=_DURATION_FIELD)


@attrs.frozen
class DKIMConfig:
    """
    C{[dkim]}.

    @ivar selector: the DKIM selector, lower case (C{selector}).
    @ivar privateKey: the signing key path, absolute, or empty (C{private_key}).
    """

    selector: str = attrs.field(default="mail", validator=_parsed(_dnsLabel, "a DNS label"))
    privateKey: str = attrs.field(default="", validator=_path())


@attrs.frozen
class QKDConfig:
    """
    C{[qkd]}.

    @ivar kmeUrl: the ETSI GS QKD 014 KME, or empty for the embedded one (C{kme_url}).
    @ivar saeId: this server's SAE identifier (C{sae_id}).
    @ivar clientCert: the client certificate path, absolute, or empty (C{client_cert}).
    @ivar clientKey: the client key path, absolute, or empty (C{client_key}).
    @ivar caCert: the KME's CA certificate path, absolute, or empty (C{ca_cert}).
    @ivar poolKeys: the embedded KME's pool size in keys (C{pool_keys}).
    @ivar refillKeysPerSecond: how fast the embedded KME's pool refills, 0
        for never (C{refill_per_second}).
    @ivar keepSubject: show the original Subject outside the encryption
        instead of a placeholder (C{keep_subject}).
    @ivar encrypt: store internal mail encrypted (C{encrypt}); off only to
        measure or troubleshoot.
    """

    kmeUrl: str = attrs.field(default="", validator=_parsed(_url("https://"), "an https:// URL"))
    saeId: str = attrs.field(default="", validator=_parsed(_text, "one line of text"))
    clientCert: str = attrs.field(default="", validator=_path())
    clientKey: str = attrs.field(default="", validator=_path())
    caCert: str = attrs.field(default="", validator=_path())
    poolKeys: int = attrs.field(default=10000, validator=_int(1))
    refillKeysPerSecond: int = attrs.field(default=1000, validator=_int(0))
    keepSubject: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    encrypt: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))


@attrs.frozen
class RelayConfig:
    """
    C{[relay]}.

    @ivar smarthost: C{host}, C{host:port} or C{[ipv6]:port}, or empty for MX
        delivery (C{smarthost}).
    @ivar nameservers: C{(ip, port)} pairs, or none for the system's
        resolvers (C{nameservers}).
    @ivar retrySchedule: seconds before each retry; the last one repeats
        (C{retry_schedule}).
    @ivar queueLifetimeSeconds: how long mail may stay queued (C{queue_lifetime}).
    @ivar requireVerifiedTls: domains, or C{"*"} for all, that need verified
        TLS (C{require_verified_tls}).
    @ivar mxPort: the port mail exchangers are reached on (C{mx_port}); 25
        except for tests and unusual networks.
    @ivar smarthostUsername: the AUTH user name at the smarthost, or empty
        for none (C{smarthost_username}).
    @ivar smarthostPasswordFile: a file holding the smarthost password,
        absolute, or empty (C{smarthost_password_file}).
    """

    smarthost: str = attrs.field(default="", validator=_parsed(_smarthost, "host:port"))
    nameservers: tuple[tuple[str, int], ...] = attrs.field(
        default=(), validator=_valid(lambda v: type(v) is tuple and all(map(_isNameserver, v)), "(ip, port) pairs")
    )
    retrySchedule: tuple[float, ...] = attrs.field(
        default=(300.0, 600.0, 1200.0, 2400.0, 4800.0),
        validator=_valid(lambda v: type(v) is tuple and v and all(map(_isDuration, v)), "durations > 0"),
    )
    queueLifetimeSeconds: float = attrs.field(default=5 * 86400.0, validator=_DURATION_FIELD)
    requireVerifiedTls: tuple[str, ...] = attrs.field(default=(), validator=_parsed(_tlsDomains, "DNS names or *"))
    mxPort: int = attrs.field(default=25, validator=_int(1, 65535))
    smarthostUsername: str = attrs.field(default="", validator=_parsed(_text, "one line of text"))
    smarthostPasswordFile: str = attrs.field(default="", validator=_path())

    def __attrs_post_init__(self) -> None:
        if bool(self.smarthostUsername) != bool(self.smarthostPasswordFile):
            raise ValueError("smarthost_username and smarthost_password_file go together")
        if self.smarthostUsername and not self.smarthost:
            raise ValueError("smarthost_username needs a smarthost")


@attrs.frozen
class RedisConfig:
    """
    C{[redis]}.

    @ivar url: a C{redis://}, C{rediss://} or C{unix://} URL, or empty for
        in-process state (C{url}).
    """

    url: str = attrs.field(default="", validator=_parsed(_url("redis://", "rediss://", "unix://"), "a Redis URL"))


@attrs.frozen
class Config:
    """
    The whole configuration: one attribute per INI section.

    @ivar path: the configuration file, as given to L{loadConfig}.
    """

    path: str = attrs.field(validator=attrs.validators.instance_of(str))
    server: ServerConfig = attrs.field(validator=attrs.validators.instance_of(ServerConfig))
    smtp: SMTPConfig = _section(SMTPConfig)
    imap: IMAPConfig = _section(IMAPConfig)
    pop3: POP3Config = _section(POP3Config)
    tls: TLSConfig = _section(TLSConfig)
    limits: LimitsConfig = _section(LimitsConfig)
    mailbox: MailboxConfig = _section(MailboxConfig)
    inbound: InboundConfig = _section(InboundConfig)
    dkim: DKIMConfig = _section(DKIMConfig)
    qkd: QKDConfig = _section(QKDConfig)
    relay: RelayConfig = _section(RelayConfig)
    redis: RedisConfig = _section(RedisConfig)


@attrs.frozen
class _Setting:
    """
    One C{[section] key}.

    @ivar section: the INI section, also the L{Config} attribute.
    @ivar key: the INI key.
    @ivar attribute: the attribute of the section's class.
    @ivar parse: turns the stripped text into the value; its C{ValueError}
        says what is wrong, quoting the text.
    @ivar isPath: a non-empty value is a path, to be made absolute.
    """

    section: str
    key: str
    attribute: str
    parse: Callable[[str], Any]
    isPath: bool = False

    @property
    def envName(self) -> str:
        """The environment variable that overrides this setting."""
        return f"{_ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"

    @property
    def required(self) -> bool:
        """Whether the section's class has no default for this setting."""
        return attrs.fields_dict(_SECTIONS[self.section])[self.attribute].default is attrs.NOTHING


_SECTIONS: dict[str, type] = {f.name: f.type for f in attrs.fields(Config) if f.name != "path"}
_SETTINGS = (
    _Setting("server", "hostname", "hostname", _dnsName),
    _Setting("server", "domains", "domains", _domains),
    _Setting("server", "data_dir", "dataDir", _nonEmpty, isPath=True),
    _Setting("server", "bind", "bind", _ipLiteral),
    _Setting("server", "workers", "workers", _atLeast(1, MAX_WORKERS)),
    _Setting("smtp", "mta_port", "mtaPort", _port),
    _Setting("smtp", "submission_port", "submissionPort", _port),
    _Setting("smtp", "smtps_port", "smtpsPort", _port),
    _Setting("smtp", "max_message_size", "maxMessageBytes", _positiveSize),
    _Setting("smtp", "max_recipients", "maxRecipients", _atLeast(1)),
    _Setting("smtp", "idle_timeout", "idleTimeoutSeconds", parseDuration),
    _Setting("imap", "port", "port", _port),
    _Setting("imap", "tls_port", "tlsPort", _port),
    _Setting("pop3", "port", "port", _port),
    _Setting("pop3", "tls_port", "tlsPort", _port),
    _Setting("tls", "cert", "cert", _text, isPath=True),
    _Setting("tls", "key", "key", _text, isPath=True),
    _Setting("limits", "messages_per_ip_hour", "messagesPerIpHour", _atLeast(0)),
    _Setting("limits", "messages_per_user_hour", "messagesPerUserHour", _atLeast(0)),
    _Setting("limits", "connections_per_ip", "connectionsPerIp", _atLeast(0)),
    _Setting("mailbox", "default_quota_mb", "defaultQuotaBytes", lambda t: _positiveSize(t, "M")),
    _Setting("mailbox", "retention_days", "retentionDays", _atLeast(0)),
    _Setting("inbound", "checks", "checks", _boolean),
    _Setting("inbound", "spf_fail", "spfFail", _oneOf("reject", "tag")),
    _Setting("inbound", "dmarc_reject", "dmarcReject", _oneOf("reject", "quarantine")),
    _Setting("inbound", "dns_timeout", "dnsTimeoutSeconds", parseDuration),
    _Setting("dkim", "selector", "selector", _dnsLabel),
    _Setting("dkim", "private_key", "privateKey", _text, isPath=True),
    _Setting("qkd", "kme_url", "kmeUrl", _url("https://")),
    _Setting("qkd", "sae_id", "saeId", _text),
    _Setting("qkd", "client_cert", "clientCert", _text, isPath=True),
    _Setting("qkd", "client_key", "clientKey", _text, isPath=True),
    _Setting("qkd", "ca_cert", "caCert", _text, isPath=True),
    _Setting("qkd", "pool_keys", "poolKeys", _atLeast(1)),
    _Setting("qkd", "refill_per_second", "refillKeysPerSecond", _atLeast(0)),
    _Setting("qkd", "keep_subject", "keepSubject", _boolean),
    _Setting("qkd", "encrypt", "encrypt", _boolean),
    _Setting("relay", "smarthost", "smarthost", _smarthost),
    _Setting("relay", "nameservers", "nameservers", _nameservers),
    _Setting("relay", "retry_schedule", "retrySchedule", _durations),
    _Setting("relay", "queue_lifetime", "queueLifetimeSeconds", parseDuration),
    _Setting("relay", "require_verified_tls", "requireVerifiedTls", _tlsDomains),
    _Setting("relay", "mx_port", "mxPort", lambda t: _port(t, 1)),
    _Setting("relay", "smarthost_username", "smarthostUsername", _text),
    _Setting("relay", "smarthost_password_file", "smarthostPasswordFile", _text, isPath=True),
    _Setting("redis", "url", "url", _url("redis://", "rediss://", "unix://")),
)


def _readIni(path: str) -> tuple[configparser.ConfigParser, list[str]]:
    """
    Read and parse the file.

    @return: the parser, and the problems: an unreadable file, syntax errors.
    """
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), default_section=_NO_DEFAULT_SECTION
    )
    try:
        with open(path, "rb") as f:
            data = f.read().removeprefix(codecs.BOM_UTF8)
        text = re.sub(r"\r\n?", "\n", data.decode("utf-8"))  # universal newlines, as text mode
        parser.read_string(text, source=path)
    except OSError as e:
        return parser, [f"{path}: cannot read the file: {e.strerror or e}"]
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return parser, [f"{path}: line {line}: not UTF-8 text"]
    except configparser.DuplicateOptionError as e:
        return parser, [f"{path}: line {e.lineno}: [{e.section}] {e.option}: duplicate key"]
    except configparser.DuplicateSectionError as e:
        return parser, [f"{path}: line {e.lineno}: [{e.section}]: duplicate section"]
    except configparser.MissingSectionHeaderError as e:
        return parser, [f"{path}: line {e.lineno}: {e.line.strip()!r} is outside any [section]"]
    except configparser.ParsingError as e:
        lines = text.split("\n")  # as configparser counts lines; not splitlines()
        return parser, [f"{path}: line {n}: cannot parse {lines[n - 1].strip()!r}" for n, _ in e.errors]
    return parser, []


def _unknownNames(path: str, parser: configparser.ConfigParser) -> list[str]:
    """List a problem for each section and key in the file that is not ours."""
    problems = []
    for section in parser.sections():
        if section not in _SECTIONS:
            problems.append(f"{path}: [{section}]: unknown section (known: {', '.join(_SECTIONS)})")
            continue
        known = [s.key for s in _SETTINGS if s.section == section]
        for key in parser.options(section):
            if key not in known:
                close = difflib.get_close_matches(key, known, 1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"{path}: [{section}] {key}: unknown key{hint}")
    return problems


def _unknownEnvironment(environ: Mapping[str, str]) -> list[str]:
    """List a problem for each C{QUTEMAIL_} variable that names no setting."""
    known = {setting.envName for setting in _SETTINGS}
    return [
        f"environment {name}: unknown setting (the prefix {_ENV_PREFIX} is reserved for {_ENV_PREFIX}<SECTION>_<KEY>)"
        for name in sorted(environ)
        if name.startswith(_ENV_PREFIX) and name not in known and not name.startswith(_ENV_IGNORED)
    ]


def loadConfig(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read the configuration file, apply the environment's overrides, and check
    everything.  Relative paths in the file are relative to the file's
    directory; in the environment, to the current directory.

    @param path: the INI file.
    @param environ: the environment; C{os.environ} if C{None}.
    @return: the configuration.
    @raise ConfigError: listing every problem found.
    """
    environ = os.environ if environ is None else environ
    parser, problems = _readIni(path)
    if problems:
        raise ConfigError(problems + _unknownEnvironment(environ))
    problems = _unknownNames(path, parser)
    fileDir = os.path.dirname(os.path.abspath(path))
    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    broken = set()
    for setting in _SETTINGS:
        if setting.envName in environ:
            where, base, text = f"environment {setting.envName}", os.getcwd(), environ[setting.envName]
        elif parser.has_option(setting.section, setting.key):
            where, base = f"{path}: [{setting.section}] {setting.key}", fileDir
            text = parser.get(setting.section, setting.key)
        else:
            if setting.required:
                broken.add(setting.section)
                problems.append(
                    f"{path}: [{setting.section}] {setting.key}: required but missing "
                    f"(set it in the file or as {setting.envName})"
                )
            continue
        try:
            value = setting.parse(text.strip())
        except ValueError as e:
            broken.add(setting.section)
            problems.append(f"{where}: {e}")
            continue
        if setting.isPath and value:
            value = os.path.abspath(os.path.join(base, value))
        values[setting.section][setting.attribute] = value
    sections = {}
    for name, cls in _SECTIONS.items():
        if name not in broken:
            try:
                sections[name] = cls(**values[name])
            except ValueError as e:  # a rule across keys, such as [tls]'s
                problems.append(f"{path}: [{name}]: {e}")
    problems += _unknownEnvironment(environ)
    if problems:
        raise ConfigError(problems)
    return Config(path=path, **sections)
