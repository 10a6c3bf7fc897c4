#!/usr/bin/env bash
# dnsward whole-server benchmark: dnsward against Unbound and PowerDNS Recursor, same machine,
# same run, same block list, same query mix, same loopback upstream (nsd).
#
#   bench/run.sh [--rules N] [--duration SECS] [--reps N] [--quick] [--audit] [--unbound-rpz]
#                [--dnsward-logs "info warn"] [--dnsward PATH] [--no-build] [--keep] [--seed N]
#
# See bench/README.md for what is measured and how. Needs root (apt-get) on Debian 12.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"

# ---------------------------------------------------------------- options
RULES=1000000
DURATION=10
REPS=3
CLIENTS=20
THREADS=2
P99_QPS=20000          # p99 is measured in a separate rate-limited run (see README)
P99_SECS=""            # default: = DURATION
AUDIT=0                # 1: run dnsward twice, [audit] enabled = false / true
UNBOUND_RPZ=0          # 1: also run Unbound with the block list as an RPZ zone
DNSWARD_BIN=""
GIVEN_BIN=0
DNSWARD_LOGS="info warn"  # dnsward log levels measured: info = shipped default (one line per
                          # blocked decision on stderr), warn = without per-query log lines
BUILD=1
KEEP=0
SEED=20261125

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rules) RULES="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --quick) RULES=100000; DURATION=5; REPS=1; shift ;;
        --audit) AUDIT=1; shift ;;
        --unbound-rpz) UNBOUND_RPZ=1; shift ;;
        --dnsward-logs) DNSWARD_LOGS="$2"; shift 2 ;;
        --dnsward) DNSWARD_BIN="$2"; GIVEN_BIN=1; BUILD=0; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        --seed) SEED="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option: $1" >&2; usage 2 ;;
    esac
done
P99_SECS="${P99_SECS:-$DURATION}"

# Ports: everything on 127.0.0.1, nothing else reachable.
PORT_NSD=15300
PORT_DNSWARD=15301        # further dnsward variants: 15311, 15321, ...
PORT_UNBOUND=15302
PORT_PDNS=15303
PORT_UNBOUND_RPZ=15304

WORK="${BENCH_WORK:-/tmp/dnsward-bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
RESULTS_DIR="$BENCH_DIR/results"
RESULT_MD="$RESULTS_DIR/$STAMP.md"
CLK_TCK="$(getconf CLK_TCK)"

RUN_DIR="$WORK/run"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"   # log, die, cleanup, start_server, parse_dnsperf, inputs, nsd, ...

# cleanup (lib.sh) stops every process in PIDS and removes $WORK/run unless --keep
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- 1. packages
install_packages() {
    local need=()
    command -v dnsperf >/dev/null || need+=(dnsperf)
    command -v unbound >/dev/null || need+=(unbound)
    command -v pdns_recursor >/dev/null || need+=(pdns-recursor)
    command -v nsd >/dev/null || need+=(nsd)
    command -v python3 >/dev/null || need+=(python3)
    if [[ ${#need[@]} -gt 0 ]]; then
        log "installing: ${need[*]}"
        [[ $EUID -eq 0 ]] || die "need root to apt-get install ${need[*]}"
        # Keep maintainer scripts from starting the daemons (they would hold port 53 and CPU):
        # a temporary policy-rc.d answering 101 ("action forbidden"); an existing one is kept.
        local policy=/usr/sbin/policy-rc.d saved=""
        if [[ -e $policy ]]; then saved="$(mktemp)"; cp -p "$policy" "$saved"; fi
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
        local rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
            >"$WORK/apt.log" 2>&1 || rc=$?
        if [[ -n $saved ]]; then cp -p "$saved" "$policy"; rm -f "$saved"; else rm -f "$policy"; fi
        if [[ $rc -ne 0 ]]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WORK/apt.log" 2>&1 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
                >>"$WORK/apt.log" 2>&1 || die "apt-get install failed, see $WORK/apt.log"
        fi
    fi
    # Whatever the packages started anyway (systemd hosts, or no policy-rc.d honoured): stop it.
    for svc in unbound pdns-recursor nsd; do
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
            systemctl stop "$svc" || true; systemctl disable "$svc" 2>/dev/null || true
        fi
        if [[ -x /etc/init.d/$svc ]] && /etc/init.d/"$svc" status >/dev/null 2>&1; then
            /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

# helpers (cpu_ticks, rss_mib, hwm_mib, port_free, start_server, parse_dnsperf, p99_from_verbose,
# median, render, bench_inputs, start_nsd, machine_line) are in bench/lib.sh

# ---------------------------------------------------------------- setup
mkdir -p "$WORK" "$RESULTS_DIR"
rm -rf "$WORK/run"; mkdir -p "$WORK/run"
install_packages

for p in $PORT_NSD $PORT_DNSWARD $PORT_UNBOUND $PORT_PDNS $PORT_UNBOUND_RPZ 15311 15321 15331; do
    port_free "$p" || die "port $p is in use"
done

if [[ -z "$DNSWARD_BIN" ]]; then
    if [[ "$BUILD" == 1 ]]; then
        log "building dnsward (release) in $REPO_DIR, target $TARGET_DIR"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q) \
            || die "cargo build failed"
    fi
    DNSWARD_BIN="$TARGET_DIR/release/dnsward"
fi
[[ -x "$DNSWARD_BIN" ]] || die "no dnsward binary at $DNSWARD_BIN"

# ---------------------------------------------------------------- 3/4. lists and queries
bench_inputs    # sets GEN, PROBE_ALLOWED, PROBE_BLOCKED, PROBE_BLOCKED_SUB, RULES_TOTAL, QUERIES

# ---------------------------------------------------------------- 2. upstream: nsd
start_nsd

# ---------------------------------------------------------------- 5. resolvers
SERVERS=()        # names, in table order
declare -A PORT START RSS_LOAD RSS_WARM HWM VERSION PIDOF

launch() {  # launch NAME PORT CMD...
    local name="$1" port="$2"; shift 2
    log "starting $name on 127.0.0.1:$port"
    start_server "$name" "$port" "$@"
    local var="PID_${name//-/_}"
    PIDOF[$name]="${!var}"; PORT[$name]="$port"; START[$name]="$START_S"
    RSS_LOAD[$name]="$(rss_mib "${PIDOF[$name]}")"
    log "$name: answering after ${START_S}s, RSS ${RSS_LOAD[$name]} MiB; warming the cache"
    # warm-up: one full pass over the query file (every allowed name occurs at least once)
    dnsperf -s 127.0.0.1 -p "$port" -d "$QUERIES" -n 1 -c "$CLIENTS" -T "$THREADS" -q 200 \
        >"$WORK/run/$name.warm" 2>&1 || die "$name: warm-up dnsperf failed"
    RSS_WARM[$name]="$(rss_mib "${PIDOF[$name]}")"
    SERVERS+=("$name")
}

# dnsward ----------------------------------------------------------------------------------------
dnsward_config() {  # dnsward_config NAME PORT AUDIT(on|off|none) [LOG_LEVEL]
    local out="$WORK/run/$1.toml"
    RENDER_PORT="$2" render "$BENCH_DIR/templates/dnsward.toml" "$out"
    sed -i "s|^level = .*|level = \"${4:-info}\"|" "$out"
    # >>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>> AUDIT ON/OFF VARIANTS >>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>
    # With --audit, dnsward is measured twice ("dnsward-audit-off", "dnsward-audit-on"). Each
    # instance with the log on writes its own log (data/audit-NAME): one log takes one writer,
    # and a second instance on the same directory refuses to start.
    case "$3" in
        on)  printf '\n[audit]\nenabled = true\ndir = "audit-%s"\n' "$1" >>"$out" ;;
        off) printf '\n[audit]\nenabled = false\n' >>"$out" ;;
        none) ;;
    esac
    # <<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<< AUDIT ON/OFF VARIANTS <<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<
    if ! "$DNSWARD_BIN" check --config "$out" >"$WORK/run/$1.check" 2>&1; then
        tail -5 "$WORK/run/$1.check" >&2; log "dnsward check rejected $out"; return 1
    fi
    echo "$out"
}

TREE_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
if [[ "$GIVEN_BIN" == 1 ]]; then
    # A binary given with --dnsward need not be built from the tree the script runs in.
    VERSION[dnsward]="$("$DNSWARD_BIN" --version 2>/dev/null | head -1) (binary $DNSWARD_BIN; source tree at $TREE_REV)"
else
    VERSION[dnsward]="$("$DNSWARD_BIN" --version 2>/dev/null | head -1) ($TREE_REV)"
fi
dw_port=$PORT_DNSWARD
for level in $DNSWARD_LOGS; do
    suffix=""; [[ $level == info ]] || suffix="-log-$level"
    if [[ "$AUDIT" == 1 ]]; then
        for audit in off on; do
            name="dnsward-audit-$audit$suffix"
            cfg="$(dnsward_config "$name" $dw_port $audit "$level")"
            VERSION[$name]="${VERSION[dnsward]}"
            launch "$name" $dw_port env -u RUST_LOG "$DNSWARD_BIN" serve --config "$cfg"
            dw_port=$((dw_port + 10))
        done
    else
        name="dnsward$suffix"
        cfg="$(dnsward_config "$name" $dw_port none "$level")"
        VERSION[$name]="${VERSION[dnsward]}"
        launch "$name" $dw_port env -u RUST_LOG "$DNSWARD_BIN" serve --config "$cfg"
        dw_port=$((dw_port + 10))
    fi
done

# Unbound (local-zone always_nxdomain) -----------------------------------------------------------
RENDER_PORT=$PORT_UNBOUND render "$BENCH_DIR/templates/unbound.conf" "$WORK/run/unbound.conf"
echo "include: \"$GEN/unbound-blocklist.conf\"" >>"$WORK/run/unbound.conf"
unbound-checkconf "$WORK/run/unbound.conf" >/dev/null 2>&1 || {
    unbound-checkconf "$WORK/run/unbound.conf" | tail -5 >&2; die "unbound.conf invalid"; }
VERSION[unbound]="Unbound $(unbound -V 2>/dev/null | awk '/^Version/{print $2}'), local-zone"
launch unbound $PORT_UNBOUND unbound -d -p -c "$WORK/run/unbound.conf"

# Unbound (RPZ), optional --------------------------------------------------------------------------
if [[ "$UNBOUND_RPZ" == 1 ]]; then
    RENDER_PORT=$PORT_UNBOUND_RPZ render "$BENCH_DIR/templates/unbound-rpz.conf" \
        "$WORK/run/unbound-rpz.conf"
    VERSION[unbound-rpz]="Unbound $(unbound -V 2>/dev/null | awk '/^Version/{print $2}'), RPZ"
    launch unbound-rpz $PORT_UNBOUND_RPZ unbound -d -p -c "$WORK/run/unbound-rpz.conf"
fi

# PowerDNS Recursor (RPZ via rpzFile in the Lua config) -------------------------------------------
mkdir -p "$WORK/run/pdns"
RENDER_PORT=$PORT_PDNS render "$BENCH_DIR/templates/recursor.conf" "$WORK/run/pdns/recursor.conf"
RENDER_PORT=$PORT_PDNS render "$BENCH_DIR/templates/recursor.lua" "$WORK/run/pdns/recursor.lua"
VERSION[pdns-recursor]="PowerDNS Recursor $(pdns_recursor --version 2>&1 | grep -o 'Recursor [0-9.]*' | head -1 | awk '{print $2}'), RPZ"
launch pdns-recursor $PORT_PDNS pdns_recursor --config-dir="$WORK/run/pdns"

# ---------------------------------------------------------------- measurement
# Round-robin: repetition r measures every server once before r+1 starts, so slow drift of this
# shared machine hits all servers alike. Servers not under test sit idle.
declare -A QPS_RUNS CPS_RUNS MEAN_RUNS P50_RUNS P99_RUNS LOST RCODES
for name in "${SERVERS[@]}"; do
    QPS_RUNS[$name]=""; CPS_RUNS[$name]=""; MEAN_RUNS[$name]=""; P50_RUNS[$name]=""; P99_RUNS[$name]=""
done
for ((r = 1; r <= REPS; r++)); do
    for name in "${SERVERS[@]}"; do
        pid="${PIDOF[$name]}"; port="${PORT[$name]}"
        kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) died before run $r"
        c0="$(cpu_ticks "$pid")"
        dnsperf -s 127.0.0.1 -p "$port" -d "$QUERIES" -c "$CLIENTS" -T "$THREADS" -l "$DURATION" \
            >"$WORK/run/$name.run$r" 2>&1 || die "$name: dnsperf run $r failed"
        c1="$(cpu_ticks "$pid")"
        read -r qps completed lost mean sd rcodes < <(parse_dnsperf "$WORK/run/$name.run$r")
        cpu_s="$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN{printf "%.3f", (b-a)/t}')"
        cps="$(awk -v n="$completed" -v c="$cpu_s" 'BEGIN{ if (c>0) printf "%.0f", n/c; else print "nan"}')"
        QPS_RUNS[$name]+="$qps "; CPS_RUNS[$name]+="$cps "; MEAN_RUNS[$name]+="$mean "
        LOST[$name]="${LOST[$name]:+${LOST[$name]}+}$lost"; RCODES[$name]="$rcodes"
        log "$name run $r: ${qps} QPS, mean ${mean} ms (sd ${sd}), cpu ${cpu_s}s -> ${cps} answers/CPU-s, lost ${lost}, ${rcodes}"
    done
    # p99: dnsperf 2.10 has no latency histogram (-O latency-histogram is not in this version),
    # so a separate run at a fixed rate (-Q, the issue's anchors use 20k QPS) with -v (one line
    # per answer with its latency) gives the percentiles, computed by sorting those latencies.
    # -v at saturation would load the generator; at a fixed rate it does not.
    for name in "${SERVERS[@]}"; do
        dnsperf -s 127.0.0.1 -p "${PORT[$name]}" -d "$QUERIES" -c "$CLIENTS" -T "$THREADS" \
            -l "$P99_SECS" -Q "$P99_QPS" -v >"$WORK/run/$name.p99.$r" 2>&1 \
            || die "$name: p99 run failed"
        read -r p50 p99 n < <(p99_from_verbose "$WORK/run/$name.p99.$r")
        P50_RUNS[$name]+="$p50 "; P99_RUNS[$name]+="$p99 "
        log "$name at $P99_QPS QPS (run $r): p50 ${p50} ms, p99 ${p99} ms over $n answers"
        rm -f "$WORK/run/$name.p99.$r"   # large; the percentiles are logged
    done
done
declare -A HWM DROPS
for name in "${SERVERS[@]}"; do
    HWM[$name]="$(hwm_mib "${PIDOF[$name]}")"
    # datagrams the kernel dropped because the server's UDP receive buffer(s) were full
    DROPS[$name]="$(ss -Huanm "sport = :${PORT[$name]}" | grep -o ',d[0-9]*)' | tr -dc '0-9\n' | awk '{s+=$1} END{print s+0}')"
done

# ---------------------------------------------------------------- 6. report
declare -A QPS CPS MEAN P50 P99
for name in "${SERVERS[@]}"; do
    P50[$name]="$(median <<<"${P50_RUNS[$name]}")"
    P99[$name]="$(median <<<"${P99_RUNS[$name]}")"
    QPS[$name]="$(median <<<"${QPS_RUNS[$name]}")"
    CPS[$name]="$(median <<<"${CPS_RUNS[$name]}")"
    MEAN[$name]="$(median <<<"${MEAN_RUNS[$name]}")"
done

fmt_int() { printf "%'.0f" "$1" 2>/dev/null || echo "$1"; }
TABLE="$WORK/run/table.md"
{
    printf '| server | start (s) | RSS after load / warm / peak (MiB) | QPS (median of %d) | answers per server CPU-s | mean latency (ms) | p50 / p99 at %s QPS (ms) | UDP rcvbuf drops |\n' "$REPS" "$(fmt_int "$P99_QPS")"
    printf '|---|---|---|---|---|---|---|---|\n'
    for name in "${SERVERS[@]}"; do
        printf '| %s | %s | %s / %s / %s | %s | %s | %s | %s / %s | %s |\n' "$name" "${START[$name]}" \
            "${RSS_LOAD[$name]}" "${RSS_WARM[$name]}" "${HWM[$name]}" "$(fmt_int "${QPS[$name]}")" \
            "$(fmt_int "${CPS[$name]}")" "${MEAN[$name]}" "${P50[$name]}" "${P99[$name]}" "${DROPS[$name]}"
    done
    # ratio rows: each dnsward variant over the best peer in each column (best = lowest for start,
    # RSS and latency; highest for QPS and answers/CPU-s). >1 is better only for QPS and CPS.
    peers=(); dws=()
    for name in "${SERVERS[@]}"; do
        if [[ $name == dnsward* ]]; then dws+=("$name"); else peers+=("$name"); fi
    done
    best() {  # best min|max ARRAYNAME
        local mode="$1" arr="$2" v="" n x
        for n in "${peers[@]}"; do
            eval "x=\"\${$arr[\$n]}\""
            if [[ -z $v ]] || awk -v a="$x" -v b="$v" -v m="$mode" 'BEGIN{exit !((m=="min")? a<b : a>b)}'; then v="$x"; fi
        done
        echo "$v"
    }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "n/a"}'; }
    for dw in "${dws[@]}"; do
        printf '| **%s / best peer** | %s | %s | %s | %s | %s | p99 %s | |\n' "$dw" \
            "$(ratio "${START[$dw]}" "$(best min START)")" \
            "$(ratio "${RSS_WARM[$dw]}" "$(best min RSS_WARM)")" \
            "$(ratio "${QPS[$dw]}" "$(best max QPS)")" \
            "$(ratio "${CPS[$dw]}" "$(best max CPS)")" \
            "$(ratio "${MEAN[$dw]}" "$(best min MEAN)")" \
            "$(ratio "${P99[$dw]}" "$(best min P99)")"
    done
} >"$TABLE"

{
    echo "# dnsward benchmark, $STAMP"
    echo
    echo "- machine: $(machine_line)"
    echo "- load: dnsperf $(dnsperf -h 2>&1 | awk '/^Version/{print $2}') -c $CLIENTS -T $THREADS -l $DURATION, $REPS run(s) per server (round-robin), on the same 2 cores as the server"
    echo "- block list: $RULES_TOTAL rules ($RULES synthetic, seed $SEED, + lists/exchanges.txt); queries: $(awk -F= '$1=="queries"{q=$2} $1=="queries_blocked"{b=$2} END{printf "%d lines, %d blocked (%.0f%%)", q, b, 100*b/q}' "$GEN/stats.txt"), allowed names answered by nsd on loopback, warmed (one pass) before measuring"
    echo "- other load on the machine at the end (not started by this script; a busy neighbour makes figures noisy): loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(ps -eo pcpu=,comm= --sort=-pcpu | grep -vE "dnsperf|unbound|pdns_recursor|dnsward|nsd|ps\$" | awk -v own="$(basename "$DNSWARD_BIN" | cut -c1-15)" '$2 != own' | head -3 | awk '{printf "%s %s%%, ", $2, $1}')"
    echo "- servers: $(for n in "${SERVERS[@]}"; do printf '%s = %s; ' "$n" "${VERSION[$n]}"; done)"
    echo "- start = launch until a listed name answers NXDOMAIN; RSS = VmRSS after start / after warm-up, peak = VmHWM at the end; answers per server CPU-s = completed queries / (server utime+stime during the run), median of runs; mean latency from dnsperf at saturation, median of runs; p50/p99 from a separate ${P99_SECS}s run per repetition rate-limited to $P99_QPS QPS with dnsperf -v (percentiles of the per-answer latencies), median of runs; UDP rcvbuf drops = skmem d counter of the server's UDP sockets at the end (ss -uanm)"
    echo
    cat "$TABLE"
    echo
    echo "Per-run figures (QPS; answers per CPU-s; mean ms):"
    echo
    for name in "${SERVERS[@]}"; do
        echo "- $name: QPS ${QPS_RUNS[$name]}; CPS ${CPS_RUNS[$name]}; mean ${MEAN_RUNS[$name]}; p99 ${P99_RUNS[$name]}; lost per run ${LOST[$name]}; warm-up $(grep -o 'lost: *[0-9]*' "$WORK/run/$name.warm" | tr -s ' ') ; last run rcodes ${RCODES[$name]}"
    done
} >"$RESULT_MD"

echo
cat "$TABLE"
echo
log "results written to $RESULT_MD"
if [[ "$KEEP" == 1 ]]; then log "raw outputs kept in $WORK/run"; fi
