# -*- test-case-name: tests.content.test_rspamd -*-
"""
An rspamd client for its C{/checkv2} endpoint (rspamd's "Protocol"
documentation): the message is the request body, the envelope goes in
request headers (C{IP}, C{Helo}, C{From}, C{Rcpt}, C{Queue-Id}, C{User}),
and the answer is a JSON object with the action, the score and the rules
that matched.
"""

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from qutemail.content.feed import MessageFeed
from qutemail.content.results import ACTIONS, RspamdResult, ScanError
from qutemail.httpbody import BodyTooLarge, readCapped
from qutemail.message import SpooledMessage

# rspamd's answers are a few kilobytes; a longer one is not rspamd's.
MAX_ANSWER_BYTES = 1024 * 1024


def requestHeaders(message: SpooledMessage, password: str = "") -> Headers:
    """
    The headers that tell rspamd the envelope.

    @param password: the controller password (C{Password}), or C{""}.
    """
    envelope = message.envelope
    headers = Headers({
        b"Content-Type": [b"message/rfc822"],
        b"Queue-Id": [message.queueId.encode("ascii")],
        b"Rcpt": [r.encode("utf-8") for r in envelope.recipients],
    })
    for name, value in ((b"IP", envelope.peer), (b"Helo", envelope.helo), (b"From", envelope.sender),
                        (b"User", envelope.authenticated or ""), (b"Password", password)):
        if value:
            headers.setRawHeaders(name, [value.encode("utf-8")])
    return headers


def parseAnswer(body: bytes) -> RspamdResult:
    """
    Read rspamd's JSON answer.

    @raise ScanError: it is not an answer of rspamd's.
    """
    try:
        answer = json.loads(body)
        action = answer["action"]
        score, required = float(answer["score"]), float(answer["required_score"])
        symbols = answer.get("symbols") or {}
        messages = answer.get("messages") or {}
        matched = tuple(sorted((str(name), float(s.get("score", 0.0))) for name, s in symbols.items()))
        smtpMessage = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ScanError(f"rspamd: unreadable answer ({e.__class__.__name__}: {e})") from e
    if action not in ACTIONS:
        raise ScanError(f"rspamd: unknown action {str(action)[:40]!r}")
    return RspamdResult(action=action, score=score, requiredScore=required, symbols=matched,
                        smtpMessage=str(smtpMessage))


class RspamdClient:
    """
    Asks rspamd about messages, over kept-alive HTTP connections.
    """

    def __init__(self, reactor: Any, runner: Any, url: str, password: str = "") -> None:
        """
        @param reactor: an C{IReactorTCP} and C{IReactorTime}.
        @param runner: the L{qutemail.blocking.BlockingRunner} the message
            is read through.
        @param url: rspamd's normal worker, e.g. C{http://127.0.0.1:11333}.
        @param password: the controller password, or C{""}.
        """
        self._pool = HTTPConnectionPool(reactor)
        self._agent = Agent(reactor, pool=self._pool)
        self._runner = runner
        self._url = url.rstrip("/").encode("ascii") + b"/checkv2"
        self._password = password

    def check(self, message: SpooledMessage) -> Deferred:
        """
        Ask rspamd about one message.

        @return: a Deferred firing with a L{RspamdResult}, or failing with
            L{ScanError} when rspamd is down or answers nonsense.
            Cancelling it drops the request.
        """
        return Deferred.fromCoroutine(self._check(message))

    async def _check(self, message: SpooledMessage) -> RspamdResult:
        """
        See L{check}.
        """
        feed = MessageFeed(self._runner, message)
        try:
            response = await self._agent.request(b"POST", self._url, requestHeaders(message, self._password), feed)
        except Exception as e:
            raise ScanError(f"rspamd: request failed: {e.__class__.__name__}: {e}") from e
        try:
            body = await readCapped(response, MAX_ANSWER_BYTES)
        except BodyTooLarge:
            raise ScanError(f"rspamd: answer longer than {MAX_ANSWER_BYTES} bytes") from None
        except Exception as e:
            raise ScanError(f"rspamd: answer cut short: {e.__class__.__name__}") from e
        if response.code != 200:
            raise ScanError(f"rspamd: HTTP {response.code} {body[:80]!r}")
        return parseAnswer(body)

    def close(self) -> Deferred:
        """
        Close the kept-alive connections.
        """
        return self._pool.closeCachedConnections()

