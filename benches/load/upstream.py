#!/usr/bin/env python3
"""The runner behind benches/upstream.sh: what backends over HTTP/2 and TLS cost.

1. gRPC unary calls (the `grpc` example's load client: 50 concurrent callers,
   one HTTP/2 connection, each caller its own session in `x-session`) to three
   `echo.Echo` backends: direct to one backend, through tether
   (`protocol = "h2"`, sessions by header), through nginx (`grpc_pass`,
   `hash $http_x_session consistent`) and through HAProxy (`proto h2`,
   `balance hdr(x-session)` consistent). Calls/s, p99, errors and the proxy's
   CPU per call.
2. TLS to backends: oha (keep-alive, rotate mode so no session work) through
   tether to three HTTP/1.1 backends over plain TCP, then over TLS (verified
   against the dev certificate). The proxy's CPU per request.

Each proxy is pinned to core 0 with one worker; backends and load on core 1.
Rounds rotate nothing (each round runs every cell back to back); the report
gives medians of per-round ratios. Writes benches/results/upstream.md/.json.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import run  # noqa: E402  (the shared helpers: start, stop_all, tree, cpu_seconds, ...)
from run import LOAD_CORE, PROXY_CORE, ROOT, RESULTS, log  # noqa: E402

NGINX = """worker_processes 1;
pid {work}/nginx-grpc.pid;
error_log {work}/nginx-grpc-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    upstream grpc_pool {{
        hash $http_x_session consistent;
        server 127.0.0.1:{g1};
        server 127.0.0.1:{g2};
        server 127.0.0.1:{g3};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{ grpc_pass grpc://grpc_pool; }}
    }}
}}
"""

HAPROXY = """global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe_grpc
    bind 127.0.0.1:{port} proto h2
    default_backend grpc
backend grpc
    balance hdr(x-session)
    hash-type consistent
    server g1 127.0.0.1:{g1} proto h2
    server g2 127.0.0.1:{g2} proto h2
    server g3 127.0.0.1:{g3} proto h2
"""


def tether_toml(port, backends, extra, session):
    s = (f"[[listener]]\nbind = \"127.0.0.1:{port}\"\n\n[session]\n{session}\n"
         "secret = \"0123456789abcdef0123456789abcdef\"\n\n"
         "[runtime]\nworker_threads = 1\n\n[log]\naccess = false\n")
    for i, b in enumerate(backends):
        s += f"\n[[backend]]\nname = \"b{i + 1}\"\naddress = \"127.0.0.1:{b}\"\n{extra}\n"
    return s


def start_proxy(argv, work, name, port, life):
    p = run.start(["taskset", "-c", PROXY_CORE] + argv, os.path.join(work, f"{name}.log"), life)
    run.wait_port(port, p, name)
    return p


def grpc_load(args, addr, proxy):
    pids = [q for q in run.tree(proxy.pid)] if proxy else []
    cpu0 = run.cpu_seconds(pids)
    r = subprocess.run(
        ["timeout", "120", "taskset", "-c", LOAD_CORE, args.grpc, "load", addr,
         str(args.calls), str(args.connections)],
        capture_output=True, text=True)
    cpu1 = run.cpu_seconds(pids)
    if r.returncode != 0:
        raise SystemExit(f"upstream: grpc load failed: {r.stderr[-1000:]}")
    j = json.loads(r.stdout.strip().splitlines()[-1])
    j["cpu_us"] = (cpu1 - cpu0) / j["ok"] * 1e6 if proxy and j["ok"] else None
    cpu = f"{j['cpu_us']:.1f} us/call" if j["cpu_us"] is not None else "-"
    log(f"  {addr}: {j['per_sec']:.0f} calls/s p99 {j['p99_us'] / 1000:.2f} ms "
        f"errors {j['errors']} cpu {cpu}")
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--tether", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--command", default="benches/upstream.sh")
    args = ap.parse_args()
    life = 3600
    work = tempfile.mkdtemp(prefix="tether-upstream.")
    log(f"work dir: {work}")
    rows = {k: [] for k in ("direct", "tether", "nginx", "haproxy", "tls-plain", "tls-tls")}
    try:
        # gRPC backends on core 1.
        gports = [run.free_port() for _ in range(3)]
        for i, p in enumerate(gports):
            g = run.start(["taskset", "-c", LOAD_CORE, args.grpc, "serve", f"g{i + 1}", f"127.0.0.1:{p}"],
                          os.path.join(work, f"g{i + 1}.log"), life)
            run.wait_port(p, g, f"grpc backend g{i + 1}")
        ports = {k: run.free_port() for k in ("tether", "nginx", "haproxy", "tplain", "ttls")}
        cfg = os.path.join(work, "tether-grpc.toml")
        with open(cfg, "w") as f:
            f.write(tether_toml(ports["tether"], gports, "protocol = \"h2\"",
                                "source = \"header\"\nheader = \"x-session\""))
        proxies = {"tether": start_proxy([args.tether, "run", "-c", cfg], work, "tether-grpc", ports["tether"], life)}
        cfg = os.path.join(work, "nginx-grpc.conf")
        with open(cfg, "w") as f:
            f.write(NGINX.format(work=work, port=ports["nginx"], g1=gports[0], g2=gports[1], g3=gports[2]))
        proxies["nginx"] = start_proxy(["nginx", "-c", cfg, "-g", "daemon off;"], work, "nginx-grpc", ports["nginx"], life)
        cfg = os.path.join(work, "haproxy-grpc.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY.format(port=ports["haproxy"], g1=gports[0], g2=gports[1], g3=gports[2]))
        proxies["haproxy"] = start_proxy(["haproxy", "-f", cfg, "-db"], work, "haproxy-grpc", ports["haproxy"], life)

        # HTTP/1.1 bench backends, plain and TLS, on core 1.
        def backends(tls):
            out = []
            for i in range(3):
                argv = ["taskset", "-c", LOAD_CORE, args.backend, "--name", f"b{i + 1}", "--port", "0"]
                p = run.start(argv + (["--tls"] if tls else []), os.path.join(work, f"b{i + 1}-{tls}.log"), life)
                path = os.path.join(work, f"b{i + 1}-{tls}.log")
                deadline = time.time() + 15
                while time.time() < deadline:
                    line = open(path).read()
                    if "listening" in line:
                        out.append(int(line.split(":")[-1]))
                        break
                    time.sleep(0.05)
                else:
                    raise SystemExit("upstream: a bench backend did not start")
            return out
        plain, tls = backends(False), backends(True)
        for key, bports, extra in (
            ("tplain", plain, ""),
            ("ttls", tls, f"tls = true\nsni = \"localhost\"\nca_file = \"{ROOT}/certs/localhost.crt\""),
        ):
            cfg = os.path.join(work, f"tether-{key}.toml")
            with open(cfg, "w") as f:
                f.write(tether_toml(ports[key], bports, extra, "mode = \"rotate\""))
            proxies[key] = start_proxy([args.tether, "run", "-c", cfg], work, f"tether-{key}", ports[key], life)
        time.sleep(0.5)
        # Warm every path once (connections, TLS sessions, JIT of nothing).
        for name in ("tether", "nginx", "haproxy"):
            grpc_load(argparse.Namespace(**{**vars(args), "calls": 2000}), f"127.0.0.1:{ports[name]}", proxies[name])
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            rows["direct"].append(grpc_load(args, f"127.0.0.1:{gports[0]}", None))
            for name in ("tether", "nginx", "haproxy"):
                rows[name].append(grpc_load(args, f"127.0.0.1:{ports[name]}", proxies[name]))
            oargs = argparse.Namespace(oha=args.oha, duration=args.duration, connections=args.connections)
            for key, row in (("tplain", "tls-plain"), ("ttls", "tls-tls")):
                rows[row].append(run.oha(oargs, work, f"{key}-{r}", f"http://127.0.0.1:{ports[key]}/",
                                         [proxies[key].pid]))
    finally:
        run.stop_all()

    def med(row, field):
        vals = [x[field] for x in rows[row] if x.get(field) is not None]
        return statistics.median(vals) if vals else None

    def ratio(a, b, field):
        vals = [x[field] / y[field] for x, y in zip(rows[a], rows[b]) if x.get(field) and y.get(field)]
        return statistics.median(vals) if vals else None

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# Backends over HTTP/2 and TLS ({date})", "",
          f"`{args.command}` at {os.environ.get('TETHER_COMMIT', '?')}; {args.rounds} rounds; "
          f"proxy on core {PROXY_CORE} with one worker, backends and load on core {LOAD_CORE}. "
          "Medians of rounds; ratios are medians of per-round ratios.", "",
          f"## gRPC unary, {args.calls} calls per run, {args.connections} concurrent callers on one HTTP/2 connection", "",
          "| path | calls/s | vs direct | p99 ms | errors | proxy CPU µs/call | tether CPU vs this |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("direct", "backend direct"), ("tether", "tether (`protocol = \"h2\"`)"),
                        ("nginx", "nginx `grpc_pass`"), ("haproxy", "HAProxy `proto h2`")):
        cpu = med(name, "cpu_us")
        vs = ratio(name, "direct", "per_sec")
        tv = ratio("tether", name, "cpu_us") if name not in ("direct", "tether") else None
        errors = sum(x["errors"] for x in rows[name])
        md.append(f"| {label} | {med(name, 'per_sec'):,.0f} | {vs:.2f} | {med(name, 'p99_us') / 1000:.2f} | {errors} | "
                  f"{'-' if cpu is None else f'{cpu:.1f}'} | {'-' if tv is None else f'{tv:.2f}'} |")
    md += ["", f"## TLS to backends: HTTP/1.1 keep-alive, rotate mode, oha {args.duration} s × {args.connections} connections", "",
           "| tether to its backends over | req/s | p99 ms | errors | tether CPU µs/req |", "|---|---:|---:|---:|---:|"]
    for row, label in (("tls-plain", "plain TCP"), ("tls-tls", "TLS (verified, resumed)")):
        errors = sum(x["errors"] for x in rows[row])
        md.append(f"| {label} | {med(row, 'rps'):,.0f} | {med(row, 'p99_ms'):.2f} | {errors} | {med(row, 'cpu_us'):.1f} |")
    extra = ratio("tls-tls", "tls-plain", "cpu_us")
    md += ["", f"TLS to backends costs {extra:.2f}× the CPU per request of plain TCP (median of per-round ratios)."]
    text = "\n".join(md) + "\n"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "upstream.md"), "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, "upstream.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
