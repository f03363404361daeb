#!/usr/bin/env python3
"""
JMAP against IMAP on the same mailbox (issue 16, acceptance item 5).

The script makes an INBOX of MESSAGES messages (as bench/imap.py does:
Maildir files written directly), starts QutEmail from etc/qutemail.ini
with IMAP and JMAP on free loopback ports, and times, in one run, the
listing a mail client shows first, the newest 50 messages with their
sender, subject, date, size and flags:

  - jmap_first: one API request with Email/query (sorted by receivedAt,
    newest first, limit 50) and Email/get of its #ids (from, subject,
    receivedAt, size, keywords), over HTTPS with HTTP Basic;
  - jmap_again: the same request again (the folder's UIDs are kept);
  - imap_first: LOGIN, SELECT INBOX and UID FETCH of the newest 50
    (FLAGS RFC822.SIZE INTERNALDATE ENVELOPE), over STARTTLS;
  - imap_again: the same FETCH again in that session.

    python bench/jmap.py [--messages 10000] [--rounds 3] [--dir DIR] [--clean]

Exit status 0 when both listed the same 50 subjects, 1 otherwise.
"""

import argparse
import base64
import http.client
import imaplib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imap import ADDRESS, makeMaildir  # noqa: E402
from benchserver import BenchError, addScratchOptions, leaveScratch, serverEnvironment  # noqa: E402
from qkd_throughput import PASSWORD, addUser, freePort, writeFromBase  # noqa: E402

NEWEST = 50


def insecure() -> ssl.SSLContext:
    """
    @return: a context for the server's generated self-signed certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def startServer(scratch: str) -> tuple[subprocess.Popen, int, int, str]:
    """
    Start QutEmail with IMAP and JMAP.

    @return: the process, its IMAP and JMAP ports, its data directory.
    """
    dataDir = os.path.join(scratch, "qutemail")
    configPath = os.path.join(scratch, "qutemail.ini")
    imapPort, jmapPort = freePort(), freePort()
    writeFromBase(configPath, {
        "server": {"data_dir": dataDir, "bind": "127.0.0.1", "workers": "1"},
        "smtp": {"mta_port": str(freePort()), "submission_port": "0", "smtps_port": "0"},
        "imap": {"port": str(imapPort), "tls_port": "0"},
        "pop3": {"port": "0", "tls_port": "0"},
        "jmap": {"port": str(jmapPort)},
        "redis": {"url": ""},
    })
    addUser(configPath, ADDRESS)
    with open(os.path.join(scratch, "qutemail.log"), "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "qutemail", "--config", configPath], stdout=log, stderr=log, env=serverEnvironment())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the server exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", jmapPort), timeout=1).close()
            socket.create_connection(("127.0.0.1", imapPort), timeout=1).close()
            return process, imapPort, jmapPort, dataDir
        except OSError:
            time.sleep(0.1)
    raise BenchError("the server did not start listening")


def jmapListing(connection: http.client.HTTPSConnection, accountId: str) -> list[str]:
    """
    One request: the newest messages' subjects.
    """
    secret = base64.b64encode(f"{ADDRESS}:{PASSWORD}".encode()).decode()
    body = json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
        ["Email/query", {"accountId": accountId, "sort": [{"property": "receivedAt", "isAscending": False}],
                         "limit": NEWEST}, "q"],
        ["Email/get", {"accountId": accountId, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                       "properties": ["from", "subject", "receivedAt", "size", "keywords"]}, "g"]]})
    connection.request("POST", "/api/", body, {"Authorization": "Basic " + secret,
                                               "Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise BenchError(f"JMAP answered {response.status}: {data[:200]!r}")
    return [e["subject"] for e in json.loads(data)["methodResponses"][1][1]["list"]]


def timeJmap(port: int) -> tuple[dict[str, float], list[str]]:
    """
    @return: seconds per step, and the subjects listed.
    """
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=insecure())
    secret = base64.b64encode(f"{ADDRESS}:{PASSWORD}".encode()).decode()
    times = {}
    started = time.perf_counter()
    connection.request("GET", "/.well-known/jmap", headers={"Authorization": "Basic " + secret})
    session = json.loads(connection.getresponse().read())
    accountId = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
    subjects = jmapListing(connection, accountId)
    times["jmap_first"] = time.perf_counter() - started
    started = time.perf_counter()
    jmapListing(connection, accountId)
    times["jmap_again"] = time.perf_counter() - started
    connection.close()
    return times, subjects


def timeImap(port: int) -> tuple[dict[str, float], list[str]]:
    """
    @return: seconds per step, and the subjects listed (newest first).
    """
    times = {}
    started = time.perf_counter()
    client = imaplib.IMAP4("127.0.0.1", port)
    client.starttls(ssl_context=insecure())
    client.login(ADDRESS, PASSWORD)
    status, data = client.select("INBOX", readonly=True)
    count = int(data[0])
    first = max(1, count - NEWEST + 1)
    query = f"{first}:{count}"
    status, data = client.fetch(query, "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    times["imap_first"] = time.perf_counter() - started
    started = time.perf_counter()
    client.fetch(query, "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    times["imap_again"] = time.perf_counter() - started
    client.logout()
    subjects = []
    for item in data:
        line = item if isinstance(item, bytes) else item[0] if isinstance(item, tuple) else b""
        marker = line.find(b"ENVELOPE (")
        if marker >= 0:
            # ENVELOPE ("date" "subject" ...): the second quoted string.
            parts = line[marker:].split(b'"')
            subjects.append(parts[3].decode("utf-8", "replace"))
    return times, list(reversed(subjects))


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    addScratchOptions(parser)
    args = parser.parse_args(argv)
    scratch = args.dir or tempfile.mkdtemp(prefix="qutemail-jmap-bench-")
    os.makedirs(scratch, exist_ok=True)
    process = None
    try:
        process, imapPort, jmapPort, dataDir = startServer(scratch)
        makeMaildir(os.path.join(dataDir, "mail", "example.test", "bench"), args.messages)
        print(f"# {args.messages} messages; the newest {NEWEST} listed; IMAP on {imapPort}, JMAP on {jmapPort}")
        ok = True
        for round_ in range(1, args.rounds + 1):
            jTimes, jSubjects = timeJmap(jmapPort)
            iTimes, iSubjects = timeImap(imapPort)
            for step, seconds in {**jTimes, **iTimes}.items():
                print(f"round {round_} {step:12s} {seconds:8.3f} s")
            print(f"round {round_} jmap/imap first {jTimes['jmap_first'] / iTimes['imap_first']:.2f}, "
                  f"again {jTimes['jmap_again'] / iTimes['imap_again']:.2f}")
            if jSubjects != iSubjects:
                print(f"round {round_}: the listings differ: {jSubjects[:3]} ... vs {iSubjects[:3]} ...")
                ok = False
        return 0 if ok else 1
    except (BenchError, OSError, imaplib.IMAP4.error, KeyError, ValueError) as e:
        print(f"JMAP benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        leaveScratch(scratch, args.clean and not args.dir)


if __name__ == "__main__":
    sys.exit(main())
