"""
Tests for L{qutemail.config}: QUTEMAIL_* environment overrides, the
configuration classes, [server] workers and [qkd] peers.
"""

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from qutemail.config import (
    Config,
    ConfigError,
    DKIMConfig,
    IMAPConfig,
    LimitsConfig,
    MailboxConfig,
    POP3Config,
    QKDConfig,
    RedisConfig,
    RelayConfig,
    ServerConfig,
    SMTPConfig,
    TLSConfig,
    loadConfig,
)

from tests.test_config import MINIMAL, MINIMAL_SERVER, ConfigFileMixin


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
