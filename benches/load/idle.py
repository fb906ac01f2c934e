#!/usr/bin/env python3
"""The runner behind benches/idle_memory.sh: what an idle client connection
costs tether, HAProxy and nginx in memory.

For each proxy and each kind of connection (plain keep-alive, TLS
keep-alive, WebSocket) it starts a fresh proxy (pinned to core 0, one worker,
the configs of benches/load/), warms it with a few connections of that kind,
reads the VmRSS of the proxy's process tree, then has the idle_clients
example (core 1) open N connections that each send one sticky request (or a
WebSocket upgrade) and then stay open and idle; once all have their answer
and a moment has passed, it reads the RSS again. (after - before) / N is the
cost of one idle connection. Writes benches/results/idle-memory.md and
idle-memory.json and prints the table.

Helpers (process control, configs, RSS) are those of run.py. Every process
it starts is bounded by `timeout` and stopped by PID; all traffic stays on
127.0.0.1.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import (  # noqa: E402
    LOAD_CORE, PROXY_CORE, RESULTS, ROOT, fill, free_port, log, rss_mib, set_cookie_of,
    start, start_backends, stop, stop_all, tree, wait_http, wait_port, write_pem,
)

KINDS = [
    ("plain", "idle keep-alive client connection, plain"),
    ("tls", "idle keep-alive client connection, TLS"),
    ("ws", "idle WebSocket (plain), spliced / tunnelled"),
]
PROXIES = ["tether", "haproxy-cookie", "nginx-hash"]

# nginx passes an upgrade on only where told to.
NGINX_WS = """location /ws {
            proxy_pass http://hash_pool;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }
        location / {"""


def start_proxy(args, work, proxy, ports, tag):
    """A fresh proxy: (Popen, {kind: (port, tls?)}, cookie header or None)."""
    if proxy == "tether":
        plain, tls = free_port(), free_port()
        cfg = fill("tether.toml.in", os.path.join(work, f"tether-{tag}.toml"), {
            "PLAIN": plain, "TLS": tls, "ROOT": ROOT, "MODE": "sticky", "ADMIN": free_port(),
            "RESUMPTION": "true",
            "B1": ports[0], "B2": ports[1], "B3": ports[2],
        })
        with open(cfg, "a") as f:
            f.write(f"\n[limits]\nmax_connections = {args.n + 1000}\n")
        p = start(["env"] + args.tether_env + ["taskset", "-c", PROXY_CORE, args.tether, "run", "-c", cfg],
                  os.path.join(work, f"tether-{tag}.log"), args.life)
        wait_port(plain, p, "tether")
        wait_http(f"http://127.0.0.1:{plain}/", "tether")
        cookie = "tether_sid=" + set_cookie_of(f"http://127.0.0.1:{plain}/", "tether_sid")
        return p, {"plain": (plain, False), "tls": (tls, True), "ws": (plain, False)}, cookie
    if proxy == "haproxy-cookie":
        pem = write_pem(work)
        v = {k: free_port() for k in ("COOKIE_PLAIN", "COOKIE_TLS", "HASH_PLAIN", "HASH_TLS", "RR_PLAIN")}
        v.update({"PEM": pem, "B1": ports[0], "B2": ports[1], "B3": ports[2]})
        cfg = fill("haproxy.cfg.in", os.path.join(work, f"haproxy-{tag}.cfg"), v)
        with open(cfg) as f:
            text = f.read().replace("maxconn 4096", f"maxconn {args.n + 1000}")
        with open(cfg, "w") as f:
            f.write(text)
        p = start(["taskset", "-c", PROXY_CORE, "haproxy", "-f", cfg, "-db"],
                  os.path.join(work, f"haproxy-{tag}.log"), args.life)
        wait_port(v["COOKIE_PLAIN"], p, "haproxy")
        wait_http(f"http://127.0.0.1:{v['COOKIE_PLAIN']}/", "haproxy")
        time.sleep(0.5)
        cookie = "SRV=" + set_cookie_of(f"http://127.0.0.1:{v['COOKIE_PLAIN']}/", "SRV")
        return p, {"plain": (v["COOKIE_PLAIN"], False), "tls": (v["COOKIE_TLS"], True),
                   "ws": (v["COOKIE_PLAIN"], False)}, cookie
    if proxy == "nginx-hash":
        v = {k: free_port() for k in ("HASH_PLAIN", "HASH_PLAIN_DEFERRED", "HASH_TLS", "HASH_TLS_FULL", "RR_PLAIN")}
        ngx = os.path.join(work, f"nginx-{tag}")
        os.makedirs(ngx, exist_ok=True)
        v.update({"WORK": ngx, "ROOT": ROOT, "B1": ports[0], "B2": ports[1], "B3": ports[2]})
        cfg = fill("nginx.conf.in", os.path.join(ngx, "nginx.conf"), v)
        with open(cfg) as f:
            text = f.read()
        text = text.replace("worker_connections 8192;", f"worker_connections {2 * args.n + 1000};")
        text = text.replace("location / {", NGINX_WS, 1)
        with open(cfg, "w") as f:
            f.write(text)
        subprocess.run(["nginx", "-t", "-q", "-c", cfg, "-g", "daemon off;"], check=True,
                       stderr=subprocess.DEVNULL)
        p = start(["taskset", "-c", PROXY_CORE, "nginx", "-c", cfg, "-g", "daemon off;"],
                  os.path.join(ngx, "nginx.log"), args.life)
        wait_port(v["HASH_PLAIN"], p, "nginx")
        wait_http(f"http://127.0.0.1:{v['HASH_PLAIN']}/", "nginx")
        return p, {"plain": (v["HASH_PLAIN"], False), "tls": (v["HASH_TLS"], True),
                   "ws": (v["HASH_PLAIN"], False)}, "tether_sid=" + "A" * 86
    raise SystemExit(f"idle: unknown proxy {proxy}")


def clients(args, port, tls, ws, cookie, n):
    """Starts idle_clients holding n connections; returns (Popen, opened, errors)
    once they are all open."""
    argv = ["timeout", "--kill-after=5", str(args.hold + 60), "taskset", "-c", LOAD_CORE,
            args.clients, "--target", f"127.0.0.1:{port}", "-n", str(n),
            "--hold", f"{args.hold}s"]
    if tls:
        argv.append("--tls")
    if ws:
        argv.append("--websocket")
    if cookie:
        argv += ["--cookie", cookie]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    if len(line) < 4 or line[0] != "ready":
        p.kill()
        p.wait()
        raise SystemExit(f"idle: idle_clients did not get ready: {line}")
    return p, int(line[1]), int(line[3])


def release(p):
    """Closes the clients' connections (stdin EOF) and waits for them to go."""
    try:
        p.stdin.close()
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def measure(args, work, proxy, kind, ports, rep):
    tag = f"{proxy}-{kind}-{rep}"
    p, where, cookie = start_proxy(args, work, proxy, ports, tag)
    port, tls = where[kind]
    ws = kind == "ws"
    try:
        # Warm: the first connections of a kind pay for one-time state
        # (session caches, the allocator's first pages, lazily built tables).
        w, _, _ = clients(args, port, tls, ws, cookie, args.warm)
        release(w)
        time.sleep(args.settle)
        pids = tree(p.pid)
        before = rss_mib(pids)
        c, opened, errors = clients(args, port, tls, ws, cookie, args.n)
        time.sleep(args.settle)
        pids = tree(p.pid)
        after = rss_mib(pids)
        release(c)
    finally:
        stop(p)
    kib = (after - before) * 1024 / max(opened, 1)
    res = {"before_mib": before, "after_mib": after, "opened": opened, "errors": errors,
           "kib_per_conn": kib}
    log(f"  {tag}: RSS {before:.1f} -> {after:.1f} MiB over {opened} connections "
        f"({errors} errors): {kib:.1f} KiB each")
    return res


def table(results, meta):
    lines = [
        f"Machine: {meta['cpu']} ({meta['ncpu']} cores), {meta['kernel']}; {meta['date']}.",
        f"Command: `{meta['command']}` (tether {meta['commit']}, {meta['haproxy']}, {meta['nginx']}).",
        f"Each cell: a fresh proxy (pinned to core {PROXY_CORE}, one worker thread/process, the "
        f"configs of benches/load/), warmed with {meta['warm']} connections of the kind, then "
        f"{meta['n']} clients (one process on core {LOAD_CORE}) each send one request and keep "
        f"the connection open and idle; VmRSS of the proxy's process tree before and "
        f"{meta['settle']} s after the last one has its answer, the difference / {meta['n']}. "
        f"Median of {meta['repeat']} run(s).",
        "",
        "Plain and TLS: one sticky `GET /` with the proxy's cookie (tether `tether_sid`, HAProxy "
        "`cookie SRV insert`, nginx `hash $cookie_tether_sid consistent`), HTTP/1.1 keep-alive. "
        "WebSocket: an `Upgrade: websocket` GET to `/ws`, answered 101 by the backend, which "
        "then echoes; the connection (client and backend side) stays open with no traffic.",
        "",
        "| KiB per idle connection | " + " | ".join(PROXIES) + " |",
        "|---|" + "---:|" * len(PROXIES),
    ]
    for kind, label in KINDS:
        cells = []
        for proxy in PROXIES:
            rs = results.get(f"{proxy}|{kind}")
            cells.append(f"{statistics.median(r['kib_per_conn'] for r in rs):.1f}" if rs else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--warm", type=int, default=100)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", default="", help="regex over PROXY:KIND (e.g. 'tether:plain')")
    ap.add_argument("--tether", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--clients", required=True)
    ap.add_argument("--tether-env", action="append", default=[],
                    help="MIMALLOC_X=Y for tether's environment (repeatable)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "idle-memory"))
    ap.add_argument("--command", default="benches/idle_memory.sh")
    args = ap.parse_args()
    args.hold = 60
    args.life = 120

    work = tempfile.mkdtemp(prefix="tether-idle.")
    log(f"work dir (configs, logs): {work}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "ncpu": os.cpu_count(),
        "kernel": f"Linux {platform.release()}",
        "n": args.n, "warm": args.warm, "settle": args.settle, "repeat": args.repeat,
        "command": args.command,
        "commit": os.environ.get("TETHER_COMMIT", "?"),
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" - ")[0],
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", ""),
    }
    results = {}
    try:
        life = args.repeat * len(PROXIES) * len(KINDS) * 60 + 120
        _, ports = start_backends(args.backend, work, life)
        for rep in range(args.repeat):
            for kind, _ in KINDS:
                for proxy in PROXIES:
                    if args.only and not re.search(args.only, f"{proxy}:{kind}"):
                        continue
                    results.setdefault(f"{proxy}|{kind}", []).append(
                        measure(args, work, proxy, kind, ports, rep))
    finally:
        stop_all()
    md = table(results, meta)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
