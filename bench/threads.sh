#!/usr/bin/env bash
# Per-thread CPU of dnsward under dnsperf: where each answer's server CPU goes (the query path's
# worker threads against the audit writer thread). Uses the inputs of a kept full run.
#
#   bench/run.sh --audit --keep        # once: generates the inputs and configs and keeps them
#   bench/threads.sh [--config dnsward-audit-on] [--duration 10] [--dnsward PATH]
#
# Prints queries completed and, per thread name, user and system CPU seconds during the run, and
# CPU microseconds per answer. Needs the kept run directory ($BENCH_WORK/run, default
# /tmp/dnsward-bench/run) with its nsd.conf and dnsward-*.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${BENCH_WORK:-/tmp/dnsward-bench}"
RUN_DIR="$WORK/run"
CONFIG=dnsward-audit-on
DURATION=10
BIN="${CARGO_TARGET_DIR:-target}/release/dnsward"
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --dnsward) BIN="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
TOML="$RUN_DIR/$CONFIG.toml"
[ -f "$TOML" ] || { echo "no $TOML: run bench/run.sh --audit --keep first" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release first" >&2; exit 2; }
BIN=$(readlink -f "$BIN")
QUERIES=$(grep -o '/[^"]*/blocklist.txt' "$TOML" | head -1 | sed 's/blocklist.txt$/queries.txt/')
PORT=$(grep -o '127.0.0.1:[0-9]*' "$TOML" | head -1 | cut -d: -f2)

pkill -f "nsd -d -c $RUN_DIR/nsd.conf" 2>/dev/null || true
nsd -d -c "$RUN_DIR/nsd.conf" >/dev/null 2>&1 &
NSD=$!
DATA=$(mktemp -d)
( cd "$DATA" && exec "$BIN" serve --config "$TOML" ) >"$DATA/out" 2>&1 &
PID=$!
trap 'kill $PID $NSD 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
sleep 1
kill -0 "$PID" 2>/dev/null || { echo "dnsward did not start:" >&2; cat "$DATA/out" >&2; exit 1; }
# Warm the caches with one pass, then measure.
dnsperf -s 127.0.0.1 -p "$PORT" -d "$QUERIES" -n 1 -c 20 -T 2 -q 200 >/dev/null 2>&1
snapshot() {
    for task in /proc/$PID/task/*; do
        echo "$(tr ' ' _ < "$task/comm") $(awk '{print $14, $15}' "$task/stat")"
    done | awk '{u[$1]+=$2; s[$1]+=$3} END {for (k in u) print k, u[k], s[k]}' | sort
}
before=$(snapshot)
completed=$(dnsperf -s 127.0.0.1 -p "$PORT" -d "$QUERIES" -c 20 -T 2 -l "$DURATION" 2>&1 \
    | awk '/Queries completed/ {print $3}')
after=$(snapshot)
hz=$(getconf CLK_TCK)
echo "$CONFIG: $completed queries completed in $DURATION s"
join <(echo "$before") <(echo "$after") | awk -v hz="$hz" -v n="$completed" '
    { user = ($4 - $2) / hz; sys = ($5 - $3) / hz
      if (user + sys > 0)
          printf "  %-16s user %6.2f s  sys %6.2f s  = %5.2f us per answer\n", $1, user, sys, (user + sys) * 1e6 / n }'
