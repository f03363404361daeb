#!/usr/bin/env python3
"""
Inter-site mail throughput, A to B, with QKD transit encryption against the
same run without it (issue 13, acceptance item 6).

Each round runs two modes on fresh data directories:

  - plain: site A (a.example.test) relays to site B (b.example.test) over a
    fixed route ([relay] routes), STARTTLS (opportunistic: B is not a
    peer), no [qkd] peers; B stores the mail as mail from outside (in
    clear);
  - transit: the same, with [qkd] peers on both sides: A seals each message
    with a key from its KME's enc_keys naming site-b, B opens it with the
    same key from its KME's dec_keys and stores it encrypted at rest under
    a key of its own (as the issue asks of inter-site mail); STARTTLS is
    verified (B's certificate from the KME pair's CA, [relay] tls_ca).

So the transit figure includes B's encryption at rest, which inter-site
mail always gets; bench/qkd_throughput.py measures that part alone.

Both modes use the same linked KME pair: one `qutemail kme --link-sae`
process (the real command; the simulated link, with a pool large enough
for the run and a fast refill), started once for the whole run.  For each
run the script writes both sites' configurations from etc/qutemail.ini
(loopback, one process each, no limits in the way, inbound checks off: no
DNS on loopback), creates sender@a and recipient@b, starts both servers,
opens SESSIONS submission sessions to A (STARTTLS, AUTH PLAIN), sends
SESSIONS x MESSAGES messages of SIZE bytes, and times from the first MAIL
until all are in B's Maildir.  It then stops both servers and checks what
B stored (sealed or plain as the mode says) and, for transit, that A's log
names a sealing and B's an opening for every message.

    python bench/intersite.py [--sessions 4] [--messages 100] [--size 2K]
        [--rounds 3] [--dir DIR] [--clean]

Prints one line per run and the median rates, the ratio transit/plain and
the cost of transit encryption (1 - ratio).  Exit status 0 when every run
delivered every message and passed its checks.
"""

import argparse
import os
import statistics
import sys
import tempfile

from benchserver import (
    BenchError, KMEPair, Server, addScratchOptions, checkStored, leaveScratch, maildirCount, waitForMaildir,
)
from qkd_throughput import Message, addUser, freePort, parseSize, positive, runSessions, writeFromBase

SENDER = "sender@a.example.test"
RECIPIENT = "recipient@b.example.test"
MODES = ("plain", "transit")


def siteConfig(path: str, site: str, dataDir: str, ports: dict, pair: KMEPair, transit: bool) -> None:
    """
    Write one site's configuration for a run.
    """
    peer = "b" if site == "a" else "a"
    qkd = pair.qkd(f"site-{site}") | {"encrypt": "yes", "peers": f"{peer}.example.test=site-{peer}" if transit else "",
                            "peer_policy": "require"}
    writeFromBase(path, {
        "server": {"hostname": f"mail.{site}.example.test", "domains": f"{site}.example.test", "data_dir": dataDir,
                   "bind": "127.0.0.1", "workers": "1"},
        "smtp": {"mta_port": str(ports[site][0]), "submission_port": str(ports[site][1]), "smtps_port": "0"},
        "imap": {"port": "0", "tls_port": "0"},
        "pop3": {"port": "0", "tls_port": "0"},
        "tls": {"cert": os.path.join(pair.directory, f"tls-mail.{site}.example.test-cert.pem"),
                "key": os.path.join(pair.directory, f"tls-mail.{site}.example.test-key.pem")},
        "limits": {"messages_per_ip_hour": "0", "messages_per_user_hour": "0", "connections_per_ip": "1000"},
        "inbound": {"checks": "no"},
        "qkd": qkd,
        # The certificates (from the KME pair's CA) name localhost; mail to
        # a peer goes over verified TLS.
        "relay": {"routes": f"{peer}.example.test=localhost:{ports[peer][0]}",
                  "tls_ca": os.path.join(pair.directory, "ca-cert.pem")},
        "redis": {"url": ""},
    })


def countInLog(path: str, text: str) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if text in line)


def oneRun(args: argparse.Namespace, scratch: str, pair: KMEPair, number: int, mode: str) -> dict:
    """
    One run of one mode.
    """
    runDir = os.path.join(scratch, f"run-{number:02d}-{mode}")
    ports = {}
    used: set[int] = set(pair.ports)
    for site in "ab":
        pick = []
        while len(pick) < 2:
            port = freePort()
            if port not in used:
                used.add(port)
                pick.append(port)
        ports[site] = tuple(pick)
    servers = {}
    for site in "ab":
        siteDir = os.path.join(runDir, site)
        os.makedirs(siteDir)
        configPath = os.path.join(siteDir, "qutemail.ini")
        siteConfig(configPath, site, os.path.join(siteDir, "var"), ports, pair, mode == "transit")
        addUser(configPath, SENDER if site == "a" else RECIPIENT)
        servers[site] = Server(configPath, siteDir, ports[site][0])
    mailbox = os.path.join(runDir, "b", "var", "mail", "b.example.test", "recipient")
    expected = args.sessions * args.messages
    message = Message(args.size, f"r{number}{mode[0]}", SENDER, RECIPIENT)
    try:
        for server in servers.values():
            server.start()
        cpu: dict[str, float | None] = {}

        def go() -> None:
            cpu.update({site: server.cpuSeconds() for site, server in servers.items()}, kme=pair.cpuSeconds())

        started, accepted = runSessions(args.sessions, ports["a"][1], args.messages, message, go)
        done, _ = waitForMaildir(mailbox, expected, started)
        used = {site: server.cpuSeconds() for site, server in servers.items()} | {"kme": pair.cpuSeconds()}
        used = {k: None if v is None or cpu.get(k) is None else v - cpu[k] for k, v in used.items()}
    finally:
        for server in servers.values():
            server.stop()
    count = maildirCount(mailbox)
    if count != expected:
        raise BenchError(f"{count} messages in {mailbox}, expected {expected}")
    contentType = checkStored(mailbox, mode == "transit", message.body)
    if mode == "transit":
        sealed = countInLog(servers["a"].logPath, "sealed for peer SAE site-b")
        opened = countInLog(servers["b"].logPath, "opened QKD transit message from SAE site-a")
        if sealed != expected or opened != expected:
            raise BenchError(f"{sealed} messages sealed at A and {opened} opened at B, expected {expected}")
    seconds = done - started
    return {"mode": mode, "round": number, "messages": count, "seconds": seconds, "rate": count / seconds,
            "accepted": accepted - started, "contentType": contentType, "cpu": used}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inter-site mail A -> B with QKD transit encryption against without.")
    parser.add_argument("--sessions", type=positive, default=4, help="concurrent submission sessions at A (4)")
    parser.add_argument("--messages", type=positive, default=100, help="messages per session (100)")
    parser.add_argument("--size", type=parseSize, default=2048, help="message size: 2K (default), 100K")
    parser.add_argument("--rounds", type=positive, default=3, help="runs of each mode, alternating (3)")
    addScratchOptions(parser)
    args = parser.parse_args(argv)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="intersite-bench-", dir=args.dir)
    print(f"# {args.sessions} sessions x {args.messages} messages of {args.size} bytes, {SENDER} -> {RECIPIENT} "
          f"(A relays to B over a route), {args.rounds} rounds; scratch {scratch}", flush=True)
    pair = KMEPair(scratch, ("site-a", "site-b"), ("mail.a.example.test", "mail.b.example.test"))
    results, status = [], 0
    try:
        bootstrap = os.path.join(scratch, "kme.ini")
        writeFromBase(bootstrap, {"server": {"data_dir": os.path.join(scratch, "kme-var")}})
        pair.start(bootstrap)
        for number in range(1, args.rounds + 1):
            for mode in MODES:
                result = oneRun(args, scratch, pair, number, mode)
                results.append(result)
                cpu = ", ".join(f"{k} {v:.2f} s" for k, v in result["cpu"].items() if v is not None)
                print(f"{mode:<8} round {number}  {result['messages']} messages  {result['seconds']:7.2f} s  "
                      f"{result['rate']:7.1f} msg/s  (all accepted at A at {result['accepted']:.2f} s; "
                      f"B stored {result['contentType']}; CPU {cpu})", flush=True)
    except BenchError as e:
        print(f"intersite: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("intersite: interrupted", file=sys.stderr)
        status = 130
    finally:
        pair.stop()
        leaveScratch(scratch, args.clean, failed=bool(status))
    if status:
        return status
    medians = {mode: statistics.median(r["rate"] for r in results if r["mode"] == mode) for mode in MODES}
    ratio = medians["transit"] / medians["plain"]
    print(f"median plain   {medians['plain']:8.1f} msg/s")
    print(f"median transit {medians['transit']:8.1f} msg/s")
    print(f"ratio transit/plain {ratio:.3f}; cost of transit encryption (with B's at-rest sealing) "
          f"{100 * (1 - ratio):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
