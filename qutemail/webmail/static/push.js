// QutEmail webmail: live updates from the JMAP push stream.
//
// The server announces changes on its EventSource resource (RFC 8620
// §7.3), but a browser's EventSource cannot send the Authorization
// header this page authenticates with (it has no cookies).  So the stream
// is read with fetch(), which can, and its text/event-stream format is
// parsed here: blocks separated by a blank line, each with an "event:"
// name and "data:" lines.  Every "state" event calls the page back; the
// page then reloads what it shows.  A stream that ends or fails is opened
// again after a pause that grows to a minute; a 401 (the password was
// changed, or the page logged out) ends it for good.
"use strict";

window.QutEmailPush = (function () {
  const RETRY_FIRST_MS = 2000;
  const RETRY_MOST_MS = 60000;

  // Split complete event blocks off the front of the text read so far.
  // Returns [events, rest]; an event is { name, data }.
  function takeEvents(text) {
    const events = [];
    let end = text.indexOf("\n\n");
    while (end >= 0) {
      const block = text.slice(0, end);
      text = text.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) {
          name = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).trimStart());
        }
      }
      events.push({ name: name, data: data.join("\n") });
      end = text.indexOf("\n\n");
    }
    return [events, text];
  }

  // Read one stream until it ends.  Returns false when it must not be
  // opened again (401), true otherwise.
  async function readStream(url, auth, signal, onChange) {
    const response = await fetch(url, {
      headers: { Authorization: auth, Accept: "text/event-stream", "X-Requested-With": "XMLHttpRequest" },
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
      signal: signal,
    });
    if (response.status === 401) {
      return false;
    }
    if (!response.ok || !response.body) {
      return true;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        return true;
      }
      let events;
      [events, pending] = takeEvents(pending + decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n"));
      if (events.some((event) => event.name === "state")) {
        onChange();
      }
    }
  }

  // Watch the stream at url; returns the function that stops watching.
  function watch(url, auth, onChange) {
    const control = new AbortController();
    (async () => {
      let pause = RETRY_FIRST_MS;
      while (!control.signal.aborted) {
        let again = true;
        try {
          again = await readStream(url, auth, control.signal, onChange);
          pause = RETRY_FIRST_MS;
        } catch (ignored) {
          // Network error or abort: try again later unless stopped.
        }
        if (!again || control.signal.aborted) {
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(pause * 2, RETRY_MOST_MS);
      }
    })();
    return () => control.abort();
  }

  return { watch: watch };
}());
