#!/bin/sh
# Internal-mail delivery throughput with [qkd] encrypt = yes against the same
# runs with encrypt = no (issue 4): bench/qkd_throughput.py, which starts
# QutEmail on free loopback ports with a fresh data directory per run and
# submits bob -> alice over STARTTLS + AUTH, timing until every message is
# in the Maildir.  See that script's --help for the other options.
#
# usage: bench/qkd_throughput.sh [SESSIONS [MESSAGES [SIZE [ROUNDS]]]]
#        (defaults 4 250 2048 3; SIZE in bytes or with K/M, e.g. 100K)
# environment:
#   BENCH_DIR   scratch directory, kept afterwards (default: a new one under
#               ${TMPDIR:-/tmp}, deleted at the end)
#   PYTHON      the interpreter with qutemail installed (default python3)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
[ $# -le 4 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
set -- --sessions "${1:-4}" --messages "${2:-250}" --size "${3:-2048}" --rounds "${4:-3}"
if [ -n "${BENCH_DIR:-}" ]; then
    set -- "$@" --dir "$BENCH_DIR"
fi
exec "${PYTHON:-python3}" "$here/bench/qkd_throughput.py" "$@"
