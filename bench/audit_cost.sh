#!/usr/bin/env bash
# The audit log's QPS cost as the median of paired runs: on this shared two-core machine two
# 10 s runs of the same server differ by up to ±15 %, more than the 5 % target, so a single
# off/on pair says little. Each round runs the log off and on back to back (alternating which
# goes first, so drift over the rounds does not favour either), and the cost of a round is
# 1 - on/off. Also reports each server's CPU per answer, which varies far less than QPS.
#
#   bench/run.sh --audit --keep        # once: generates the inputs and configs and keeps them
#   bench/audit_cost.sh [--rounds 8] [--duration 10] [--dnsward PATH]
#
# Prints a Markdown report and writes it to bench/results/<UTC time>-audit-cost.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=8
DURATION=10
BIN_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --dnsward) BIN_ARGS=(--dnsward "$2"); shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds must be a positive integer" >&2; exit 2; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "--duration must be a positive integer" >&2; exit 2; }

STAMP=$(date -u +%Y-%m-%dT%H%MZ)
REPORT="bench/results/$STAMP-audit-cost.md"
RAW=$(mktemp)
trap 'rm -f "$RAW"' EXIT

# One run: "<config> <QPS> <server CPU us per answer> <writer CPU us per answer>".
measure() {
    local out
    out=$(bench/threads.sh --config "$1" --duration "$DURATION" "${BIN_ARGS[@]}")
    awk -v config="$1" -v secs="$DURATION" '
        /queries completed/ { n = $2 / secs }
        /us per answer/ { total += $(NF - 3); if ($1 == "audit-writer") writer = $(NF - 3) }
        END { printf "%s %d %.2f %.2f\n", config, n, total, writer + 0 }' <<<"$out"
}

for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=(off on); else order=(on off); fi
    for which in "${order[@]}"; do
        echo "round $round $(measure "dnsward-audit-$which")" | tee -a "$RAW" >&2
    done
done

{
    echo "# dnsward audit log cost, $STAMP"
    echo
    echo "- machine: $(nproc) CPU, $(uname -r); dnsward $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')${BIN_ARGS[1]:+, binary ${BIN_ARGS[1]} (not necessarily built from it)}"
    echo "- $ROUNDS rounds of bench/threads.sh, $DURATION s each way (dnsperf -c 20 -T 2 on the same cores), inputs of the kept run in ${BENCH_WORK:-/tmp/dnsward-bench}/run"
    echo "- cost of a round = 1 - QPS(on) / QPS(off); server CPU = all dnsward threads, user + system"
    echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| round | QPS off | QPS on | cost | server CPU per answer off / on (µs) | writer CPU per answer (µs) |"
    echo "|---|---|---|---|---|---|"
    awk '
        { q[$2, $3] = $4; cpu[$2, $3] = $5; if ($3 == "dnsward-audit-on") w[$2] = $6; last = $2 }
        END {
            for (r = 1; r <= last; r++) {
                off = q[r, "dnsward-audit-off"] / 1; on = q[r, "dnsward-audit-on"] / 1
                cost = off > 0 ? 100 * (1 - on / off) : 0
                printf "| %d | %d | %d | %.1f %% | %.2f / %.2f | %.2f |\n", r, off, on, cost,
                    cpu[r, "dnsward-audit-off"], cpu[r, "dnsward-audit-on"], w[r]
            }
        }' "$RAW"
    echo
    awk '
        { q[$2, $3] = $4; cpu[$2, $3] = $5; if ($3 == "dnsward-audit-on") w[n_w++] = $6; last = $2 }
        function median(a, n,    i, j, t) {
            for (i = 1; i < n; i++) for (j = i; j > 0 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
        }
        END {
            for (r = 1; r <= last; r++) {
                c[r - 1] = 100 * (1 - q[r, "dnsward-audit-on"] / q[r, "dnsward-audit-off"])
                d[r - 1] = cpu[r, "dnsward-audit-on"] - cpu[r, "dnsward-audit-off"]
                off[r - 1] = q[r, "dnsward-audit-off"]
            }
            lo = hi = c[0]; for (r = 1; r < last; r++) { if (c[r] < lo) lo = c[r]; if (c[r] > hi) hi = c[r] }
            olo = ohi = off[0]; for (r = 1; r < last; r++) { if (off[r] < olo) olo = off[r]; if (off[r] > ohi) ohi = off[r] }
            printf "**QPS cost of the audit log: median %.1f %%** (rounds from %.1f to %.1f %%; target < 5 %%)\n\n", median(c, last), lo, hi
            printf "- audit-off QPS alone varied from %d to %d between rounds (%.0f %% of the lower)\n", olo / 1, ohi / 1, 100 * (ohi - olo) / olo
            printf "- server CPU per answer, on minus off: median %.2f µs; the writer thread alone: median %.2f µs\n", median(d, last), median(w, n_w)
        }' "$RAW"
} | tee "$REPORT"
echo "written to $REPORT" >&2
