#!/usr/bin/env python3
"""Deterministic inputs for the dnsward whole-server benchmark (Python 3 standard library only).

Writes into OUTDIR:
  blocklist.txt          dnsward list: one plain domain per line (the domain and its subdomains)
  unbound-blocklist.conf Unbound include: local-zone: "x." always_nxdomain
  rpz.zone               RPZ zone (origin rpz.bench.): x CNAME . and *.x CNAME .
                         (PowerDNS Recursor rpzFile(); Unbound's optional rpz: variant)
  zones/<zone>.zone      authoritative zones for nsd, holding every allowed query name
  nsd-zones.conf         nsd zone: stanzas for those zones
  queries.txt            dnsperf input: ~85% allowed names, ~15% blocked names, shuffled
  probe.txt              one allowed name, one blocked name, one blocked subdomain (start-up probe)
  stats.txt              counts, for the report

Everything is derived from --seed, so two runs with the same arguments write identical files.
Blocked names use real TLDs only; allowed names live under .test zones, so the two never overlap.
"""

import argparse
import os
import random
import sys

# Weighted TLD mix, loosely after the TLD shares seen in public block lists (ads, trackers,
# malware, phishing): .com dominates, then a long tail of gTLDs and ccTLDs.
TLDS = [
    ("com", 380), ("net", 70), ("org", 40), ("info", 30), ("xyz", 30), ("top", 28), ("ru", 25),
    ("de", 15), ("io", 12), ("cn", 14), ("co.uk", 10), ("online", 12), ("site", 12), ("club", 8),
    ("biz", 8), ("fr", 7), ("nl", 6), ("pl", 6), ("br", 6), ("com.br", 6), ("in", 6), ("it", 5),
    ("es", 5), ("jp", 5), ("co", 6), ("me", 5), ("tk", 8), ("ml", 5), ("ga", 4), ("cf", 4),
    ("gq", 4), ("pw", 4), ("cc", 5), ("us", 4), ("ca", 3), ("au", 2), ("com.au", 3), ("eu", 3),
    ("vip", 4), ("shop", 6), ("store", 4), ("live", 4), ("app", 4), ("dev", 2), ("icu", 6),
    ("buzz", 3), ("work", 3), ("click", 4), ("link", 4), ("win", 3), ("bid", 3), ("loan", 2),
    ("ir", 3), ("tr", 3), ("ua", 3), ("kz", 2), ("vn", 3), ("id", 3), ("co.id", 2), ("th", 2),
    ("kr", 2), ("tw", 2), ("com.tw", 2), ("hk", 2), ("sg", 2), ("my", 2), ("ph", 2), ("za", 2),
    ("mx", 2), ("com.mx", 2), ("ar", 2), ("cl", 1), ("pe", 1), ("cz", 2), ("sk", 1), ("hu", 1),
    ("ro", 2), ("bg", 1), ("gr", 1), ("pt", 1), ("se", 1), ("no", 1), ("fi", 1), ("dk", 1),
    ("ch", 1), ("at", 1), ("be", 1), ("ie", 1), ("nz", 1), ("lt", 1), ("lv", 1), ("ee", 1),
    ("su", 2), ("by", 1), ("ws", 2), ("to", 2), ("ly", 1), ("gg", 1), ("tv", 2), ("fm", 1),
    ("cam", 2), ("monster", 1), ("rest", 1), ("fun", 2), ("space", 2), ("website", 2),
    ("tech", 2), ("pro", 2), ("mobi", 2), ("asia", 1), ("name", 1), ("life", 2), ("today", 1),
]

WORDS = """
ad ads adserver analytics api app apps asset assets auth banner best bet bit block blog bonus
box buy cash casino cdn chain click cloud code coin connect content count crypto daily data deal
deals delivery dev digital direct dl download easy edge event exchange fast feed file files find
flash free fun game games get global go gold good green group hub info king lab land lead life
link live load local lucky mail market media metric metrics mobile money my net new news now one
online open pay pixel play plus point pop portal post power pro promo push quick rank real red
report sale save secure serve server service shop site smart social soft spin stat static stats
store stream sync tag team tech tool top track tracker tracking trade traffic trust union up
update video view vip web win world zone alpha beta delta gamma omega nova star sun moon sky blue
fox wolf lion tiger bear eagle hawk river lake ocean forest stone rock iron steel silver prime
""".split()

SYLLABLES = """
ka ko ki ku ra ro ri ru ta to ti tu na no ni nu ma mo mi mu sa so si su la lo li lu va vo vi
ve ze za zo be bo bi ga go gi de do di pe po pi fe fo fi he ho hi xa xo ye yo qu ex an en in on
ar er or ul el il ax ox ix
""".split()

SUBS = ["www", "api", "cdn", "m", "img", "static", "ads", "track", "t", "s1", "s2", "mail", "app",
        "login", "secure", "pay", "go", "click", "px", "stats", "media", "dl", "update", "ws"]


def rand_label(rng):
    kind = rng.random()
    if kind < 0.40:
        return rng.choice(WORDS) + rng.choice(WORDS)
    if kind < 0.60:
        return rng.choice(WORDS) + "-" + rng.choice(WORDS)
    if kind < 0.80:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 5)))
    if kind < 0.90:
        return rng.choice(WORDS) + str(rng.randint(1, 9999))
    # random-looking (DGA / tracker style)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    first = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return first + "".join(rng.choice(alphabet) for _ in range(rng.randint(7, 18)))


def gen_blocked(rng, n, tld_names, tld_weights):
    out = set()
    # draw TLDs in bulk: much faster than one weighted choice per name
    while len(out) < n:
        batch = n - len(out)
        tlds = rng.choices(tld_names, weights=tld_weights, k=batch)
        for tld in tlds:
            name = rand_label(rng) + "." + tld
            if rng.random() < 0.18:  # some entries are subdomains (tracker hosts on shared domains)
                name = rng.choice(SUBS) + "." + name
            if len(name) <= 200:
                out.add(name)
    return out


def read_exchanges(path):
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            token = line.split()[0].lower().rstrip(".")
            if token.startswith("||"):
                token = token[2:].rstrip("^")
            if token.startswith("*."):
                token = token[2:]
            names.append(token)
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=1_000_000, help="synthetic block-list size")
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--exchanges", default=None, help="shipped list whose entries are added")
    ap.add_argument("--allowed", type=int, default=20_000, help="distinct allowed names")
    ap.add_argument("--queries", type=int, default=200_000, help="lines in queries.txt")
    ap.add_argument("--blocked-share", type=float, default=0.15)
    ap.add_argument("--outdir", required=True)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    os.makedirs(os.path.join(args.outdir, "zones"), exist_ok=True)

    tld_names = [t for t, _ in TLDS]
    tld_weights = [w for _, w in TLDS]
    blocked = gen_blocked(rng, args.rules, tld_names, tld_weights)
    exchanges = read_exchanges(args.exchanges) if args.exchanges else []
    all_blocked = sorted(blocked)  # sorted: deterministic order independent of set iteration
    seen = set(blocked)
    for name in exchanges:
        if name not in seen:
            seen.add(name)
            all_blocked.append(name)
    # Shuffle the file order so no server benefits from pre-sorted input.
    rng.shuffle(all_blocked)

    out = args.outdir
    with open(os.path.join(out, "blocklist.txt"), "w") as f:
        f.write("# dnsward bench block list: %d synthetic + %d shipped exchange entries, seed %d\n"
                % (len(blocked), len(exchanges), args.seed))
        f.write("\n".join(all_blocked))
        f.write("\n")
    with open(os.path.join(out, "unbound-blocklist.conf"), "w") as f:
        f.write("server:\n")
        f.writelines('local-zone: "%s." always_nxdomain\n' % n for n in all_blocked)
    with open(os.path.join(out, "rpz.zone"), "w") as f:
        f.write("$ORIGIN rpz.bench.\n$TTL 300\n")
        f.write("@ IN SOA localhost. hostmaster.localhost. 1 3600 600 604800 300\n")
        f.write("@ IN NS localhost.\n")
        f.writelines("%s CNAME .\n*.%s CNAME .\n" % (n, n) for n in all_blocked)

    # Allowed names: hosts in three .test zones, each with an A record, half also with AAAA.
    zones = ["bench.test", "corp-portal.test", "media-cdn.test"]
    allowed = []
    allowed_set = set()
    while len(allowed) < args.allowed:
        zone = zones[0] if rng.random() < 0.6 else rng.choice(zones[1:])
        host = rand_label(rng)
        if rng.random() < 0.5:
            host = rng.choice(SUBS) + "." + host
        name = host + "." + zone
        if name not in allowed_set:
            allowed_set.add(name)
            allowed.append((name, zone))
    records = {z: [] for z in zones}
    has_aaaa = {}
    for i, (name, zone) in enumerate(allowed):
        rel = name[: -len(zone) - 1]
        a = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, (i & 255) or 1)
        records[zone].append("%s IN A %s" % (rel, a))
        has_aaaa[name] = rng.random() < 0.5
        if has_aaaa[name]:
            records[zone].append("%s IN AAAA fd00:beef::%x" % (rel, i + 1))
    with open(os.path.join(out, "nsd-zones.conf"), "w") as zc:
        for zone in zones:
            path = os.path.join(out, "zones", zone + ".zone")
            with open(path, "w") as f:
                f.write("$ORIGIN %s.\n$TTL 86400\n" % zone)
                f.write("@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 604800 3600\n" % (zone, zone))
                f.write("@ IN NS ns.%s.\nns IN A 127.0.0.1\n" % zone)
                f.write("\n".join(records[zone]))
                f.write("\n")
            zc.write('zone:\n    name: "%s"\n    zonefile: "%s"\n' % (zone, path))

    # Queries: allowed names with a Zipf-like popularity, blocked names sampled from the list,
    # 40% of blocked queries for a subdomain of the listed name (tests "and subdomains").
    n_blocked = int(round(args.queries * args.blocked_share))
    n_allowed = args.queries - n_blocked
    weights = [1.0 / (r + 1) ** 0.8 for r in range(len(allowed))]
    lines = []
    # every allowed name once (so one warm-up pass caches them all), the rest by popularity
    picks = [a for a, _ in allowed][: min(len(allowed), n_allowed)]
    picks += [a for a, _ in rng.choices(allowed, weights=weights, k=n_allowed - len(picks))]
    for name in picks:
        qtype = "AAAA" if rng.random() < 0.2 else "A"
        lines.append("%s %s" % (name, qtype))
    for _ in range(n_blocked):
        name = rng.choice(all_blocked)
        if rng.random() < 0.4:
            name = rng.choice(SUBS) + "." + name
        qtype = "AAAA" if rng.random() < 0.2 else "A"
        lines.append("%s %s" % (name, qtype))
    rng.shuffle(lines)
    with open(os.path.join(out, "queries.txt"), "w") as f:
        f.write("\n".join(lines))
        f.write("\n")

    probe_allowed = allowed[0][0]
    probe_blocked = all_blocked[len(all_blocked) // 2]
    with open(os.path.join(out, "probe.txt"), "w") as f:
        f.write("%s\n%s\nwww.%s\n" % (probe_allowed, probe_blocked, probe_blocked))
    with open(os.path.join(out, "stats.txt"), "w") as f:
        f.write("rules_synthetic=%d\nrules_exchanges=%d\nrules_total=%d\nallowed_names=%d\n"
                "queries=%d\nqueries_blocked=%d\nseed=%d\n"
                % (len(blocked), len(exchanges), len(all_blocked), len(allowed), len(lines),
                   n_blocked, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
