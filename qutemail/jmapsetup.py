# -*- test-case-name: tests.jmap.test_api -*-
"""
Assembly of the JMAP listener (issue 16) for L{qutemail.service}: its
methods, limits, authenticator and submitter, around the same portal,
throttle, notifier, intake and submission policy the IMAP and SMTP
submission listeners use.
"""

import os
from typing import Any

from twisted.web.server import Site

from qutemail.jmap import email, emailset, mailbox, submission
from qutemail.jmap.auth import BasicAuthenticator
from qutemail.jmap.context import Services
from qutemail.jmap.dispatch import Dispatcher, Limits
from qutemail.jmap.http import JMAPService, jmapSite, loadWebmail
from qutemail.jmap.submission import Submitter


def allMethods() -> dict:
    """
    @return: every JMAP method, by name.
    """
    return {**mailbox.METHODS, **email.METHODS, **emailset.METHODS, **submission.METHODS}


def buildJMAPSite(config: Any, reactor: Any, runner: Any, portal: Any, throttle: Any, notifier: Any, intake: Any,
                  policy: Any) -> Site:
    """
    @param config: the L{qutemail.config.Config}.
    @param portal: the IMAP portal (L{qutemail.access.imapaccount.imapPortal}).
    @param throttle: the failed-login throttle IMAP uses.
    @param notifier: the mailbox notifier (IMAP IDLE's).
    @param intake: the intake.
    @param policy: the submission listener's session policy.
    @return: the site to serve over TLS.
    """
    server = config.server
    limits = Limits(maxSizeUpload=config.smtp.maxMessageBytes)
    services = Services(runner, reactor, os.path.join(server.dataDir, "jmap"), limits, notifier,
                        Submitter(intake, policy, reactor, server.hostname, config.smtp.maxRecipients),
                        frozenset(domain for domain, _ in config.qkd.peers), server.hostname)
    authenticator = BasicAuthenticator(portal, throttle, reactor, config.mailbox.defaultQuotaBytes, server.hostname)
    return jmapSite(JMAPService(authenticator, Dispatcher(allMethods()), services), reactor, loadWebmail())
