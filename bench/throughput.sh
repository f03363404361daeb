#!/bin/sh
# SMTP throughput of QutEmail's MTA listener, measured with the same driver
# as the reference Postfix (../shared/bench/smtp_throughput.sh, which uses
# Postfix's smtp-source): N messages over S concurrent sessions, reporting
# accepted and end-to-end (in the Maildir) messages per second.
#
# usage: bench/throughput.sh SESSIONS MESSAGES SIZE
#        bench/throughput.sh compare     all rows of issue 2 against Postfix
#        bench/throughput.sh pair SESSIONS MESSAGES SIZE
#                                        one row: Postfix, then QutEmail
# environment:
#   BENCH_DIR   scratch directory (default: ${TMPDIR:-/tmp}/qutemail-bench)
#   PORT        MTA port for QutEmail (default 2525)
#   WORKERS     [server] workers for QutEmail (default 2: one per core here)
#   SHARED      the shared/ directory (default: ../shared beside the repo)
#   CHECKS      [inbound] checks: SPF, DKIM and DMARC of every message
#               (default yes, as shipped; no measures the same work as the
#               reference Postfix, which checks none of them)
#   DNS         with CHECKS=yes, where the answers come from: loopback (the
#               default: bench/dnszone.py serves SPF, DMARC, MX and A records
#               for the driver's domain on 127.0.0.1, as a site's own
#               resolver would) or system (the machine's resolvers)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$here/../shared}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/qutemail-bench}
PORT=${PORT:-2525}
WORKERS=${WORKERS:-2}
CHECKS=${CHECKS:-yes}
DNS=${DNS:-loopback}
driver="$SHARED/bench/smtp_throughput.sh"

run_number=0
dns_pid=""
nameservers=""

start_dns() {
    [ "$CHECKS" = yes ] && [ "$DNS" = loopback ] || return 0
    [ -z "$dns_pid" ] || return 0
    mkdir -p "$BENCH_DIR"
    python3 "$here/bench/dnszone.py" example.test > "$BENCH_DIR/dns.$$" 2>&1 &
    dns_pid=$!
    i=0
    until nameservers=$(head -1 "$BENCH_DIR/dns.$$" 2>/dev/null) && [ -n "$nameservers" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "the loopback DNS server did not start" >&2; exit 1; }
        sleep 0.1
    done
}

stop_dns() {
    [ -n "$dns_pid" ] || return 0
    kill "$dns_pid" 2>/dev/null || true
    wait "$dns_pid" 2>/dev/null || true
    rm -f "$BENCH_DIR/dns.$$"
    dns_pid=""
}

start_qutemail() {
    # A fresh directory for every run, deleted only by the caller: on ext4
    # without a journal, creating files right after deleting thousands is
    # slow for minutes (see ../shared/bench/README.md), which would tax
    # every run but the first.
    run_number=$((run_number + 1))
    dir="$BENCH_DIR/qutemail-$$-$run_number"
    mkdir -p "$dir"
    cfg="$dir/qutemail.ini"
    start_dns
    sed -e "s|^nameservers =.*|nameservers = $nameservers|" \
        -e "s|^data_dir = .*|data_dir = $dir/var|" \
        -e "s|^mta_port = .*|mta_port = $PORT|" \
        -e "s|^workers = .*|workers = $WORKERS|" \
        -e "s|^messages_per_ip_hour = .*|messages_per_ip_hour = 0|" \
        -e "s|^checks = .*|checks = $CHECKS|" \
        -e "s#^\(submission_port\|smtps_port\|port\|tls_port\) = .*#\1 = 0#" \
        "$here/etc/qutemail.ini" > "$cfg"
    # smtp-source's own sender address must be acceptable; the recipient exists
    echo benchpass | qutemail --config "$cfg" user add bench@example.test --password-stdin
    mkdir -p "$dir/var/mail/example.test"
    # Every process (main and workers) logs to the same file.
    twistd -n --pidfile= qutemail --config "$cfg" > "$dir/twistd.log" 2>&1 &
    server_pid=$!
    i=0
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 200 ] || { echo "qutemail did not start" >&2; exit 1; }
        sleep 0.1
    done
    # Measure the running server, not its start (the reference Postfix is
    # started before its runs too): wait until every SMTP process listens.
    # The MTA port answers as soon as the main process listens; worker
    # processes join it about a second later, and a row of 500 messages
    # lasts less than that.
    i=0
    until [ "$(grep -c "starting on $PORT\$" "$dir/twistd.log")" -ge "$WORKERS" ]; do
        i=$((i + 1)); [ $i -lt 300 ] || { echo "not every SMTP worker listens" >&2; exit 1; }
        sleep 0.1
    done
}

stop_qutemail() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}

run_qutemail() {  # SESSIONS MESSAGES SIZE
    start_qutemail
    trap 'stop_qutemail; stop_dns' EXIT
    "$driver" 127.0.0.1 "$PORT" example.test "$dir/var/mail/example.test" "$1" "$2" "$3"
    stop_qutemail
    stop_dns
    trap - EXIT
}

check_postfix_reach() {
    # Postfix delivers as a user of its own, who must be able to pass
    # through BENCH_DIR and every directory above it (a mktemp -d directory,
    # mode 0700, is not: the run would wait 300 s for mail that never comes).
    case $BENCH_DIR in /*) dir=$BENCH_DIR ;; *) dir=$(pwd)/$BENCH_DIR ;; esac
    while [ "$dir" != / ] && [ -n "$dir" ]; do
        if [ -d "$dir" ]; then
            case $(stat -c %A "$dir") in
                ?????????[xt]) ;;
                *) echo "throughput.sh: Postfix cannot deliver under $BENCH_DIR: $dir is not searchable by other users (chmod o+x $dir, or choose another BENCH_DIR)" >&2
                   exit 2 ;;
            esac
        fi
        dir=$(dirname "$dir")
    done
}

run_postfix() {  # SESSIONS MESSAGES SIZE
    BENCH_DIR="$BENCH_DIR/postfix" "$SHARED/bench/postfix_setup.sh" start >/dev/null
    "$driver" 127.0.0.1 25 example.test "$BENCH_DIR/postfix/vmail/example.test" "$1" "$2" "$3"
}

if [ "${1:-}" = compare ] || [ "${1:-}" = pair ]; then
    check_postfix_reach
fi
if [ "${1:-}" = compare ]; then
    # The rows of issue 2: 10 sessions x 2 KB, 1 session x 2 KB, 10 sessions x 100 KB.
    for row in "10 2000 2048" "1 1000 2048" "10 500 102400"; do
        set -- $row
        printf 'postfix  '; run_postfix "$1" "$2" "$3"
        sleep 5
        printf 'qutemail '; run_qutemail "$1" "$2" "$3"
        sleep 5
    done
    "$SHARED/bench/postfix_setup.sh" stop >/dev/null 2>&1 || true
    exit 0
fi
if [ "${1:-}" = pair ] && [ $# -eq 4 ]; then
    shift
    printf 'postfix  '; run_postfix "$1" "$2" "$3"
    sleep 5
    printf 'qutemail '; run_qutemail "$1" "$2" "$3"
    "$SHARED/bench/postfix_setup.sh" stop >/dev/null 2>&1 || true
    exit 0
fi
[ $# -eq 3 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
run_qutemail "$1" "$2" "$3"
