#!/usr/bin/env bash
# dnsward recursion benchmark: dnsward in recursive mode against Unbound, same machine, same run,
# same signed loopback hierarchy (nsd on 127.0.53.x:53, as in tests/recursion.rs), same root hints
# and trust anchor, both validating. Issue 6: cold- and warm-cache QPS and latency.
#
#   bench/recursion.sh [--zones N] [--duration SECS] [--reps N] [--restarts N] [--rate QPS]
#                      [--quick] [--no-audit] [--dnsward PATH] [--no-build] [--keep]
#
# What is measured (all answers over UDP on 127.0.0.1, one resolver at a time):
# - cold, first query: RESTARTS times per resolver, start it afresh and time one question
#   (www.cNNN.ward. A, a different zone each time): the whole walk from the root hints, DNSSEC
#   chain included (root DNSKEY, ward. DS/DNSKEY, the zone's DS/DNSKEY, the answer);
# - cold zones: on a freshly started resolver, one question per bench zone, one at a time
#   (www.c001.ward. ... A): root and ward. are cached after the first, each zone is new
#   (delegation, DS, DNSKEY, answer), which is what a resolver meets on the internet; REPS
#   rounds on fresh processes, median and p99 of all the per-question latencies;
# - warm: dnsperf on the same query file (positive, CNAME, NXDOMAIN and NODATA answers in every
#   bench zone and the test zones), after one warm-up pass: QPS and mean latency at saturation
#   (-c CLIENTS), p50/p99 from a run rate-limited to RATE QPS with -v; REPS repetitions,
#   round-robin, median reported.
# Needs root (port 53 on 127.0.53.x, apt-get) and the Debian packages nsd, ldnsutils, unbound,
# dnsperf. Do not run it while `cargo test --test recursion` runs: both bind 127.0.53.x:53.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
HIERARCHY="$REPO_DIR/tests/hierarchy"

# ---------------------------------------------------------------- options
ZONES=100
DURATION=10
REPS=3
RESTARTS=10
RATE=5000            # p50/p99 run: fixed rate, below both resolvers' saturation
CLIENTS=20
THREADS=2
DNSWARD_BIN=""
GIVEN_BIN=0
BUILD=1
KEEP=0

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
# --no-audit: dnsward with `[audit] enabled = false`, like for like with Unbound, which logs no
# queries (the default run keeps dnsward's shipped default: the audit log on).
AUDIT_OFF=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --zones) ZONES="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --restarts) RESTARTS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --quick) ZONES=30; DURATION=5; REPS=1; RESTARTS=5; shift ;;
        --dnsward) DNSWARD_BIN="$2"; GIVEN_BIN=1; BUILD=0; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        --no-audit) AUDIT_OFF=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option: $1" >&2; usage 2 ;;
    esac
done
((ZONES >= RESTARTS)) || { echo "--zones must be at least --restarts" >&2; exit 2; }

PORT_DNSWARD=15401
PORT_UNBOUND=15402
# The hierarchy's addresses (tests/hierarchy/README.md); only these zones are served.
NS_ADDRS=(127.0.53.1 127.0.53.2 127.0.53.3 127.0.53.10 127.0.53.11)

WORK="${BENCH_WORK:-/tmp/dnsward-bench}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
STAMP="$(date -u +%Y-%m-%dT%H%MZ)"
RESULTS_DIR="$BENCH_DIR/results"
AUDIT_NOTE=""; RESULT_SUFFIX=""
if ((AUDIT_OFF)); then AUDIT_NOTE=" and the audit log off"; RESULT_SUFFIX="-no-audit"; fi
RESULT_MD="$RESULTS_DIR/$STAMP-recursion$RESULT_SUFFIX.md"
RUN_DIR="$WORK/recursion-run"
LOG_TAG="bench-recursion"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"   # log, die, cleanup, PIDS, median, parse_dnsperf, latency_from_verbose

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- packages, binary, ports
need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v unbound >/dev/null || need+=(unbound)
command -v nsd >/dev/null || need+=(nsd)
command -v ldns-signzone >/dev/null || need+=(ldnsutils)
if [[ ${#need[@]} -gt 0 ]]; then
    [[ $EUID -eq 0 ]] || die "need root to apt-get install ${need[*]}"
    log "installing: ${need[*]}"
    # A temporary policy-rc.d keeps the packages' daemons from starting (as bench/run.sh does).
    policy=/usr/sbin/policy-rc.d
    [[ -e $policy ]] && die "$policy exists; install ${need[*]} by hand"
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
        >"$WORK/apt-recursion.log" 2>&1 || { rm -f "$policy"; die "apt-get failed"; }
    rm -f "$policy"
fi

mkdir -p "$WORK" "$RESULTS_DIR"
rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR"

addr_free() { ! ss -Hlnu "src $1" | grep -q . && ! ss -Hlnt "src $1" | grep -q .; }
for a in "${NS_ADDRS[@]}"; do
    addr_free "$a:53" || die "$a:53 is in use (cargo test --test recursion running?)"
done
for p in $PORT_DNSWARD $PORT_UNBOUND; do port_free "$p" || die "port $p is in use"; done

if [[ -z "$DNSWARD_BIN" ]]; then
    if [[ "$BUILD" == 1 ]]; then
        log "building dnsward (release) in $REPO_DIR, target $TARGET_DIR"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q) \
            || die "cargo build failed"
    fi
    DNSWARD_BIN="$TARGET_DIR/release/dnsward"
fi
[[ -x "$DNSWARD_BIN" ]] || die "no dnsward binary at $DNSWARD_BIN"

# ---------------------------------------------------------------- zones: test templates + bench zones
# Signed as tests/common/hierarchy.rs does: ldns-keygen ECDSA P-256 KSK + ZSK per zone, children
# first, each child's DS appended to its parent before the parent is signed. TTLs are raised to a
# day so nothing expires during the run in either resolver.
ZDIR="$RUN_DIR/zones"; mkdir -p "$ZDIR"
stem() { if [[ $1 == . ]]; then echo root; else echo "${1%.}"; fi; }
parent() { local rest="${1#*.}"; if [[ -z $rest ]]; then echo .; else echo "$rest"; fi; }

# zone -> server address; signing mode (normal | nsec3 | none)
declare -A SERVED_BY MODE
SIGN_ORDER=()
add_zone() { SERVED_BY[$1]="$2"; MODE[$1]="$3"; SIGN_ORDER+=("$1"); }

BENCH_ZONES=()
for ((i = 1; i <= ZONES; i++)); do
    z="$(printf 'c%03d.ward.' "$i")"; BENCH_ZONES+=("$z")
    add_zone "$z" 127.0.53.10 normal
    {
        printf '$ORIGIN %s\n$TTL 86400\n' "$z"
        printf '@    IN SOA ns.%s hostmaster.%s 1 1800 900 604800 300\n' "$z" "$z"
        printf '@    IN NS  ns.%s\nns   IN A   127.0.53.10\n' "$z"
        printf 'www  IN A   192.0.2.%d\nwww  IN AAAA 2001:db8::%x\n' $((i % 250 + 1)) "$i"
        printf 'mail IN A   198.51.100.%d\n@    IN MX  10 mail.%s\n' $((i % 250 + 1)) "$z"
        printf 'web  IN CNAME www.%s\n' "$z"
    } >"$ZDIR/$(stem "$z").zone"
done
add_zone good.ward.     127.0.53.10 normal
add_zone nsec3.ward.    127.0.53.10 nsec3
add_zone insecure.ward. 127.0.53.10 none
add_zone ok.lab.        127.0.53.10 normal
add_zone glueless.ward. 127.0.53.11 normal
add_zone hosting.lab.   127.0.53.11 normal
add_zone ward.          127.0.53.2  normal
add_zone lab.           127.0.53.3  normal
add_zone .              127.0.53.1  normal
for z in "${SIGN_ORDER[@]}"; do
    s="$(stem "$z")"
    [[ -f "$ZDIR/$s.zone" ]] || sed 's/^\$TTL .*/$TTL 86400/' "$HIERARCHY/$s.zone" >"$ZDIR/$s.zone"
done
for z in "${BENCH_ZONES[@]}"; do
    printf '%s IN NS ns.%s\nns.%s IN A 127.0.53.10\n' "${z%.ward.}" "${z%.ward.}" "${z%.ward.}" \
        >>"$ZDIR/ward.zone"
done

log "signing ${#SIGN_ORDER[@]} zones"
ROOT_KSK=""
for z in "${SIGN_ORDER[@]}"; do
    s="$(stem "$z")"
    if [[ ${MODE[$z]} == none ]]; then cp "$ZDIR/$s.zone" "$ZDIR/$s.zone.signed"; continue; fi
    ksk="$(cd "$ZDIR" && ldns-keygen -a ECDSAP256SHA256 -k "$z")"
    zsk="$(cd "$ZDIR" && ldns-keygen -a ECDSAP256SHA256 "$z")"
    nsec3=(); [[ ${MODE[$z]} == nsec3 ]] && nsec3=(-n)
    (cd "$ZDIR" && ldns-signzone "${nsec3[@]}" -f "$s.zone.signed" "$s.zone" "$zsk" "$ksk") \
        || die "ldns-signzone $z failed"
    if [[ $z == . ]]; then
        ROOT_KSK="$(cut -d';' -f1 "$ZDIR/$ksk.key")"
    else
        (cd "$ZDIR" && ldns-key2ds -n -2 "$ksk.key") >>"$ZDIR/$(stem "$(parent "$z")").zone"
    fi
done
printf '%s\n' "$ROOT_KSK" >"$RUN_DIR/root.anchor"
printf '.                    3600000 IN NS a.root-servers.net.\na.root-servers.net.  3600000 IN A  127.0.53.1\n' \
    >"$RUN_DIR/root.hints"

# ---------------------------------------------------------------- nsd, one per address
for a in "${NS_ADDRS[@]}"; do
    conf="$RUN_DIR/nsd-$a.conf"
    cat >"$conf" <<EOF
server:
  ip-address: $a
  port: 53
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "$ZDIR"
  database: ""
  pidfile: "$RUN_DIR/nsd-$a.pid"
  xfrdfile: "$RUN_DIR/xfrd-$a"
  zonelistfile: "$RUN_DIR/zonelist-$a"
  xfrdir: "$RUN_DIR"
  logfile: "$RUN_DIR/nsd-$a.log"
  server-count: 1
  verbosity: 1
  tcp-count: 256
  # No response rate limiting: both resolvers hammer it from one address.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
EOF
    first=""
    for z in "${SIGN_ORDER[@]}"; do
        [[ ${SERVED_BY[$z]} == "$a" ]] || continue
        first="${first:-$z}"
        printf 'zone:\n  name: "%s"\n  zonefile: "%s.zone.signed"\n' "$z" "$(stem "$z")" >>"$conf"
    done
    nsd-checkconf "$conf" || die "nsd config for $a invalid"
    nsd -d -c "$conf" >"$RUN_DIR/nsd-$a.out" 2>&1 &
    PIDS+=("$!")
    # (dnsprobe.py cannot encode the root name; the root server is probed for its own address)
    [[ $first == . ]] && first=a.root-servers.net.
    python3 "$BENCH_DIR/dnsprobe.py" --host "$a" --port 53 --name "$first" --type SOA \
        --expect NOERROR --wait --timeout 30 >/dev/null || die "nsd on $a does not answer"
done
log "hierarchy up: ${#SIGN_ORDER[@]} zones on ${#NS_ADDRS[@]} nsd"

# ---------------------------------------------------------------- resolvers
cat >"$RUN_DIR/dnsward.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT_DNSWARD"]
allow  = ["127.0.0.0/8"]

[recursion]
enabled = true
root_hints = "$RUN_DIR/root.hints"
trust_anchor = "$RUN_DIR/root.anchor"
# The hierarchy lives on loopback, which the default server filter refuses.
deny_servers = []

[log]
level = "info"
EOF
if ((AUDIT_OFF)); then printf '\n[audit]\nenabled = false\n' >>"$RUN_DIR/dnsward.toml"; fi
"$DNSWARD_BIN" check --config "$RUN_DIR/dnsward.toml" >"$RUN_DIR/dnsward.check" 2>&1 \
    || { cat "$RUN_DIR/dnsward.check" >&2; die "dnsward check rejected its config"; }

# Unbound: validating, QNAME minimisation (as dnsward), two threads (dnsward: tokio's 2 workers),
# caches large enough to hold everything, no prefetch (its default).
cat >"$RUN_DIR/unbound.conf" <<EOF
server:
    interface: 127.0.0.1
    port: $PORT_UNBOUND
    num-threads: $THREADS
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$RUN_DIR"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    do-ip6: no
    do-not-query-localhost: no
    root-hints: "$RUN_DIR/root.hints"
    trust-anchor-file: "$RUN_DIR/root.anchor"
    module-config: "validator iterator"
    qname-minimisation: yes
    msg-cache-size: 64m
    rrset-cache-size: 128m
    so-reuseport: yes
remote-control:
    control-enable: no
EOF
unbound-checkconf "$RUN_DIR/unbound.conf" >/dev/null || die "unbound.conf invalid"

declare -A PORT PID VERSION
PORT[dnsward]=$PORT_DNSWARD; PORT[unbound]=$PORT_UNBOUND
TREE_REV="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"
if [[ "$GIVEN_BIN" == 1 ]]; then
    # A binary given with --dnsward need not be built from the tree the script runs in.
    VERSION[dnsward]="$("$DNSWARD_BIN" --version 2>/dev/null | head -1) (binary $DNSWARD_BIN; source tree at $TREE_REV)"
else
    VERSION[dnsward]="$("$DNSWARD_BIN" --version 2>/dev/null | head -1) ($TREE_REV)"
fi
VERSION[unbound]="Unbound $(unbound -V 2>/dev/null | awk '/^Version/{print $2}')"
SERVERS=(dnsward unbound)

# start NAME: a fresh process, ready when its UDP socket is bound (not by a query: that would
# warm its cache).
start() {
    local name="$1" t=0
    case "$name" in
        dnsward) env -u RUST_LOG "$DNSWARD_BIN" serve --config "$RUN_DIR/dnsward.toml" \
                     >>"$RUN_DIR/dnsward.out" 2>>"$RUN_DIR/dnsward.err" & ;;
        unbound) unbound -d -p -c "$RUN_DIR/unbound.conf" \
                     >>"$RUN_DIR/unbound.out" 2>>"$RUN_DIR/unbound.err" & ;;
    esac
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    while port_free "${PORT[$name]}"; do
        sleep 0.02; t=$((t + 1))
        ((t < 1000)) || die "$name did not bind port ${PORT[$name]}"
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited at start-up (see $RUN_DIR/$name.err)"
    done
    sleep 0.2   # both bind before their workers run
}
stop() {
    local pid="${PID[$1]}"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    while ! port_free "${PORT[$1]}"; do sleep 0.05; done
}

# timed PORT FILE: asks each "name type" line of FILE in turn (UDP, DO=1, 10 s timeout) and prints
# "latency_ms rcode ad name type" per question.
timed() {
    python3 - "$1" "$2" <<'PY'
import random, socket, struct, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
TYPES = {"A": 1, "AAAA": 28, "MX": 15, "TXT": 16}
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(10)
for line in open(path):
    name, qtype = line.split()
    qid = random.randint(0, 65535)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    query += b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    query += struct.pack(">HH", TYPES[qtype], 1)
    query += b"\0" + struct.pack(">HHIH", 41, 1232, 0x8000, 0)   # OPT, DO=1
    start = time.perf_counter()
    sock.sendto(query, ("127.0.0.1", port))
    try:
        while True:
            data = sock.recv(4096)
            if struct.unpack(">H", data[:2])[0] == qid:
                break
        ms = (time.perf_counter() - start) * 1000
        flags = struct.unpack(">H", data[2:4])[0]
        print(f"{ms:.3f} {RCODES.get(flags & 15, flags & 15)} {(flags >> 5) & 1} {name} {qtype}")
    except socket.timeout:
        print(f"10000 TIMEOUT 0 {name} {qtype}")
    sys.stdout.flush()
PY
}
# stats FILE: "median p99 max answers noerror_with_ad" of a timed output
stats() {
    local sorted; sorted="$(awk '{print $1}' "$1" | sort -g)"
    awk -v ad="$(awk '$2=="NOERROR" && $3==1' "$1" | wc -l)" '
        {v[NR]=$1} END {i=int(NR*0.99+0.999); if (i<1) i=1; if (i>NR) i=NR;
            m = (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2;
            printf "%.2f %.2f %.2f %d %d\n", m, v[i], v[NR], NR, ad}' <<<"$sorted"
}

# others_load: load average and the busiest processes this script did not start (a neighbour
# on the shared cores makes every figure noisy, so the report says what else ran).
others_load() {
    echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(ps -eo pid=,pcpu=,comm= --sort=-pcpu \
        | awk -v mine=" ${PIDS[*]} " 'index(mine, " " $1 " ") == 0 && $3 != "ps"' \
        | head -3 | awk '{printf "%s %s%%, ", $3, $2}')"
}

wait_no_dnsperf
LOAD_START="$(others_load)"

# ---------------------------------------------------------------- cold, first query
# Round-robin so that drift hits both alike: restart r asks each resolver about zone r.
log "cold, first query: $RESTARTS restarts per resolver"
for name in "${SERVERS[@]}"; do : >"$RUN_DIR/$name.first"; done
for ((r = 1; r <= RESTARTS; r++)); do
    printf '%s A\n' "www.${BENCH_ZONES[$((r - 1))]}" >"$RUN_DIR/first.q"
    for name in "${SERVERS[@]}"; do
        start "$name"
        timed "${PORT[$name]}" "$RUN_DIR/first.q" >>"$RUN_DIR/$name.first"
        stop "$name"
    done
done

# ---------------------------------------------------------------- cold zones
# REPS rounds, round-robin, each on a fresh process (so the same zones are new again); the
# statistics are over all rounds' questions, which evens out a neighbour's bursts.
for z in "${BENCH_ZONES[@]}"; do printf 'www.%s A\n' "$z"; done >"$RUN_DIR/zones.q"
declare -A ZONE_TICKS
for name in "${SERVERS[@]}"; do : >"$RUN_DIR/$name.zones"; ZONE_TICKS[$name]=0; done
for ((r = 1; r <= REPS; r++)); do
    for name in "${SERVERS[@]}"; do
        log "cold zones, round $r: $name, $ZONES zones one at a time on a fresh process"
        start "$name"
        c0="$(cpu_ticks "${PID[$name]}")"
        timed "${PORT[$name]}" "$RUN_DIR/zones.q" >>"$RUN_DIR/$name.zones"
        c1="$(cpu_ticks "${PID[$name]}")"
        ZONE_TICKS[$name]=$((ZONE_TICKS[$name] + c1 - c0))
        stop "$name"
    done
done
# resolver CPU time per cold-zone question (utime+stime of all its threads), in ms
declare -A ZONE_CPU
for name in "${SERVERS[@]}"; do
    ZONE_CPU[$name]="$(awk -v t="${ZONE_TICKS[$name]}" -v hz="$(getconf CLK_TCK)" -v n=$((ZONES * REPS)) \
        'BEGIN{printf "%.3f", t / hz * 1000 / n}')"
done
for name in "${SERVERS[@]}"; do start "$name"; done

# ---------------------------------------------------------------- warm
QUERIES="$RUN_DIR/warm.q"
{
    for z in "${BENCH_ZONES[@]}"; do
        printf 'www.%s A\nwww.%s AAAA\nmail.%s A\nweb.%s A\n%s MX\nnope.%s A\nwww.%s MX\n' \
            "$z" "$z" "$z" "$z" "$z" "$z" "$z"
    done
    printf '%s\n' 'www.good.ward. A' 'www.good.ward. AAAA' 'txt.good.ward. TXT' \
        'alias.good.ward. A' 'chain.good.ward. A' 'nope.good.ward. A' 'www.good.ward. MX' \
        'www.ok.lab. A' 'www.nsec3.ward. A' 'nope.nsec3.ward. A' 'www.insecure.ward. A' \
        'www.glueless.ward. A'
} | shuf --random-source=<(yes) >"$QUERIES"

declare -A QPS_RUNS MEAN_RUNS P50_RUNS P99_RUNS RCODES
for name in "${SERVERS[@]}"; do
    log "warm-up: $name"
    dnsperf -s 127.0.0.1 -p "${PORT[$name]}" -d "$QUERIES" -n 1 -c "$CLIENTS" -T "$THREADS" \
        >"$RUN_DIR/$name.warm" 2>&1 || die "$name: warm-up dnsperf failed"
    QPS_RUNS[$name]=""; MEAN_RUNS[$name]=""; P50_RUNS[$name]=""; P99_RUNS[$name]=""
done
for ((r = 1; r <= REPS; r++)); do
    for name in "${SERVERS[@]}"; do
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name died before run $r"
        dnsperf -s 127.0.0.1 -p "${PORT[$name]}" -d "$QUERIES" -c "$CLIENTS" -T "$THREADS" \
            -l "$DURATION" >"$RUN_DIR/$name.run$r" 2>&1 || die "$name: dnsperf run $r failed"
        read -r qps completed lost mean sd rcodes < <(parse_dnsperf "$RUN_DIR/$name.run$r")
        QPS_RUNS[$name]+="$qps "; MEAN_RUNS[$name]+="$mean "; RCODES[$name]="$rcodes"
        log "$name run $r: $qps QPS, mean $mean ms, lost $lost, $rcodes"
    done
    for name in "${SERVERS[@]}"; do
        dnsperf -s 127.0.0.1 -p "${PORT[$name]}" -d "$QUERIES" -c "$CLIENTS" -T "$THREADS" \
            -l "$DURATION" -Q "$RATE" -v >"$RUN_DIR/$name.rate$r" 2>&1 \
            || die "$name: rate-limited run $r failed"
        read -r p50 p99 _max n < <(latency_from_verbose "$RUN_DIR/$name.rate$r")
        P50_RUNS[$name]+="$p50 "; P99_RUNS[$name]+="$p99 "
        log "$name at $RATE QPS (run $r): p50 $p50 ms, p99 $p99 ms over $n answers"
        rm -f "$RUN_DIR/$name.rate$r"
    done
done

# ---------------------------------------------------------------- report
declare -A FIRST ZSTAT QPS MEAN P50 P99
for name in "${SERVERS[@]}"; do
    FIRST[$name]="$(stats "$RUN_DIR/$name.first")"
    ZSTAT[$name]="$(stats "$RUN_DIR/$name.zones")"
    QPS[$name]="$(median <<<"${QPS_RUNS[$name]}")"
    MEAN[$name]="$(median <<<"${MEAN_RUNS[$name]}")"
    P50[$name]="$(median <<<"${P50_RUNS[$name]}")"
    P99[$name]="$(median <<<"${P99_RUNS[$name]}")"
done
field() { awk -v i="$2" '{print $i}' <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "n/a"}'; }
verdict() { awk -v a="$1" -v b="$2" -v op="$3" -v k="$4" 'BEGIN{ ok = (op=="ge") ? a >= b*k : a <= b*k; print ok ? "met" : "**not met**"}'; }

TABLE="$RUN_DIR/table.md"
{
    echo '| measure | dnsward | Unbound | dnsward / Unbound | target |'
    echo '|---|---|---|---|---|'
    d="${QPS[dnsward]}"; u="${QPS[unbound]}"
    printf '| warm QPS (median of %d x %ss, -c %d) | %.0f | %.0f | %s | >= 1x: %s |\n' "$REPS" "$DURATION" "$CLIENTS" "$d" "$u" "$(ratio "$d" "$u")" "$(verdict "$d" "$u" ge 1)"
    printf '| warm mean latency at saturation (ms) | %s | %s | %s | |\n' "${MEAN[dnsward]}" "${MEAN[unbound]}" "$(ratio "${MEAN[dnsward]}" "${MEAN[unbound]}")"
    printf '| warm p50 / p99 at %s QPS (ms) | %s / %s | %s / %s | p99 %s | |\n' "$RATE" "${P50[dnsward]}" "${P99[dnsward]}" "${P50[unbound]}" "${P99[unbound]}" "$(ratio "${P99[dnsward]}" "${P99[unbound]}")"
    d="$(field "${ZSTAT[dnsward]}" 1)"; u="$(field "${ZSTAT[unbound]}" 1)"
    printf '| cold zones: median latency, %d new zones one at a time, %d rounds (ms) | %s | %s | %s | <= 1.5x: %s |\n' "$ZONES" "$REPS" "$d" "$u" "$(ratio "$d" "$u")" "$(verdict "$d" "$u" le 1.5)"
    d="$(field "${ZSTAT[dnsward]}" 2)"; u="$(field "${ZSTAT[unbound]}" 2)"
    printf '| cold zones: p99 latency (ms) | %s | %s | %s | <= 1.5x: %s |\n' "$d" "$u" "$(ratio "$d" "$u")" "$(verdict "$d" "$u" le 1.5)"
    printf '| cold zones: resolver CPU time per question (ms) | %s | %s | %s | |\n' "${ZONE_CPU[dnsward]}" "${ZONE_CPU[unbound]}" "$(ratio "${ZONE_CPU[dnsward]}" "${ZONE_CPU[unbound]}")"
    d="$(field "${FIRST[dnsward]}" 1)"; u="$(field "${FIRST[unbound]}" 1)"
    printf '| cold start: first question from the root hints, median of %d restarts (ms) | %s | %s | %s | <= 1.5x: %s |\n' "$RESTARTS" "$d" "$u" "$(ratio "$d" "$u")" "$(verdict "$d" "$u" le 1.5)"
    printf '| cold start: slowest of the %d (ms) | %s | %s | %s | |\n' "$RESTARTS" "$(field "${FIRST[dnsward]}" 3)" "$(field "${FIRST[unbound]}" 3)" "$(ratio "$(field "${FIRST[dnsward]}" 3)" "$(field "${FIRST[unbound]}" 3)")"
} >"$TABLE"

{
    echo "# dnsward recursion benchmark, $STAMP"
    echo
    echo "- machine: $(machine_line)"
    echo "- other load (not started by this script; a busy neighbour makes figures noisy): at the start $LOAD_START at the end $(others_load)"
    echo "- servers: dnsward = ${VERSION[dnsward]}, recursive mode, validating, shipped defaults but deny_servers = []$AUDIT_NOTE; Unbound = ${VERSION[unbound]}, validator + iterator, qname-minimisation, $THREADS threads, 64m/128m caches; same root hints (127.0.53.1) and root KSK"
    echo "- hierarchy: nsd on 127.0.53.{1,2,3,10,11}:53, signed with ldns-signzone (ECDSA P-256): root, ward., lab., $ZONES bench zones c001-c$(printf '%03d' "$ZONES").ward. and the test zones good.ward., nsec3.ward. (NSEC3), insecure.ward. (unsigned), ok.lab., glueless.ward., hosting.lab."
    echo "- cold start: $RESTARTS times per resolver (round-robin), a fresh process asked one question (www.cNNN.ward. A, DO=1, a different zone each time) from a Python UDP client; cold zones: $REPS rounds (round-robin) of a fresh process asked www.cNNN.ward. A for all $ZONES zones one at a time (root and ward. cached after the first); latency = send to answer in the client"
    echo "- warm: $(wc -l <"$QUERIES") distinct questions (A, AAAA, MX, TXT; positive, CNAME, NXDOMAIN, NODATA; no DO bit), one dnsperf pass to warm up, then $REPS round-robin repetitions of dnsperf $(dnsperf -h 2>&1 | awk '/^Version/{print $2}') -c $CLIENTS -T $THREADS -l $DURATION (QPS, mean latency) and of -Q $RATE -v (p50/p99 of the per-answer latencies); medians of the repetitions. dnsperf runs on the same 2 cores as the resolver."
    echo
    cat "$TABLE"
    echo
    echo "Raw figures:"
    echo
    for name in "${SERVERS[@]}"; do
        echo "- $name: cold start (median p99 max answers NOERROR+AD) ${FIRST[$name]}; cold zones ${ZSTAT[$name]}; warm QPS per run ${QPS_RUNS[$name]}; mean ms ${MEAN_RUNS[$name]}; p99 ms ${P99_RUNS[$name]}; last run rcodes ${RCODES[$name]}"
    done
} >"$RESULT_MD"

echo
cat "$TABLE"
echo
log "results written to $RESULT_MD"
if [[ "$KEEP" == 1 ]]; then log "raw outputs kept in $RUN_DIR"; fi
