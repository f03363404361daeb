# -*- test-case-name: tests.test_configvalues,tests.backends.test_redissentinel -*-
"""
How each setting of the configuration file is read: the table L{SETTINGS} of
every C{[section] key}, with the attribute it sets and the parser of its
text, the parsers themselves, and the attrs validators that accept exactly
what the parsers give, so that a hand-built section is checked the way a
loaded one is.  L{qutemail.config} holds the sections and the loader.

A parser takes the stripped text (from the file, or from the environment
variable that overrides it) and returns the value, or raises C{ValueError}
saying what is wrong, quoting the text.  A validator raises C{ValueError}
naming the class and the field.
"""

import ipaddress
import math
import os
import re
import urllib.parse
from typing import Any, Callable

import attrs

# The environment variables that override settings: <prefix><SECTION>_<KEY>.
ENV_PREFIX = "QUTEMAIL_"
# More SMTP processes than this only add contention on a mail host.
MAX_WORKERS = 64

_SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"([0-9]{1,30})\s*(?:([kmgt])(?:i?b)?|b)?", re.ASCII | re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)", re.ASCII | re.IGNORECASE)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)


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


def parsePort(text: str, minimum: int = 0) -> int:
    """Parse a port number from C{minimum} to 65535."""
    if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number ({minimum}-65535)")
    return int(text)


def wholeNumberParser(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """Make a parser of whole numbers C{>= minimum} (and C{<= maximum})."""

    def parse(text: str) -> int:
        """Parse a whole number in range."""
        if not _DIGITS.fullmatch(text) or int(text) < minimum:
            raise ValueError(f"{text!r} is not a whole number >= {minimum}")
        if maximum is not None and int(text) > maximum:
            raise ValueError(f"{text!r} is more than {maximum}")
        return int(text)

    return parse


def isKeySize(value: object) -> bool:
    """Whether C{value} is a key size in bits: a multiple of 8 from 128 to 8192."""
    return type(value) is int and 128 <= value <= 8192 and value % 8 == 0


def parseKeySize(text: str) -> int:
    """Parse a key size in bits (see L{isKeySize})."""
    bits = wholeNumberParser(128, 8192)(text)
    if not isKeySize(bits):
        raise ValueError(f"{text!r} is not a multiple of 8")
    return bits


def parseBoolean(text: str) -> bool:
    """Parse yes/no, true/false, on/off, 1/0."""
    value = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}.get(text.lower())
    if value is None:
        raise ValueError(f"{text!r} is not yes or no")
    return value


def choiceParser(*choices: str) -> Callable[[str], str]:
    """A parser of one of C{choices}, in any case."""

    def parse(text: str) -> str:
        """Parse one of the choices."""
        if text.lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.lower()

    return parse


def parsePositiveSize(text: str, bareUnit: str = "") -> int:
    """Parse a size (see L{parseSize}) C{> 0}; a bare number is in C{bareUnit}."""
    size = parseSize(text + bareUnit if text.isascii() and text.isdigit() else text)
    if size == 0:
        raise ValueError(f"{text!r} is not a size greater than zero")
    return size


def parseText(text: str) -> str:
    """Check that C{text} is one line with no control characters."""
    if not text.isprintable():
        raise ValueError(f"{text!r} contains control characters")
    return text


def parseNonEmpty(text: str) -> str:
    """Check that C{text} is one non-empty line."""
    if not text:
        raise ValueError("must not be empty")
    return parseText(text)


def parseDnsLabel(text: str) -> str:
    """Parse one DNS label (1-63 ASCII letters, digits, hyphens), lower case."""
    if not (text.isascii() and _LABEL.fullmatch(text.lower())):
        raise ValueError(f"{text!r} is not a valid DNS label")
    return text.lower()


def parseDnsName(text: str) -> str:
    """
    Parse a DNS name: labels (see L{parseDnsLabel}), 253 characters at most, the
    last label not all digits (RFC 3696 §2).  Return it lower case, without a
    trailing dot.
    """
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if not (text.isascii() and len(name) <= 253 and all(map(_LABEL.fullmatch, labels)) and not labels[-1].isdigit()):
        raise ValueError(f"{text!r} is not a valid DNS name")
    return name


def parseIpLiteral(text: str) -> str:
    """Check that C{text} is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    return text


def _items(text: str) -> list[str]:
    """Split a comma (or newline) separated list, dropping empty items."""
    return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]


def parseDomains(text: str) -> tuple[str, ...]:
    """Parse at least one DNS name, dropping repeats."""
    names = tuple(dict.fromkeys(parseDnsName(item) for item in _items(text)))
    if not names:
        raise ValueError("at least one domain is required")
    return names


def parseTlsDomains(text: str) -> tuple[str, ...]:
    """Parse DNS names or C{"*"}, dropping repeats."""
    return tuple(dict.fromkeys(item if item == "*" else parseDnsName(item) for item in _items(text)))


def parseDurationOrZero(text: str) -> float:
    """Parse a duration (see L{parseDuration}), or C{0} for none."""
    return 0.0 if text.strip() == "0" else parseDuration(text)


def parseDurations(text: str) -> tuple[float, ...]:
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
    return address, parsePort(rest[1:], 1) if rest else defaultPort


def _isIPv4(text: str) -> bool:
    """Whether C{text} is an IPv4 address literal."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parseSmarthost(text: str) -> str:
    """Check that C{text} is empty, C{host}, C{host:port} or C{[ipv6]:port}."""
    host, colon, port = text.partition(":")
    try:
        if text.startswith("["):
            _bracketed(text, 25)
        elif text:
            if not _isIPv4(host):
                parseDnsName(host)
            if colon:
                parsePort(port, 1)
    except ValueError:
        raise ValueError(f"{text!r} is not host, host:port or [ipv6]:port") from None
    return text


def parseClamdSocket(text: str) -> str:
    """Check that C{text} is empty, an absolute Unix socket path, or C{host:port}."""
    if text.startswith("/") or not text:
        return text
    # The port is required, so that a relative path is not taken for a host.
    hasPort = "]:" in text if text.startswith("[") else ":" in text
    try:
        if hasPort:
            return parseSmarthost(text)
    except ValueError:
        pass
    raise ValueError(f"{text!r} is not an absolute socket path or host:port") from None


def splitHostPort(text: str, defaultPort: int = 25) -> tuple[str, int]:
    """
    Split a checked (L{parseSmarthost}) C{host}, C{host:port} or
    C{[ipv6]:port}.

    @return: C{(host, port)}.
    """
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        return host, int(port.lstrip(":") or defaultPort)
    host, _, port = text.partition(":")
    return host, int(port or defaultPort)


def parseRoutes(text: str) -> tuple[tuple[str, str, int], ...]:
    """
    Parse C{domain=host}, C{domain=host:port} or C{domain=[ipv6]:port}
    items (fixed next hops, as Postfix's transport map).

    @return: C{(domain, host, port)} triples, one per domain, the domain
        in lower case.
    """
    routes: dict[str, tuple[str, int]] = {}
    for item in _items(text):
        domain, equals, target = item.partition("=")
        target = target.strip()
        if not equals or not target:
            raise ValueError(f"{item!r} is not domain=host:port")
        domain = parseDnsName(domain.strip())
        if domain in routes:
            raise ValueError(f"{domain!r} has two routes")
        routes[domain] = splitHostPort(parseSmarthost(target))
    return tuple((domain, host, port) for domain, (host, port) in routes.items())


def parsePeers(text: str) -> tuple[tuple[str, str], ...]:
    """
    Parse C{domain=SAE_ID} items: the QKD peer sites (C{[qkd] peers}).

    @return: C{(domain, SAE id)} pairs, one per domain, the domain in lower
        case.
    """
    peers: dict[str, str] = {}
    for item in _items(text):
        domain, equals, sae = item.partition("=")
        sae = sae.strip()
        if not equals or not sae:
            raise ValueError(f"{item!r} is not domain=SAE_ID")
        if not re.fullmatch(r"[\x21-\x7e]{1,128}", sae):
            raise ValueError(f"{sae!r} is not an SAE id (1 to 128 printable characters, no spaces)")
        domain = parseDnsName(domain.strip())
        if domain in peers:
            raise ValueError(f"{domain!r} is named twice")
        peers[domain] = sae
    return tuple(peers.items())


def parseNameservers(text: str) -> tuple[tuple[str, int], ...]:
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
                number = parsePort(port, 1)
            else:
                raise ValueError()
            servers.append((str(ipaddress.ip_address(address)), number))
        except ValueError:
            raise ValueError(f"nameserver {item!r} is not ip, ip:port or [ipv6]:port") from None
    return tuple(servers)


def urlParser(*schemes: str) -> Callable[[str], str]:
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


# Redis Sentinel's own port, when a redis-sentinel:// URL names none.
SENTINEL_PORT = 26379
_REDIS_URL = urlParser("redis://", "rediss://", "unix://", "redis-sentinel://")


@attrs.frozen
class SentinelURL:
    """
    A parsed C{redis-sentinel://} URL (L{parseSentinelURL}).

    @ivar sentinels: each sentinel's C{(host, port)}, in the URL's order.
    @ivar masterName: the name the sentinels know the master by.
    @ivar db: the database to C{SELECT} on the master.
    @ivar password: the Redis servers' password, or C{None}.
    """

    sentinels: tuple[tuple[str, int], ...]
    masterName: str
    db: int = 0
    password: str | None = None


def parseSentinelURL(text: str) -> SentinelURL:
    """
    Parse C{redis-sentinel://[:password@]host[:port],host[:port]/mastername[?db=N]}:
    the sentinels (C{host}, C{host:port} or C{[ipv6]:port}, port 26379 by
    default), the name they know the master by, and its database (0 by
    default).  The password (percent-encoded) is the Redis servers'; the
    sentinels are asked without one.

    @raise ValueError: not such a URL; the message hides the password.
    """
    parts = urllib.parse.urlsplit(text)
    credentials, at, hosts = parts.netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    name, (key, _, db) = urllib.parse.unquote(parts.path[1:]), parts.query.partition("=")
    try:
        # An empty item is no sentinel: "?" is no host.
        sentinels = tuple(splitHostPort(parseSmarthost(item or "?"), SENTINEL_PORT) for item in hosts.split(","))
    except ValueError:
        sentinels = ()
    problem = None
    if not text.startswith("redis-sentinel://") or not text.isprintable() or " " in text or parts.fragment:
        problem = "not a redis-sentinel:// URL"
    elif user or (at and not password):
        problem = "give only a password, as :password@"
    elif not sentinels:
        problem = "each sentinel must be host, host:port or [ipv6]:port"
    elif not name or "/" in name or not name.isprintable() or " " in name:
        problem = "the path must be /mastername"
    elif parts.query and (key != "db" or not _DIGITS.fullmatch(db)):
        problem = "the only query is ?db=N"
    if problem:
        shown = text.replace(credentials + "@", "***@", 1) if at else text
        raise ValueError(f"{shown!r} is not redis-sentinel://[:password@]host:port,.../mastername: {problem}")
    return SentinelURL(sentinels, name, int(db or 0), urllib.parse.unquote(password) if at else None)


def parseRedisURL(text: str) -> str:
    """
    Check C{[redis] url}: empty, or a C{redis://}, C{rediss://},
    C{unix://} or C{redis-sentinel://} URL (L{parseSentinelURL}).
    """
    if text.startswith("redis-sentinel://"):
        parseSentinelURL(text)
        return text
    return _REDIS_URL(text)


def predicateValidator(predicate: Callable[[Any], Any], what: str) -> Callable[[Any, Any, Any], None]:
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


def parserValidator(parse: Callable[[str], Any], what: str) -> Callable[[Any, Any, Any], None]:
    """
    Make a validator: C{parse} must give back the value unchanged (for a tuple,
    from its items joined with commas).
    """

    def predicate(value: Any) -> bool:
        """Whether C{parse} gives back C{value}."""
        if type(value) is tuple:
            return all(isinstance(item, str) for item in value) and parse(",".join(value)) == value
        return isinstance(value, str) and parse(value) == value

    return predicateValidator(predicate, what)


def intValidator(minimum: int, maximum: int | None = None) -> Callable[[Any, Any, Any], None]:
    """Make a validator of C{int}s from C{minimum} to C{maximum}."""
    what = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}-{maximum}"
    return predicateValidator(lambda v: type(v) is int and minimum <= v and (maximum is None or v <= maximum), what)


def pathValidator(required: bool = False) -> Callable[[Any, Any, Any], None]:
    """Make a validator of absolute paths (or, unless C{required}, empty)."""
    return predicateValidator(
        lambda v: parseText(v) and os.path.isabs(v) or v == "" and not required, "an absolute path"
    )


def isDuration(value: Any) -> bool:
    """Whether C{value} is a number of seconds, finite and C{> 0}."""
    return type(value) in (int, float) and 0 < value < math.inf


# Validators of the config classes' fields, shared by every section.
PORT_FIELD = intValidator(0, 65535)
DURATION_FIELD = predicateValidator(isDuration, "a duration > 0")


def isNameserver(value: Any) -> bool:
    """Whether C{value} is an C{(ip, port)} pair as L{parseNameservers} gives."""
    address, port = value
    if type(port) is not int:
        return False
    return parseNameservers(f"[{address}]:{port}" if ":" in address else f"{address}:{port}") == (value,)


@attrs.frozen
class Setting:
    """
    One C{[section] key}.

    @ivar section: the INI section, also the L{qutemail.config.Config} attribute.
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
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"


# Every [section] key of the file: the public contract, with its parser.
SETTINGS = (
    Setting("server", "hostname", "hostname", parseDnsName),
    Setting("server", "domains", "domains", parseDomains),
    Setting("server", "data_dir", "dataDir", parseNonEmpty, isPath=True),
    Setting("server", "bind", "bind", parseIpLiteral),
    Setting("server", "workers", "workers", wholeNumberParser(1, MAX_WORKERS)),
    Setting("server", "delivery_process", "deliveryProcess", parseBoolean),
    Setting("smtp", "mta_port", "mtaPort", parsePort),
    Setting("smtp", "submission_port", "submissionPort", parsePort),
    Setting("smtp", "smtps_port", "smtpsPort", parsePort),
    Setting("smtp", "max_message_size", "maxMessageBytes", parsePositiveSize),
    Setting("smtp", "max_recipients", "maxRecipients", wholeNumberParser(1)),
    Setting("smtp", "idle_timeout", "idleTimeoutSeconds", parseDuration),
    Setting("imap", "port", "port", parsePort),
    Setting("imap", "tls_port", "tlsPort", parsePort),
    Setting("pop3", "port", "port", parsePort),
    Setting("pop3", "tls_port", "tlsPort", parsePort),
    Setting("tls", "cert", "cert", parseText, isPath=True),
    Setting("tls", "key", "key", parseText, isPath=True),
    Setting("limits", "messages_per_ip_hour", "messagesPerIpHour", wholeNumberParser(0)),
    Setting("limits", "messages_per_user_hour", "messagesPerUserHour", wholeNumberParser(0)),
    Setting("limits", "connections_per_ip", "connectionsPerIp", wholeNumberParser(0)),
    Setting("limits", "max_sessions", "maxSessions", wholeNumberParser(0)),
    Setting("mailbox", "default_quota_mb", "defaultQuotaBytes", lambda t: parsePositiveSize(t, "M")),
    Setting("mailbox", "retention_days", "retentionDays", wholeNumberParser(0)),
    Setting("mailbox", "mail_dir", "mailDir", parseText, isPath=True),
    Setting("inbound", "checks", "checks", parseBoolean),
    Setting("inbound", "spf_fail", "spfFail", choiceParser("reject", "tag")),
    Setting("inbound", "dmarc_reject", "dmarcReject", choiceParser("reject", "quarantine")),
    Setting("inbound", "dns_timeout", "dnsTimeoutSeconds", parseDuration),
    Setting("dkim", "selector", "selector", parseDnsLabel),
    Setting("dkim", "private_key", "privateKey", parseText, isPath=True),
    Setting("qkd", "kme_url", "kmeUrl", urlParser("https://")),
    Setting("qkd", "sae_id", "saeId", parseText),
    Setting("qkd", "client_cert", "clientCert", parseText, isPath=True),
    Setting("qkd", "client_key", "clientKey", parseText, isPath=True),
    Setting("qkd", "ca_cert", "caCert", parseText, isPath=True),
    Setting("qkd", "pool_keys", "poolKeys", wholeNumberParser(1)),
    Setting("qkd", "refill_per_second", "refillKeysPerSecond", wholeNumberParser(0)),
    Setting("qkd", "keep_subject", "keepSubject", parseBoolean),
    Setting("qkd", "encrypt", "encrypt", parseBoolean),
    Setting("qkd", "rest_sae", "restSae", parseText),
    Setting("qkd", "key_size", "keySizeBits", parseKeySize),
    Setting("qkd", "kme_id", "kmeId", parseText),
    Setting("qkd", "min_pool_keys", "minPoolKeys", wholeNumberParser(0)),
    Setting("qkd", "peers", "peers", parsePeers),
    Setting("qkd", "peer_policy", "peerPolicy", choiceParser("require", "prefer")),
    Setting("relay", "smarthost", "smarthost", parseSmarthost),
    Setting("relay", "routes", "routes", parseRoutes),
    Setting("relay", "delay_warning", "delayWarningSeconds", parseDurationOrZero),
    Setting("relay", "nameservers", "nameservers", parseNameservers),
    Setting("relay", "retry_schedule", "retrySchedule", parseDurations),
    Setting("relay", "queue_lifetime", "queueLifetimeSeconds", parseDuration),
    Setting("relay", "require_verified_tls", "requireVerifiedTls", parseTlsDomains),
    Setting("relay", "tls_ca", "tlsCa", parseText, isPath=True),
    Setting("relay", "mx_port", "mxPort", lambda t: parsePort(t, 1)),
    Setting("relay", "smarthost_username", "smarthostUsername", parseText),
    Setting("relay", "mta_sts", "mtaSts", parseBoolean),
    Setting("relay", "mta_sts_port", "mtaStsPort", lambda t: parsePort(t, 1)),
    Setting("relay", "smarthost_password_file", "smarthostPasswordFile", parseText, isPath=True),
    Setting("content", "rspamd_url", "rspamdUrl", urlParser("http://", "https://")),
    Setting("content", "rspamd_password", "rspamdPasswordFile", parseText, isPath=True),
    Setting("content", "clamd_socket", "clamdSocket", parseClamdSocket),
    Setting("content", "max_scan_size", "maxScanBytes", parsePositiveSize),
    Setting("content", "on_error", "onError", choiceParser("tempfail", "accept")),
    Setting("content", "timeout", "timeoutSeconds", parseDuration),
    Setting("content", "scan_submission", "scanSubmission", parseBoolean),
    Setting("redis", "url", "url", parseRedisURL),
    Setting("redis", "allow_volatile_vault", "allowVolatileVault", parseBoolean),
    Setting("metrics", "port", "port", parsePort),
    Setting("metrics", "bind", "bind", parseIpLiteral),
    Setting("metrics", "mta_sts_mode", "mtaStsMode", choiceParser("testing", "enforce", "none")),
    Setting("jmap", "port", "port", parsePort),
)
