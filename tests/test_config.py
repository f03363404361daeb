# -*- test-case-name: tests.test_config -*-
"""
Tests for L{qutemail.config}.
"""

import configparser
import os

import attrs
from hypothesis import given, strategies as st
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


class ErrorReportingTests(ConfigFileMixin, SynchronousTestCase):
    """
    Problems with the file itself, and the shape of L{ConfigError}.
    """

    def test_unknownSection(self) -> None:
        """
        An unknown section, including C{[DEFAULT]}, is an error listing the
        known ones.
        """
        path, problems = self.problems(MINIMAL + "[smpt]\nmta_port = 25\n[DEFAULT]\nx = 1\n")
        known = "server, smtp, imap, pop3, tls, limits, mailbox, inbound, content, dkim, qkd, relay, redis, metrics, jmap"
        self.assertEqual(problems, [f"{path}: [smpt]: unknown section (known: {known})",
                                    f"{path}: [DEFAULT]: unknown section (known: {known})"])

    def test_unknownKey(self) -> None:
        """
        An unknown key is an error naming it, with a suggestion when one is
        close.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\nmta_prot = 25\nfrobnicate = yes\n")
        self.assertEqual(problems, [f"{path}: [smtp] mta_prot: unknown key (did you mean mta_port?)",
                                    f"{path}: [smtp] frobnicate: unknown key"])

    def test_missingRequired(self) -> None:
        """
        Each missing required key is an error naming it and its variable.
        """
        path, problems = self.problems("[server]\nhostname = mail.example.test\n")
        self.assertEqual(problems, [
            f"{path}: [server] domains: required but missing (set it in the file or as QUTEMAIL_SERVER_DOMAINS)",
            f"{path}: [server] data_dir: required but missing (set it in the file or as QUTEMAIL_SERVER_DATA_DIR)",
        ])

    def test_emptyFile(self) -> None:
        """
        An empty file lacks the three required keys.
        """
        path, problems = self.problems("")
        self.assertEqual([p.split(":")[1] for p in problems],
                         [" [server] hostname", " [server] domains", " [server] data_dir"])

    def test_missingFile(self) -> None:
        """
        A missing file is an error naming it.
        """
        path = os.path.join(self.mktemp(), "nothere.ini")
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: cannot read the file: No such file or directory")

    def test_directory(self) -> None:
        """
        A directory is not a readable configuration file.
        """
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: cannot read the file: Is a directory")

    def test_unreadable(self) -> None:
        """
        A file that cannot be read is an error naming it and the reason.
        (C{/proc/self/mem} fails to read even for root, who can read any
        file regardless of its mode.)
        """
        path = "/proc/self/mem"
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: cannot read the file: Input/output error")

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is an error giving the bad byte's line.
        """
        path = self.writeConfig(b"[server]\nhostname = caf\xe9\n")
        error = self.assertRaises(ConfigError, loadConfig, path, {})
        self.assertEqual(str(error), f"{path}: line 2: not UTF-8 text")

    def test_syntaxErrors(self) -> None:
        """
        Every line that is not a section, key or comment is reported with its
        line number.
        """
        path, problems = self.problems(MINIMAL + "this is not ini\n[smtp]\n= 5\n")
        self.assertEqual(problems, [f"{path}: line 5: cannot parse 'this is not ini'",
                                    f"{path}: line 7: cannot parse '= 5'"])

    def test_lineNumbers(self) -> None:
        """
        Line numbers count only line ends (LF, CRLF or CR), not other
        characters Python treats as line breaks.
        """
        path, problems = self.problems(MINIMAL.replace("\n", "\r\n") + "[qkd]\r\nsae_id = a\x0cb\rjunk\n")
        self.assertEqual(problems, [f"{path}: line 7: cannot parse 'junk'"])

    def test_noSection(self) -> None:
        """
        A key before any section header is reported with its line number.
        """
        path, problems = self.problems("hostname = x\n" + MINIMAL)
        self.assertEqual(problems, [f"{path}: line 1: 'hostname = x' is outside any [section]"])

    def test_duplicateKey(self) -> None:
        """
        A key given twice in a section is an error naming it and the line.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\nmta_port = 25\nMTA_PORT = 26\n")
        self.assertEqual(problems, [f"{path}: line 7: [smtp] mta_port: duplicate key"])

    def test_duplicateSection(self) -> None:
        """
        A section given twice is an error naming it and the line.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\n[smtp]\n")
        self.assertEqual(problems, [f"{path}: line 6: [smtp]: duplicate section"])

    def test_severalProblems(self) -> None:
        """
        Every problem in the file is reported, in order, on one line joined
        by C{"; "}.
        """
        path = self.writeConfig(
            "[server]\nhostname = -x\ndomains = example.test\n[smtp]\nmta_port = abc\nmax_recipients = 0\n"
            "[tls]\ncert = c.pem\n[bogus]\n"
        )
        error = self.assertRaises(ConfigError, loadConfig, path, {"QUTEMAIL_NOPE": "1"})
        expected = [
            f"{path}: [bogus]: unknown section (known: server, smtp, imap, pop3, tls, limits, mailbox, inbound, "
            "content, dkim, qkd, relay, redis, metrics, jmap)",
            f"{path}: [server] hostname: '-x' is not a valid DNS name",
            f"{path}: [server] data_dir: required but missing (set it in the file or as QUTEMAIL_SERVER_DATA_DIR)",
            f"{path}: [smtp] mta_port: 'abc' is not a port number (0-65535)",
            f"{path}: [smtp] max_recipients: '0' is not a whole number >= 1",
            f"{path}: [tls]: cert is set but key is not; set both or neither",
            "environment QUTEMAIL_NOPE: unknown setting (the prefix QUTEMAIL_ is reserved for "
            "QUTEMAIL_<SECTION>_<KEY>)",
        ]
        self.assertEqual(error.problems, expected)
        self.assertEqual(str(error), "; ".join(expected))

    def test_messageExample(self) -> None:
        """
        A bad port gives the documented one-line message.
        """
        path, problems = self.problems(MINIMAL + "[smtp]\nmta_port = abc\n")
        self.assertEqual(problems, [f"{path}: [smtp] mta_port: 'abc' is not a port number (0-65535)"])

    def test_newlinesQuoted(self) -> None:
        """
        A value continued onto a second line is quoted, so the message stays
        on one line.
        """
        path, problems = self.problems(MINIMAL + "[qkd]\nsae_id = one\n  two\n")
        self.assertEqual(problems, [f"{path}: [qkd] sae_id: 'one\\ntwo' contains control characters"])

    @given(st.text(st.characters(blacklist_categories=["Cs"])))
    def test_anyFile(self, text: str) -> None:
        """
        Whatever the file holds, L{loadConfig} returns a L{Config} or raises a
        L{ConfigError} whose message is one line.
        """
        try:
            self.assertIsInstance(self.load(text), Config)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            self.assertTrue(e.problems)

    @given(st.sampled_from(ALL_KEYS), st.text(st.characters(blacklist_categories=["Cs"])))
    def test_anyValue(self, setting: tuple[str, str], value: str) -> None:
        """
        Whatever a key's value, L{loadConfig} returns a L{Config} or raises a
        L{ConfigError} whose message is one line naming the variable (or,
        for a rule across keys such as C{cert} without C{key}, the section
        and the key).
        """
        variable = f"QUTEMAIL_{setting[0].upper()}_{setting[1].upper()}"
        try:
            self.assertIsInstance(self.load(MINIMAL, {variable: value}), Config)
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            if f"environment {variable}: " not in str(e):
                # A rule across keys names the section, then both keys.
                self.assertRegex(str(e), rf"\[{setting[0]}\]: (\S+ and )?{setting[1]} ")


class EnvironmentTests(ConfigFileMixin, SynchronousTestCase):
    """
    C{QUTEMAIL_<SECTION>_<KEY>} variables override the file.
    """

    def test_override(self) -> None:
        """
        A variable overrides the file's value and the default.
        """
        config = self.load(MINIMAL + "[smtp]\nmta_port = 25\n",
                           {"QUTEMAIL_SMTP_MTA_PORT": " 2525 ", "QUTEMAIL_SMTP_SUBMISSION_PORT": "0"})
        self.assertEqual((config.smtp.mtaPort, config.smtp.submissionPort), (2525, 0))

    def test_overrideBadFileValue(self) -> None:
        """
        The value the variable overrides is not read, so a bad one in the file
        is no problem.
        """
        config = self.load(MINIMAL + "[smtp]\nmta_port = abc\n", {"QUTEMAIL_SMTP_MTA_PORT": "2525"})
        self.assertEqual(config.smtp.mtaPort, 2525)

    def test_allowVolatileVault(self) -> None:
        """
        C{[redis] allow_volatile_vault} is a yes/no key, off by default,
        that the environment can set; anything else is refused naming it.
        """
        self.assertFalse(self.load(MINIMAL).redis.allowVolatileVault)
        self.assertTrue(self.load(MINIMAL + "[redis]\nallow_volatile_vault = Yes\n").redis.allowVolatileVault)
        config = self.load(MINIMAL, {"QUTEMAIL_REDIS_ALLOW_VOLATILE_VAULT": "on"})
        self.assertTrue(config.redis.allowVolatileVault)
        path, problems = self.problems(MINIMAL + "[redis]\nallow_volatile_vault = maybe\n")
        self.assertEqual(len(problems), 1)
        self.assertIn("[redis] allow_volatile_vault", problems[0])
        self.assertIn("'maybe' is not yes or no", problems[0])

    def test_emptyOverride(self) -> None:
        """
        An empty variable sets the key to empty.
        """
        config = self.load(MINIMAL + "[redis]\nurl = redis://r.test\n", {"QUTEMAIL_REDIS_URL": ""})
        self.assertEqual(config.redis.url, "")

    def test_supplyRequired(self) -> None:
        """
        Variables can supply required keys missing from the file, even when
        its C{[server]} section is absent.
        """
        config = self.load("[smtp]\n", {
            "QUTEMAIL_SERVER_HOSTNAME": "Mail.Example.Test",
            "QUTEMAIL_SERVER_DOMAINS": "example.test",
            "QUTEMAIL_SERVER_DATA_DIR": "/srv/qutemail",
        })
        self.assertEqual(config.server, MINIMAL_SERVER)

    def test_badValue(self) -> None:
        """
        A bad value in a variable is reported naming the variable.
        """
        path, problems = self.problems(MINIMAL, {"QUTEMAIL_SMTP_MTA_PORT": "x"})
        self.assertEqual(problems, ["environment QUTEMAIL_SMTP_MTA_PORT: 'x' is not a port number (0-65535)"])

    def test_unknown(self) -> None:
        """
        A C{QUTEMAIL_} variable naming no setting is an error, even when the
        file cannot be read.
        """
        message = ("environment QUTEMAIL_SMTP_PORT: unknown setting (the prefix QUTEMAIL_ is reserved for "
                   "QUTEMAIL_<SECTION>_<KEY>)")
        path, problems = self.problems(MINIMAL, {"QUTEMAIL_SMTP_PORT": "25", "OTHER": "x"})
        self.assertEqual(problems, [message])
        path = os.path.join(self.mktemp(), "missing.ini")
        error = self.assertRaises(ConfigError, loadConfig, path, {"QUTEMAIL_SMTP_PORT": "25"})
        self.assertEqual(error.problems, [f"{path}: cannot read the file: No such file or directory", message])

    def test_ignored(self) -> None:
        """
        C{QUTEMAIL_HYPOTHESIS_PROFILE} and C{QUTEMAIL_TEST_*} belong to other
        tools and are ignored; lower-case names are not ours.
        """
        config = self.load(MINIMAL, {"QUTEMAIL_HYPOTHESIS_PROFILE": "long", "QUTEMAIL_TEST_REDIS": "x",
                                     "qutemail_smtp_mta_port": "x"})
        self.assertEqual(config.smtp.mtaPort, 25)

    def test_relativePathFromCwd(self) -> None:
        """
        A relative path in a variable is relative to the current directory,
        not to the file's.
        """
        config = self.load(MINIMAL, {"QUTEMAIL_SERVER_DATA_DIR": "state", "QUTEMAIL_DKIM_PRIVATE_KEY": "k.pem"})
        self.assertEqual((config.server.dataDir, config.dkim.privateKey),
                         (os.path.join(os.getcwd(), "state"), os.path.join(os.getcwd(), "k.pem")))

    def test_defaultsToProcessEnvironment(self) -> None:
        """
        Without an C{environ} argument, C{os.environ} is used.
        """
        self.patch(os, "environ", {"QUTEMAIL_SMTP_MTA_PORT": "2525"})
        self.assertEqual(loadConfig(self.writeConfig(MINIMAL)).smtp.mtaPort, 2525)


class ConfigClassTests(SynchronousTestCase):
    """
    The config classes check values given to them directly, so components'
    tests can build them by hand.
    """

    def test_handBuiltDefaults(self) -> None:
        """
        Every section but C{[server]} can be built with no arguments.
        """
        config = Config(path="x.ini", server=MINIMAL_SERVER)
        self.assertEqual((config.smtp.mtaPort, config.relay.queueLifetimeSeconds), (25, 432000.0))
        self.assertEqual(attrs.evolve(config.smtp, mtaPort=0).mtaPort, 0)

    def test_frozen(self) -> None:
        """
        Config objects cannot be changed in place.
        """
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, SMTPConfig(), "mtaPort", 1)

    def test_badValues(self) -> None:
        """
        Each field refuses values the loader would never produce.
        """
        bad = [
            (ServerConfig, dict(hostname="Mail.Example.Test", domains=("a.test",), dataDir="/d")),
            (ServerConfig, dict(hostname="m.test", domains=(), dataDir="/d")),
            (ServerConfig, dict(hostname="m.test", domains=("a.test", "a.test"), dataDir="/d")),
            (ServerConfig, dict(hostname="m.test", domains=["a.test"], dataDir="/d")),
            (ServerConfig, dict(hostname="m.test", domains=("a.test",), dataDir="relative")),
            (ServerConfig, dict(hostname="m.test", domains=("a.test",), dataDir="")),
            (ServerConfig, dict(hostname="m.test", domains=("a.test",), dataDir="/d", bind="localhost")),
            (SMTPConfig, dict(mtaPort=65536)),
            (SMTPConfig, dict(mtaPort="25")),
            (SMTPConfig, dict(smtpsPort=True)),
            (SMTPConfig, dict(maxMessageBytes=0)),
            (SMTPConfig, dict(maxRecipients=0)),
            (SMTPConfig, dict(idleTimeoutSeconds=0)),
            (SMTPConfig, dict(idleTimeoutSeconds=float("inf"))),
            (IMAPConfig, dict(port=-1)),
            (POP3Config, dict(tlsPort=70000)),
            (TLSConfig, dict(cert="/c", key="")),
            (TLSConfig, dict(cert="c.pem", key="k.pem")),
            (LimitsConfig, dict(connectionsPerIp=-1)),
            (LimitsConfig, dict(maxSessions=-1)),
            (MailboxConfig, dict(defaultQuotaBytes=0)),
            (MailboxConfig, dict(retentionDays=-1)),
            (DKIMConfig, dict(selector="a.b")),
            (DKIMConfig, dict(selector="Mail")),
            (QKDConfig, dict(kmeUrl="http://kme.test")),
            (QKDConfig, dict(saeId="a\nb")),
            (QKDConfig, dict(caCert="ca.pem")),
            (RelayConfig, dict(smarthost="::1")),
            (RelayConfig, dict(nameservers=(("dns.test", 53),))),
            (RelayConfig, dict(nameservers=(("192.0.2.1", 0),))),
            (RelayConfig, dict(nameservers=(("2001:0db8::1", 53),))),
            (RelayConfig, dict(nameservers=("192.0.2.1",))),
            (RelayConfig, dict(retrySchedule=())),
            (RelayConfig, dict(retrySchedule=(60.0, -1.0))),
            (RelayConfig, dict(queueLifetimeSeconds=0.0)),
            (RelayConfig, dict(requireVerifiedTls=("*.test",))),
            (RedisConfig, dict(url="http://r.test")),
        ]
        for cls, kwargs in bad:
            self.assertRaises(ValueError, cls, **kwargs)

    def test_goodValues(self) -> None:
        """
        Values in the loader's normal form are accepted.
        """
        relay = RelayConfig(smarthost="[::1]:25", nameservers=(("2001:db8::1", 53), ("192.0.2.1", 5353)),
                            retrySchedule=(60, 0.5), requireVerifiedTls=("*", "bank.test"))
        self.assertEqual(relay.nameservers[0], ("2001:db8::1", 53))
        self.assertEqual(QKDConfig(kmeUrl="https://kme.test", caCert="/ca.pem").caCert, "/ca.pem")
        self.assertEqual(RedisConfig(url="unix:///run/redis.sock").url, "unix:///run/redis.sock")

    def test_sectionTypes(self) -> None:
        """
        L{Config} refuses a section of the wrong class.
        """
        self.assertRaises(TypeError, Config, path="x.ini", server=MINIMAL_SERVER, smtp=IMAPConfig())


class WorkersTests(ConfigFileMixin, SynchronousTestCase):
    """
    C{[server] workers}, a key QutEmail adds to the contract.
    """

    def test_default(self) -> None:
        """
        Without the key there is one SMTP process.
        """
        self.assertEqual(loadConfig(self.writeConfig(MINIMAL), {}).server.workers, 1)

    def test_value(self) -> None:
        """
        A whole number from 1 to 64 is taken, from the file or the
        environment.
        """
        path = self.writeConfig(MINIMAL.replace("[server]\n", "[server]\nworkers = 4\n"))
        self.assertEqual(loadConfig(path, {}).server.workers, 4)
        self.assertEqual(loadConfig(path, {"QUTEMAIL_SERVER_WORKERS": "2"}).server.workers, 2)

    def test_badValues(self) -> None:
        """
        Zero, more than 64 and non-numbers stop the load with a line naming
        the key.
        """
        for value, reason in [("0", "'0' is not a whole number >= 1"),
                              ("65", "'65' is more than 64"),
                              ("two", "'two' is not a whole number >= 1")]:
            path = self.writeConfig(MINIMAL.replace("[server]\n", f"[server]\nworkers = {value}\n"))
            error = self.assertRaises(ConfigError, loadConfig, path, {})
            self.assertEqual(str(error), f"{path}: [server] workers: {reason}")


class PeersTests(ConfigFileMixin, SynchronousTestCase):
    """
    C{[qkd] peers} and C{peer_policy} (issue 13).
    """

    def test_default(self) -> None:
        """
        No peers, and the policy is C{require}.
        """
        config = self.load(MINIMAL)
        self.assertEqual((config.qkd.peers, config.qkd.peerPolicy), ((), "require"))

    def test_value(self) -> None:
        """
        C{domain=SAE_ID} pairs, domains in lower case, SAE ids as given.
        """
        config = self.load(MINIMAL + "[qkd]\npeers = Branch.Example=sae-Branch, hq.example = SAE-1\n"
                                     "peer_policy = Prefer\n")
        self.assertEqual(config.qkd.peers, (("branch.example", "sae-Branch"), ("hq.example", "SAE-1")))
        self.assertEqual(config.qkd.peerPolicy, "prefer")

    def test_badValues(self) -> None:
        """
        A pair without C{=}, an SAE id with a space, a domain named twice, a
        bad domain, and an unknown policy each stop the start naming the key.
        """
        self.assertBad("qkd", "peers", "branch.example", "'branch.example' is not domain=SAE_ID")
        self.assertBad("qkd", "peers", "branch.example=sae b",
                       "'sae b' is not an SAE id (1 to 128 printable characters, no spaces)")
        self.assertBad("qkd", "peers", "b.example=x, B.example=y", "'b.example' is named twice")
        path, problems = self.problems(self.withValue("qkd", "peers", "not a domain=x"))
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"{path}: [qkd] peers: "), problems)
        self.assertBad("qkd", "peer_policy", "maybe", "'maybe' is not one of require, prefer")

    def test_rulesAcrossSections(self) -> None:
        """
        A peer domain that is ours, extra workers, or encryption off: each
        is one problem naming C{[qkd] peers}.
        """
        path, problems = self.problems(MINIMAL + "[qkd]\npeers = example.test=x\n")
        self.assertEqual(problems, [f"{path}: [qkd] peers: example.test is one of our own [server] domains"])
        path, problems = self.problems(MINIMAL + "workers = 2\n[qkd]\npeers = b.example=x\n")
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"{path}: [qkd] peers: needs [server] workers = 1"), problems)
        path, problems = self.problems(MINIMAL + "[qkd]\nencrypt = no\npeers = b.example=x\n")
        self.assertEqual(problems, [f"{path}: [qkd] peers: needs [qkd] encrypt = yes"])
