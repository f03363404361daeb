# -*- test-case-name: tests.test_climail -*-
"""
The C{qutemail} commands that read a mailbox as its owner does (see
L{qutemail.cli} for the command line as a whole)::

    qutemail --config PATH mail list ADDRESS
    qutemail --config PATH mail show ADDRESS ID
    qutemail --config PATH qkd status [--peer SAE]
    qutemail --config PATH kme [--port N] [--sae ID ...] [--kme-id ID] [--directory D]
                             [--link-sae ID ... --link-port N]

C{mail list} prints one message a line, its ID first.  C{mail show} prints
the message exactly as it was delivered (internal mail decrypted with its
key from the vault), or refuses in one line when the key is gone or the
stored data fails authentication.  Both only read files, so they work
whether or not the server runs.
"""

import argparse
import datetime
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults

from qutemail.address import AddressInvalid, parseAccountAddress
from qutemail.blocking import InlineRunner, wait
from qutemail.cliqueue import CommandError, _copyBody
from qutemail.policy.keypool import poolClosed
from qutemail.qkd.certs import ensureHostCertificate, pkiPaths
from qutemail.qkd.cipher import DecryptionError, readEnvelope
from qutemail.qkd.vault import KeyVaultError
from qutemail.store.retention import RetentionSweep
from qutemail.store.reader import MessageUnreadable, listMessages, readMessage
from qutemail.stopsignals import installWhenRunning


def _account(context: Any, text: str) -> str:
    """
    @return: the normalised address of an account in one of our domains.
    """
    try:
        return str(parseAccountAddress(text, context.config.server.domains))
    except AddressInvalid as e:
        raise CommandError(str(e)) from None


def _vault(context: Any) -> Any:
    """
    @return: the server's key vault (in Redis when C{[redis] url} is set),
        read without a reactor.
    """
    return context.backends().vault


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

    address = _account(context, arguments.address)
    found = [m for m in listMessages(context.config.server.dataDir, address) if m.id == arguments.message_id]
    if not found:
        raise CommandError(f"no message {arguments.message_id} for {address}")
    try:
        body, _ = wait(ensureDeferred(readMessage(found[0].path, _vault(context), InlineRunner())))
    except (MessageUnreadable, KeyVaultError) as e:
        raise CommandError(str(e)) from None
    with body:
        _copyBody(body, context.stdout)
    return 0


class _WallClock:
    """
    The time for a sweep run from the command line.
    """

    def seconds(self) -> float:
        """
        @return: the current POSIX time.
        """
        return time.time()


def _retentionRun(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{retention run [--dry-run]}: one retention sweep now, as the server
    runs every hour; each message removed (or, with C{--dry-run}, that
    would be) on a line, then a summary.
    """

    days = context.config.mailbox.retentionDays
    if not days:
        print("retention_days is 0: mail is kept for ever, nothing to do", file=context.stdout)
        return 0
    sweep = RetentionSweep(context.config.server.dataDir, days, _vault(context), InlineRunner(), _WallClock())
    expired = wait(sweep.run(dryRun=arguments.dry_run))
    for item in expired:
        when = datetime.datetime.fromtimestamp(item.deliveredAt, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        name = os.path.basename(item.path).partition(":")[0]
        print(f"{item.address}  {item.folder}  {name}  {when}  {item.sizeBytes}", file=context.stdout)
    verb = "would remove" if arguments.dry_run else "removed"
    total = sum(item.sizeBytes for item in expired)
    print(f"{verb} {len(expired)} messages, {total} bytes, older than {days} days", file=context.stdout)
    return 0


def addRetentionCommands(commands: Any) -> None:
    """
    Add the C{retention} command group.

    @param commands: the top-level subparsers.
    """
    retention = commands.add_parser("retention", help="remove mail older than [mailbox] retention_days")
    actions = retention.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="sweep every mailbox once now")
    run.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    run.set_defaults(run=_retentionRun)


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


def _kmeEndpoint(context: Any) -> tuple[str, str, str, str, str]:
    """
    Where the KME is and how to reach it: the configured one, or the
    embedded one of the running server.

    @return: base URL, our SAE id, client certificate, client key, CA.
    """
    config = context.config
    qkd = config.qkd
    saeId = qkd.saeId or config.server.hostname
    if qkd.kmeUrl:
        return qkd.kmeUrl.rstrip("/"), saeId, qkd.clientCert, qkd.clientKey, qkd.caCert
    directory = os.path.join(config.server.dataDir, "keys", "qkd")
    try:
        with open(os.path.join(directory, "kme-url"), encoding="ascii") as f:
            url = f.read().strip()
    except OSError:
        raise CommandError("the embedded KME's address is unknown: is the server running?") from None
    paths = pkiPaths(directory, [saeId])
    client = paths.client(saeId)
    return url, saeId, client.certPath, client.keyPath, paths.ca.certPath


def _statusOf(url: str, peer: str, tls: ssl.SSLContext) -> dict:
    """
    One ETSI GS QKD 014 "Get status" request.

    @raise CommandError: the KME is unreachable (stops the command).
    @raise urllib.error.HTTPError: it answered with an error (one link).
    """
    request = urllib.request.Request(f"{url}/api/v1/keys/{urllib.parse.quote(peer, safe='')}/status")
    try:
        with urllib.request.urlopen(request, context=tls, timeout=10) as response:
            return json.loads(response.read(65536))
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise CommandError(f"the KME at {url} is unreachable: {reason}") from None


def _qkdStatus(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{qkd status}: ask the KME (ETSI GS QKD 014 "Get status") about every
    link we use (keys at rest, and each peer site of C{[qkd] peers}), or
    only the one C{--peer} names, and print what it says.

    @return: 0, or 1 when the KME refused to say for some link.
    """
    url, saeId, cert, key, ca = _kmeEndpoint(context)
    qkd = context.config.qkd
    if arguments.peer:
        links = [(arguments.peer, "")]
    else:
        links = [(qkd.restSae or saeId, "")]
        for domain, sae in qkd.peers:
            links.append((sae, domain))
    tls = ssl.create_default_context(cafile=ca)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        tls.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise CommandError(f"cannot load the client certificate {cert}: {e}") from None
    lines, code, seen = [f"KME {url}: reachable"], 0, set()
    for peer, domain in links:
        if (peer, domain) in seen:
            continue
        seen.add((peer, domain))
        try:
            status = _statusOf(url, peer, tls)
        except urllib.error.HTTPError as e:
            lines.append(f"link to SAE {peer}{f' ({domain})' if domain else ''}: "
                         f"the KME answered {e.code} {e.reason}")
            code = 1
            continue
        lines.append(f"link to SAE {peer} ({f'peer site {domain}' if domain else 'keys at rest'}):")
        for field in ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
                      "stored_key_count", "max_key_count", "max_key_per_request", "min_key_size", "max_key_size"):
            lines.append(f"{field}: {status.get(field, '?')}")
        if qkd.minPoolKeys:
            closed = poolClosed(status.get("stored_key_count"), qkd.minPoolKeys)
            lines.append(f"{f'mail to {domain}' if domain else 'internal mail'}: "
                         f"{'refused (452 4.3.1)' if closed else 'admitted'}, min_pool_keys {qkd.minPoolKeys}")
    print("\n".join(lines), file=context.stdout)
    return code


def _kme(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{kme}: run an ETSI GS QKD 014 KME on its own (for sites and tests)
    until interrupted; with C{--link-sae}, a second KME on the same
    simulated QKD link, for a peer site.
    """
    from twisted.internet import reactor

    from qutemail.qkd.kme import buildStandaloneKME
    from qutemail.qkd.kmecore import PoolSettings, QKDLink

    directory = arguments.directory or os.path.join(context.config.server.dataDir, "keys", "kme")
    saeIds = arguments.sae or [context.config.qkd.saeId or context.config.server.hostname]
    settings = PoolSettings(maxKeyCount=arguments.pool_keys, refillKeysPerSecond=float(arguments.refill))
    link = QKDLink(settings)
    wanted = [(arguments.kme_id, saeIds, arguments.port)]
    if arguments.link_sae:
        if set(arguments.link_sae) & set(saeIds):
            raise CommandError("an SAE cannot be served by both KMEs of a link")
        if arguments.link_port == arguments.port:
            raise CommandError("--link-port must differ from --port")
        wanted.append((arguments.link_kme_id, arguments.link_sae, arguments.link_port))
    try:
        services = [buildStandaloneKME(reactor, directory, kmeId, saes, port=port, link=link)
                    for kmeId, saes, port in wanted]
    except ValueError as e:
        raise CommandError(str(e)) from None

    hosts = []
    for hostname in arguments.tls_host or ():
        try:
            hosts.append((hostname, ensureHostCertificate(services[0].pki, hostname, datetime.datetime.now(
                datetime.timezone.utc))))
        except ValueError as e:
            raise CommandError(f"--tls-host {hostname}: {e}") from None

    def listening(urls: list) -> None:
        for hostname, paths in hosts:
            print(f"TLS {hostname}: {paths.certPath} {paths.keyPath}", file=context.stdout)
        for (kmeId, saes, _), service, url in zip(wanted, services, urls):
            print(f"KME {kmeId} listening at {url}", file=context.stdout)
            print(f"CA certificate: {service.pki.ca.certPath}", file=context.stdout)
            for saeId in saes:
                client = service.pki.client(saeId)
                print(f"SAE {saeId}: {client.certPath} {client.keyPath}", file=context.stdout)
        context.stdout.flush()

    def failed(failure: Any) -> None:
        print(f"qutemail: the KME cannot listen: {failure.getErrorMessage()}", file=context.stderr)
        reactor.stop()

    def start() -> None:
        for service in services:
            service.startService()
        gatherResults([service.whenListening() for service in services], consumeErrors=True).addCallbacks(
            listening, lambda failure: failed(failure.value.subFailure))

    reactor.callWhenRunning(start)
    # SIGTERM and Ctrl-C stop it without logging inside the handler.
    installWhenRunning(reactor)
    for service in services:
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def addQKDCommands(commands: Any) -> None:
    """
    Add the C{qkd} and C{kme} commands.

    @param commands: the top-level subparsers.
    """
    qkd = commands.add_parser("qkd", help="the QKD link")
    actions = qkd.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="ask the KME for the link's status")
    status.add_argument("--peer", metavar="SAE", help="the slave SAE (default: our own)")
    status.set_defaults(run=_qkdStatus)
    kme = commands.add_parser("kme", help="run a KME (ETSI GS QKD 014) on its own")
    kme.add_argument("--port", type=int, default=8443, help="TCP port on 127.0.0.1 (default 8443)")
    kme.add_argument("--sae", action="append", metavar="ID", help="an SAE it serves (repeatable)")
    kme.add_argument("--kme-id", default="qutemail-kme", help="its KME id")
    kme.add_argument("--directory", help="its certificates (default data_dir/keys/kme)")
    kme.add_argument("--pool-keys", type=int, default=10000, help="pool size in keys")
    kme.add_argument("--refill", type=int, default=1000, help="keys gained per second")
    kme.add_argument("--link-sae", action="append", metavar="ID",
                     help="an SAE of a peer site, served by a second KME on the same simulated QKD link "
                          "(repeatable)")
    kme.add_argument("--link-port", type=int, default=8444, help="the second KME's port (default 8444)")
    kme.add_argument("--link-kme-id", default="qutemail-kme-link", help="the second KME's id")
    kme.add_argument("--tls-host", action="append", metavar="NAME",
                     help="also issue a TLS server certificate from this CA for a mail host named NAME "
                          "(and localhost), for sites on one machine (repeatable)")
    kme.set_defaults(run=_kme)
