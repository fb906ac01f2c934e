#!/usr/bin/env python3
"""What the PROXY protocol costs tether per connection: CPU microseconds on
one core, a listener with `proxy_protocol = true` against a plain one.

One tether (release build, `worker_threads = 1`, pinned to core 0 with
taskset, access log off, rotate mode so no session is minted) has two
listeners: a plain one and one with `proxy_protocol = true`. One bench
backend and this client share core 1. The client opens N connections one
after another, each sending (header +) one `GET` with `Connection: close`
in a single write and reading to the end; tether's CPU is utime+stime of
its process from /proc before and after. Rounds alternate plain, v1 and v2
so drift hits all three alike; the table shows medians, and the median of
each round's difference from plain.

    cargo build --release --bin tether --example bench_backend
    python3 benches/proxy_protocol.py [--connections 20000] [--rounds 3]

Every process it starts is its own child, bounded by `timeout`, and
stopped by PID; all traffic stays on 127.0.0.1.
"""

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TICK = os.sysconf("SC_CLK_TCK")
CHILDREN = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(argv, out):
    p = subprocess.Popen(
        ["timeout", "--signal=TERM", "--kill-after=5", "900"] + argv,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    CHILDREN.append(p)
    return p


def real_pid(timeout_pid):
    """The child of the `timeout` process (the program measured)."""
    for _ in range(200):
        try:
            with open(f"/proc/{timeout_pid}/task/{timeout_pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    sys.exit("could not find the child of timeout")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(port):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing accepted on {port}")


def v1():
    return b"PROXY TCP4 203.0.113.7 192.0.2.10 56324 443\r\n"


def v2():
    addrs = bytes([203, 0, 113, 7, 192, 0, 2, 10]) + struct.pack(">HH", 56324, 443)
    return b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", len(addrs)) + addrs


GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def connections(port, header, n):
    """n connections, one after another; fails on any non-200."""
    one_write = header + GET
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(one_write)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.close()
        if not got.startswith(b"HTTP/1.1 200"):
            sys.exit(f"not served: {got[:80]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tether = os.path.join(ROOT, "target/release/tether")
    backend = os.path.join(ROOT, "target/release/examples/bench_backend")
    tmp = tempfile.mkdtemp(prefix="tether-pp-bench-")
    try:
        bport, plain, proxied = free_port(), free_port(), free_port()
        start(["taskset", "-c", "1", backend, "--name", "b1", "--port", str(bport)],
              open(os.path.join(tmp, "backend.log"), "w"))
        wait_port(bport)
        cfg = os.path.join(tmp, "tether.toml")
        with open(cfg, "w") as f:
            f.write(f"""
[[listener]]
bind = "127.0.0.1:{plain}"
[[listener]]
bind = "127.0.0.1:{proxied}"
proxy_protocol = true
[session]
mode = "rotate"
[runtime]
worker_threads = 1
[log]
access = false
[[backend]]
name = "b1"
address = "127.0.0.1:{bport}"
""")
        t = start(["taskset", "-c", "0", tether, "run", "-c", cfg],
                  open(os.path.join(tmp, "tether.log"), "w"))
        wait_port(plain)
        wait_port(proxied)
        pid = real_pid(t.pid)
        os.sched_setaffinity(0, {1})
        # Warm up: pools, allocator, page cache.
        connections(plain, b"", 2000)
        connections(proxied, v2(), 2000)
        modes = [("plain", plain, b""), ("v1", proxied, v1()), ("v2", proxied, v2())]
        per = {m[0]: [] for m in modes}
        for r in range(args.rounds):
            for name, port, header in modes:
                before, t0 = cpu_seconds(pid), time.monotonic()
                connections(port, header, args.connections)
                used, wall = cpu_seconds(pid) - before, time.monotonic() - t0
                us = used / args.connections * 1e6
                per[name].append(us)
                print(f"round {r + 1} {name:5}: {us:6.1f} us CPU/conn "
                      f"({args.connections / wall:.0f} conn/s)", file=sys.stderr, flush=True)
        base = statistics.median(per["plain"])
        print(f"\n| listener | tether CPU per connection, median of {args.rounds} (range) "
              "| vs plain: median of the rounds' differences |")
        print("|---|---|---|")
        for name, _, _ in modes:
            m = statistics.median(per[name])
            d = statistics.median(x - p for x, p in zip(per[name], per["plain"]))
            print(f"| {name} | {m:.1f} us ({min(per[name]):.1f}-{max(per[name]):.1f}) "
                  f"| {d:+.1f} us ({d / base * 100:+.1f}%) |")
    finally:
        for p in CHILDREN:
            p.terminate()
        for p in CHILDREN:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
