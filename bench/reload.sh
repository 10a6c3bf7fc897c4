#!/usr/bin/env bash
# dnsward hot-reload benchmark (issue 5): reload time of a large list on SIGHUP, and query latency
# at a fixed rate with and without a reload every second.
#
#   bench/reload.sh [--rules N] [--hups N] [--duration SECS] [--reps N] [--qps N] [--interval SECS]
#                   [--log-level FILTER] [--dnsward PATH] [--keep] [--seed N]
#
# See bench/README.md ("Reload benchmark"). Reuses bench/lib.sh and the inputs run.sh generates.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"

# ---------------------------------------------------------------- options
RULES=1000000
HUPS=5                 # part 1: SIGHUPs timed one at a time
DURATION=10            # part 2: seconds per dnsperf run
REPS=3                 # part 2: steady/reloading pairs (median reported)
QPS=20000              # part 2: fixed query rate (as run.sh's p99)
INTERVAL=1             # part 2: seconds between SIGHUPs while reloading
CLIENTS=20
THREADS=2
LOG_LEVEL="info"       # shipped default; must let dnsward::reload's "reload applied" through
DNSWARD_BIN="$REPO_DIR/target/release/dnsward"
GIVEN_BIN=0
KEEP=0
SEED=20261125

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rules) RULES="$2"; shift 2 ;;
        --hups) HUPS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --qps) QPS="$2"; shift 2 ;;
        --interval) INTERVAL="$2"; shift 2 ;;
        --log-level) LOG_LEVEL="$2"; shift 2 ;;
        --dnsward) DNSWARD_BIN="$2"; GIVEN_BIN=1; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --seed) SEED="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option: $1" >&2; usage 2 ;;
    esac
done

# Own ports and own run directory: run.sh (15300-15331, $WORK/run) may be running at the same time.
PORT_NSD=15400
PORT_DNSWARD=15401
WORK="${BENCH_WORK:-/tmp/dnsward-bench}"
RUN_DIR="$WORK/reload-run.$$"
STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
RESULTS_DIR="$BENCH_DIR/results"
RESULT_MD="$RESULTS_DIR/$STAMP-reload.md"
LOG_TAG="reload"

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
HUP_LOOP_PID=""
stop_hup_loop() {
    if [[ -n "$HUP_LOOP_PID" ]] && kill -0 "$HUP_LOOP_PID" 2>/dev/null; then
        kill -TERM "$HUP_LOOP_PID" 2>/dev/null || true
        wait "$HUP_LOOP_PID" 2>/dev/null || true
    fi
    HUP_LOOP_PID=""
}
CLEANUP_HOOKS+=("stop_hup_loop")
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in dnsperf nsd python3; do command -v "$tool" >/dev/null || die "$tool not installed (bench/run.sh installs it)"; done
[[ -x "$DNSWARD_BIN" ]] || die "no dnsward binary at $DNSWARD_BIN (cargo build --release)"
mkdir -p "$WORK" "$RESULTS_DIR" "$RUN_DIR"
for p in $PORT_NSD $PORT_DNSWARD; do port_free "$p" || die "port $p is in use"; done

bench_inputs
start_nsd

# ---------------------------------------------------------------- dnsward
CFG="$RUN_DIR/dnsward.toml"
RENDER_PORT=$PORT_DNSWARD render "$BENCH_DIR/templates/dnsward.toml" "$CFG"
sed -i -e "s|^level = .*|level = \"$LOG_LEVEL\"|" \
    -e "/^allow *=/a data_dir = \"$RUN_DIR/data\"" "$CFG"
cat >>"$CFG" <<EOF

[recursion]
enabled = false

[reload]
watch = false                  # SIGHUP only: every reload below is one we sent

[audit]
enabled = true
dir = "$RUN_DIR/audit"
EOF
"$DNSWARD_BIN" check --config "$CFG" >"$RUN_DIR/dnsward.check" 2>&1 \
    || { cat "$RUN_DIR/dnsward.check" >&2; die "dnsward check rejected $CFG"; }
TREE_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_DIR" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')"
if [[ "$GIVEN_BIN" == 1 ]]; then
    # A binary given with --dnsward need not be built from the tree the script runs in.
    VERSION_DW="$("$DNSWARD_BIN" --version 2>/dev/null | head -1) (binary $DNSWARD_BIN; source tree at $TREE_REV)"
else
    VERSION_DW="$("$DNSWARD_BIN" --version 2>/dev/null | head -1) ($TREE_REV)"
fi

log "starting dnsward on 127.0.0.1:$PORT_DNSWARD with $RULES_TOTAL rules"
start_server dnsward "$PORT_DNSWARD" env -u RUST_LOG "$DNSWARD_BIN" serve --config "$CFG"
DW_PID="$PID_dnsward"
DW_ERR="$RUN_DIR/dnsward.err"
START_DW="$START_S"
RSS_START="$(rss_mib "$DW_PID")"
log "dnsward answering after ${START_DW}s, RSS $RSS_START MiB"

alive() { kill -0 "$DW_PID" 2>/dev/null || { tail -20 "$DW_ERR" >&2; die "dnsward (pid $DW_PID) died"; }; }
applied_count() { grep -c 'reload applied' "$DW_ERR" || true; }

# ---------------------------------------------------------------- 1. reload time
# Each SIGHUP is sent on an otherwise idle server; the reload time is from just before kill -HUP
# to the RFC 3339 timestamp of dnsward's "reload applied generation=G" line (the new state is
# swapped in when that line is written).
RELOAD_S=""
generation=1
for ((i = 1; i <= HUPS; i++)); do
    wait_no_dnsperf
    alive
    generation=$((generation + 1))
    offset="$(stat -c %s "$DW_ERR")"
    t0="$(date +%s%N)"
    kill -HUP "$DW_PID"
    line=""
    deadline=$(( $(date +%s) + 300 ))
    while [[ -z "$line" ]]; do
        line="$(tail -c +"$((offset + 1))" "$DW_ERR" | grep -m1 -E "reload (applied|refused)" || true)"
        [[ -n "$line" ]] && break
        (( $(date +%s) < deadline )) || die "no 'reload applied' within 300 s of SIGHUP $i"
        alive
        sleep 0.02
    done
    [[ "$line" == *"reload applied"* ]] || { tail -20 "$DW_ERR" >&2; die "reload $i refused: $line"; }
    [[ "$line" == *"generation=$generation "* || "$line" == *"generation=$generation" ]] \
        || die "expected generation=$generation, got: $line"
    ts="$(awk '{print $1}' <<<"$line")"
    t1="$(date -d "$ts" +%s%N)" || die "cannot parse timestamp '$ts'"
    secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')"
    RELOAD_S+="$secs "
    log "SIGHUP $i: generation $generation applied after ${secs}s (RSS $(rss_mib "$DW_PID") MiB)"
    sleep 1   # let the old state be freed before the next one
done
RELOAD_SORTED="$(tr ' ' '\n' <<<"$RELOAD_S" | grep -v '^$' | sort -g)"
RELOAD_MIN="$(head -1 <<<"$RELOAD_SORTED")"; RELOAD_MAX="$(tail -1 <<<"$RELOAD_SORTED")"
RELOAD_MED="$(awk '{v[NR]=$1} END{ if (NR%2) printf "%.3f", v[(NR+1)/2]; else printf "%.3f", (v[NR/2]+v[NR/2+1])/2 }' <<<"$RELOAD_SORTED")"
# the blocked probe must still be blocked by the reloaded list
python3 "$BENCH_DIR/dnsprobe.py" --port "$PORT_DNSWARD" --name "$PROBE_BLOCKED" --expect NXDOMAIN \
    >/dev/null || die "after reloads, $PROBE_BLOCKED is not NXDOMAIN"

# ---------------------------------------------------------------- warm-up
wait_no_dnsperf
log "warming the cache (one pass over $QUERIES)"
dnsperf -s 127.0.0.1 -p "$PORT_DNSWARD" -d "$QUERIES" -n 1 -c "$CLIENTS" -T "$THREADS" -q 200 \
    >"$RUN_DIR/warm" 2>&1 || die "warm-up dnsperf failed"
RSS_WARM="$(rss_mib "$DW_PID")"

# ---------------------------------------------------------------- 2. latency, steady vs reloading
hup_loop() {  # SIGHUP every INTERVAL s until killed
    trap 'exit 0' TERM
    while kill -0 "$DW_PID" 2>/dev/null; do kill -HUP "$DW_PID" 2>/dev/null || true; sleep "$INTERVAL"; done
}
fixed_rate() {  # fixed_rate OUTFILE: dnsperf at QPS for DURATION with per-answer latencies
    dnsperf -s 127.0.0.1 -p "$PORT_DNSWARD" -d "$QUERIES" -c "$CLIENTS" -T "$THREADS" \
        -l "$DURATION" -Q "$QPS" -v >"$1" 2>&1 || die "dnsperf failed, see $1"
}
servfails() { grep -o 'SERVFAIL_[0-9]*' <<<"$1" | tr -dc '0-9' | grep . || echo 0; }  # rcodes as parse_dnsperf prints them
declare -A P50 P99 MAX LOSTS SFS QPSS
for mode in steady reloading; do P50[$mode]=""; P99[$mode]=""; MAX[$mode]=""; LOSTS[$mode]=""; SFS[$mode]=""; QPSS[$mode]=""; done
APPLIED_RUNS=""; HUPS_SENT_RUNS=""
for ((r = 1; r <= REPS; r++)); do
    for mode in steady reloading; do
        wait_no_dnsperf
        alive
        out="$RUN_DIR/$mode.$r"
        if [[ $mode == reloading ]]; then
            a0="$(applied_count)"
            hup_loop & HUP_LOOP_PID=$!; PIDS+=("$HUP_LOOP_PID")
            fixed_rate "$out"
            stop_hup_loop
            # let the reload in progress (if any) finish, then count what was applied
            sleep 3
            a1="$(applied_count)"
            APPLIED_RUNS+="$((a1 - a0)) "
        else
            fixed_rate "$out"
        fi
        read -r qps completed lost mean sd rcodes < <(parse_dnsperf "$out")
        read -r p50 p99 max n < <(latency_from_verbose "$out")
        sf="$(servfails "$rcodes")"
        P50[$mode]+="$p50 "; P99[$mode]+="$p99 "; MAX[$mode]+="$max "
        LOSTS[$mode]+="$lost "; SFS[$mode]+="$sf "; QPSS[$mode]+="$qps "
        log "run $r $mode: $n answers, p50 $p50 ms, p99 $p99 ms, max $max ms, lost $lost, ${rcodes}$([[ $mode == reloading ]] && echo ", reloads applied $((a1 - a0))")"
        [[ "$KEEP" == 1 ]] || rm -f "$out"
    done
done
HWM="$(hwm_mib "$DW_PID")"
alive

# Anything dnsward logged at WARN/ERROR level (per-query "decision" lines are INFO).
grep -E '^[^ ]+ +(WARN|ERROR)' "$DW_ERR" >"$RUN_DIR/problems" || true
N_PROBLEMS="$(wc -l <"$RUN_DIR/problems")"
N_REFUSED="$(grep -c 'reload refused' "$DW_ERR" || true)"
DROPS="$(ss -Huanm "sport = :$PORT_DNSWARD" | grep -o ',d[0-9]*)' | tr -dc '0-9\n' | awk '{s+=$1} END{print s+0}')"

# ---------------------------------------------------------------- 3. report
med() { median <<<"$1"; }
sum() { tr ' ' '\n' | awk '{s+=$1} END{print s+0}'; }
joinp() { sed 's/ *$//; s/ /, /g' <<<"$1"; }
RATIO="$(awk -v a="$(med "${P99[reloading]}")" -v b="$(med "${P99[steady]}")" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "n/a"}')"
TABLE="$RUN_DIR/table.md"
{
    printf '| dnsward, %s rules | steady | SIGHUP every %s s | reloading / steady |\n' "$RULES_TOTAL" "$INTERVAL"
    printf '|---|---|---|---|\n'
    printf '| reload time, SIGHUP to `reload applied` (idle server, n=%d): min / median / max | %s / %s / %s s | | |\n' \
        "$HUPS" "$RELOAD_MIN" "$RELOAD_MED" "$RELOAD_MAX"
    printf '| p50 at %s QPS (ms, median of %d) | %s | %s | %s |\n' "$QPS" "$REPS" "$(med "${P50[steady]}")" "$(med "${P50[reloading]}")" \
        "$(awk -v a="$(med "${P50[reloading]}")" -v b="$(med "${P50[steady]}")" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "n/a"}')"
    printf '| **p99** at %s QPS (ms, median of %d) | %s | %s | **%s** |\n' "$QPS" "$REPS" "$(med "${P99[steady]}")" "$(med "${P99[reloading]}")" "$RATIO"
    printf '| max at %s QPS (ms, median of %d) | %s | %s | |\n' "$QPS" "$REPS" "$(med "${MAX[steady]}")" "$(med "${MAX[reloading]}")"
    printf '| lost queries (sum of %d x %d s runs) | %s | %s | |\n' "$REPS" "$DURATION" "$(sum <<<"${LOSTS[steady]}")" "$(sum <<<"${LOSTS[reloading]}")"
    printf '| SERVFAIL answers (sum) | %s | %s | |\n' "$(sum <<<"${SFS[steady]}")" "$(sum <<<"${SFS[reloading]}")"
    printf '| reloads applied per %s s run | | %s | |\n' "$DURATION" "$(joinp "$APPLIED_RUNS")"
} >"$TABLE"

{
    echo "# dnsward reload benchmark, $STAMP"
    echo
    echo "- machine: $(machine_line)"
    echo "- dnsward: $VERSION_DW; forward to nsd $(nsd -v 2>&1 | awk '/^NSD version/{print $3; exit}') on loopback; [recursion] enabled = false, [reload] watch = false, [audit] enabled = true (unsigned), log.level = \"$LOG_LEVEL\"; start ${START_DW}s; RSS after start / warm / peak (VmHWM at the end) $RSS_START / $RSS_WARM / $HWM MiB"
    echo "- load: dnsperf $(dnsperf -h 2>&1 | awk '/^Version/{print $2}') -c $CLIENTS -T $THREADS -Q $QPS -l $DURATION -v (percentiles of the per-answer latencies), on the same 2 cores as the server; cache warmed by one pass; $REPS steady/reloading pairs, interleaved; each run waited until no other dnsperf was running"
    echo "- block list: $RULES_TOTAL rules ($RULES synthetic, seed $SEED, + lists/exchanges.txt); queries: $(awk -F= '$1=="queries"{q=$2} $1=="queries_blocked"{b=$2} END{printf "%d lines, %d blocked (%.0f%%)", q, b, 100*b/q}' "$GEN/stats.txt")"
    echo "- reloading = a loop sends SIGHUP every ${INTERVAL}s during the run; signals arriving while a reload is in progress coalesce, so 'reloads applied' can be fewer than the seconds of the run"
    echo "- other load at the end: loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    cat "$TABLE"
    echo
    echo "Per run: reload times (s) $(joinp "$RELOAD_S"); steady p50 $(joinp "${P50[steady]}") / p99 $(joinp "${P99[steady]}") / max $(joinp "${MAX[steady]}") ms, lost $(joinp "${LOSTS[steady]}"), QPS $(joinp "${QPSS[steady]}"); reloading p50 $(joinp "${P50[reloading]}") / p99 $(joinp "${P99[reloading]}") / max $(joinp "${MAX[reloading]}") ms, lost $(joinp "${LOSTS[reloading]}"), QPS $(joinp "${QPSS[reloading]}"). dnsward WARN/ERROR lines: $N_PROBLEMS (reload refused: $N_REFUSED); UDP rcvbuf drops: $DROPS; warm-up $(grep -o 'lost: *[0-9]*' "$RUN_DIR/warm" | tr -s ' ')."
    if [[ "$N_PROBLEMS" -gt 0 ]]; then
        echo; echo "First dnsward WARN/ERROR lines:"; echo; echo '```'; head -10 "$RUN_DIR/problems"; echo '```'
    fi
} >>"$RESULT_MD"

echo
cat "$TABLE"
echo
if [[ "$N_PROBLEMS" -gt 0 ]]; then log "dnsward logged $N_PROBLEMS WARN/ERROR lines:"; head -10 "$RUN_DIR/problems" >&2; fi
log "results appended to $RESULT_MD"
if [[ "$KEEP" == 1 ]]; then log "raw outputs kept in $RUN_DIR"; fi
