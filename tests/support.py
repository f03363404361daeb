"""
Builders shared by the tests: a server stack over memory backends, and the
helpers that read what landed in a Maildir.
"""

import os
import shutil

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qutemail.backends.memory import MemoryUserDirectory
from qutemail.blocking import InlineRunner
from qutemail.listener.factory import SMTPServerFactory
from qutemail.listener.settings import SessionSettings
from qutemail.message import QueueIds
from qutemail.pipeline.intake import Intake
from qutemail.pipeline.router import Router
from qutemail.policy.envelope import RecipientPolicy
from qutemail.policy.ratelimit import MemoryRateLimiter
from qutemail.policy.session import SessionPolicy
from qutemail.queue.deferred import DeferredQueue
from qutemail.queue.journal import Journal
from qutemail.queue.scheduler import RetryScheduler
from qutemail.store.delivery import LocalDelivery
from qutemail.store.maildir import MaildirStore
from qutemail.store.mailbox import mailboxPath

HOSTNAME = "mail.example.test"
DOMAINS = ("example.test",)
RETRY = (300.0, 600.0, 1200.0)


@attrs.define
class Stack:
    """
    One server's parts, wired as C{service.buildService} wires them.
    """

    dataDir: str
    clock: Clock
    runner: object
    users: object
    store: MaildirStore
    journal: Journal
    queue: DeferredQueue
    router: Router
    scheduler: RetryScheduler
    factory: SMTPServerFactory
    intake: Intake
    local: LocalDelivery

    def mailbox(self, address: str) -> str:
        """
        @return: the Maildir path of an account.
        """
        return mailboxPath(self.dataDir, address)

    def newFiles(self, address: str) -> list[bytes]:
        """
        @return: the contents of every file in the account's C{new/}.
        """
        directory = os.path.join(self.mailbox(address), "new")
        if not os.path.isdir(directory):
            return []
        out = []
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as f:
                out.append(f.read())
        return out


def buildStack(dataDir: str, *, users=None, runner=None, clock=None, maxMessageBytes: int = 1024 * 1024,
               maxRecipients: int = 10, defaultQuotaBytes: int = 10 * 1024 * 1024,
               idleTimeoutSeconds: float = 300.0, lifetime: float = 5 * 86400.0,
               messagesPerHour: int = 0, connectionsPerIp: int = 0, intakeClass=Intake,
               diskSpace=None, sessionLimits=None) -> Stack:
    """
    Build a server stack under C{dataDir}.

    @param intakeClass: the intake to build (tests record its calls).
    @param diskSpace: the L{qutemail.store.diskspace.DiskSpace} the session
        policy asks, or C{None} for none.
    @param sessionLimits: the L{qutemail.policy.sessions.SessionLimits}
        the factory counts its sessions in (shared with other factories),
        or C{None} for one of its own with C{connectionsPerIp}.
    @return: the L{Stack}; with the default inline runner and a
        L{Clock}, everything happens synchronously.
    """
    clock = clock or Clock()
    runner = runner or InlineRunner()
    if users is None:
        users = MemoryUserDirectory()
        for name in ("alice", "bob", "carol"):
            users.addUser(f"{name}@example.test", b"secret")
    queueDir = os.path.join(dataDir, "queue")
    spill = os.path.join(queueDir, "large")
    os.makedirs(spill, exist_ok=True)
    store = MaildirStore(dataDir, runner, HOSTNAME, defaultQuotaBytes, clock)
    journal = Journal(os.path.join(queueDir, "journal"), runner, clock)
    journal.recover()
    queue = DeferredQueue(os.path.join(queueDir, "deferred"), runner)
    queue.load()
    queueIds = QueueIds(clock)
    local = LocalDelivery(store=store, users=users, domains=DOMAINS)
    router = Router(local=local, queue=queue, clock=clock, retrySchedule=RETRY)
    intake = intakeClass(journal=journal, router=router, clock=clock, runner=runner, queueIds=queueIds,
                    spoolDirectory=spill, hostname=HOSTNAME)
    scheduler = RetryScheduler(queue=queue, local=local, bounce=intake.bounce, clock=clock,
                               retrySchedule=RETRY, queueLifetimeSeconds=lifetime)
    policy = SessionPolicy(RecipientPolicy(users, store, DOMAINS, maxMessageBytes), clock,
                           MemoryRateLimiter(), messagesPerHour, diskSpace=diskSpace)
    settings = SessionSettings(hostname=HOSTNAME, domains=DOMAINS, maxMessageBytes=maxMessageBytes,
                               maxRecipients=maxRecipients, idleTimeoutSeconds=idleTimeoutSeconds,
                               connectionsPerIp=connectionsPerIp)
    factory = SMTPServerFactory(intake=intake, policy=policy, settings=settings, clock=clock,
                                limits=sessionLimits)
    return Stack(dataDir, clock, runner, users, store, journal, queue, router, scheduler, factory, intake, local)


def connect(factory, host: str = "192.0.2.7"):
    """
    Connect a session to a L{StringTransport}.

    @return: C{(protocol, transport)}; the greeting is already in the
        transport.
    """
    proto = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000),
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 25))
    proto.makeConnection(transport)
    return proto, transport


def converse(proto, transport, data: bytes) -> bytes:
    """
    Feed bytes to a session a line at a time, as a client that waits for
    each reply would send them (with the inline runner every reply is
    there at once), and return what it answered.  Tests of pipelining and
    of input split anywhere call C{proto.dataReceived} themselves.
    """
    transport.clear()
    for line in data.splitlines(keepends=True):
        if transport.disconnecting:
            break
        proto.dataReceived(line)
    return transport.value()


class QueuedRunner:
    """
    A runner that queues every call until the test runs it, so the test
    decides when a "worker thread" finishes.

    @ivar calls: the queued C{(f, args, kwargs, deferred)} tuples.
    @ivar ran: every callable that was run, in order.
    """

    def __init__(self) -> None:
        """
        Nothing queued, nothing run.
        """
        self.calls: list = []
        self.ran: list = []

    def run(self, f, *args, **kwargs) -> Deferred:
        """
        Queue C{f(*args, **kwargs)}.

        @return: a Deferred fired by L{runNext} or L{runAll}.
        """
        d: Deferred = Deferred()
        self.calls.append((f, args, kwargs, d))
        return d

    def runNext(self) -> None:
        """
        Run the oldest queued call and fire its Deferred.
        """
        f, args, kwargs, d = self.calls.pop(0)
        self.ran.append(f)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def runAll(self) -> None:
        """
        Run queued calls (and the calls they queue) in order until none is
        left.
        """
        while self.calls:
            self.runNext()


def requireCommand(testCase, name: str) -> str:
    """
    The path of a program a test needs (a Debian package C{.ci/run}
    installs): a failure under CI (C{CI=true}), a skip with a reason
    elsewhere.

    @return: its path.
    """
    path = shutil.which(name)
    requireInstalled(testCase, path is not None, name, ".ci/run installs it")
    return path


def requireInstalled(testCase, present: bool, what: str, remedy: str) -> None:
    """
    A dependency a test needs that CI installs: a failure under CI
    (C{CI=true}), a skip with a reason elsewhere.

    @param present: whether it is there.
    @param what: its name.
    @param remedy: how to install it.
    """
    if present:
        return
    if os.environ.get("CI") == "true":
        testCase.fail(f"{what} is not installed ({remedy})")
    raise SkipTest(f"{what} is not installed ({remedy})")
