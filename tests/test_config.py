# -*- test-case-name: tests.test_config -*-
"""
Tests for L{qutemail.config}.
"""

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

from qutemail.config import (
    Config,
    ContentConfig,
    ConfigError,
    DKIMConfig,
    IMAPConfig,
    LimitsConfig,
    InboundConfig,
    MailboxConfig,
    JMAPConfig,
    MetricsConfig,
    POP3Config,
    QKDConfig,
    RedisConfig,
    RelayConfig,
    ServerConfig,
    SMTPConfig,
    TLSConfig,
    loadConfig,
)

MINIMAL = """\
[server]
hostname = mail.example.test
domains = example.test
data_dir = /srv/qutemail
"""

# Every key of the user-facing contract, plus the ones the project added.
ALL_KEYS = [
    ("server", "hostname"), ("server", "domains"), ("server", "data_dir"), ("server", "bind"),
    ("server", "workers"), ("server", "delivery_process"),
    ("smtp", "mta_port"), ("smtp", "submission_port"), ("smtp", "smtps_port"),
    ("smtp", "max_message_size"), ("smtp", "max_recipients"), ("smtp", "idle_timeout"),
    ("imap", "port"), ("imap", "tls_port"), ("pop3", "port"), ("pop3", "tls_port"),
    ("tls", "cert"), ("tls", "key"),
    ("limits", "messages_per_ip_hour"), ("limits", "messages_per_user_hour"),
    ("limits", "connections_per_ip"), ("limits", "max_sessions"),
    ("mailbox", "default_quota_mb"), ("mailbox", "retention_days"), ("mailbox", "mail_dir"),
    ("inbound", "checks"), ("inbound", "spf_fail"), ("inbound", "dmarc_reject"), ("inbound", "dns_timeout"),
    ("content", "rspamd_url"), ("content", "rspamd_password"), ("content", "clamd_socket"),
    ("content", "max_scan_size"), ("content", "on_error"), ("content", "timeout"), ("content", "scan_submission"),
    ("dkim", "selector"), ("dkim", "private_key"),
    ("qkd", "kme_url"), ("qkd", "sae_id"), ("qkd", "client_cert"), ("qkd", "client_key"),
    ("qkd", "ca_cert"), ("qkd", "pool_keys"), ("qkd", "refill_per_second"), ("qkd", "keep_subject"), ("qkd", "encrypt"),
    ("qkd", "rest_sae"), ("qkd", "key_size"), ("qkd", "kme_id"), ("qkd", "min_pool_keys"), ("qkd", "peers"),
    ("qkd", "peer_policy"),
    ("relay", "smarthost"), ("relay", "nameservers"), ("relay", "retry_schedule"),
    ("relay", "queue_lifetime"), ("relay", "require_verified_tls"),
    ("relay", "mx_port"), ("relay", "smarthost_username"), ("relay", "smarthost_password_file"),
    ("relay", "routes"), ("relay", "delay_warning"), ("relay", "tls_ca"), ("relay", "mta_sts"),
    ("relay", "mta_sts_port"),
    ("redis", "url"), ("redis", "allow_volatile_vault"),
    ("metrics", "port"), ("metrics", "bind"), ("metrics", "mta_sts_mode"),
    ("jmap", "port"),
]

FULL = """\
# a comment
[server]
hostname = MX1.Example.TEST.
domains = Example.test, other.test,example.test ; a comment
data_dir = /var/lib/qutemail
bind = ::1
workers = 3
delivery_process = no
[smtp]
mta_port = 2525
submission_port = 0
smtps_port = 2465
max_message_size = 10M
max_recipients = 7
idle_timeout = 10m
[imap]
port = 2143
tls_port = 2993
[pop3]
port = 2110
tls_port = 0
[tls]
cert = /etc/ssl/mail.pem
key = /etc/ssl/mail.key
[limits]
messages_per_ip_hour = 0
messages_per_user_hour = 50
connections_per_ip = 3
max_sessions = 0
[mailbox]
default_quota_mb = 100
retention_days = 0
mail_dir = /srv/shared/mail
[inbound]
checks = no
spf_fail = Tag
dmarc_reject = quarantine
dns_timeout = 3s
[content]
rspamd_url = http://127.0.0.1:11333
rspamd_password = /etc/qutemail/rspamd-password
clamd_socket = /run/clamav/clamd.ctl
max_scan_size = 10M
on_error = Accept
timeout = 5s
scan_submission = no
[dkim]
selector = Sel2024
private_key = /etc/dkim.pem
[qkd]
kme_url = https://kme.example.test:8443/api/v1
sae_id = SAE-1
client_cert = /etc/qkd/sae.pem
client_key = /etc/qkd/sae.key
ca_cert = /etc/qkd/ca.pem
pool_keys = 500
refill_per_second = 0
keep_subject = Yes
encrypt = off
rest_sae = escrow
key_size = 512
kme_id = KME-7
min_pool_keys = 5
# peers need workers = 1 and encrypt = yes: see PeersTests
peers =
peer_policy = Prefer
[relay]
smarthost = smtp.example.net:587
nameservers = 192.0.2.53, 192.0.2.54:5353, [2001:db8::53]:53, 2001:0db8::1
retry_schedule = 1m, 1h
queue_lifetime = 2d
require_verified_tls = Bank.test, *
mx_port = 2526
routes = Branch.Example=10.0.0.5:2525
delay_warning = 0
tls_ca = /etc/qutemail/ca.pem
mta_sts = no
mta_sts_port = 8443
smarthost_username = relay-user
smarthost_password_file = /etc/qutemail/relay-password
[redis]
url = rediss://redis.example.test:6380/0
allow_volatile_vault = yes
[metrics]
port = 9154
bind = ::1
mta_sts_mode = Enforce
[jmap]
port = 8443
"""

MINIMAL_SERVER = ServerConfig(hostname="mail.example.test", domains=("example.test",), dataDir="/srv/qutemail")


class ConfigFileMixin:
    """
    Write configuration files under the test's temporary directory and load
    them.
    """

    def writeConfig(self, text: str | bytes, name: str = "qutemail.ini") -> str:
        """
        Write a configuration file in a fresh C{etc} directory.

        @param text: the file's content.
        @param name: the file's name.
        @return: the file's (relative) path.
        """
        directory = os.path.join(self.mktemp(), "etc")
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def load(self, text: str, environ: dict[str, str] | None = None) -> Config:
        """
        Write C{text} to a file and load it.

        @return: the configuration.
        """
        return loadConfig(self.writeConfig(text), {} if environ is None else environ)

    def problems(self, text: str, environ: dict[str, str] | None = None) -> tuple[str, list[str]]:
        """
        Write C{text} to a file, load it, and check that loading fails with a
        one-line message made of the problems.

        @return: the file's path and the problems.
        """
        path = self.writeConfig(text)
        error = self.assertRaises(ConfigError, loadConfig, path, {} if environ is None else environ)
        self.assertNotIn("\n", str(error))
        self.assertEqual(str(error), "; ".join(error.problems))
        return path, error.problems

    def withValue(self, section: str, key: str, value: str) -> str:
        """
        @return: L{MINIMAL} with C{[section] key} set to C{value}.
        """
        text = MINIMAL if section == "server" else MINIMAL + f"[{section}]\n"
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        index = lines.index(f"[{section}]") + 1
        return "\n".join(lines[:index] + [f"{key} = {value}"] + lines[index:]) + "\n"

    def assertBad(self, section: str, key: str, value: str, message: str) -> None:
        """
        Assert that C{value} for C{[section] key} is the one problem, and that
        it is reported as C{message}, both from the file and from the
        environment.
        """
        path, problems = self.problems(self.withValue(section, key, value))
        self.assertEqual(problems, [f"{path}: [{section}] {key}: {message}"])
        variable = f"QUTEMAIL_{section.upper()}_{key.upper()}"
        path, problems = self.problems(MINIMAL, {variable: value})
        self.assertEqual(problems, [f"environment {variable}: {message}"])


class LoadConfigTests(ConfigFileMixin, SynchronousTestCase):
    """
    Tests for L{loadConfig} with good files.
    """

    def test_full(self) -> None:
        """
        A file setting every key gives exactly the matching L{Config}.
        """
        path = self.writeConfig(FULL)
        expected = Config(
            path=path,
            server=ServerConfig(
                hostname="mx1.example.test",
                domains=("example.test", "other.test"),
                dataDir="/var/lib/qutemail",
                bind="::1",
                workers=3,
                deliveryProcess=False,
            ),
            smtp=SMTPConfig(
                mtaPort=2525, submissionPort=0, smtpsPort=2465, maxMessageBytes=10 * 2**20,
                maxRecipients=7, idleTimeoutSeconds=600.0,
            ),
            imap=IMAPConfig(port=2143, tlsPort=2993),
            pop3=POP3Config(port=2110, tlsPort=0),
            tls=TLSConfig(cert="/etc/ssl/mail.pem", key="/etc/ssl/mail.key"),
            limits=LimitsConfig(messagesPerIpHour=0, messagesPerUserHour=50, connectionsPerIp=3, maxSessions=0),
            mailbox=MailboxConfig(defaultQuotaBytes=100 * 2**20, retentionDays=0, mailDir="/srv/shared/mail"),
            inbound=InboundConfig(checks=False, spfFail="tag", dmarcReject="quarantine", dnsTimeoutSeconds=3.0),
            content=ContentConfig(rspamdUrl="http://127.0.0.1:11333", rspamdPasswordFile="/etc/qutemail/rspamd-password",
                                  clamdSocket="/run/clamav/clamd.ctl", maxScanBytes=10 * 2**20, onError="accept",
                                  timeoutSeconds=5.0, scanSubmission=False),
            dkim=DKIMConfig(selector="sel2024", privateKey="/etc/dkim.pem"),
            qkd=QKDConfig(
                kmeUrl="https://kme.example.test:8443/api/v1", saeId="SAE-1",
                clientCert="/etc/qkd/sae.pem", clientKey="/etc/qkd/sae.key", caCert="/etc/qkd/ca.pem",
                poolKeys=500, refillKeysPerSecond=0, keepSubject=True, encrypt=False,
                restSae="escrow", keySizeBits=512, kmeId="KME-7", minPoolKeys=5, peers=(), peerPolicy="prefer",
            ),
            relay=RelayConfig(
                smarthost="smtp.example.net:587",
                nameservers=(("192.0.2.53", 53), ("192.0.2.54", 5353), ("2001:db8::53", 53), ("2001:db8::1", 53)),
                retrySchedule=(60.0, 3600.0),
                queueLifetimeSeconds=172800.0,
                requireVerifiedTls=("bank.test", "*"),
                mxPort=2526, smarthostUsername="relay-user",
                smarthostPasswordFile="/etc/qutemail/relay-password",
                routes=(("branch.example", "10.0.0.5", 2525),), delayWarningSeconds=0.0,
                tlsCa="/etc/qutemail/ca.pem", mtaSts=False, mtaStsPort=8443,
            ),
            redis=RedisConfig(url="rediss://redis.example.test:6380/0", allowVolatileVault=True),
            metrics=MetricsConfig(port=9154, bind="::1", mtaStsMode="enforce"),
            jmap=JMAPConfig(port=8443),
        )
        self.assertEqual(loadConfig(path, {}), expected)

    def test_fullSetsEveryKey(self) -> None:
        """
        The file in L{test_full} sets every key of the contract, and only those.
        """
        parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
        parser.read_string(FULL)
        self.assertEqual(sorted((s, k) for s in parser.sections() for k in parser[s]), sorted(ALL_KEYS))

    def test_smarthostAuthNeedsBoth(self) -> None:
        """
        A smarthost user name without a password file, or either without a
        smarthost, stops the start with one line naming C{[relay]}.
        """
        for text in ("smarthost = relay.test\nsmarthost_username = u\n",
                     "smarthost_username = u\nsmarthost_password_file = /p\n"):
            path = self.writeConfig(MINIMAL + "[relay]\n" + text)
            error = self.assertRaises(ConfigError, loadConfig, path, {})
            self.assertIn("[relay]:", str(error))

    def test_defaults(self) -> None:
        """
        Absent sections and keys take the documented production defaults.
        """
        config = self.load(MINIMAL)
        self.assertEqual(config, Config(path=config.path, server=MINIMAL_SERVER))
        self.assertEqual(
            (config.server.bind, config.smtp, config.imap, config.pop3, config.limits, config.mailbox),
            (
                "0.0.0.0",
                SMTPConfig(mtaPort=25, submissionPort=587, smtpsPort=465, maxMessageBytes=26214400,
                           maxRecipients=100, idleTimeoutSeconds=300.0),
                IMAPConfig(port=143, tlsPort=993),
                POP3Config(port=110, tlsPort=995),
                LimitsConfig(messagesPerIpHour=100, messagesPerUserHour=500, connectionsPerIp=20, maxSessions=1000),
                MailboxConfig(defaultQuotaBytes=5120 * 1024 * 1024, retentionDays=365),
            ),
        )
        self.assertEqual(config.inbound, InboundConfig(checks=True, spfFail="reject", dmarcReject="reject",
                                                       dnsTimeoutSeconds=10.0))
        self.assertEqual(config.content, ContentConfig(rspamdUrl="", rspamdPasswordFile="", clamdSocket="",
                                                       maxScanBytes=25 * 2**20, onError="tempfail",
                                                       timeoutSeconds=30.0, scanSubmission=True))
        self.assertFalse(config.content.enabled)
        self.assertEqual(config.metrics, MetricsConfig(port=0, bind="127.0.0.1", mtaStsMode="testing"))
        self.assertEqual(config.jmap, JMAPConfig(port=0))
        self.assertEqual(
            (config.tls, config.dkim, config.qkd, config.relay, config.redis),
            (
                TLSConfig(cert="", key=""),
                DKIMConfig(selector="mail", privateKey=""),
                QKDConfig(kmeUrl="", saeId="", clientCert="", clientKey="", caCert=""),
                RelayConfig(smarthost="", nameservers=(), retrySchedule=(300.0, 600.0, 1200.0, 2400.0, 4800.0),
                            queueLifetimeSeconds=432000.0, requireVerifiedTls=()),
                RedisConfig(url="", allowVolatileVault=False),
            ),
        )

    def test_pathAsGiven(self) -> None:
        """
        L{Config.path} is the path exactly as passed, relative or not.
        """
        path = self.writeConfig(MINIMAL)
        self.assertFalse(os.path.isabs(path))
        self.assertEqual(loadConfig(path, {}).path, path)

    def test_relativePaths(self) -> None:
        """
        Relative paths in the file are relative to the file's directory and
        made absolute; empty paths stay empty.
        """
        path = self.writeConfig(
            MINIMAL.replace("/srv/qutemail", "../var")
            + "[tls]\ncert = certs/mail.pem\nkey = ./mail.key\n[qkd]\nca_cert = ../ca.pem\n"
        )
        etc = os.path.abspath(os.path.dirname(path))
        config = loadConfig(path, {})
        self.assertEqual(config.server.dataDir, os.path.join(os.path.dirname(etc), "var"))
        self.assertEqual(config.tls, TLSConfig(cert=os.path.join(etc, "certs", "mail.pem"),
                                               key=os.path.join(etc, "mail.key")))
        self.assertEqual(config.qkd.caCert, os.path.join(os.path.dirname(etc), "ca.pem"))
        self.assertEqual((config.qkd.clientCert, config.dkim.privateKey), ("", ""))

    def test_syntax(self) -> None:
        """
        Keys are case-insensitive, values are stripped, C{#} and C{;} start
        comments after whitespace, C{%} is not interpolated, and list values
        may continue on indented lines.
        """
        config = self.load(
            "[server]\nHOSTNAME =   mail.example.test   # the name\nDomains: a.test,\n  b.test\n"
            "data_dir = /srv/100%\n[qkd]\nsae_id = a#b;c  ; comment\n"
        )
        self.assertEqual(
            (config.server.hostname, config.server.domains, config.server.dataDir, config.qkd.saeId),
            ("mail.example.test", ("a.test", "b.test"), "/srv/100%", "a#b;c"),
        )

    def test_quotaUnits(self) -> None:
        """
        C{default_quota_mb} is MiB when bare, or a size with a unit.
        """
        for text, expected in [("1", 2**20), ("1" + "0" * 25, 10**25 * 2**20), ("5G", 5 * 2**30), ("500M", 500 * 2**20), ("2048k", 2 * 2**20)]:
            self.assertEqual(self.load(MINIMAL + f"[mailbox]\ndefault_quota_mb = {text}\n").mailbox.defaultQuotaBytes,
                             expected)

    def test_smarthostForms(self) -> None:
        """
        C{smarthost} accepts C{host}, C{host:port}, C{ipv4:port} and
        C{[ipv6]:port}, and keeps the text as given.
        """
        for text in ["relay.example.net", "Relay.Example.NET:2525", "192.0.2.1:25", "[2001:db8::1]:587", "[::1]"]:
            self.assertEqual(self.load(MINIMAL + f"[relay]\nsmarthost = {text}\n").relay.smarthost, text)

    def test_bindIPv6(self) -> None:
        """
        C{bind} accepts an IPv6 literal.
        """
        self.assertEqual(self.load(MINIMAL + "bind = ::\n").server.bind, "::")

    def test_byteOrderMark(self) -> None:
        """
        A UTF-8 byte order mark at the start of the file is ignored.
        """
        config = loadConfig(self.writeConfig(b"\xef\xbb\xbf" + MINIMAL.encode()), {})
        self.assertEqual(config.server, MINIMAL_SERVER)


class BadValueTests(ConfigFileMixin, SynchronousTestCase):
    """
    Each key's bad values are reported naming the file (or variable), the
    section and the key.
    """

    def test_everyKey(self) -> None:
        """
        A control character is a bad value for every key, from the file and
        from the environment, and is the only problem reported.
        """
        for section, key in ALL_KEYS:
            path, problems = self.problems(self.withValue(section, key, "a\x07b"))
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith(f"{path}: [{section}] {key}: "), problems)
            variable = f"QUTEMAIL_{section.upper()}_{key.upper()}"
            path, problems = self.problems(MINIMAL, {variable: "a\x07b"})
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith(f"environment {variable}: "), problems)

    def test_port(self) -> None:
        """
        Ports are whole numbers from 0 to 65535.
        """
        for value in ["abc", "65536", "-1", "25.0", "0x19", ""]:
            self.assertBad("smtp", "mta_port", value, f"{value!r} is not a port number (0-65535)")
        self.assertBad("imap", "tls_port", "99999", "'99999' is not a port number (0-65535)")
        self.assertBad("pop3", "port", "x", "'x' is not a port number (0-65535)")

    def test_size(self) -> None:
        """
        C{max_message_size} must be a size greater than zero.
        """
        self.assertBad("smtp", "max_message_size", "-5", "'-5' is not a size (bytes, or a whole number with K, M, G or T)")
        self.assertBad("smtp", "max_message_size", "0M", "'0M' is not a size greater than zero")
        self.assertBad("mailbox", "default_quota_mb", "0", "'0' is not a size greater than zero")
        self.assertBad("mailbox", "default_quota_mb", "lots",
                       "'lots' is not a size (bytes, or a whole number with K, M, G or T)")

    def test_counts(self) -> None:
        """
        Counts are whole numbers; C{max_recipients} is at least 1, limits and
        retention at least 0.
        """
        self.assertBad("smtp", "max_recipients", "0", "'0' is not a whole number >= 1")
        self.assertBad("limits", "connections_per_ip", "-1", "'-1' is not a whole number >= 0")
        self.assertBad("limits", "max_sessions", "lots", "'lots' is not a whole number >= 0")
        self.assertBad("limits", "messages_per_ip_hour", "1e3", "'1e3' is not a whole number >= 0")
        self.assertBad("mailbox", "retention_days", "forever", "'forever' is not a whole number >= 0")
        self.assertBad("inbound", "spf_fail", "drop", "'drop' is not one of reject, tag")
        self.assertBad("inbound", "dmarc_reject", "junk", "'junk' is not one of reject, quarantine")
        self.assertBad("inbound", "checks", "maybe", "'maybe' is not yes or no")

    def test_duration(self) -> None:
        """
        Durations are positive numbers with an optional unit.
        """
        self.assertBad("smtp", "idle_timeout", "0", "'0' is not a duration greater than zero")
        self.assertBad("relay", "queue_lifetime", "5 years",
                       "'5 years' is not a duration (seconds, or a number with s, m, h, d or w)")
        self.assertBad("relay", "retry_schedule", "5m,soon",
                       "'soon' is not a duration (seconds, or a number with s, m, h, d or w)")
        self.assertBad("relay", "retry_schedule", ", ", "at least one duration is required")

    def test_bind(self) -> None:
        """
        C{bind} must be an IP address literal, not a name.
        """
        for value in ["localhost", "256.1.1.1", "[::1]", "127.0.0.1:25"]:
            self.assertBad("server", "bind", value, f"{value!r} is not an IPv4 or IPv6 address")

    def test_nameservers(self) -> None:
        """
        Nameservers are IP literals with an optional port from 1 to 65535.
        """
        for item in ["dns.example.test", "192.0.2.1:0", "192.0.2.1:x", "[192.0.2.1]:53", "[::1]53", "1.2.3:53"]:
            self.assertBad("relay", "nameservers", f"192.0.2.9, {item}",
                           f"nameserver {item!r} is not ip, ip:port or [ipv6]:port")

    def test_smarthost(self) -> None:
        """
        C{smarthost} must be a host name or address with an optional port; an
        IPv6 address needs brackets.
        """
        for value in ["::1", "host:0", "host:25:25", "bad_host", "[nonsense]:25", "host:"]:
            self.assertBad("relay", "smarthost", value, f"{value!r} is not host, host:port or [ipv6]:port")

    def test_domainNames(self) -> None:
        """
        Host and domain names must be valid DNS names.
        """
        for value in ["-bad.test", "a..test", "under_score.test", "192.0.2.1", "bücher.test", "a" * 64 + ".test"]:
            self.assertBad("server", "hostname", value, f"{value!r} is not a valid DNS name")
        self.assertBad("server", "domains", "example.test, bad!.test", "'bad!.test' is not a valid DNS name")
        self.assertBad("relay", "require_verified_tls", "*.example.test", "'*.example.test' is not a valid DNS name")
        self.assertBad("dkim", "selector", "a.b", "'a.b' is not a valid DNS label")

    def test_emptyDomains(self) -> None:
        """
        C{domains} needs at least one domain.
        """
        self.assertBad("server", "domains", " , ", "at least one domain is required")
        self.assertBad("server", "domains", "", "at least one domain is required")

    def test_emptyDataDir(self) -> None:
        """
        An empty C{data_dir} is an error.
        """
        self.assertBad("server", "data_dir", "", "must not be empty")

    def test_urlSchemes(self) -> None:
        """
        C{kme_url} must be an C{https://} URL with a host; C{[redis] url} a
        C{redis://}, C{rediss://}, C{unix://} or C{redis-sentinel://} one.
        """
        for value in ["http://kme.test", "https://", "kme.test", "https://kme.test:99999", "HTTPS://kme.test"]:
            self.assertBad("qkd", "kme_url", value, f"{value!r} is not a URL starting with https://")
        for value in ["http://redis.test", "redis://", "unix://", "redis.test:6379", "redis-sentinel:/s1/m"]:
            self.assertBad("redis", "url", value,
                           f"{value!r} is not a URL starting with redis:// or rediss:// or unix:// or "
                           "redis-sentinel://")

    def test_certWithoutKey(self) -> None:
        """
        C{[tls]} needs both C{cert} and C{key}, or neither.
        """
        path, problems = self.problems(MINIMAL + "[tls]\ncert = mail.pem\n")
        self.assertEqual(problems, [f"{path}: [tls]: cert is set but key is not; set both or neither"])
        path, problems = self.problems(MINIMAL + "[tls]\nkey = mail.key\n")
        self.assertEqual(problems, [f"{path}: [tls]: key is set but cert is not; set both or neither"])
