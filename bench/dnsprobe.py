#!/usr/bin/env python3
"""Tiny UDP DNS prober (standard library only).

  dnsprobe.py --port P --name N [--type A] [--expect NOERROR|NXDOMAIN|ANY] [--since-ns T0]
              [--timeout SECS] [--wait] [--pid PID]

Sends one query (or, with --wait, retries every 20 ms until an answer with the expected rcode
arrives or --timeout passes). Prints "RCODE ANCOUNT ELAPSED" where ELAPSED is seconds since
--since-ns (a `date +%s%N` taken just before the server was launched) or since the probe started.
Exit status 0 when the expected rcode was seen, 1 otherwise. With --pid, waiting stops as soon
as that process has exited (a server that failed to start is not waited for until --timeout).
"""

import argparse
import random
import socket
import struct
import sys
import time

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPES = {"A": 1, "AAAA": 28, "TXT": 16, "NS": 2, "SOA": 6}


def build_query(qid, name, qtype):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD=1
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack(">HH", TYPES[qtype], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--type", default="A")
    ap.add_argument("--expect", default="ANY")
    ap.add_argument("--since-ns", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--wait", action="store_true", help="retry until answered or timeout")
    ap.add_argument("--pid", type=int, default=None, help="stop waiting once it has exited")
    args = ap.parse_args()

    t0 = args.since_ns / 1e9 if args.since_ns else time.time()
    deadline = time.time() + args.timeout
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    last = "NOANSWER 0"
    while True:
        qid = random.randint(0, 65535)
        try:
            sock.sendto(build_query(qid, args.name, args.type), (args.host, args.port))
        except OSError:
            pass
        sock.settimeout(0.02 if args.wait else max(0.05, deadline - time.time()))
        try:
            while True:
                data, _ = sock.recvfrom(4096)
                rid, flags, _, ancount = struct.unpack(">HHHH", data[:8])
                if rid != qid:
                    continue
                rcode = RCODES.get(flags & 0xF, str(flags & 0xF))
                last = "%s %d" % (rcode, ancount)
                if args.expect in ("ANY", rcode):
                    print("%s %d %.3f" % (rcode, ancount, time.time() - t0))
                    return 0
                break
        except (socket.timeout, ConnectionRefusedError, OSError):
            pass
        if not args.wait or time.time() > deadline or exited(args.pid):
            print("%s %.3f" % (last, time.time() - t0))
            return 1
        time.sleep(0.02)


def exited(pid):
    """Whether process `pid` (if given) is gone; a zombie (not yet reaped) counts as gone."""
    if pid is None:
        return False
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


if __name__ == "__main__":
    sys.exit(main())
