# -*- test-case-name: tests.integration.test_redisusers -*-
"""
Nodes that share a Redis announce themselves, with a summary of their
queue, so that C{qutemail queue list --all} on any node shows every live
node's queue (issue 17).

Each node's main process writes C{qutemail:node:<hostname>:<data_dir
hash>} every L{HEARTBEAT_SECONDS} with an expiry of L{NODE_TTL_SECONDS}: a
JSON object with its host name, data directory, the time, and its queued
messages (at most L{MAX_LISTED} of them, and their total).  A node that
stops removes its key; one that dies drops out when the key expires.
"""

import hashlib
import json
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

NODE_PREFIX = "qutemail:node:"
HEARTBEAT_SECONDS = 5.0
NODE_TTL_SECONDS = 15
# A queue longer than this is listed in part (the total is still given).
MAX_LISTED = 1000


def nodeKey(hostname: str, dataDir: str) -> str:
    """
    @return: the Redis key of a node (host names may repeat between nodes
        of one site; their data directories tell them apart).
    """
    return f"{NODE_PREFIX}{hostname}:{hashlib.sha256(dataDir.encode('utf-8')).hexdigest()[:8]}"


def queueSummary(entries: list[Any]) -> list[dict]:
    """
    @param entries: L{qutemail.message.QueueEntry}s.
    @return: what C{queue list} shows of them, as JSON-able dicts.
    """
    return [{"id": e.queueId, "receivedAt": e.message.envelope.receivedAt, "size": e.message.size,
             "sender": e.message.envelope.sender,
             "recipients": [{"address": r.address, "state": r.state, "attempts": r.attempts,
                             "nextAttempt": r.nextAttempt, "lastReply": r.lastReply} for r in e.recipients]}
            for e in entries]


class NodeHeartbeat(Service):
    """
    Keeps this node's announcement in Redis fresh.
    """

    _log = Logger()
    name = "node-heartbeat"

    def __init__(self, *, call: Any, clock: Any, hostname: str, dataDir: str, queue: Any) -> None:
        """
        @param call: runs one Redis command
            (L{qutemail.backends.redisusers.txredisCaller}).
        @param clock: an C{IReactorTime}.
        @param queue: the node's L{qutemail.interfaces.IRelayQueue}.
        """
        self.call = call
        self.clock = clock
        self.hostname = hostname
        self.dataDir = dataDir
        self.queue = queue
        self.key = nodeKey(hostname, dataDir)
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """
        Announce now and every L{HEARTBEAT_SECONDS}.
        """
        Service.startService(self)
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.beat()))
        self._loop.clock = self.clock
        self._loop.start(HEARTBEAT_SECONDS, now=True)

    def stopService(self) -> Deferred | None:
        """
        Stop announcing, and withdraw the announcement.
        """
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.call("DEL", self.key).addErrback(lambda _: None)

    async def beat(self) -> None:
        """
        Write the announcement once; a failure is logged (it never
        raises).
        """
        try:
            entries = sorted(await self.queue.waiting(), key=lambda e: e.queueId)
            document = {"hostname": self.hostname, "dataDir": self.dataDir, "at": self.clock.seconds(),
                        "total": len(entries), "queue": queueSummary(entries[:MAX_LISTED])}
            await self.call("SET", self.key, json.dumps(document), "EX", NODE_TTL_SECONDS)
        except Exception as e:
            self._log.warn("node announcement not written: {reason}", reason=str(e) or type(e).__name__)
