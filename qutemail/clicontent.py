# -*- test-case-name: tests.test_clicontent -*-
"""
The C{content} command group of the admin tool:

    qutemail --config PATH content check FILE [--from ADDRESS] [--rcpt ADDRESS ...] [--ip IP] [--helo NAME]
                                              [--user ADDRESS]

It runs a message through the scanners of C{[content]} (the same clients
the server uses, so on a reactor of its own) and prints each verdict and
what the server would do with the message.
"""

import argparse
import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred

from qutemail.assembly import ServiceConfigError, buildContent
from qutemail.blocking import BlockingRunner
from qutemail.cliqueue import CommandError
from qutemail.content.results import ScanError
from qutemail.content.scanner import decide
from qutemail.message import Envelope, SpooledMessage


def addContentCommands(commands: Any) -> None:
    """
    Add the C{content} command group.

    @param commands: the top-level subparsers.
    """
    content = commands.add_parser("content", help="content scanning with rspamd and clamd")
    actions = content.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="run a message through the configured scanners and print the verdicts")
    check.add_argument("file", metavar="FILE", help="the message (RFC 5322)")
    check.add_argument("--from", dest="sender", default="", metavar="ADDRESS", help="the envelope sender")
    check.add_argument("--rcpt", action="append", default=[], metavar="ADDRESS",
                       help="an envelope recipient (repeat for more)")
    check.add_argument("--ip", default="127.0.0.1", help="the client address rspamd is told")
    check.add_argument("--helo", default="localhost", help="the HELO name rspamd is told")
    check.add_argument("--user", default=None, metavar="ADDRESS",
                       help="check it as mail submitted by this authenticated user")
    check.set_defaults(run=_contentCheck)


def _describe(name: str, result: Any) -> str:
    """
    @return: one line for one scanner's answer.
    """
    if result is None:
        return f"{name}: not configured"
    if isinstance(result, ScanError):
        return f"{name}: no answer: {result}"
    if name == "rspamd":
        rules = ", ".join(f"{rule}({score:.2f})" for rule, score in result.symbols)
        return f"rspamd: {result.action}, score {result.score:.2f} / {result.requiredScore:.2f}" + \
            (f": {rules}" if rules else "") + (f" ({result.smtpMessage})" if result.smtpMessage else "")
    return f"clamd: {result.describe()}"


def _contentCheck(context: Any, arguments: argparse.Namespace) -> int:
    """
    C{content check FILE}: ask the scanners, print their verdicts.

    @return: 0 when every configured scanner answered, 1 otherwise.
    """
    config = context.config
    if not config.content.enabled:
        raise CommandError("no scanner is configured: set [content] rspamd_url or clamd_socket")
    path = os.path.abspath(arguments.file)
    try:
        size = os.stat(path).st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CommandError(f"cannot read {arguments.file}: {e.strerror}") from None
    envelope = Envelope(arguments.sender, tuple(arguments.rcpt), helo=arguments.helo, peer=arguments.ip,
                        authenticated=arguments.user)
    message = SpooledMessage("check", envelope, size, path=path)
    lines = []
    if size > config.content.maxScanBytes:
        lines.append(f"note: {size} bytes is over max_scan_size ({config.content.maxScanBytes}); "
                     f"the server delivers such a message unscanned")
    rspamd, clamd = _ask(config, message)
    lines += [_describe("rspamd", rspamd), _describe("clamd", clamd)]
    verdict = decide(rspamd, clamd, config.content.onError)
    if verdict.reject is not None:
        lines.append(f"verdict: refused with {verdict.reject}")
    else:
        lines.append(f"verdict: delivered to {verdict.folder or 'INBOX'}")
    print("\n".join(lines), file=context.stdout)
    return 1 if verdict.errors else 0


def _ask(config: Any, message: SpooledMessage) -> tuple[Any, Any]:
    """
    Run the reactor until both scanners answered.

    @return: C{(rspamd, clamd)}, as L{ContentScanner.answers} gives them.
    """
    from twisted.internet import reactor

    root = MultiService()
    runner = BlockingRunner(reactor, minThreads=0, maxThreads=2, name="content-check")
    runner.setServiceParent(root)
    try:
        scanner = buildContent(config, reactor, runner, root)
    except ServiceConfigError as e:
        raise CommandError(str(e)) from None
    outcome: list = []

    async def check() -> None:
        """
        Ask, then stop everything.
        """
        try:
            outcome.append(await scanner.answers(message))
        finally:
            await root.stopService()
            reactor.stop()

    def start() -> None:
        """
        Start the scanners' services and the check.
        """
        root.startService()
        Deferred.fromCoroutine(check())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    return outcome[0]
