# Shared shell functions of the benchmark kit, sourced by bench/run.sh and bench/reload.sh.
# The caller sets BENCH_DIR, REPO_DIR, WORK (cache of generated inputs), RUN_DIR (this run's
# scratch directory, removed at exit unless KEEP=1), and before calling the input/nsd helpers
# RULES, SEED and PORT_NSD.

LOG_TAG="${LOG_TAG:-bench}"
log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup (trap EXIT)
# Every background process a script starts goes into PIDS; cleanup stops exactly those (TERM,
# then KILL after 0.5 s). Callers install it: trap cleanup EXIT; trap 'exit 130' INT TERM
PIDS=()
CLEANUP_HOOKS=()     # commands run first (e.g. stopping a SIGHUP loop)
cleanup() {
    local rc=$? hook pid
    for hook in "${CLEANUP_HOOKS[@]:-}"; do [[ -n "$hook" ]] && eval "$hook" || true; done
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    sleep 0.5
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if [[ "${KEEP:-0}" == 0 && -n "${RUN_DIR:-}" && -d "$RUN_DIR" ]]; then rm -rf "$RUN_DIR"; fi
    exit "$rc"
}

# ---------------------------------------------------------------- helpers
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }       # utime+stime, all threads
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
port_free() { ! ss -Hlnu "sport = :$1" | grep -q . && ! ss -Hlnt "sport = :$1" | grep -q .; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END{ if (NR==0) {print "nan"; exit} if (NR%2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2 }'; }

# wait_no_dnsperf [MAX_SECS]: this machine is shared; wait until no dnsperf (anyone's) runs.
wait_no_dnsperf() {
    local max="${1:-900}" t=0
    while pgrep -x dnsperf >/dev/null; do
        ((t % 30 == 0)) && log "waiting for another dnsperf to finish (${t}s)"
        sleep 1; t=$((t + 1))
        ((t < max)) || die "a dnsperf has been running for ${max}s; giving up"
    done
}

# start_server NAME PORT CMD...: launches CMD in the background, records its pid, waits until the
# list is in force (a blocked name answers NXDOMAIN) and an allowed name resolves; stores
# START_S (seconds from launch) and PID_<NAME>.
start_server() {
    local name="$1" port="$2"; shift 2
    port_free "$port" || die "port $port is in use (another run still up?)"
    local t0; t0="$(date +%s%N)"
    "$@" >"$RUN_DIR/$name.out" 2>"$RUN_DIR/$name.err" &
    local pid=$!
    PIDS+=("$pid")
    local probe
    if ! probe="$(python3 "$BENCH_DIR/dnsprobe.py" --port "$port" --name "$PROBE_BLOCKED" \
            --expect NXDOMAIN --wait --timeout 600 --since-ns "$t0" --pid "$pid")"; then
        tail -20 "$RUN_DIR/$name.err" >&2 || true
        die "$name did not answer NXDOMAIN for $PROBE_BLOCKED: $probe"
    fi
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up"
    START_S="$(awk '{print $3}' <<<"$probe")"
    # correctness: subdomain of a listed name blocked, allowed name answered from the upstream
    python3 "$BENCH_DIR/dnsprobe.py" --port "$port" --name "$PROBE_BLOCKED_SUB" --expect NXDOMAIN \
        >/dev/null || die "$name: $PROBE_BLOCKED_SUB (subdomain of a listed name) not NXDOMAIN"
    python3 "$BENCH_DIR/dnsprobe.py" --port "$port" --name "$PROBE_ALLOWED" --expect NOERROR \
        --timeout 5 >/dev/null || die "$name: allowed $PROBE_ALLOWED did not resolve via nsd"
    printf -v "PID_${name//-/_}" '%s' "$pid"
}

# parse a dnsperf summary: prints "qps completed lost mean_ms sd_ms rcodes"
parse_dnsperf() {
    awk '
        /Queries completed:/ {c=$3}
        /Queries lost:/ {l=$3}
        /Queries per second:/ {q=$4}
        /Average Latency \(s\):/ {m=$4*1000}
        /Latency StdDev \(s\):/ {s=$4*1000}
        /Response codes:/ {sub(/^ *Response codes: */, ""); gsub(/ /, "_"); r=$0}
        END {printf "%s %s %s %.3f %.3f %s\n", q, c, l, m, s, r}' "$1"
}

# p99 from dnsperf -v output ("> NOERROR name A 0.000123"): latency is the last field
p99_from_verbose() {
    awk '$1==">" && $2 != "T" && $2 != "I" {print $NF}' "$1" | sort -g | awk '
        {v[NR]=$1} END {if (NR==0) {print "nan nan nan"; exit}
            i=int(NR*0.99); if (i<1) i=1; j=int(NR*0.5); if (j<1) j=1;
            printf "%.3f %.3f %d\n", v[j]*1000, v[i]*1000, NR}'
}

# the same percentiles plus the maximum: prints "p50_ms p99_ms max_ms answers"
latency_from_verbose() {
    awk '$1==">" && $2 != "T" && $2 != "I" {print $NF}' "$1" | sort -g | awk '
        {v[NR]=$1} END {if (NR==0) {print "nan nan nan 0"; exit}
            i=int(NR*0.99); if (i<1) i=1; j=int(NR*0.5); if (j<1) j=1;
            printf "%.3f %.3f %.3f %d\n", v[j]*1000, v[i]*1000, v[NR]*1000, NR}'
}

# ---------------------------------------------------------------- inputs (cached per rules+seed)
# bench_inputs: generates (or reuses) the block list, zones and queries for RULES and SEED under
# WORK; sets GEN, PROBE_ALLOWED, PROBE_BLOCKED, PROBE_BLOCKED_SUB, RULES_TOTAL, QUERIES.
bench_inputs() {
    GEN="$WORK/gen-$RULES-$SEED"
    if [[ ! -f "$GEN/stats.txt" ]]; then
        log "generating $RULES rules, queries and zones (seed $SEED) into $GEN"
        rm -rf "$GEN"; mkdir -p "$GEN"
        python3 "$BENCH_DIR/gen_lists.py" --rules "$RULES" --seed "$SEED" \
            --exchanges "$REPO_DIR/lists/exchanges.txt" --outdir "$GEN"
    else
        log "reusing generated inputs in $GEN"
    fi
    local probe
    mapfile -t probe < "$GEN/probe.txt"
    PROBE_ALLOWED="${probe[0]}"; PROBE_BLOCKED="${probe[1]}"; PROBE_BLOCKED_SUB="${probe[2]}"
    RULES_TOTAL="$(awk -F= '$1=="rules_total"{print $2}' "$GEN/stats.txt")"
    QUERIES="$GEN/queries.txt"
}

render() {  # render TEMPLATE OUT: substitutes @VAR@ placeholders (RENDER_PORT = @PORT@)
    sed -e "s|@WORK@|$RUN_DIR|g" -e "s|@GEN@|$GEN|g" -e "s|@PORT_NSD@|$PORT_NSD|g" \
        -e "s|@PORT@|$RENDER_PORT|g" -e "s|@THREADS@|${THREADS:-2}|g" "$1" >"$2"
}

# start_nsd: the loopback authoritative upstream on 127.0.0.1:PORT_NSD serving GEN's zones.
start_nsd() {
    log "starting nsd on 127.0.0.1:$PORT_NSD"
    port_free "$PORT_NSD" || die "port $PORT_NSD is in use"
    RENDER_PORT=$PORT_NSD render "$BENCH_DIR/templates/nsd.conf" "$RUN_DIR/nsd.conf"
    cat "$GEN/nsd-zones.conf" >>"$RUN_DIR/nsd.conf"
    nsd-checkconf "$RUN_DIR/nsd.conf" || die "nsd.conf invalid"
    nsd -d -c "$RUN_DIR/nsd.conf" >"$RUN_DIR/nsd.out" 2>"$RUN_DIR/nsd.err" &
    PIDS+=("$!")
    python3 "$BENCH_DIR/dnsprobe.py" --port "$PORT_NSD" --name "$PROBE_ALLOWED" --expect NOERROR \
        --wait --timeout 60 >/dev/null || { cat "$RUN_DIR/nsd.err" >&2; die "nsd does not answer"; }
}

# machine_line: "2 CPU (model), N MiB RAM, kernel K, Debian V"
machine_line() {
    echo "$(nproc) CPU ($(lscpu | awk -F: '/Model name/{gsub(/^ +/,"",$2); print $2; exit}')), $(free -m | awk '/^Mem/{print $2}') MiB RAM, kernel $(uname -r), Debian $(cat /etc/debian_version)"
}
