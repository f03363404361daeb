# -*- test-case-name: tests.test_cli -*-
"""
The C{qutemail} administration command::

    qutemail --config PATH user add ADDRESS [--password-stdin]
    qutemail --config PATH user passwd ADDRESS [--password-stdin]
    qutemail --config PATH user del ADDRESS
    qutemail --config PATH user list
    qutemail --config PATH user quota ADDRESS SIZE|default
    qutemail --config PATH user import [--file PATH]
    qutemail --config PATH queue list
    qutemail --config PATH queue show ID
    qutemail --config PATH queue flush
    qutemail --config PATH queue delete ID
    qutemail --config PATH queue bounce ID
    qutemail --config PATH dkim keygen [--domain D] [--algorithm rsa|ed25519] [--bits N] [--force]
    qutemail --config PATH dns-records [--domain D]
    qutemail --config PATH status
    qutemail --config PATH content check FILE [--from A] [--rcpt A ...] [--ip IP] [--helo NAME] [--user A]
    qutemail --config PATH mail list ADDRESS
    qutemail --config PATH mail show ADDRESS ID
    qutemail --config PATH qkd status [--peer SAE]
    qutemail --config PATH kme [--port N] [--sae ID ...] [--kme-id ID] [--directory D] [--link-sae ID ...]
    qutemail --config PATH dkim keygen [--domain D] [--algorithm rsa|ed25519] [--bits N] [--force]
    qutemail --config PATH dns-records [--domain D]

Without C{--config}, the file named by the environment variable
C{QUTEMAIL_CONFIG} is used.

The tool works on the files under C{data_dir} directly, while the server may
be running: the server notices changes to the user file by itself.  The
queue commands that need the server (C{flush}, C{bounce}, and C{delete}
while it runs) ask it over its control socket; they and the DKIM and DNS
commands live in L{qutemail.cliqueue}.  No reactor runs here: the backends get an inline runner and a clock that never
moves, so every Deferred they return has already fired.

Expected failures (a bad address, an unknown user, a bad configuration)
print one line, C{qutemail: <reason>}, on standard error and exit with
status 1; usage errors exit with status 2, as argparse does.

Each command group is added to the parser by one function in
L{COMMAND_GROUPS}; a command is a function C{(context, arguments) -> int}
set as the C{run} default of its subparser.
"""

import argparse
import getpass
import os
import sys
from typing import Any, Callable, Sequence, TextIO

import attrs
from twisted.internet.task import Clock

from qutemail.address import AddressInvalid, parseAccountAddress
from qutemail.backends.userfile import UserFileError
from qutemail.backends.userrecords import parseUserFile
from qutemail.assembly import Backends, ServiceConfigError, buildBackends
from qutemail.blocking import InlineRunner, wait
from qutemail.clicontent import addContentCommands
from qutemail.clistatus import addStatusCommands
from qutemail.climail import addMailCommands, addQKDCommands, addRetentionCommands
from qutemail.cliqueue import CommandError, addDKIMCommands, addDNSCommands, addQueueCommands
from qutemail.config import Config, ConfigError, loadConfig
from qutemail.configvalues import formatSize, parseSize
from qutemail.interfaces import NoSuchUser, UserDirectoryUnavailable, UserExists
from qutemail.queue.control import ControlError
from qutemail.store.mailbox import mailboxPath, readUsage

PROG = "qutemail"
CONFIG_ENVIRONMENT = "QUTEMAIL_CONFIG"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


@attrs.define
class Context:
    """
    What every command works with.

    @ivar config: the loaded configuration.
    @ivar stdin: where passwords are read from.
    @ivar stdout: where results go.
    @ivar stderr: where notes go.
    """

    config: Config
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO

    def backends(self) -> Backends:
        """
        @return: the configuration's backends, as the server builds them,
            for use without a reactor.
        """
        return buildBackends(self.config, InlineRunner(), Clock())

    def userDirectory(self) -> Any:
        """
        @return: the user directory.
        """
        return self.backends().users


def _address(context: Context, text: str, localDomain: bool = True) -> str:
    """
    Validate and normalise an address from the command line.

    @param localDomain: whether its domain must be one of C{[server] domains}.
    @return: the normal form.
    @raise AddressInvalid: it is not valid.
    """
    domains = context.config.server.domains if localDomain else None
    return str(parseAccountAddress(text, domains))


def _readPassword(context: Context, fromStdin: bool) -> bytes:
    """
    Read a new password: the first line of standard input, or typed twice
    at a prompt.

    @param fromStdin: whether C{--password-stdin} was given.
    @return: the password, UTF-8 encoded.
    @raise CommandError: no password could be read, or it is empty.
    """
    if fromStdin:
        line = context.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    elif context.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the passwords do not match")
    else:
        raise CommandError("standard input is not a terminal: give the password with --password-stdin")
    if not password:
        raise CommandError("empty password refused")
    return password.encode("utf-8")


def _userAdd(context: Context, arguments: argparse.Namespace) -> int:
    """
    C{user add ADDRESS [--password-stdin]}: create an account.
    """
    address = _address(context, arguments.address)
    password = _readPassword(context, arguments.password_stdin)
    wait(context.userDirectory().addUser(address, password))
    print(f"added {address}", file=context.stdout)
    return EXIT_OK


def _userPasswd(context: Context, arguments: argparse.Namespace) -> int:
    """
    C{user passwd ADDRESS [--password-stdin]}: replace a password.
    """
    address = _address(context, arguments.address, localDomain=False)
    directory = context.userDirectory()
    # Refuse an unknown user before asking for a password.
    if wait(directory.getAccount(address)) is None:
        raise NoSuchUser(address)
    wait(directory.setPassword(address, _readPassword(context, arguments.password_stdin)))
    print(f"changed the password of {address}", file=context.stdout)
    return EXIT_OK


def _userDel(context: Context, arguments: argparse.Namespace) -> int:
    """
    C{user del ADDRESS}: delete an account, keeping its mailbox.
    """
    address = _address(context, arguments.address, localDomain=False)
    wait(context.userDirectory().removeUser(address))
    mailbox = mailboxPath(context.config.server.dataDir, address)
    print(f"removed {address} (its mailbox {mailbox} is kept)", file=context.stdout)
    return EXIT_OK


def _describeQuota(quotaBytes: int | None, defaultBytes: int) -> str:
    """
    @return: a quota for C{user list}: C{5G}, or C{5G (default)}.
    """
    if quotaBytes is None:
        return f"{formatSize(defaultBytes)} (default)"
    return formatSize(quotaBytes)


def _userList(context: Context, arguments: argparse.Namespace) -> int:
    """
    C{user list}: one line per account with its quota and mailbox usage.
    """
    accounts = wait(context.userDirectory().listAccounts())
    if not accounts:
        print("no users", file=context.stderr)
        return EXIT_OK
    dataDir = context.config.server.dataDir
    width = max(len(account.address) for account in accounts)
    for account in accounts:
        try:
            usedBytes, messages = readUsage(mailboxPath(dataDir, account.address))
        except OSError as e:
            raise CommandError(f"cannot read the usage of {account.address}: {e.strerror or e}") from None
        quota = _describeQuota(account.quotaBytes, context.config.mailbox.defaultQuotaBytes)
        noun = "message" if messages == 1 else "messages"
        print(
            f"{account.address:<{width}}  quota={quota}  used={usedBytes} ({messages} {noun})",
            file=context.stdout,
        )
    return EXIT_OK


def _userImport(context: Context, arguments: argparse.Namespace) -> int:
    """
    C{user import [--file PATH]}: copy the accounts of a users file into
    the Redis directory, password hashes as they are.  Accounts Redis has
    already are left alone, so running it again changes nothing.
    """
    config = context.config
    if not config.redis.url:
        raise CommandError("[redis] url is not set: there is no Redis directory to import into")
    path = arguments.file or os.path.join(config.server.dataDir, "users")
    try:
        with open(path, "rb") as f:
            records = parseUserFile(path, f.read())
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror or e}") from None
    directory = context.userDirectory()
    added = sum(bool(wait(directory.importRecord(address, record.passwordHash, record.quotaBytes)))
                for address, record in sorted(records.items()))
    print(f"imported {added} of {len(records)} accounts from {path} ({len(records) - added} were in Redis already)",
          file=context.stdout)
    return EXIT_OK


def _userQuota(context: Context, arguments: argparse.Namespace) -> int:
    """
    C{user quota ADDRESS SIZE|default}: set or reset a mailbox quota.
    """
    address = _address(context, arguments.address, localDomain=False)
    if arguments.size.strip().lower() == "default":
        quotaBytes = None
    else:
        try:
            quotaBytes = parseSize(arguments.size)
        except ValueError as e:
            raise CommandError(f"bad size: {e}") from None
        if quotaBytes == 0:
            raise CommandError("bad size: a quota must be greater than zero")
    wait(context.userDirectory().setQuota(address, quotaBytes))
    described = _describeQuota(quotaBytes, context.config.mailbox.defaultQuotaBytes)
    print(f"quota of {address}: {described}", file=context.stdout)
    return EXIT_OK


def _addPasswordOption(parser: argparse.ArgumentParser) -> None:
    """
    Add C{--password-stdin} to a command that sets a password.
    """
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (default: prompt on a terminal)",
    )


def addUserCommands(commands: Any) -> None:
    """
    Add the C{user} command group.

    @param commands: the top-level subparsers.
    """
    user = commands.add_parser("user", help="manage local accounts")
    actions = user.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="create an account")
    add.add_argument("address", metavar="ADDRESS")
    _addPasswordOption(add)
    add.set_defaults(run=_userAdd)

    passwd = actions.add_parser("passwd", help="change an account's password")
    passwd.add_argument("address", metavar="ADDRESS")
    _addPasswordOption(passwd)
    passwd.set_defaults(run=_userPasswd)

    remove = actions.add_parser("del", help="delete an account (its mailbox is kept)")
    remove.add_argument("address", metavar="ADDRESS")
    remove.set_defaults(run=_userDel)

    listing = actions.add_parser("list", help="list accounts with their quota and usage")
    listing.set_defaults(run=_userList)

    imported = actions.add_parser("import", help="copy a users file into the Redis directory ([redis] url)")
    imported.add_argument("--file", metavar="PATH", help="the users file (default: data_dir/users)")
    imported.set_defaults(run=_userImport)

    quota = actions.add_parser("quota", help="set an account's mailbox quota")
    quota.add_argument("address", metavar="ADDRESS")
    quota.add_argument("size", metavar="SIZE", help="a size such as 500M or 5G, or 'default'")
    quota.set_defaults(run=_userQuota)


# Each adds one command group to the top-level subparsers.
COMMAND_GROUPS: tuple[Callable[[Any], None], ...] = (
    addUserCommands, addQueueCommands, addDKIMCommands, addDNSCommands, addMailCommands, addQKDCommands,
    addRetentionCommands, addContentCommands, addStatusCommands,
)


def buildParser() -> argparse.ArgumentParser:
    """
    @return: the parser of the whole command line.
    """
    parser = argparse.ArgumentParser(prog=PROG, description="Administer a QutEmail server.")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"the configuration file (default: the environment variable {CONFIG_ENVIRONMENT})",
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for addGroup in COMMAND_GROUPS:
        addGroup(commands)
    return parser


def _loadConfig(path: str) -> Config:
    """
    Load the configuration.  C{QUTEMAIL_CONFIG} names the file, not a
    setting, so it is hidden from L{loadConfig}, which refuses unknown
    C{QUTEMAIL_} variables.

    @raise ConfigError: it cannot be used.
    """
    environ = {name: value for name, value in os.environ.items() if name != CONFIG_ENVIRONMENT}
    return loadConfig(path, environ)


def _describe(error: Exception) -> str:
    """
    @return: the one-line message for an expected failure.
    """
    if isinstance(error, UserExists):
        return f"user {error} already exists"
    if isinstance(error, NoSuchUser):
        return f"no such user {error}"
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one command.

    @param argv: the arguments, without the program name; C{sys.argv[1:]}
        when C{None}.
    @return: the exit status: 0 on success, 1 when the command failed,
        2 for a usage error.
    """
    parser = buildParser()
    try:
        arguments = parser.parse_args(argv)
        path = arguments.config or os.environ.get(CONFIG_ENVIRONMENT)
        if not path:
            parser.error(f"--config is required (or set {CONFIG_ENVIRONMENT})")
    except SystemExit as e:
        if e.code is None:
            return EXIT_OK
        return e.code if isinstance(e.code, int) else EXIT_FAILURE
    try:
        context = Context(_loadConfig(path), sys.stdin, sys.stdout, sys.stderr)
        return arguments.run(context, arguments)
    except (CommandError, ControlError, ConfigError, AddressInvalid, UserExists, NoSuchUser, UserFileError,
            UserDirectoryUnavailable, ServiceConfigError) as e:
        message = " ".join(_describe(e).splitlines())
        print(f"{PROG}: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
