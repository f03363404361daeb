# -*- test-case-name: tests.jmap.test_submission -*-
"""
C{Identity/get} and C{EmailSubmission/set} (RFC 8621 §6, §7.5): sending
an email of the account through the same way in as SMTP submission.

L{Submitter.send} asks the submission listener's policy
(L{qutemail.policy.session.SessionPolicy}) exactly what an SMTP session
asks: the sender rules and the per-user message rate limit at C{MAIL},
each recipient (and the key pool for internal mail) at C{RCPT}, room on
the disk at C{DATA}; the C{From:} header must be the user's, as for
authenticated SMTP.  The message (C{Bcc:} removed) then goes through the
one intake (L{qutemail.pipeline.intake.Intake}): spool, journal, routing,
DKIM signing for remote recipients and QKD encryption at rest for local
ones.  A submission is final once the intake accepted it (no delayed
sending, so no undo).

C{onSuccessUpdateEmail} and C{onSuccessDestroyEmail} are applied after,
as an implicit C{Email/set} (RFC 8621 §7.5).
"""

import email.utils
import secrets
from typing import Any

import attrs

from qutemail import replies
from qutemail.jmap.dispatch import SUBMISSION
from qutemail.jmap.email import utcDate
from qutemail.jmap import ids
from qutemail.jmap.emailset import destroyEmail, updateEmail
from qutemail.jmap.errors import MethodError, SetError, invalidArguments
from qutemail.jmap.parse import addresses, parseBytes
from qutemail.message import Envelope
from qutemail.replies import ReplyError


def identityId(address: str) -> str:
    """
    @return: the one identity of an account.
    """
    return "i" + ids.accountId(address)[1:]


def withoutBcc(data: bytes) -> bytes:
    """
    @return: a message with LF line ends and no C{Bcc:} field.
    """
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    kept, skipping = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def receivedField(peer: str, hostname: str, queueId: str, recipients: list[str], when: float) -> bytes:
    """
    @return: the C{Received} field of our hop (RFC 5321 §4.4), as SMTP
        submission writes it, with C{HTTPSA} as the protocol; LF line ends.
    """
    forClause = f"\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    return (f"Received: from jmap ([{peer}])\n\tby {hostname} (QutEmail) with HTTPSA id {queueId}"
            f"{forClause};\n\t{email.utils.formatdate(when)}\n").encode("utf-8", "replace")


def _refused(reply: replies.Reply) -> SetError:
    """
    @return: the SetError (RFC 8621 §7.5) of a refusing SMTP reply.
    """
    if reply == replies.SENDER_NOT_OWNED:
        return SetError("forbiddenMailFrom", reply.text)
    if reply == replies.TOO_BIG:
        return SetError("tooLarge", reply.text, maxSize=0)
    return SetError("forbiddenToSend", f"{reply.code} {reply.enhanced} {reply.text}")


@attrs.define(eq=False)
class Submitter:
    """
    Sends for JMAP through the submission policy and the intake.

    @ivar intake: the L{qutemail.pipeline.intake.Intake}.
    @ivar policy: the submission listener's
        L{qutemail.policy.session.SessionPolicy}.
    @ivar clock: an C{IReactorTime}.
    @ivar hostname: this server's name (the C{Received} field).
    @ivar maxRecipients: C{[smtp] max_recipients}.
    """

    intake: Any
    policy: Any
    clock: Any
    hostname: str
    maxRecipients: int = 100

    async def send(self, address: str, peer: str, sender: str, recipients: list[str], data: bytes) -> str:
        """
        Submit one message.

        @return: its queue id.
        @raise SetError: refused (the SMTP reply's reason in the text).
        """
        if len(recipients) > self.maxRecipients:
            raise SetError("tooManyRecipients", maxRecipients=self.maxRecipients)
        try:
            await self.policy.checkSender(peer=peer, sender=sender, declaredSize=len(data), authenticated=address,
                                          helo="jmap")
        except ReplyError as e:
            raise _refused(e.reply) from None
        accepted, invalid = [], []
        for recipient in recipients:
            try:
                account = await self.policy.checkRecipient(recipient, len(data), address, sender)
            except ReplyError as e:
                if e.reply.isTemporary:
                    raise _refused(e.reply) from None
                invalid.append(recipient)
                continue
            normal = account.address if account is not None else recipient
            if normal not in accepted:
                accepted.append(normal)
        if invalid:
            raise SetError("invalidRecipients", invalidRecipients=invalid)
        refused = self.policy.checkData()
        if refused is not None:
            raise _refused(refused)
        message = parseBytes(data)
        owners = [a["email"].lower() for v in message.get_all("From", []) for a in addresses(str(v))]
        if not owners or any(o != address for o in owners):
            raise SetError("forbiddenFrom", "the From header must be your own address")
        queueId, writer = self.intake.newMessage()
        now = self.clock.seconds()
        writer.write(receivedField(peer, self.hostname, queueId, accepted, now))
        writer.traceBytes = writer.size
        writer.write(withoutBcc(data))
        envelope = Envelope(sender, tuple(accepted), "jmap", peer, now, address)
        reply = await self.intake.submit(queueId, writer, envelope)
        if reply.code != replies.QUEUED.code:
            raise _refused(reply)
        return queueId


async def identityGet(context: Any, args: dict) -> dict:
    """
    C{Identity/get} (RFC 8621 §6.1): one identity, the account's address.
    """
    own = identityId(context.address)
    identity = {"id": own, "name": "", "email": context.address, "replyTo": None, "bcc": None,
                "textSignature": "", "htmlSignature": "", "mayDelete": False}
    wanted = args.get("ids")
    if wanted is not None and not isinstance(wanted, list):
        raise invalidArguments("ids must be a list or null")
    found = [identity] if wanted is None or own in wanted else []
    notFound = [i for i in wanted or [] if i != own]
    return {"accountId": context.accountId, "state": "i0", "list": found, "notFound": notFound}


def _envelope(context: Any, props: dict, data: bytes) -> tuple[str, list[str]]:
    """
    @return: the SMTP envelope of a submission: given, or from the
        message's C{From}/C{To}/C{Cc}/C{Bcc} (RFC 8621 §7).
    @raise SetError: C{invalidProperties}, C{noRecipients}.
    """
    given = props.get("envelope")
    if given is not None:
        try:
            sender = given["mailFrom"]["email"]
            recipients = [r["email"] for r in given["rcptTo"]]
        except (KeyError, TypeError):
            raise SetError("invalidProperties", "envelope has mailFrom and rcptTo", properties=["envelope"]) from None
    else:
        message = parseBytes(data)
        sender = context.address
        recipients = []
        for name in ("To", "Cc", "Bcc"):
            for value in message.get_all(name, []):
                recipients += [a["email"] for a in addresses(str(value)) if a["email"]]
    recipients = list(dict.fromkeys(r.strip() for r in recipients if isinstance(r, str) and r.strip()))
    if not recipients:
        raise SetError("noRecipients")
    if not isinstance(sender, str):
        raise SetError("invalidProperties", "mailFrom is an address", properties=["envelope"])
    return sender, recipients


async def _submit(context: Any, props: dict) -> dict:
    """
    Send one EmailSubmission.

    @return: the created submission's server-set properties.
    """
    submitter = context.services.submitter
    if submitter is None:
        raise SetError("forbiddenToSend", "this server does not send mail from JMAP")
    if props.get("identityId") != identityId(context.address):
        raise SetError("invalidProperties", "unknown identityId", properties=["identityId"])
    emailId = context.resolveId(props.get("emailId"))
    entry = (await context.snapshot()).emailsById().get(emailId)
    if entry is None:
        raise SetError("invalidProperties", "no such email", properties=["emailId"])
    try:
        data, _ = await context.rawMessage(entry)
    except FileNotFoundError:
        raise SetError("invalidProperties", "no such email", properties=["emailId"]) from None
    sender, recipients = _envelope(context, props, data)
    await submitter.send(context.address, context.peer, sender, recipients, data)
    return {"id": "s" + secrets.token_hex(12), "threadId": ids.threadId(entry.baseName), "undoStatus": "final",
            "sendAt": utcDate(context.now()), "emailId": emailId,
            "envelope": {"mailFrom": {"email": sender, "parameters": None},
                         "rcptTo": [{"email": r, "parameters": None} for r in recipients]}}


async def submissionSet(context: Any, args: dict) -> list:
    """
    C{EmailSubmission/set} (RFC 8621 §7.5): create only (sending is
    immediate and final), then the C{onSuccess*} changes of the emails.
    """
    create = args.get("create") or {}
    if not isinstance(create, dict) or not all(isinstance(v, dict) for v in create.values()):
        raise invalidArguments("create is an object of EmailSubmission objects")
    if args.get("update") or args.get("destroy"):
        raise invalidArguments("submissions are final: nothing to update or destroy")
    if len(create) > context.limits.maxObjectsInSet:
        raise MethodError("requestTooLarge", "too many submissions")
    result: dict = {"accountId": context.accountId, "oldState": "q0", "newState": "q0", "created": {},
                    "notCreated": {}, "updated": None, "destroyed": None, "notUpdated": None, "notDestroyed": None}
    emailOf = {}
    for creationId, props in create.items():
        try:
            created = await _submit(context, props)
        except SetError as e:
            result["notCreated"][creationId] = e.asJSON()
            continue
        emailOf["#" + creationId] = emailOf[created["id"]] = created.pop("emailId")
        context.createdIds[creationId] = created["id"]
        result["created"][creationId] = created
    responses = [("EmailSubmission/set", result)]
    updates = args.get("onSuccessUpdateEmail") or {}
    destroys = args.get("onSuccessDestroyEmail") or []
    if (updates or destroys) and isinstance(updates, dict) and isinstance(destroys, list):
        responses.append(("Email/set", await _onSuccess(context, emailOf, updates, destroys)))
    return responses


async def _onSuccess(context: Any, emailOf: dict, updates: dict, destroys: list) -> dict:
    """
    The implicit C{Email/set} of the C{onSuccess*} arguments.
    """
    snapshot = await context.snapshot()
    out: dict = {"accountId": context.accountId, "oldState": snapshot.emailState, "updated": {}, "destroyed": [],
                 "notUpdated": {}, "notDestroyed": {}, "created": None, "notCreated": None}
    for key, patch in updates.items():
        emailId = emailOf.get(key)
        if emailId is None or not isinstance(patch, dict):
            continue
        entry = (await context.snapshot()).emailsById().get(emailId)
        try:
            if entry is None:
                raise SetError("notFound")
            await updateEmail(context, entry, patch)
            out["updated"][emailId] = None
        except SetError as e:
            out["notUpdated"][emailId] = e.asJSON()
    for key in destroys:
        emailId = emailOf.get(key)
        entry = (await context.snapshot()).emailsById().get(emailId) if emailId else None
        if entry is None:
            if emailId:
                out["notDestroyed"][emailId] = {"type": "notFound"}
            continue
        await destroyEmail(context, entry)
        out["destroyed"].append(emailId)
    out["newState"] = (await context.snapshot()).emailState
    return out


METHODS = {
    "Identity/get": (SUBMISSION, identityGet),
    "EmailSubmission/set": (SUBMISSION, submissionSet),
}
