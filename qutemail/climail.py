# -*- test-case-name: tests.test_climail -*-
"""
The C{qutemail} commands that read a mailbox as its owner does (see
L{qutemail.cli} for the command line as a whole)::

    qutemail --config PATH mail list ADDRESS
    qutemail --config PATH mail show ADDRESS ID

C{mail list} prints one message a line, its ID first.  C{mail show} prints
the message exactly as it was delivered (internal mail decrypted with its
key from the vault), or refuses in one line when the key is gone or the
stored data fails authentication.  Both only read files, so they work
whether or not the server runs.
"""

import argparse
import datetime
import os
from typing import Any

from twisted.internet.defer import ensureDeferred

from qutemail.address import AddressInvalid, parseAccountAddress
from qutemail.blocking import InlineRunner
from qutemail.cliqueue import CommandError, _copyBody
from qutemail.qkd.cipher import DecryptionError, readEnvelope
from qutemail.qkd.vault import FileKeyVault
from qutemail.store.reader import MessageUnreadable, listMessages, readMessage


def _account(context: Any, text: str) -> str:
    """
    @return: the normalised address of an account in one of our domains.
    """
    try:
        return str(parseAccountAddress(text, context.config.server.domains))
    except AddressInvalid as e:
        raise CommandError(str(e)) from None


def _vault(context: Any) -> FileKeyVault:
    """
    @return: the server's key vault, read with an inline runner.
    """
    keys = os.path.join(context.config.server.dataDir, "keys")
    return FileKeyVault(os.path.join(keys, "vault"), os.path.join(keys, "master.key"), InlineRunner())


def _isEncrypted(path: str) -> bool:
    """
    @return: whether a stored file is in our encrypted format.
    """
    try:
        with open(path, "rb") as f:
            readEnvelope(f)
    except (DecryptionError, OSError):
        return False
    return True


def _mailList(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{mail list ADDRESS}: ID, delivery time (UTC), stored size, and
    whether the message is stored encrypted.
    """
    address = _account(context, arguments.address)
    messages = listMessages(context.config.server.dataDir, address)
    if not messages:
        print(f"no messages for {address}", file=context.stdout)
        return 0
    for message in messages:
        when = datetime.datetime.fromtimestamp(message.mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        kind = "encrypted" if _isEncrypted(message.path) else "plain"
        print(f"{message.id}  {when}  {message.size}  {kind}", file=context.stdout)
    return 0


def _mailShow(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{mail show ADDRESS ID}: the message's bytes on standard output.
    """
    from qutemail.cli import wait

    address = _account(context, arguments.address)
    found = [m for m in listMessages(context.config.server.dataDir, address) if m.id == arguments.message_id]
    if not found:
        raise CommandError(f"no message {arguments.message_id} for {address}")
    try:
        body, _ = wait(ensureDeferred(readMessage(found[0].path, _vault(context), InlineRunner())))
    except MessageUnreadable as e:
        raise CommandError(str(e)) from None
    with body:
        _copyBody(body, context.stdout)
    return 0


def addMailCommands(commands: Any) -> None:
    """
    Add the C{mail} command group.

    @param commands: the top-level subparsers.
    """
    mail = commands.add_parser("mail", help="read a mailbox as its owner")
    actions = mail.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list an account's messages, ID first")
    listing.add_argument("address", metavar="ADDRESS")
    listing.set_defaults(run=_mailList)
    show = actions.add_parser("show", help="print a message as delivered, decrypted if internal")
    show.add_argument("address", metavar="ADDRESS")
    show.add_argument("message_id", metavar="ID")
    show.set_defaults(run=_mailShow)
