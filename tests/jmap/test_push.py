# -*- test-case-name: tests.jmap.test_push -*-
"""
Push over EventSource: a real HTTPS stream announces an SMTP delivery
within 2 seconds.
"""

import base64
import http.client
import json
import threading
import time

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.support import CLIENT_TIMEOUT, waitFor
from tests.jmap.support import JMAPServerMixin

MESSAGE = b"From: carol@outside.test\r\nTo: alice@example.test\r\nSubject: push me\r\n\r\nHi\r\n"


class EventSourceTests(JMAPServerMixin, TestCase):
    """
    C{/eventsource/}.
    """

    def stream(self, events: list, wanted: int, query: str = "types=*&closeafter=no&ping=0") -> object:
        """
        Read events (C{(time, event, data)}) into C{events} in a thread
        until C{wanted} state events came.
        """
        stop = threading.Event()

        def run():
            connection = http.client.HTTPSConnection("127.0.0.1", self.ports["jmap"], timeout=CLIENT_TIMEOUT,
                                                     context=self.clientContext())
            secret = base64.b64encode(b"alice@example.test:pw-alice").decode()
            connection.request("GET", "/eventsource/?" + query, headers={"Authorization": "Basic " + secret})
            response = connection.getresponse()
            events.append((time.monotonic(), "status", response.status, response.getheader("Content-Type")))
            name, states = None, 0
            try:
                while states < wanted and not stop.is_set():
                    line = response.fp.readline()
                    if not line:
                        break
                    line = line.decode().rstrip("\n")
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        events.append((time.monotonic(), name, json.loads(line[6:])))
                        states += name == "state"
            finally:
                connection.close()

        return deferToThread(run), stop

    async def test_announcesDelivery(self):
        """
        The stream starts with the current state, then announces a new
        Email and Mailbox state within 2 s of a delivery's 250.
        """
        events: list = []
        done, _ = self.stream(events, 2)
        await waitFor(lambda: any(e[1] == "state" for e in events), timeout=10)
        self.assertEqual(events[0][2:], (200, "text/event-stream; charset=utf-8"))
        accountId = await self.accountId()
        first = events[1][2]
        self.assertEqual(first["@type"], "StateChange")
        await self.deliver(MESSAGE)
        delivered = time.monotonic()
        await done
        when, name, change = events[-1]
        self.assertEqual(name, "state")
        self.assertLess(when - delivered, 2.0)
        self.assertNotEqual(change["changed"][accountId]["Email"], first["changed"][accountId]["Email"])
        self.assertIn("Mailbox", change["changed"][accountId])
        jmap = self.root.listeners["jmap"].smtpFactory.jmap
        await waitFor(lambda: not jmap.streams, timeout=10)

    async def test_closeAfterStateAndPing(self):
        """
        C{closeafter=state} ends the stream after the first change, and
        C{ping} sends ping events meanwhile.
        """
        events: list = []
        done, _ = self.stream(events, 1, "types=Email&closeafter=state&ping=1")
        await waitFor(lambda: events, timeout=10)
        await waitFor(lambda: any(e[1] == "ping" for e in events), timeout=15)
        await self.deliver(MESSAGE)
        await done
        self.assertEqual(events[-1][1], "state")
        self.assertEqual(list(list(events[-1][2]["changed"].values())[0]), ["Email"])
        jmap = self.root.listeners["jmap"].smtpFactory.jmap
        await waitFor(lambda: not jmap.streams, timeout=10)
