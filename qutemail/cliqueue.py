# -*- test-case-name: tests.test_cli -*-
"""
The C{qutemail} commands for the queue, DKIM and DNS (see L{qutemail.cli}
for the command line as a whole)::

    qutemail --config PATH queue list
    qutemail --config PATH queue show ID
    qutemail --config PATH queue flush
    qutemail --config PATH queue delete ID
    qutemail --config PATH queue bounce ID
    qutemail --config PATH queue adopt DIR
    qutemail --config PATH dkim keygen [--domain D] [--algorithm rsa|ed25519] [--bits N] [--force]
    qutemail --config PATH dns-records [--domain D]

C{queue list} and C{queue show} only read the queue's files, so they work
whether or not the server runs.  C{queue flush}, C{queue delete} and C{queue
bounce} ask the running server over its control socket (see
L{qutemail.queue.control}); with no server running, C{queue delete} removes
the entry's files itself and the other two say the server must run.  C{queue
adopt DIR} asks this node's running server to take in the queue of a
stopped node whose C{data_dir} is C{DIR} (see L{qutemail.queue.adopt}).

Each command is a function C{(context, arguments) -> int}, C{context} being
a L{qutemail.cli.Context}; each group is added by one C{add...Commands}
function that L{qutemail.cli} lists in its C{COMMAND_GROUPS}.

L{CommandError} is defined here rather than in L{qutemail.cli}, which
imports this module: under C{python -m qutemail.cli} that module runs as
C{__main__}, so a class imported back from it would not be the one its
C{main} catches.
"""

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import time
from typing import Any, BinaryIO, TextIO

from qutemail.backends.redisusers import blockingCaller
from qutemail.blocking import wait
from qutemail.durable import removeFile, replaceFile, syncDirectory
from qutemail.pipeline.dkim import (
    DEFAULT_TTL,
    MIN_RSA_BITS,
    defaultKeyPath,
    dnsRecords,
    generateKey,
    publicTXTValue,
    readKeyFile,
    txtRecord,
)
from qutemail.message import SpooledMessage
from qutemail.stspolicy import stsRecords
from qutemail.queue.control import (
    DEFAULT_TIMEOUT_SECONDS, QUEUE_ID, ControlError, ServerNotRunning, controlPath, sendCommand,
)
from qutemail.message import DEFERRED, PENDING, RecipientState
from qutemail.qkd.vault import KeyVaultError
from qutemail.queue.journal import unfinished
from qutemail.queue.nodes import NODE_PREFIX, queueSummary
from qutemail.queue.sealedbody import SealedBodyError

DEFAULT_RSA_BITS = 2048
# RFC 8301 §3.2: verifiers need only handle RSA keys up to 4096 bits.
MAX_RSA_BITS = 4096
_CHUNK_BYTES = 64 * 1024


class CommandError(Exception):
    """
    A command cannot be carried out; C{str()} is the one-line reason.
    """


def _age(seconds: float) -> str:
    """
    @return: a short human duration, e.g. C{3m}, C{2h5m}, C{1d4h}.
    """
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def _queueDir(context: Any) -> str:
    """
    @return: C{data_dir/queue}.
    """
    return os.path.join(context.config.server.dataDir, "queue")


def _inFlight(queueDir: str) -> list[SpooledMessage]:
    """
    @return: the messages in every worker's journal not yet routed (the
        server is working on them, or stopped before it did).
    """
    found = []
    if os.path.isdir(queueDir):
        for name in sorted(os.listdir(queueDir)):
            if name == "journal" or name.startswith("journal-"):
                found += unfinished(os.path.join(queueDir, name))
    return found


def _queueList(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{queue list}: like C{mailq}, one block per message: id, age, size,
    sender, then each recipient with its state and last reply.
    """
    if getattr(arguments, "all", False):
        return _queueListAll(context)
    now = time.time()
    queueDir = _queueDir(context)
    entries = context.backends().queue.snapshot()
    inFlight = _inFlight(queueDir)
    if not entries and not inFlight:
        print("queue is empty", file=context.stdout)
        return 0
    out = context.stdout
    for message in inFlight:
        envelope = message.envelope
        print(f"{message.queueId}  {_age(now - envelope.receivedAt)}  {message.size}  <{envelope.sender}>", file=out)
        for recipient in envelope.recipients:
            print(f"    {recipient}  active", file=out)
    _printEntries(out, queueSummary(entries), now)
    total = len(entries) + len(inFlight)
    print(f"-- {total} message{'s' if total != 1 else ''} in the queue", file=out)
    return 0


def _printEntries(out: TextIO, summaries: list[dict], now: float) -> None:
    """
    Print queued messages as C{queue list} shows them: id, age, size,
    sender, then each recipient with its state and last reply.

    @param summaries: from L{qutemail.queue.nodes.queueSummary} (this
        node's entries, or another node's announcement).
    """
    for entry in summaries:
        print(f"{entry['id']}  {_age(now - entry['receivedAt'])}  {entry['size']}  <{entry['sender']}>", file=out)
        for r in entry["recipients"]:
            when = f"  next in {_age(r['nextAttempt'] - now)}" if r["state"] == DEFERRED else ""
            print(f"    {r['address']}  {r['state']}  attempts={r['attempts']}{when}  {r['lastReply']}", file=out)


def _queueListAll(context: Any) -> int:
    """
    C{queue list --all}: every live node's queue, as each node last
    announced it in Redis (L{qutemail.queue.nodes}).
    """
    url = context.config.redis.url
    if not url:
        raise CommandError("--all needs [redis] url: nodes announce their queues there")
    call = blockingCaller(url)
    keys: list[str] = []
    cursor = "0"
    while True:
        reply = wait(call("SCAN", cursor, "MATCH", NODE_PREFIX + "*", "COUNT", "100"))
        cursor = reply[0].decode("ascii")
        keys += [k.decode("utf-8") for k in reply[1]]
        if cursor == "0":
            break
    out, now = context.stdout, time.time()
    nodes = [json.loads(raw) for raw in (wait(call("GET", key)) for key in sorted(set(keys))) if raw]
    if not nodes:
        print("no live node has announced itself", file=out)
        return 0
    for node in sorted(nodes, key=lambda n: (n["hostname"], n["dataDir"])):
        print(f"== node {node['hostname']} ({node['dataDir']}), seen {_age(now - node['at'])} ago: "
              f"{node['total']} message{'s' if node['total'] != 1 else ''}", file=out)
        _printEntries(out, node["queue"], now)
        if node["total"] > len(node["queue"]):
            print(f"    ... and {node['total'] - len(node['queue'])} more", file=out)
    return 0


def _queueId(text: str) -> str:
    """
    Check a queue id from the command line; it also names files.

    @return: the id, upper case.
    @raise CommandError: it is not a queue id.
    """
    if QUEUE_ID.fullmatch(text.upper()) is None:
        raise CommandError(f"bad queue id {text!r}: queue ids are hexadecimal, as 'queue list' shows them")
    return text.upper()


# How long 'queue adopt' waits for the server (a large queue is copied).
ADOPT_TIMEOUT_SECONDS = 1800.0


def _ask(context: Any, request: str, timeoutSeconds: float = DEFAULT_TIMEOUT_SECONDS) -> str:
    """
    Send a request to the running server over the control socket.

    @return: the text of its C{ok} reply.
    @raise ServerNotRunning: no server listens.
    @raise CommandError: it refused, or could not be asked.
    """
    try:
        return sendCommand(controlPath(context.config.server.dataDir), request, timeoutSeconds)
    except ServerNotRunning:
        raise
    except ControlError as e:
        raise CommandError(str(e)) from None


def _describeRecipient(r: RecipientState, now: float) -> str:
    """
    @return: a recipient's line for C{queue show}.
    """
    parts = [f"<{r.address}>", r.state, f"attempts={r.attempts}"]
    if r.state in (PENDING, DEFERRED):
        parts.append(f"next attempt in {_age(r.nextAttempt - now)}" if r.nextAttempt > now else "next attempt now")
    if r.lastReply:
        parts.append(f"last reply: {r.lastReply}")
    return "  ".join(parts)


def _copyBody(body: BinaryIO, stdout: TextIO) -> None:
    """
    Copy a message to standard output exactly, a piece at a time.
    """
    stdout.flush()
    buffer = getattr(stdout, "buffer", None)
    if buffer is None:  # a text-only stream: no way to write bytes
        for chunk in iter(lambda: body.read(_CHUNK_BYTES), b""):
            stdout.write(chunk.decode("utf-8", "surrogateescape"))
        return
    shutil.copyfileobj(body, buffer, _CHUNK_BYTES)
    buffer.flush()


def _queueShow(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{queue show ID}: a message's envelope and the state of each recipient,
    a blank line, then the message as stored.  Read-only.
    """
    queueId = _queueId(arguments.queue_id)
    now = time.time()
    queueDir = _queueDir(context)
    deferred = context.backends().queue.snapshot()
    entry = next((e for e in deferred if e.queueId == queueId), None)
    sealed = []
    if entry is not None:
        message, signed = entry.message, "yes" if entry.dkimHeader else "no"
        recipients = [_describeRecipient(r, now) for r in entry.recipients]
        if entry.sealedBody:
            sealed = [f"stored:       sealed under the queue key (format {entry.sealedBody}), shown decrypted"]
    else:
        message = next((m for m in _inFlight(queueDir) if m.queueId == queueId), None)
        if message is None:
            raise CommandError(f"no message {queueId} in the queue")
        signed = "not yet"
        recipients = [f"<{address}>  active" for address in message.envelope.recipients]
    envelope = message.envelope
    received = datetime.datetime.fromtimestamp(envelope.receivedAt, datetime.timezone.utc)
    lines = [
        f"queue id:     {queueId}",
        f"sender:       <{envelope.sender}>",
        f"queued:       {received:%Y-%m-%d %H:%M:%S} UTC ({_age(now - envelope.receivedAt)} ago)",
        f"size:         {message.size} bytes",
        f"DKIM-signed:  {signed}",
    ] + sealed + [f"recipient:    {line}" for line in recipients]
    # A sealed body is shown decrypted: whoever can run this can read
    # master.key, and 'mail show' shows the delivered copy decrypted too.
    try:
        body = message.openBody()
    except FileNotFoundError:
        raise CommandError(f"message {queueId} left the queue while it was being read") from None
    except (SealedBodyError, KeyVaultError, LookupError) as e:
        raise CommandError(f"message {queueId} cannot be opened: {e}") from None
    with body:
        context.stdout.write("\n".join(lines) + "\n\n")
        try:
            _copyBody(body, context.stdout)
        except SealedBodyError as e:
            raise CommandError(f"message {queueId} cannot be opened: {e}") from None
    return 0


def _queueFlush(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{queue flush}: ask the running server to retry every waiting
    recipient now.
    """
    try:
        print(_ask(context, "flush"), file=context.stdout)
    except ServerNotRunning:
        raise CommandError("the server is not running; queued mail is retried when it starts") from None
    return 0


def _queueDelete(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{queue delete ID}: drop a message without telling its sender; through
    the running server, or on disk when it is not running.
    """
    queueId = _queueId(arguments.queue_id)
    try:
        print(_ask(context, f"delete {queueId}"), file=context.stdout)
        return 0
    except ServerNotRunning:
        pass
    directory = os.path.join(_queueDir(context), "deferred")
    base = os.path.join(directory, queueId)
    # The metadata goes first: a body without it is not an entry, and is
    # cleaned up when the server loads the queue.
    try:
        os.unlink(base + ".json")
    except FileNotFoundError:
        if any(m.queueId == queueId for m in _inFlight(_queueDir(context))):
            raise CommandError(f"message {queueId} has not been routed yet; "
                               "start the server, then delete it") from None
        raise CommandError(f"no message {queueId} in the queue") from None
    removeFile(base + ".msg")
    syncDirectory(directory)
    print(f"deleted {queueId}", file=context.stdout)
    return 0


def _queueBounce(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{queue bounce ID}: ask the running server to give up on a message and
    send its sender a bounce.
    """
    queueId = _queueId(arguments.queue_id)
    try:
        print(_ask(context, f"bounce {queueId}"), file=context.stdout)
    except ServerNotRunning:
        raise CommandError("the server is not running, and only the server sends bounces: "
                           f"start it, then bounce {queueId}") from None
    return 0


def _queueAdopt(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{queue adopt DIR}: ask the running server to take in a stopped
    node's queue.
    """
    directory = os.path.abspath(arguments.directory)
    if not os.path.isdir(os.path.join(directory, "queue")):
        raise CommandError(f"{directory} has no queue/ directory: give the stopped node's data_dir")
    try:
        print(_ask(context, f"adopt {directory}", ADOPT_TIMEOUT_SECONDS), file=context.stdout)
    except ServerNotRunning:
        raise CommandError("this node's server is not running: it takes the adopted messages in, "
                           "so start it, then adopt") from None
    return 0


def addQueueCommands(commands: Any) -> None:
    """
    Add the C{queue} command group.

    @param commands: the top-level subparsers.
    """
    queue = commands.add_parser("queue", help="inspect and control the mail queue")
    actions = queue.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    for name, run, text, takesId in [
        ("list", _queueList, "list queued messages, like mailq", False),
        ("show", _queueShow, "show a queued message's envelope and recipients, then the message", True),
        ("flush", _queueFlush, "retry every queued message now (server running)", False),
        ("delete", _queueDelete, "delete a queued message without a bounce", True),
        ("bounce", _queueBounce, "give up on a queued message and bounce it to its sender (server running)", True),
    ]:
        action = actions.add_parser(name, help=text)
        if takesId:
            action.add_argument("queue_id", metavar="ID")
        if name == "list":
            action.add_argument("--all", action="store_true",
                                help="every live node's queue, as announced in Redis ([redis] url)")
        action.set_defaults(run=run)
    adopt = actions.add_parser("adopt", help="move a stopped node's queue to this node's running server")
    adopt.add_argument("directory", metavar="DIR", help="the stopped node's data_dir")
    adopt.set_defaults(run=_queueAdopt)


def _domainsFor(context: Any, domain: str | None) -> tuple[str, ...]:
    """
    @param domain: C{--domain}, or C{None} for every local domain.
    @return: the domains to print records for.
    @raise CommandError: C{domain} is not a local domain.
    """
    domains = context.config.server.domains
    if domain is None:
        return domains
    if domain.lower().rstrip(".") not in domains:
        raise CommandError(f"{domain!r} is not a local domain ({', '.join(domains)})")
    return (domain.lower().rstrip("."),)


def _dkimKeyPath(context: Any) -> str:
    """
    @return: C{[dkim] private_key}, or the default key path under
        C{data_dir/keys} when that is empty, as the server reads it.
    """
    dkimConfig = context.config.dkim
    return dkimConfig.privateKey or defaultKeyPath(context.config.server.dataDir, dkimConfig.selector)


def _dkimKeygen(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{dkim keygen}: write a new signing key and print the TXT records that
    publish it.
    """
    domains = _domainsFor(context, arguments.domain)
    if arguments.algorithm == "ed25519" and arguments.bits is not None:
        raise CommandError("--bits is for RSA keys only")
    bits = DEFAULT_RSA_BITS if arguments.bits is None else arguments.bits
    # RFC 8301 §3.2: verifiers need only handle RSA keys of 1024 to 4096 bits.
    if arguments.algorithm == "rsa" and not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise CommandError(f"an RSA DKIM key has {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {bits}")
    path = _dkimKeyPath(context)
    if os.path.lexists(path) and not arguments.force:
        raise CommandError(f"a DKIM key already exists at {path}; "
                           "--force replaces it (the published record then stops verifying)")
    pem, txt = generateKey(arguments.algorithm, bits)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        replaceFile(path, pem, 0o600)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None
    selector = context.config.dkim.selector
    for domain in domains:
        print(txtRecord(selector, domain, txt), file=context.stdout)
    kind = f"RSA {bits}-bit" if arguments.algorithm == "rsa" else "Ed25519"
    print(f"wrote a new {kind} DKIM key to {path}: publish the TXT record above, then restart the server, "
          "which reads the key only when it starts", file=context.stderr)
    if arguments.algorithm == "ed25519" and importlib.util.find_spec("nacl") is None:
        print("note: dkimpy signs with Ed25519 only with PyNaCl, which is not installed: mail goes unsigned",
              file=context.stderr)
    return 0


def addDKIMCommands(commands: Any) -> None:
    """
    Add the C{dkim} command group.

    @param commands: the top-level subparsers.
    """
    group = commands.add_parser("dkim", help="manage the DKIM signing key")
    actions = group.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    keygen = actions.add_parser("keygen", help="write a new signing key and print its DNS record")
    keygen.add_argument("--domain", metavar="D", help="print the record of this local domain only "
                        "(the key signs for every local domain)")
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa", help="the key type (default: rsa)")
    keygen.add_argument("--bits", type=int, metavar="N", help=f"the RSA key size (default: {DEFAULT_RSA_BITS})")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(run=_dkimKeygen)


def _dnsRecords(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{dns-records}: the zone-file records each local domain needs (MX,
    SPF, DKIM, DMARC, MTA-STS and TLS-RPT).
    """
    domains = _domainsFor(context, arguments.domain)
    path = _dkimKeyPath(context)
    try:
        found = readKeyFile(path)
    except OSError as e:
        raise CommandError(f"cannot read the DKIM key {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CommandError(f"cannot use the DKIM key {path}: {e}") from None
    txt = publicTXTValue(found[0]) if found is not None else ""
    blocks = []
    for domain in domains:
        records = dnsRecords(domain, context.config.server.hostname, context.config.dkim.selector, txt)
        if found is None:
            # dnsRecords gives MX, SPF, DKIM and DMARC, in that order.
            records[2] = "; no DKIM key: run qutemail dkim keygen"
        config = context.config
        records += stsRecords(domain, config.server.hostname, config.metrics.mtaStsMode, DEFAULT_TTL)
        blocks.append("\n".join([f"; {domain}"] + records))
    print("\n\n".join(blocks), file=context.stdout)
    return 0


def addDNSCommands(commands: Any) -> None:
    """
    Add the C{dns-records} command.

    @param commands: the top-level subparsers.
    """
    records = commands.add_parser("dns-records", help="print the DNS records the local domains need")
    records.add_argument("--domain", metavar="D", help="only this local domain")
    records.set_defaults(run=_dnsRecords)
