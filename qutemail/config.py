# -*- test-case-name: tests.test_config -*-
"""
The configuration: one INI file, every key overridable by the environment.

L{loadConfig} reads the file once, at startup, and returns a frozen L{Config}
tree (one class per section) or raises L{ConfigError} listing every problem.
The table L{qutemail.configvalues.SETTINGS} maps each C{[section] key} to
its attribute and parser.  Defaults live on the attrs classes, so hand-built
configs get them too, and the field validators reuse the parsers, so a
hand-built config is checked the same way a loaded one is.
"""

import codecs
import configparser
import difflib
import os
import re
from typing import Any, ClassVar, Mapping

import attrs

from qutemail.configsections import ContentConfig, JMAPConfig, MetricsConfig
from qutemail.configvalues import (
    DURATION_FIELD, ENV_PREFIX, MAX_WORKERS, PORT_FIELD, SETTINGS, Setting, intValidator, isDuration, isKeySize,
    isNameserver, parseDnsLabel, parseDnsName, parseDomains, parseIpLiteral, parseRedisURL, parserValidator,
    parseSmarthost, parseText, parseTlsDomains, pathValidator, predicateValidator, urlParser,
)

# formatSize and parseSize are qutemail.configvalues's, listed here so that
# qutemail.cli can go on importing them from this module.

# Used by other tools (tests/__init__.py, test helpers); not settings.
_ENV_IGNORED = ("QUTEMAIL_HYPOTHESIS_PROFILE", "QUTEMAIL_TEST_")
# configparser copies its DEFAULT section's keys into every section.  A name no
# header line can contain makes [DEFAULT] an ordinary, hence unknown, section.
_NO_DEFAULT_SECTION = "\n"


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


def _section(cls: type) -> Any:
    """Make a field holding a C{cls}, by default one with C{cls}'s defaults."""
    return attrs.field(factory=cls, validator=attrs.validators.instance_of(cls))




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
    @ivar deliveryProcess: write local deliveries in a child process of
        each SMTP process rather than in its worker threads
        (C{delivery_process}), so that the disk work does not contend with
        the SMTP dialogue for one GIL.
    """

    hostname: str = attrs.field(validator=parserValidator(parseDnsName, "a DNS name"))
    domains: tuple[str, ...] = attrs.field(validator=parserValidator(parseDomains, "DNS names"))
    dataDir: str = attrs.field(validator=pathValidator(required=True))
    bind: str = attrs.field(default="0.0.0.0", validator=parserValidator(parseIpLiteral, "an IP address"))
    workers: int = attrs.field(default=1, validator=intValidator(1, MAX_WORKERS))
    deliveryProcess: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))


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

    mtaPort: int = attrs.field(default=25, validator=PORT_FIELD)
    submissionPort: int = attrs.field(default=587, validator=PORT_FIELD)
    smtpsPort: int = attrs.field(default=465, validator=PORT_FIELD)
    maxMessageBytes: int = attrs.field(default=26214400, validator=intValidator(1))
    maxRecipients: int = attrs.field(default=100, validator=intValidator(1))
    # RFC 5321 §4.5.3.2.7: the server timeout should be at least 5 minutes.
    idleTimeoutSeconds: float = attrs.field(default=300.0, validator=DURATION_FIELD)


def _defaultPort(which: int) -> Any:
    """A default taken from the class's C{DEFAULT_PORTS}."""
    return attrs.Factory(lambda self: self.DEFAULT_PORTS[which], takes_self=True)


@attrs.frozen
class MailAccessConfig:
    """
    The section of a mail access protocol: two listeners, one that starts in
    cleartext and upgrades (IMAP4 STARTTLS, POP3 STLS), one in implicit TLS.
    A port of 0 disables that listener.  The sections are the subclasses,
    L{IMAPConfig} and L{POP3Config}, which differ only in their default
    ports.

    @cvar DEFAULT_PORTS: the default C{(port, tlsPort)}.
    @ivar port: the port upgraded with STARTTLS or STLS (C{port}).
    @ivar tlsPort: the implicit-TLS port (C{tls_port}).
    """

    DEFAULT_PORTS: ClassVar[tuple[int, int]]

    port: int = attrs.field(default=_defaultPort(0), validator=PORT_FIELD)
    tlsPort: int = attrs.field(default=_defaultPort(1), validator=PORT_FIELD)


@attrs.frozen
class IMAPConfig(MailAccessConfig):
    """
    C{[imap]}: IMAP4 with STARTTLS on 143, in implicit TLS on 993.
    """

    DEFAULT_PORTS = (143, 993)


@attrs.frozen
class POP3Config(MailAccessConfig):
    """
    C{[pop3]}: POP3 with STLS on 110, in implicit TLS on 995.
    """

    DEFAULT_PORTS = (110, 995)


@attrs.frozen
class TLSConfig:
    """
    C{[tls]}: both paths, or neither (a self-signed pair is then generated).

    @ivar cert: the certificate path, absolute, or empty (C{cert}).
    @ivar key: the private key path, absolute, or empty (C{key}).
    """

    cert: str = attrs.field(default="", validator=pathValidator())
    key: str = attrs.field(default="", validator=pathValidator())

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
    @ivar connectionsPerIp: connections a client IP may hold open to each
        protocol (SMTP, IMAP, POP3) (C{connections_per_ip}).
    @ivar maxSessions: connections open at once over every listener of one
        process (C{max_sessions}).
    """

    messagesPerIpHour: int = attrs.field(default=100, validator=intValidator(0))
    messagesPerUserHour: int = attrs.field(default=500, validator=intValidator(0))
    connectionsPerIp: int = attrs.field(default=20, validator=intValidator(0))
    # Dovecot's default_client_limit; far below the open-file limit once it
    # is raised to the hard limit at start, leaving room for Maildir files,
    # the journal, DNS and KME connections.
    maxSessions: int = attrs.field(default=1000, validator=intValidator(0))


@attrs.frozen
class MailboxConfig:
    """
    C{[mailbox]}.

    @ivar defaultQuotaBytes: the default quota in bytes (C{default_quota_mb}).
    @ivar retentionDays: how many days mail is kept, 0 for ever (C{retention_days}).
    @ivar mailDir: where the Maildirs are, absolute (shared storage for
        several nodes), or empty for C{data_dir/mail} (C{mail_dir}).
    """

    defaultQuotaBytes: int = attrs.field(default=5120 * 2**20, validator=intValidator(1))
    retentionDays: int = attrs.field(default=365, validator=intValidator(0))
    mailDir: str = attrs.field(default="", validator=pathValidator())


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
    dnsTimeoutSeconds: float = attrs.field(default=10.0, validator=DURATION_FIELD)


@attrs.frozen
class DKIMConfig:
    """
    C{[dkim]}.

    @ivar selector: the DKIM selector, lower case (C{selector}).
    @ivar privateKey: the signing key path, absolute, or empty (C{private_key}).
    """

    selector: str = attrs.field(default="mail", validator=parserValidator(parseDnsLabel, "a DNS label"))
    privateKey: str = attrs.field(default="", validator=pathValidator())


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
    @ivar restSae: the slave SAE named in C{enc_keys} for keys of mail at
        rest, or empty for our own SAE (C{rest_sae}): only the embedded KME
        accepts a master naming itself; with a vendor KME pair name the
        SAE of another site or of a key-escrow service.
    @ivar keySizeBits: the size of the keys asked for (C{key_size}); it
        must be within the KME's C{min_key_size}..C{max_key_size}.
    @ivar kmeId: the KME's id, or empty (C{kme_id}): when set, the KME's
        certificate must carry it and its status must name it.
    @ivar minPoolKeys: below this many keys in the KME's pool, new
        internal mail is refused at RCPT with 452 4.3.1 (C{min_pool_keys};
        0: never).
    @ivar peers: C{(domain, SAE id)} of the other QutEmail sites on the
        QKD network (C{peers}): mail to them travels encrypted with a key
        shared by the two sites' KMEs (L{qutemail.qkd.transit}).
    @ivar peerPolicy: C{require} (mail to a peer never leaves without QKD
        transit encryption; no key: deferred) or C{prefer} (sent with TLS
        alone, with a warning) (C{peer_policy}).
    """

    kmeUrl: str = attrs.field(default="", validator=parserValidator(urlParser("https://"), "an https:// URL"))
    saeId: str = attrs.field(default="", validator=parserValidator(parseText, "one line of text"))
    clientCert: str = attrs.field(default="", validator=pathValidator())
    clientKey: str = attrs.field(default="", validator=pathValidator())
    caCert: str = attrs.field(default="", validator=pathValidator())
    poolKeys: int = attrs.field(default=10000, validator=intValidator(1))
    refillKeysPerSecond: int = attrs.field(default=1000, validator=intValidator(0))
    keepSubject: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    encrypt: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    restSae: str = attrs.field(default="", validator=parserValidator(parseText, "one line of text"))
    keySizeBits: int = attrs.field(default=256, validator=predicateValidator(isKeySize,
                                                                             "a multiple of 8 from 128 to 8192"))
    kmeId: str = attrs.field(default="", validator=parserValidator(parseText, "one line of text"))
    minPoolKeys: int = attrs.field(default=0, validator=intValidator(0))
    peers: tuple[tuple[str, str], ...] = attrs.field(default=(), validator=predicateValidator(
        lambda v: type(v) is tuple and all(type(p) is tuple and len(p) == 2 and all(isinstance(x, str) for x in p)
                                           for p in v), "(domain, SAE id) pairs"))
    peerPolicy: str = attrs.field(default="require", validator=attrs.validators.in_(("require", "prefer")))


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
    @ivar delayWarningSeconds: after this long undelivered, the sender gets
        one delay notice (C{delay_warning}; 0: never).
    @ivar tlsCa: the CA certificates (PEM) that verified TLS trusts instead
        of the system's, absolute, or empty (C{tls_ca}): an organisation's
        own CA for its sites.
    @ivar routes: C{(domain, host, port)} fixed next hops (C{routes}): mail
        for such a domain goes to that host without an MX lookup, before
        the smarthost is considered.
    @ivar mtaSts: honour the MTA-STS policies of the domains mail goes to
        by MX (C{mta_sts}).
    @ivar mtaStsPort: the HTTPS port policy hosts are reached on
        (C{mta_sts_port}); 443 except for tests.
    """

    smarthost: str = attrs.field(default="", validator=parserValidator(parseSmarthost, "host:port"))
    nameservers: tuple[tuple[str, int], ...] = attrs.field(
        default=(),
        validator=predicateValidator(lambda v: type(v) is tuple and all(map(isNameserver, v)), "(ip, port) pairs"),
    )
    retrySchedule: tuple[float, ...] = attrs.field(
        default=(300.0, 600.0, 1200.0, 2400.0, 4800.0),
        validator=predicateValidator(lambda v: type(v) is tuple and v and all(map(isDuration, v)), "durations > 0"),
    )
    queueLifetimeSeconds: float = attrs.field(default=5 * 86400.0, validator=DURATION_FIELD)
    requireVerifiedTls: tuple[str, ...] = attrs.field(
        default=(), validator=parserValidator(parseTlsDomains, "DNS names or *")
    )
    mxPort: int = attrs.field(default=25, validator=intValidator(1, 65535))
    smarthostUsername: str = attrs.field(default="", validator=parserValidator(parseText, "one line of text"))
    smarthostPasswordFile: str = attrs.field(default="", validator=pathValidator())
    delayWarningSeconds: float = attrs.field(default=4 * 3600.0, validator=predicateValidator(
        lambda v: type(v) is float and (v == 0 or isDuration(v)), "a duration, or 0"))
    tlsCa: str = attrs.field(default="", validator=pathValidator())
    routes: tuple[tuple[str, str, int], ...] = attrs.field(default=(), validator=predicateValidator(
        lambda v: type(v) is tuple and all(type(r) is tuple and len(r) == 3 and isinstance(r[0], str)
                                           and isinstance(r[1], str) and type(r[2]) is int for r in v),
        "(domain, host, port) triples"))
    mtaSts: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    mtaStsPort: int = attrs.field(default=443, validator=intValidator(1, 65535))

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
        in-process state (C{url}); or, for a master and its replicas that
        Redis Sentinel fails over,
        C{redis-sentinel://[:password@]host[:port],host[:port]/mastername[?db=N]}:
        the sentinels to ask (port 26379 by default), the name they know
        the master by, and its database.  The password is the Redis
        servers'; the sentinels are asked without one.  Each connection
        follows the master through a failover; see
        L{qutemail.backends.redissentinel}.
    @ivar allowVolatileVault: keep the key vault in a Redis that would lose
        it in a crash (no C{appendonly}), or that cannot say
        (C{allow_volatile_vault}).
    """

    url: str = attrs.field(default="", validator=parserValidator(parseRedisURL, "a Redis URL"))
    allowVolatileVault: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


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
    content: ContentConfig = _section(ContentConfig)
    dkim: DKIMConfig = _section(DKIMConfig)
    qkd: QKDConfig = _section(QKDConfig)
    relay: RelayConfig = _section(RelayConfig)
    redis: RedisConfig = _section(RedisConfig)
    metrics: MetricsConfig = _section(MetricsConfig)
    jmap: JMAPConfig = _section(JMAPConfig)


_SECTIONS: dict[str, type] = {f.name: f.type for f in attrs.fields(Config) if f.name != "path"}


def _isRequired(setting: Setting) -> bool:
    """Whether the section's class has no default for this setting."""
    return attrs.fields_dict(_SECTIONS[setting.section])[setting.attribute].default is attrs.NOTHING


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
        known = [s.key for s in SETTINGS if s.section == section]
        for key in parser.options(section):
            if key not in known:
                close = difflib.get_close_matches(key, known, 1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"{path}: [{section}] {key}: unknown key{hint}")
    return problems


def _unknownEnvironment(environ: Mapping[str, str]) -> list[str]:
    """List a problem for each C{QUTEMAIL_} variable that names no setting."""
    known = {setting.envName for setting in SETTINGS}
    return [
        f"environment {name}: unknown setting (the prefix {ENV_PREFIX} is reserved for {ENV_PREFIX}<SECTION>_<KEY>)"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(_ENV_IGNORED)
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
    for setting in SETTINGS:
        if setting.envName in environ:
            where, base, text = f"environment {setting.envName}", os.getcwd(), environ[setting.envName]
        elif parser.has_option(setting.section, setting.key):
            where, base = f"{path}: [{setting.section}] {setting.key}", fileDir
            text = parser.get(setting.section, setting.key)
        else:
            if _isRequired(setting):
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
    problems += _acrossSections(path, sections)
    problems += _unknownEnvironment(environ)
    if problems:
        raise ConfigError(problems)
    return Config(path=path, **sections)


def _acrossSections(path: str, sections: dict[str, Any]) -> list[str]:
    """List a problem for each rule across sections that does not hold."""
    server, qkd = sections.get("server"), sections.get("qkd")
    if server is None or qkd is None or not qkd.peers:
        return []
    problems = []
    ours = [domain for domain, _ in qkd.peers if domain in server.domains]
    if ours:
        problems.append(f"{path}: [qkd] peers: {', '.join(ours)} is one of our own [server] domains")
    if server.workers > 1:
        # Extra SMTP workers have no KME client, key vault or encryptor.
        problems.append(f"{path}: [qkd] peers: needs [server] workers = 1 (inter-site mail is received and "
                        f"encrypted at rest by the main process)")
    if not qkd.encrypt:
        problems.append(f"{path}: [qkd] peers: needs [qkd] encrypt = yes")
    return problems

