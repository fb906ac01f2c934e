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


def count(args, work, name, argv, url, cookie):
    """Runs argv under callgrind and returns instructions per request.
    `cookie`: the Cookie header to send, or a function of the URL that gets one."""
    out = os.path.join(work, f"{name}.callgrind")
    p = h.start(["valgrind", "--tool=callgrind", "--compress-strings=no",
                 f"--callgrind-out-file={out}"] + argv,
                os.path.join(work, f"{name}.log"), args.life)
    h.wait_http(url, name, timeout=120)
    if callable(cookie):
        cookie = cookie(url)
    # `timeout` runs valgrind as its only child, and valgrind keeps its pid.
    vg = h.children_of(p.pid)[0]
    load = ["oha", "--no-tui", "--insecure", "-c", "10", "-H", f"Cookie: {cookie}", url]
    subprocess.run(["timeout", "300"] + load[:1] + ["-n", "500"] + load[1:],
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
    with open(max(dumps, key=os.path.getmtime)) as f:
        total = next(int(l.split()[1]) for l in f if l.startswith(("summary:", "totals:")))
    per = total / args.requests
    h.log(f"  {name}: {per:,.0f} instructions/request")
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
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

        cfg, port, _ = h.tether_config(work, "sticky", "sticky", ports)
        rows.append(("tether", count(args, work, "tether", [args.tether, "run", "-c", cfg],
                                     f"http://127.0.0.1:{port}/",
                                     lambda u: "tether_sid=" + h.set_cookie_of(u, "tether_sid"))))

        pem = h.write_pem(work)
        v = {k: h.free_port() for k in ("COOKIE_PLAIN", "COOKIE_TLS", "HASH_PLAIN", "HASH_TLS", "RR_PLAIN")}
        cfg = h.fill("haproxy.cfg.in", os.path.join(work, "haproxy.cfg"), {"PEM": pem, **v, **b})
        rows.append(("haproxy-cookie", count(args, work, "haproxy", ["haproxy", "-f", cfg, "-db"],
                                             f"http://127.0.0.1:{v['COOKIE_PLAIN']}/",
                                             lambda u: "SRV=" + h.set_cookie_of(u, "SRV"))))

        v = {k: h.free_port() for k in ("HASH_PLAIN", "HASH_TLS", "HASH_TLS_FULL", "RR_PLAIN")}
        cfg = h.fill("nginx.conf.in", os.path.join(work, "nginx.conf"), {"WORK": work, "ROOT": h.ROOT, **v, **b})
        rows.append(("nginx-hash", count(args, work, "nginx",
                                         ["nginx", "-c", cfg, "-g", "daemon off; master_process off;"],
                                         f"http://127.0.0.1:{v['HASH_PLAIN']}/", "tether_sid=" + "A" * 86)))
    finally:
        h.stop_all()

    base = dict(rows)["haproxy-cookie"]
    md = [
        f"Command: `{args.command}` (tether {os.environ.get('TETHER_COMMIT', '?')}); "
        f"{args.requests} plain requests with a returning cookie after 500 of warm-up, oha -c 10.",
        "User-space instructions per request (callgrind). valgrind hides SHA-NI, which inflates a cookie "
        "HMAC by about 4,300 instructions compared with a native run; tether verifies a keep-alive "
        "connection's cookie once.",
        "",
        "| proxy | instructions / request | vs HAProxy |",
        "|---|---:|---:|",
    ] + [f"| {n} | {x:,.0f} | {x / base:.2f} |" for n, x in rows]
    text = "\n".join(md) + "\n"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "instructions.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
