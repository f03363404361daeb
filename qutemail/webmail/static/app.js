// QutEmail webmail: a single page on standard JMAP (RFC 8620 core, RFC 8621 mail).
//
// Rules this file keeps:
//  - the credentials live in this closure only (no cookie, no localStorage,
//    no sessionStorage) and go as "Authorization: Basic" on every request,
//    with credentials: "omit" so the browser adds no cookie or cached login;
//  - message content reaches the page only through textContent, or as the
//    server-sanitised HTML (qutemailSafeHtml) in an iframe with an empty
//    sandbox; never through innerHTML;
//  - no inline script or style anywhere (the Content-Security-Policy
//    forbids both), and nothing loaded from another origin.
"use strict";

(function () {
  const USING = [
    "urn:ietf:params:jmap:core",
    "urn:ietf:params:jmap:mail",
    "urn:ietf:params:jmap:submission",
  ];
  const MAIL = "urn:ietf:params:jmap:mail";
  const SUBMISSION = "urn:ietf:params:jmap:submission";
  const PAGE_SIZE = 50;
  const LIST_PROPERTIES = [
    "id", "threadId", "mailboxIds", "keywords", "from", "subject", "receivedAt", "preview",
    "hasAttachment", "qutemailQkd",
  ];
  const READ_PROPERTIES = [
    "id", "threadId", "mailboxIds", "keywords", "from", "to", "cc", "replyTo", "subject", "sentAt",
    "receivedAt", "messageId", "inReplyTo", "references", "textBody", "htmlBody", "attachments",
    "bodyValues", "qutemailQkd", "qutemailSafeHtml",
  ];
  // Roles first in this order, then the rest by name (RFC 8621 §2: role).
  const ROLE_ORDER = ["inbox", "drafts", "sent", "archive", "junk", "trash"];

  // Everything the page knows; dropped whole on log out.
  let state = emptyState();

  function emptyState() {
    return {
      auth: null, session: null, accountId: null, submissionAccountId: null, apiUrl: null, identity: null,
      mailboxes: [], current: null, position: 0, total: 0, email: null, reply: null, stopPush: null,
    };
  }

  const $ = (id) => document.getElementById(id);

  // A new element with properties (textContent, className...: never
  // markup) and children.
  function make(tag, properties, ...children) {
    const node = Object.assign(document.createElement(tag), properties || {});
    node.append(...children);
    return node;
  }

  class AuthError extends Error {}

  function setStatus(text, isError) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function reportError(error) {
    if (error instanceof AuthError) {
      setStatus("Wrong address or password, or the session has ended.", true);
    } else {
      setStatus("Error: " + error.message, true);
    }
  }

  // RFC 7617: user-id ":" password, UTF-8, base64.
  function basicAuth(user, password) {
    const bytes = new TextEncoder().encode(user + ":" + password);
    return "Basic " + btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
  }

  // The session names its URLs with the server's host name; the page
  // always talks to the origin it came from (connect-src 'self'), which
  // is the same listener.
  function onThisOrigin(url) {
    const parsed = new URL(url, location.href);
    return location.origin + parsed.pathname + parsed.search;
  }

  // RFC 6570 level 1, as RFC 8620 §2 uses it for uploadUrl and downloadUrl.
  function expand(template, values) {
    const url = template.replace(/\{(\w+)\}/g, (_, name) => encodeURIComponent(values[name] ?? ""));
    return onThisOrigin(url);
  }

  async function http(url, options) {
    const headers = Object.assign({ Authorization: state.auth }, options.headers || {});
    const response = await fetch(url, Object.assign({}, options, {
      headers: headers,
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    }));
    if (response.status === 401) {
      throw new AuthError("unauthorised");
    }
    if (!response.ok) {
      let detail = response.status + " " + response.statusText;
      try {
        const problem = await response.json();
        detail = problem.detail || problem.title || problem.type || detail;
      } catch (ignored) {
        // Not a JSON problem report: the status line says enough.
      }
      throw new Error(detail);
    }
    return response;
  }

  // One JMAP request (RFC 8620 §3.3).  Returns the responses by call id;
  // the first response of a call id wins (EmailSubmission/set adds an
  // implicit Email/set with its own call id after it).
  async function api(methodCalls) {
    const response = await http(state.apiUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ using: USING, methodCalls: methodCalls }),
    });
    const body = await response.json();
    const results = {};
    for (const [name, args, callId] of body.methodResponses) {
      if (name === "error") {
        throw new Error(callId + ": " + args.type + (args.description ? " (" + args.description + ")" : ""));
      }
      if (!(callId in results)) {
        results[callId] = args;
      }
    }
    return results;
  }

  // RFC 8620 §5.3: a /set answers per object; any refusal is an error here.
  function checkSet(result) {
    for (const kind of ["notCreated", "notUpdated", "notDestroyed"]) {
      const refused = result[kind];
      if (refused && Object.keys(refused).length) {
        const first = Object.values(refused)[0];
        throw new Error(first.type + (first.description ? ": " + first.description : ""));
      }
    }
    return result;
  }

  function show(view) {
    for (const id of ["list-view", "message-view", "compose-view"]) {
      $(id).hidden = id !== view;
    }
  }

  // ---- logging in and out ----

  async function logIn(event) {
    event.preventDefault();
    const user = $("login-user").value.trim();
    const password = $("login-password").value;
    $("login-password").value = "";
    state = emptyState();
    state.auth = basicAuth(user, password);
    $("login-submit").disabled = true;
    setStatus("Logging in\u2026");
    try {
      const session = await (await http("/.well-known/jmap", { method: "GET" })).json();
      state.session = session;
      state.accountId = session.primaryAccounts[MAIL];
      state.submissionAccountId = session.primaryAccounts[SUBMISSION] || state.accountId;
      state.apiUrl = onThisOrigin(session.apiUrl);
      const results = await api([
        ["Identity/get", { accountId: state.submissionAccountId, ids: null }, "i"],
      ]);
      const identities = results.i.list;
      state.identity = identities.find((i) => i.email.toLowerCase() === user.toLowerCase()) || identities[0] || null;
      $("whoami").textContent = session.username || user;
      $("login-view").hidden = true;
      $("mail-view").hidden = false;
      $("logout").hidden = false;
      await loadMailboxes();
      const inbox = mailboxByRole("inbox") || state.mailboxes[0];
      if (inbox) {
        await openMailbox(inbox.id);
      }
      state.stopPush = window.QutEmailPush.watch(expand(session.eventSourceUrl,
        { types: "Email,Mailbox", closeafter: "no", ping: "60" }), state.auth, () => reload().catch(reportError));
      setStatus("");
    } catch (error) {
      state = emptyState();
      reportError(error);
    } finally {
      $("login-submit").disabled = false;
    }
  }

  function logOut() {
    state.stopPush?.();
    state = emptyState();
    $("mailbox-list").replaceChildren();
    $("message-rows").replaceChildren();
    $("message-body").replaceChildren();
    $("compose-form").reset();
    $("whoami").textContent = "";
    $("mail-view").hidden = true;
    $("logout").hidden = true;
    $("login-view").hidden = false;
    setStatus("Logged out.");
  }

  // ---- mailboxes ----

  function mailboxByRole(role) {
    return state.mailboxes.find((m) => m.role === role) || null;
  }

  function roleRank(mailbox) {
    const rank = ROLE_ORDER.indexOf(mailbox.role);
    return rank === -1 ? ROLE_ORDER.length : rank;
  }

  function mailboxOrder(a, b) {
    return roleRank(a) - roleRank(b) || (a.sortOrder || 0) - (b.sortOrder || 0) || a.name.localeCompare(b.name);
  }

  async function loadMailboxes() {
    const results = await api([["Mailbox/get", { accountId: state.accountId, ids: null }, "m"]]);
    state.mailboxes = results.m.list.slice().sort(mailboxOrder);
    const items = state.mailboxes.map((mailbox) => {
      const item = make("li", { className: mailbox.id === state.current ? "mailbox selected" : "mailbox" },
        make("span", { className: "mailbox-name", textContent: mailbox.name }),
        make("span", { className: "unread-count", textContent: mailbox.unreadEmails ? String(mailbox.unreadEmails) : "" }));
      Object.assign(item.dataset, { id: mailbox.id, name: mailbox.name, role: mailbox.role || "" });
      item.addEventListener("click", () => openMailbox(mailbox.id).catch(reportError));
      return item;
    });
    $("mailbox-list").replaceChildren(...items);
  }

  async function openMailbox(id) {
    state.current = id;
    state.position = 0;
    for (const item of document.querySelectorAll(".mailbox")) {
      item.classList.toggle("selected", item.dataset.id === id);
    }
    await loadMessages();
    show("list-view");
  }

  // ---- the message list ----

  function addressText(addresses) {
    return (addresses || []).map((a) => (a.name ? a.name + " <" + a.email + ">" : a.email)).join(", ");
  }

  function shortAddress(addresses) {
    const first = (addresses || [])[0];
    return first ? first.name || first.email : "";
  }

  async function loadMessages() {
    const mailbox = state.mailboxes.find((m) => m.id === state.current);
    $("list-title").textContent = mailbox ? mailbox.name : "";
    const results = await api([
      ["Email/query", {
        accountId: state.accountId,
        filter: { inMailbox: state.current },
        sort: [{ property: "receivedAt", isAscending: false }],
        position: state.position,
        limit: PAGE_SIZE,
        calculateTotal: true,
      }, "q"],
      ["Email/get", {
        accountId: state.accountId,
        "#ids": { resultOf: "q", name: "Email/query", path: "/ids" },
        properties: LIST_PROPERTIES,
      }, "g"],
    ]);
    state.total = results.q.total ?? results.q.ids.length;
    state.position = results.q.position;
    const byId = new Map(results.g.list.map((email) => [email.id, email]));
    const rows = results.q.ids.map((id) => byId.get(id)).filter(Boolean).map(messageRow);
    $("message-rows").replaceChildren(...rows);
    const shown = results.q.ids.length;
    $("page-info").textContent = shown
      ? (state.position + 1) + "\u2013" + (state.position + shown) + " of " + state.total
      : "No messages";
    $("page-newer").disabled = state.position === 0;
    $("page-older").disabled = state.position + shown >= state.total;
  }

  function messageRow(email) {
    const row = make("tr", { className: isSeen(email) ? "message-row" : "message-row unread" });
    row.dataset.id = email.id;
    const subject = make("td", { className: "subject", textContent: email.subject || "(no subject)" });
    if (email.qutemailQkd) {
      subject.append(make("span", { className: "qkd-mark", textContent: "QKD" }));
    }
    row.append(make("td", { textContent: shortAddress(email.from) }), subject,
      make("td", { textContent: email.receivedAt ? new Date(email.receivedAt).toLocaleString() : "" }));
    row.addEventListener("click", () => openMessage(email.id).catch(reportError));
    return row;
  }

  async function page(delta) {
    state.position = Math.max(0, state.position + delta);
    await loadMessages();
  }

  // ---- reading ----

  async function openMessage(id) {
    const results = await api([["Email/get", {
      accountId: state.accountId,
      ids: [id],
      properties: READ_PROPERTIES,
      fetchTextBodyValues: true,
    }, "g"]]);
    const email = results.g.list[0];
    if (!email) {
      throw new Error("that message is gone");
    }
    state.email = email;
    $("message-subject").textContent = email.subject || "(no subject)";
    $("message-from").textContent = addressText(email.from);
    $("message-to").textContent = addressText(email.to);
    $("message-date").textContent = new Date(email.sentAt || email.receivedAt).toLocaleString();
    showQkd(email.qutemailQkd);
    showBody(email);
    showAttachments(email.attachments || []);
    $("trash").disabled = !mailboxByRole("trash") || Boolean(email.mailboxIds[mailboxByRole("trash").id]);
    show("message-view");
    await (isSeen(email) ? updateSeenButton() : setSeen(true));
  }

  function showQkd(qkd) {
    const badge = document.querySelector(".qkd-badge");
    badge.hidden = !qkd;
    if (qkd) {
      badge.dataset.keyId = qkd.keyId;
      badge.dataset.mode = qkd.mode;
      badge.querySelector(".qkd-key").textContent = qkd.keyId;
      badge.querySelector(".qkd-mode").textContent = qkd.mode === "inter-site" ? "between sites" : "at rest";
    }
  }

  function plainText(email) {
    const values = email.bodyValues || {};
    return (email.textBody || [])
      .map((part) => (values[part.partId] ? values[part.partId].value : ""))
      .join("\n");
  }

  function showBody(email) {
    const container = $("message-body");
    const text = make("pre", { id: "message-text", textContent: plainText(email) });
    const safe = email.qutemailSafeHtml;
    const html = typeof safe === "string" ? safe : null;
    const isHtmlMail = (email.htmlBody || []).some((part) => part.type === "text/html");
    if (!html || !isHtmlMail) {
      container.replaceChildren(text);
      return;
    }
    // Sanitised by the server; shown with no script, in an opaque origin,
    // under this page's policy (an about:srcdoc document inherits it).
    const frame = make("iframe", { id: "message-html", title: "Message" });
    frame.setAttribute("sandbox", "");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.srcdoc = "<!DOCTYPE html><meta charset=\"utf-8\">" + html;
    container.replaceChildren(frame, make("details", null, make("summary", { textContent: "Plain text" }), text));
  }

  function showAttachments(attachments) {
    const items = attachments.map((part) => {
      const button = make("button", {
        type: "button",
        className: "attachment",
        textContent: (part.name || "attachment") + " (" + (part.size || 0) + " bytes)",
      });
      button.addEventListener("click", () => download(part).catch(reportError));
      return make("li", null, button);
    });
    $("message-attachments").replaceChildren(...items);
  }

  // A download needs the Authorization header, which a plain link would
  // not send: fetch it, then hand the browser a blob URL to save.
  async function download(part) {
    const url = expand(state.session.downloadUrl, {
      accountId: state.accountId,
      blobId: part.blobId,
      name: part.name || "attachment",
      type: part.type || "application/octet-stream",
    });
    const blob = await (await http(url, { method: "GET" })).blob();
    const link = make("a", { href: URL.createObjectURL(blob), download: part.name || "attachment" });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  function isSeen(email) {
    return Boolean(email.keywords && email.keywords.$seen);
  }

  function updateSeenButton() {
    $("toggle-seen").textContent = isSeen(state.email) ? "Mark unread" : "Mark read";
  }

  async function setSeen(seen) {
    const email = state.email;
    const results = await api([["Email/set", {
      accountId: state.accountId,
      update: { [email.id]: { "keywords/$seen": seen ? true : null } },
    }, "s"]]);
    checkSet(results.s);
    email.keywords = Object.assign({}, email.keywords);
    if (seen) {
      email.keywords.$seen = true;
    } else {
      delete email.keywords.$seen;
    }
    updateSeenButton();
    await loadMailboxes();
  }

  async function moveToTrash() {
    const trash = mailboxByRole("trash");
    const results = await api([["Email/set", {
      accountId: state.accountId,
      update: { [state.email.id]: { mailboxIds: { [trash.id]: true } } },
    }, "s"]]);
    checkSet(results.s);
    state.email = null;
    await loadMailboxes();
    await loadMessages();
    show("list-view");
    setStatus("Moved to " + trash.name + ".");
  }

  // ---- composing and sending ----

  function startCompose() {
    state.reply = null;
    $("compose-form").reset();
    show("compose-view");
    $("compose-to").focus();
  }

  function startReply() {
    const email = state.email;
    const target = (email.replyTo && email.replyTo.length ? email.replyTo : email.from) || [];
    const subject = email.subject || "";
    $("compose-form").reset();
    $("compose-to").value = target.map((a) => a.email).join(", ");
    $("compose-subject").value = /^re:/i.test(subject) ? subject : "Re: " + subject;
    const quoted = plainText(email).split("\n").map((line) => "> " + line).join("\n");
    $("compose-body").value = "\n\n" + shortAddress(email.from) + " wrote:\n" + quoted + "\n";
    // RFC 5322 §3.6.4: In-Reply-To is the parent's Message-ID, References
    // the parent's References (or In-Reply-To) followed by it.
    const parentIds = email.messageId || [];
    state.reply = parentIds.length
      ? { inReplyTo: parentIds, references: (email.references || email.inReplyTo || []).concat(parentIds) }
      : null;
    show("compose-view");
    $("compose-body").focus();
    $("compose-body").setSelectionRange(0, 0);
  }

  // "Name <a@b>, c@d" -> [{name, email}]
  function parseAddresses(text) {
    return text.split(",").map((s) => s.trim()).filter(Boolean).map((item) => {
      const match = /^(.*)<([^<>]+)>$/.exec(item);
      if (match) {
        const name = match[1].trim().replace(/^"|"$/g, "");
        return { name: name || null, email: match[2].trim() };
      }
      return { name: null, email: item };
    });
  }

  async function upload(file) {
    const url = expand(state.session.uploadUrl, { accountId: state.accountId });
    const response = await http(url, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    return response.json();
  }

  async function send(event) {
    event.preventDefault();
    $("send").disabled = true;
    try {
      const drafts = mailboxByRole("drafts");
      const sent = mailboxByRole("sent");
      const to = parseAddresses($("compose-to").value);
      const missing = !drafts ? "a Drafts mailbox" : !state.identity ? "an identity to send as"
        : !to.length ? "a recipient" : null;
      if (missing) {
        throw new Error("there is no " + missing);
      }
      const file = $("compose-attachment").files[0];
      let blob = null;
      if (file) {
        setStatus("Uploading " + file.name + "\u2026");
        blob = await upload(file);
      }
      setStatus("Sending\u2026");
      const draft = {
        mailboxIds: { [drafts.id]: true },
        keywords: { $draft: true, $seen: true },
        from: [{ name: state.identity.name || null, email: state.identity.email }],
        to: to,
        subject: $("compose-subject").value,
        textBody: [{ partId: "body", type: "text/plain" }],
        bodyValues: { body: { value: $("compose-body").value } },
      };
      if (blob) {
        draft.attachments = [{
          blobId: blob.blobId,
          type: blob.type || file.type || "application/octet-stream",
          name: file.name,
          disposition: "attachment",
        }];
      }
      if (state.reply) {
        draft.inReplyTo = state.reply.inReplyTo;
        draft.references = state.reply.references;
      }
      // RFC 8621 §7.5: once sent, the draft moves from Drafts to Sent
      // (or, with no Sent mailbox, is destroyed).
      const submission = {
        accountId: state.submissionAccountId,
        create: { send: { identityId: state.identity.id, emailId: "#draft" } },
      };
      if (sent) {
        submission.onSuccessUpdateEmail = {
          "#send": {
            ["mailboxIds/" + drafts.id]: null,
            ["mailboxIds/" + sent.id]: true,
            "keywords/$draft": null,
          },
        };
      } else {
        submission.onSuccessDestroyEmail = ["#send"];
      }
      const results = await api([
        ["Email/set", { accountId: state.accountId, create: { draft: draft } }, "e"],
        ["EmailSubmission/set", submission, "s"],
      ]);
      checkSet(results.e);
      checkSet(results.s);
      state.reply = null;
      $("compose-form").reset();
      await loadMailboxes();
      await loadMessages();
      show("list-view");
      setStatus("Message sent.");
    } catch (error) {
      reportError(error);
    } finally {
      $("send").disabled = false;
    }
  }

  // ---- wiring ----

  function on(id, eventName, handler) {
    $(id).addEventListener(eventName, (event) => {
      Promise.resolve(handler(event)).catch(reportError);
    });
  }

  on("login-form", "submit", logIn);
  on("logout", "click", logOut);
  on("compose", "click", startCompose);
  // The Refresh button and each change the server pushes (push.js).
  async function reload() {
    await loadMailboxes();
    if (!$("list-view").hidden) {
      await loadMessages();
    }
  }

  on("refresh", "click", () => reload().then(() => setStatus("")));
  on("page-newer", "click", () => page(-PAGE_SIZE));
  on("page-older", "click", () => page(PAGE_SIZE));
  on("back", "click", () => { show("list-view"); return reload(); });
  on("reply", "click", startReply);
  on("toggle-seen", "click", () => setSeen(!isSeen(state.email)));
  on("trash", "click", moveToTrash);
  on("compose-form", "submit", send);
  on("compose-cancel", "click", () => {
    state.reply = null;
    show(state.email ? "message-view" : "list-view");
  });
}());
