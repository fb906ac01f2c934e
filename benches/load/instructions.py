#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind.

Time per request on a shared 2-core VM drifts by 20-50% within a minute;
an instruction count does not (repeatable to about 0.2%). This runs each
proxy under `valgrind --tool=callgrind` in front of the same three bench
backends, sends a warm-up, zeroes the counters, sends N requests with a
returning cookie over plain HTTP (oha, 10 connections), dumps the counters
and divides. Kernel work is not counted: strace shows every proxy here
making the same two reads and two writes per request.

valgrind hides the CPU's SHA extensions, so a cookie HMAC runs in its AVX
code path under callgrind (about 4,300 instructions that SHA-NI mostly
removes in a real run); tether verifies a connection's cookie once, so on
these keep-alive connections that is paid once per connection.

With --memory it simulates the caches instead (callgrind --cache-sim: a
32 KiB L1 data cache and a 1 MiB second level, the per-core sizes of the
machines the benches run on) at 50 and at 400 connections, and counts the
cache lines each request misses. What a request touches beyond the cache
is what grows its cost as connections grow; the count is as repeatable as
the instruction count. That writes benches/results/cache.md.

Called by benches/instructions.sh; writes benches/results/instructions.md.
"""

import argparse
import glob
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import run as h  # the load harness: process handling, templates, ports

RESULTS = os.path.join(h.ROOT, "benches", "results")


# The simulated caches for --memory: size, ways, line (callgrind's syntax).
L1D = "32768,8,64"
L2 = "1048576,8,64"


def count(args, work, name, argv, url, cookie, conns=10):
    """Runs argv under callgrind and returns its counts per request, by event
    (Ir: instructions; with --memory also D1mr/D1mw, the L1 data misses, and
    DLmr/DLmw, the second level's). `cookie`: the Cookie header to send, or
    a function of the URL that gets one."""
    out = os.path.join(work, f"{name}.callgrind")
    sim = [f"--cache-sim=yes", f"--D1={L1D}", f"--LL={L2}", f"--I1={L1D}"] if args.memory else []
    p = h.start(["valgrind", "--tool=callgrind", "--compress-strings=no",
                 f"--callgrind-out-file={out}"] + sim + argv,
                os.path.join(work, f"{name}.log"), args.life)
    h.wait_http(url, name, timeout=120)
    if callable(cookie):
        cookie = cookie(url)
    # `timeout` runs valgrind as its only child, and valgrind keeps its pid.
    vg = h.children_of(p.pid)[0]
    load = ["oha", "--no-tui", "--insecure", "-c", str(conns), "-H", f"Cookie: {cookie}", url]
    subprocess.run(["timeout", "300"] + load[:1] + ["-n", str(max(500, 4 * conns))] + load[1:],
                   check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-z", str(vg)], check=True, capture_output=True)
    subprocess.run(["timeout", "900"] + load[:1] + ["-n", str(args.requests)] + load[1:],
                   check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(vg)], check=True, capture_output=True)
    time.sleep(1)
    h.stop(p)
    dumps = [f for f in glob.glob(out + ".*") if not f.endswith(".0")]
    if not dumps:
        raise SystemExit(f"instructions: no callgrind dump for {name}")
    events, totals = None, None
    with open(max(dumps, key=os.path.getmtime)) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")) and totals is None:
                totals = [int(x) for x in line.split()[1:]]
    per = {e: t / args.requests for e, t in zip(events, totals)}
    h.log(f"  {name} at {conns} connections: {per['Ir']:,.0f} instructions/request"
          + (f", {misses(per, 'D1'):.0f} L1d / {misses(per, 'DL'):.0f} L2 misses" if args.memory else ""))
    return per


def misses(per, level):
    """Read and write misses of one cache level, per request."""
    return per.get(f"{level}mr", 0) + per.get(f"{level}mw", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--memory", action="store_true",
                    help="simulate the caches at 50 and 400 connections (benches/results/cache.md)")
    ap.add_argument("--tether", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--command", default="benches/instructions.sh")
    args = ap.parse_args()
    args.life = 1800
    work = h.tempfile.mkdtemp(prefix="tether-instr.")
    rows = []
    try:
        _, ports = h.start_backends(args.backend, work, args.life)
        b = {"B1": ports[0], "B2": ports[1], "B3": ports[2]}
        proxies = []

        cfg, port, _ = h.tether_config(work, "sticky", "sticky", ports)
        proxies.append(("tether", "tether", [args.tether, "run", "-c", cfg],
                        f"http://127.0.0.1:{port}/",
                        lambda u: "tether_sid=" + h.set_cookie_of(u, "tether_sid")))

        pem = h.write_pem(work)
        v = {k: h.free_port() for k in ("COOKIE_PLAIN", "COOKIE_TLS", "HASH_PLAIN", "HASH_TLS", "RR_PLAIN")}
        cfg = h.fill("haproxy.cfg.in", os.path.join(work, "haproxy.cfg"), {"PEM": pem, **v, **b})
        proxies.append(("haproxy-cookie", "haproxy", ["haproxy", "-f", cfg, "-db"],
                        f"http://127.0.0.1:{v['COOKIE_PLAIN']}/",
                        lambda u: "SRV=" + h.set_cookie_of(u, "SRV")))

        v = {k: h.free_port() for k in ("HASH_PLAIN", "HASH_PLAIN_DEFERRED", "HASH_TLS", "HASH_TLS_FULL", "RR_PLAIN")}
        cfg = h.fill("nginx.conf.in", os.path.join(work, "nginx.conf"), {"WORK": work, "ROOT": h.ROOT, **v, **b})
        proxies.append(("nginx-hash", "nginx",
                        ["nginx", "-c", cfg, "-g", "daemon off; master_process off;"],
                        f"http://127.0.0.1:{v['HASH_PLAIN']}/", "tether_sid=" + "A" * 86))

        for conns in (50, 400) if args.memory else (10,):
            for name, tag, argv, url, cookie in proxies:
                rows.append((name, conns, count(args, work, f"{tag}-{conns}", argv, url, cookie, conns)))
    finally:
        h.stop_all()

    text = memory_table(args, rows) if args.memory else instructions_table(args, rows)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "cache.md" if args.memory else "instructions.md"), "w") as f:
        f.write(text)
    print(text)


def instructions_table(args, rows):
    base = next(per["Ir"] for n, _, per in rows if n == "haproxy-cookie")
    md = [
        f"Command: `{args.command}` (tether {os.environ.get('TETHER_COMMIT', '?')}); "
        f"{args.requests} plain requests with a returning cookie after 500 of warm-up, oha -c 10.",
        "User-space instructions per request (callgrind). valgrind hides SHA-NI, which inflates a cookie "
        "HMAC by about 4,300 instructions compared with a native run; tether verifies a keep-alive "
        "connection's cookie once.",
        "",
        "| proxy | instructions / request | vs HAProxy |",
        "|---|---:|---:|",
    ] + [f"| {n} | {per['Ir']:,.0f} | {per['Ir'] / base:.2f} |" for n, _, per in rows]
    return "\n".join(md) + "\n"


def memory_table(args, rows):
    base = {c: per for n, c, per in rows if n == "haproxy-cookie"}
    md = [
        f"Command: `{args.command}` (tether {os.environ.get('TETHER_COMMIT', '?')}); "
        f"{args.requests} plain requests with a returning cookie after a warm-up, at 50 and at 400 "
        "connections (oha).",
        f"callgrind's cache simulation: L1 data {int(L1D.split(',')[0]) // 1024} KiB, second level "
        f"{int(L2.split(',')[0]) // 1024} KiB, 64-byte lines. Misses are cache lines per request that "
        "were not in the cache (read or written); the kernel's copies into and out of the buffers are "
        "not simulated.",
        "",
        "| proxy | connections | instructions / request | L1d misses / request | L2 misses / request | L2 misses vs HAProxy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, c, per in rows:
        b = misses(base[c], "DL")
        vs = f"{misses(per, 'DL') / b:.2f}" if b >= 1 else "-"
        md.append(f"| {n} | {c} | {per['Ir']:,.0f} | {misses(per, 'D1'):,.0f} | {misses(per, 'DL'):,.1f} | {vs} |")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
