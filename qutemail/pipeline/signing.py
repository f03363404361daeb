# -*- test-case-name: tests.pipeline.test_signing -*-
"""
Outbound DKIM signing: the C{DKIM-Signature} field for a message leaving
for other domains, made once per message when it is queued and sent in
front of its body to every remote recipient.

Only mail whose envelope sender is in one of our domains is signed, with
that domain's key.  A message that cannot be signed (no key, an oversize
message, a dkimpy error) goes unsigned, with a log line: a missing
signature costs less than mail that never leaves.
"""

import io
import os
from typing import Any

import attrs
from twisted.logger import Logger

from qutemail.pipeline.dkim import defaultKeyPath, generateKey, publicTXTValue, signHeader, txtRecord
from qutemail.durable import replaceFile


@attrs.define
class OutboundSigner:
    """
    Makes the DKIM-Signature of queued outbound mail.

    @ivar keys: the L{qutemail.interfaces.IDKIMKeys}.
    @ivar runner: the L{qutemail.blocking.BlockingRunner} (signing is CPU
        work on the whole message).
    @ivar domains: our domains.
    @ivar maxBytes: the largest message signed.
    """

    _log = Logger()

    keys: Any
    runner: Any
    domains: tuple[str, ...]
    maxBytes: int

    async def headerFor(self, message: Any) -> str:
        """
        @param message: a L{qutemail.pipeline.spool.SpooledMessage}.
        @return: the header field, LF-terminated, or C{""} when unsigned.
        """
        sender = message.envelope.sender
        domain = sender.rpartition("@")[2].lower()
        if not sender or domain not in self.domains:
            return ""
        key = await self.keys.keyFor(domain)
        if key is None:
            return ""
        try:
            header = await self.runner.run(_sign, message, key, self.maxBytes)
        except Exception as e:
            self._log.warn("{queueId} goes unsigned: DKIM signing failed: {error}",
                           queueId=message.queueId, error=f"{type(e).__name__}: {e}")
            return ""
        return header.decode("ascii")


def _sign(message: Any, key: Any, maxBytes: int) -> bytes:
    """
    Sign an inline or spilled message (worker thread).
    """
    if message.inline is not None:
        return signHeader(io.BytesIO(message.inline), key, maxBytes)
    return signHeader(message.path, key, maxBytes)


def ensureKey(dataDir: str, configuredPath: str, selector: str, domains: tuple[str, ...]) -> str | None:
    """
    Create the default DKIM key on first start, when none is configured,
    so outbound mail is signed from the start.  Blocking (before the
    reactor runs).

    @return: the TXT records to publish for a key just created, or C{None}
        when a key was configured or already there.
    """
    if configuredPath:
        return None
    path = defaultKeyPath(dataDir, selector)
    if os.path.exists(path):
        return None
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    pem, _ = generateKey("rsa", 2048)
    replaceFile(path, pem, mode=0o600)
    public = publicTXTValue(pem)
    return "\n".join(txtRecord(selector, domain, public) for domain in domains)
