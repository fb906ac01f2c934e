#!/usr/bin/env python3
"""The runner behind benches/load.sh: tether vs HAProxy vs nginx under oha.

Starts three bench backends (core 1) and every proxy, each pinned to core 0
with one worker thread, then runs oha (core 1) against each scenario on each
proxy back to back, for a fixed time at a fixed concurrency, and records
requests/s, p50/p99 latency, errors, the proxy's CPU time per successful
request (utime+stime of the proxy's whole process tree from /proc, before
and after) and the TCP connections the kernel accepted per request (about 1
in the plain-close row, a new connection per request; about 0 elsewhere).
With --repeat N there are N rounds, the proxies' order rotating per round,
and the table shows medians. Writes benches/results/load.md and load.json
and prints the table.

Every process it starts is its own child, bounded by `timeout`, and stopped
by PID; all traffic stays on 127.0.0.1.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.join(ROOT, "benches", "load")
RESULTS = os.path.join(ROOT, "benches", "results")
TICK = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "0"
LOAD_CORE = "1"

CHILDREN = []  # Popen objects we started, stopped by PID on exit


def log(msg):
    print(f"load: {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(argv, out_path, life):
    """Starts argv under `timeout` (so it cannot outlive the run) and returns
    the Popen of the `timeout` process."""
    out = open(out_path, "w")
    p = subprocess.Popen(
        ["timeout", "--signal=TERM", "--kill-after=5", str(life)] + argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=False,
    )
    CHILDREN.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)  # timeout forwards it to its child
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all():
    for p in list(CHILDREN):
        stop(p)


def stop_all_but(keep):
    for p in list(CHILDREN):
        if p not in keep:
            stop(p)


def children_of(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICK


def rss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def tcp_opens():
    """(ActiveOpens, PassiveOpens): TCP connections this network namespace
    has connected and accepted so far, as the kernel counts them."""
    with open("/proc/net/snmp") as f:
        names, values = [line.split()[1:] for line in f if line.startswith("Tcp:")]
    d = dict(zip(names, values))
    return int(d["ActiveOpens"]), int(d["PassiveOpens"])


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def wait_port(port, proc, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"load: {what} did not come up on port {port}")


def wait_http(url, what, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url],
            capture_output=True,
            text=True,
        )
        if r.stdout.strip() == "200":
            return
        time.sleep(0.1)
    raise SystemExit(f"load: {what} does not answer 200 at {url}")


def fill(template, out_path, values):
    with open(os.path.join(HERE, template)) as f:
        # safe_substitute: nginx's own $variables pass through untouched.
        text = string.Template(f.read()).safe_substitute(values)
    if "${" in text:
        raise SystemExit(f"load: {template}: a ${{...}} placeholder was not filled")
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


def set_cookie_of(url, name):
    """The value of Set-Cookie `name` from one curl to url."""
    r = subprocess.run(
        ["curl", "-sk", "-D", "-", "-o", "/dev/null", "--max-time", "2", url],
        capture_output=True,
        text=True,
    )
    m = re.search(rf"(?im)^set-cookie:\s*{re.escape(name)}=([^;\r\n]*)", r.stdout)
    if not m:
        raise SystemExit(f"load: no {name} cookie from {url}:\n{r.stdout}")
    return m.group(1)


def start_backends(binary, work, life):
    """The three bench backends on the load core: (their Popens, their ports)."""
    procs, ports = [], []
    for name in ("b1", "b2", "b3"):
        out = os.path.join(work, f"{name}.out")
        procs.append(start(["taskset", "-c", LOAD_CORE, binary, "--name", name, "--port", "0",
                            "--exit-after", f"{life}s"], out, life + 10))
        for _ in range(200):
            m = re.search(r"listening 127\.0\.0\.1:(\d+)", open(out).read())
            if m:
                ports.append(int(m.group(1)))
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"load: backend {name} did not start")
    return procs, ports


def write_pem(work):
    """The dev certificate and key in one file, as HAProxy wants them."""
    pem = os.path.join(work, "localhost.pem")
    with open(pem, "w") as f:
        for part in ("localhost.crt", "localhost.key"):
            with open(os.path.join(ROOT, "certs", part)) as src:
                f.write(src.read())
    return pem


def tether_config(work, label, mode, ports, resumption=True, deferred=None):
    """A filled tether.toml.in: (path, plain port, TLS port). With `deferred`
    (a port), one more plain listener there with `defer_accept = true`."""
    plain, tls = free_port(), free_port()
    path = os.path.join(work, f"tether-{label}.toml")
    cfg = fill("tether.toml.in", path, {
        "PLAIN": plain, "TLS": tls, "ROOT": ROOT, "MODE": mode, "ADMIN": free_port(),
        "RESUMPTION": "true" if resumption else "false",
        "B1": ports[0], "B2": ports[1], "B3": ports[2],
    })
    if deferred:
        with open(path, "a") as f:
            f.write(f'\n[[listener]]\nbind = "127.0.0.1:{deferred}"\ntls = false\ndefer_accept = true\n')
    return cfg, plain, tls


def start_tether(args, work, label, mode, ports, resumption=True, deferred=None):
    """tether pinned to the proxy core, answering: (Popen, config, plain port, TLS port)."""
    cfg, plain, tls = tether_config(work, label, mode, ports, resumption, deferred)
    p = start(["taskset", "-c", PROXY_CORE, args.tether, "run", "-c", cfg],
              os.path.join(work, f"tether-{label}.log"), args.life)
    wait_port(plain, p, "tether")
    wait_http(f"http://127.0.0.1:{plain}/", "tether")
    return p, cfg, plain, tls


# ---- one oha run ----------------------------------------------------------------


def oha(args, work, tag, url, proxy_pids, cookie=None, keepalive=True):
    argv = [
        "taskset", "-c", LOAD_CORE, args.oha,
        "-z", f"{args.duration}s", "-c", str(args.connections),
        "--no-tui", "--output-format", "json", "--insecure",
    ]
    if not keepalive:
        argv.append("--disable-keepalive")
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    argv.append(url)
    load = loadavg()
    pids = [p for root in proxy_pids for p in tree(root)] if proxy_pids else []
    opens0 = tcp_opens()
    cpu0 = cpu_seconds(pids)
    r = subprocess.run(
        ["timeout", "--signal=INT", "--kill-after=10", str(args.duration + 30)] + argv,
        capture_output=True,
        text=True,
    )
    cpu1 = cpu_seconds(pids)
    opens1 = tcp_opens()
    held = None if keepalive else client_time_wait(url)
    with open(os.path.join(work, f"{tag}.json"), "w") as f:
        f.write(r.stdout)
    if r.returncode != 0:
        raise SystemExit(f"load: oha failed for {tag}: {r.stderr[-2000:]}")
    j = json.loads(r.stdout)
    codes = {int(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    errors = sum(v for k, v in codes.items() if not 200 <= k < 300)
    # Requests cut off by the end of the run are not errors.
    errors += sum(v for k, v in j.get("errorDistribution", {}).items() if k != "aborted due to deadline")
    secs = j["summary"]["total"]
    lat = j.get("latencyPercentiles", {})
    res = {
        "rps": ok / secs if secs else 0.0,
        "p50_ms": (lat.get("p50") or 0) * 1000,
        "p99_ms": (lat.get("p99") or 0) * 1000,
        "ok": ok,
        "errors": errors,
        "cpu_us": (cpu1 - cpu0) / ok * 1e6 if proxy_pids and ok else None,
        # TCP connections opened per successful request during the run, by the
        # kernel's count for the whole network namespace (so anything else
        # opening connections on the machine meanwhile adds a little): oha's
        # connects plus the proxy's to backends, and their accepts.
        "connects_per_req": (opens1[0] - opens0[0]) / ok if ok else None,
        "accepts_per_req": (opens1[1] - opens0[1]) / ok if ok else None,
        "client_time_wait": held,
        "loadavg": load,
    }
    cpu = f"{res['cpu_us']:.1f} us/req" if res["cpu_us"] is not None else "-"
    held = "" if keepalive else f", {held} client ports left in TIME_WAIT"
    log(f"  {tag}: {res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms "
        f"err {errors} cpu {cpu}, {fmt(res['accepts_per_req'], '.3f')} connections accepted "
        f"per request{held} (loadavg {load})")
    return res


# ---- a new TCP connection per request -------------------------------------------
#
# With --disable-keepalive oha opens a connection for every request and sends
# `Connection: close` on it (oha 1.16: src/lib.rs adds the header, src/client.rs
# drops the connection after the response). How we know each request of the
# plain-close row really is a new connection: oha() records the kernel's count
# of TCP connections accepted during the run per successful request
# (accepts_per_req in load.json; backends' accepts count too, so a proxy that
# connected to a backend per request would show 2, and other traffic on the
# machine adds a little). Measured: 1.00-1.03 for tether, HAProxy and nginx,
# 2.01 for HAProxy with its default `http-reuse safe` (see
# haproxy-close.cfg.in); and strace -c on each proxy counted one successful
# accept4() per request plus one per request cut off at the end of the run.
#
# Ports: the side of a connection that closes first keeps it in TIME_WAIT for
# 60 s, and a client port in TIME_WAIT can't be connected from again unless the
# kernel may reuse it: net.ipv4.tcp_tw_reuse 1, or 2 (loopback only, Linux's
# default), with tcp_timestamps on, lets connect() take a TIME_WAIT port once
# it is tcp_tw_reuse_delay (1 s) old. Without that, the 28,000 ports of the
# default range would last under 500 connections per second. Usually the proxy
# closes first (the client asked it to), its TIME_WAIT holds no client port,
# and the kernel accepts a new SYN on a pair still in it; with ss, 99% of
# TIME_WAIT sockets were the proxies'. But which side closes first is a race:
# with the proxy slowed down (strace attached) oha closed first 30-40% of the
# time, thousands of ports per second. So the bench needs port reuse and
# checks for it before anything starts rather than fail midway (it changes no
# sysctl itself); with it, oha could close first for up to 28,000 connections
# per second, beyond what one proxy core serves. Each run also records the
# client ports it left in TIME_WAIT (client_time_wait in load.json).


def sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def client_time_wait(url):
    """Client ports in TIME_WAIT towards url's port."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        r = subprocess.run(["ss", "-Htan", "state", "time-wait", f"( dport = :{port} )"],
                           capture_output=True, text=True)
    except OSError:
        return None
    return len(r.stdout.splitlines()) if r.returncode == 0 else None


def check_port_reuse(args):
    """Before a new connection per request: can connect() reuse client ports
    in TIME_WAIT? (See above.)"""
    if not any(want(args, p, k) for p in PROXIES for k in ("plain-close", "deferred-close")):
        return
    reuse, stamps = sysctl("net.ipv4.tcp_tw_reuse"), sysctl("net.ipv4.tcp_timestamps")
    log(f"a connection per request: tcp_tw_reuse {reuse}, tcp_timestamps {stamps}, "
        f"ip_local_port_range {sysctl('net.ipv4.ip_local_port_range')}, "
        f"tcp_tw_reuse_delay {sysctl('net.ipv4.tcp_tw_reuse_delay') or '1000 (fixed)'} ms")
    if reuse == "0" or stamps == "0":
        raise SystemExit(
            "load: the plain-close and deferred-close rows (a new connection per request) can run out "
            "of client ports: the kernel won't reuse ports in TIME_WAIT. Enable it (sysctl -w "
            "net.ipv4.tcp_tw_reuse=2 net.ipv4.tcp_timestamps=1) or leave the rows out "
            "(--only '^(?!.*(plain|deferred)-close)', which "
            "also skips the live-sessions rows).")


def handshakes(args, tag, url, proxy_pids, cookie, full):
    """A handshake per request with the handshake_load client, which counts
    how each handshake went (oha keeps too few TLS 1.3 tickets to resume
    under concurrency)."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    argv = ["taskset", "-c", LOAD_CORE, args.handshake_load, "--target", f"127.0.0.1:{port}",
            "--connections", str(args.connections), "--duration", f"{args.duration}s"]
    if cookie:
        argv += ["--cookie", cookie]
    if full:
        argv.append("--full")
    pids = [p for root in proxy_pids for p in tree(root)]
    cpu0 = cpu_seconds(pids)
    r = subprocess.run(["timeout", str(args.duration + 30)] + argv, capture_output=True, text=True)
    cpu1 = cpu_seconds(pids)
    if r.returncode != 0:
        raise SystemExit(f"load: handshake_load failed for {tag}: {r.stderr[-2000:]}")
    j = json.loads(r.stdout.strip().splitlines()[-1])
    done = j["full"] + j["resumed"]
    res = {
        "rps": j["rps"],
        "p50_ms": None,
        "p99_ms": None,
        "ok": j["ok"],
        "errors": j["errors"],
        "cpu_us": (cpu1 - cpu0) / j["ok"] * 1e6 if j["ok"] else None,
        "resumed_share": j["resumed"] / done if done else None,
        "loadavg": loadavg(),
    }
    log(f"  {tag}: {res['rps']:.0f} req/s err {res['errors']} cpu {fmt(res['cpu_us'], '.1f')} us/req, "
        f"{j['resumed']} of {done} handshakes resumed")
    return res


# ---- scenarios ----------------------------------------------------------------

# (row key, label)
SCENARIOS = [
    ("plain-new", "plain, sticky, no cookie (every request a new session)"),
    ("plain-cookie", "plain, sticky, returning cookie"),
    ("plain-rotate", "plain, rotate / round-robin"),
    ("plain-close", "plain without keep-alive (a new TCP connection per request), sticky cookie"),
    ("deferred-close", "the same with deferred accept on all three (TCP_DEFER_ACCEPT: tether `defer_accept`, "
     "HAProxy `defer-accept`, nginx `deferred`)"),
    ("tls-new", "TLS keep-alive, sticky, no cookie"),
    ("tls-cookie", "TLS keep-alive, sticky, returning cookie"),
    ("tls-handshake", "TLS without keep-alive, resumption on (a resumed handshake per request), sticky cookie"),
    ("tls-full", "TLS without keep-alive, resumption off everywhere (a full handshake per request), sticky cookie"),
]
PROXIES = ["tether", "haproxy-cookie", "haproxy-hash", "nginx-hash"]
# Scenarios of a TLS handshake per request, run with the handshake_load client.
HANDSHAKES = ("tls-handshake", "tls-full")
DIRECT = "backend direct"


def wanted(args, proxies):
    return any(want(args, p, k) for p in proxies for k, _ in SCENARIOS)


# Every proxy is started once and stays up (idle ones cost nothing on core
# 0); each scenario then runs on every proxy back to back, in an order that
# rotates per round. This machine's speed drifts over tens of seconds, so
# cells compared in the table are measured seconds apart, not minutes.
# A cell: (proxy, scenario key, url, cookie or None, keep-alive, pid).


def setup_tether(args, work, ports):
    if not wanted(args, ["tether"]):
        return []
    tls_url = lambda p: f"https://localhost:{p}/"
    cells = []
    if want(args, "tether", "tls-full"):
        p, _, plain, tls = start_tether(args, work, "full", "sticky", ports, resumption=False)
        tsid = "tether_sid=" + set_cookie_of(tls_url(tls), "tether_sid")
        cells.append(("tether", "tls-full", tls_url(tls), tsid, False, p.pid))
    for mode in ("sticky", "rotate"):
        deferred = free_port() if mode == "sticky" else None
        p, _, plain, tls = start_tether(args, work, mode, mode, ports, deferred=deferred)
        if mode == "rotate":
            cells.append(("tether", "plain-rotate", f"http://127.0.0.1:{plain}/", None, True, p.pid))
        else:
            sid = "tether_sid=" + set_cookie_of(f"http://127.0.0.1:{plain}/", "tether_sid")
            tsid = "tether_sid=" + set_cookie_of(tls_url(tls), "tether_sid")
            cells += [
                ("tether", "plain-new", f"http://127.0.0.1:{plain}/", None, True, p.pid),
                ("tether", "plain-cookie", f"http://127.0.0.1:{plain}/", sid, True, p.pid),
                ("tether", "plain-close", f"http://127.0.0.1:{plain}/", sid, False, p.pid),
                ("tether", "deferred-close", f"http://127.0.0.1:{deferred}/", sid, False, p.pid),
                ("tether", "tls-new", tls_url(tls), None, True, p.pid),
                ("tether", "tls-cookie", tls_url(tls), tsid, True, p.pid),
                ("tether", "tls-handshake", tls_url(tls), tsid, False, p.pid),
            ]
    return cells


def setup_haproxy(args, work, ports):
    if not wanted(args, ["haproxy-cookie", "haproxy-hash"]):
        return []
    pem = write_pem(work)
    v = {k: free_port() for k in ("COOKIE_PLAIN", "COOKIE_TLS", "HASH_PLAIN", "HASH_TLS", "RR_PLAIN")}
    v.update({"PEM": pem, "B1": ports[0], "B2": ports[1], "B3": ports[2]})
    cfg = fill("haproxy.cfg.in", os.path.join(work, "haproxy.cfg"), v)
    subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
    p = start(["taskset", "-c", PROXY_CORE, "haproxy", "-f", cfg, "-db"],
              os.path.join(work, "haproxy.log"), args.life)
    wait_port(v["COOKIE_PLAIN"], p, "haproxy")
    wait_http(f"http://127.0.0.1:{v['COOKIE_PLAIN']}/", "haproxy")
    time.sleep(0.5)
    srv = "SRV=" + set_cookie_of(f"http://127.0.0.1:{v['COOKIE_PLAIN']}/", "SRV")
    # The hash variant hashes the Cookie header: give it a tether-shaped one.
    sid = "tether_sid=" + "A" * 86
    plain = lambda k: f"http://127.0.0.1:{v[k]}/"
    tls = lambda k: f"https://localhost:{v[k]}/"
    return [
        ("haproxy-cookie", "plain-new", plain("COOKIE_PLAIN"), None, True, p.pid),
        ("haproxy-cookie", "plain-cookie", plain("COOKIE_PLAIN"), srv, True, p.pid),
        ("haproxy-cookie", "plain-rotate", plain("RR_PLAIN"), None, True, p.pid),
        ("haproxy-cookie", "tls-new", tls("COOKIE_TLS"), None, True, p.pid),
        ("haproxy-cookie", "tls-cookie", tls("COOKIE_TLS"), srv, True, p.pid),
        ("haproxy-cookie", "tls-handshake", tls("COOKIE_TLS"), srv, False, p.pid),
        ("haproxy-hash", "plain-cookie", plain("HASH_PLAIN"), sid, True, p.pid),
        ("haproxy-hash", "tls-cookie", tls("HASH_TLS"), sid, True, p.pid),
    ] + setup_haproxy_full(args, work, ports, pem) + setup_haproxy_close(args, work, ports)


def setup_haproxy_full(args, work, ports, pem):
    """A second HAProxy without a session cache or tickets (the cache is global)."""
    if not want(args, "haproxy-cookie", "tls-full"):
        return []
    v = {"COOKIE_TLS_FULL": free_port(), "PEM": pem, "B1": ports[0], "B2": ports[1], "B3": ports[2]}
    cfg = fill("haproxy-full.cfg.in", os.path.join(work, "haproxy-full.cfg"), v)
    subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
    p = start(["taskset", "-c", PROXY_CORE, "haproxy", "-f", cfg, "-db"],
              os.path.join(work, "haproxy-full.log"), args.life)
    wait_port(v["COOKIE_TLS_FULL"], p, "haproxy (full handshakes)")
    url = f"https://localhost:{v['COOKIE_TLS_FULL']}/"
    wait_http(url, "haproxy (full handshakes)")
    srv = "SRV=" + set_cookie_of(url, "SRV")
    return [("haproxy-cookie", "tls-full", url, srv, False, p.pid)]


def setup_haproxy_close(args, work, ports):
    """A third HAProxy, which gives a client connection's first request an
    idle pooled backend connection (see haproxy-close.cfg.in)."""
    if not (want(args, "haproxy-cookie", "plain-close") or want(args, "haproxy-cookie", "deferred-close")):
        return []
    v = {"COOKIE_CLOSE": free_port(), "COOKIE_CLOSE_DEFERRED": free_port(),
         "B1": ports[0], "B2": ports[1], "B3": ports[2]}
    cfg = fill("haproxy-close.cfg.in", os.path.join(work, "haproxy-close.cfg"), v)
    subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
    p = start(["taskset", "-c", PROXY_CORE, "haproxy", "-f", cfg, "-db"],
              os.path.join(work, "haproxy-close.log"), args.life)
    wait_port(v["COOKIE_CLOSE"], p, "haproxy (a connection per request)")
    url = f"http://127.0.0.1:{v['COOKIE_CLOSE']}/"
    wait_http(url, "haproxy (a connection per request)")
    srv = "SRV=" + set_cookie_of(url, "SRV")
    deferred = f"http://127.0.0.1:{v['COOKIE_CLOSE_DEFERRED']}/"
    return [("haproxy-cookie", "plain-close", url, srv, False, p.pid),
            ("haproxy-cookie", "deferred-close", deferred, srv, False, p.pid)]


def setup_nginx(args, work, ports):
    if not wanted(args, ["nginx-hash"]):
        return []
    v = {k: free_port() for k in ("HASH_PLAIN", "HASH_PLAIN_DEFERRED", "HASH_TLS", "HASH_TLS_FULL", "RR_PLAIN")}
    v.update({"WORK": work, "ROOT": ROOT, "B1": ports[0], "B2": ports[1], "B3": ports[2]})
    cfg = fill("nginx.conf.in", os.path.join(work, "nginx.conf"), v)
    subprocess.run(["nginx", "-t", "-q", "-c", cfg, "-g", "daemon off;"], check=True,
                   stderr=subprocess.DEVNULL)
    p = start(["taskset", "-c", PROXY_CORE, "nginx", "-c", cfg, "-g", "daemon off;"],
              os.path.join(work, "nginx.log"), args.life)
    wait_port(v["HASH_PLAIN"], p, "nginx")
    wait_http(f"http://127.0.0.1:{v['HASH_PLAIN']}/", "nginx")
    sid = "tether_sid=" + "A" * 86
    plain = lambda k: f"http://127.0.0.1:{v[k]}/"
    tls = lambda k: f"https://localhost:{v[k]}/"
    return [
        ("nginx-hash", "plain-new", plain("HASH_PLAIN"), None, True, p.pid),
        ("nginx-hash", "plain-cookie", plain("HASH_PLAIN"), sid, True, p.pid),
        ("nginx-hash", "plain-rotate", plain("RR_PLAIN"), None, True, p.pid),
        ("nginx-hash", "plain-close", plain("HASH_PLAIN"), sid, False, p.pid),
        ("nginx-hash", "deferred-close", plain("HASH_PLAIN_DEFERRED"), sid, False, p.pid),
        ("nginx-hash", "tls-new", tls("HASH_TLS"), None, True, p.pid),
        ("nginx-hash", "tls-cookie", tls("HASH_TLS"), sid, True, p.pid),
        ("nginx-hash", "tls-handshake", tls("HASH_TLS"), sid, False, p.pid),
        ("nginx-hash", "tls-full", tls("HASH_TLS_FULL"), sid, False, p.pid),
    ]


def run_round(args, work, cells, rep, results):
    """Each scenario on every proxy back to back; the order rotates per round."""
    for key, _ in SCENARIOS:
        group = [c for c in cells if c[1] == key and want(args, c[0], key)]
        if not group:
            continue
        k = rep % len(group)
        for proxy, _, url, cookie, ka, pid in group[k:] + group[:k]:
            tag = f"{proxy}-{key}-{rep}"
            if key in HANDSHAKES:
                res = handshakes(args, tag, url, [pid], cookie, full=key == "tls-full")
            else:
                res = oha(args, work, tag, url, [pid], cookie, ka)
            record(results, proxy, key, rep, res)


def run_million(args, work, ports, results):
    """tether with a small and with a large store, both up at once, loaded
    over their sessions in turns (the order alternates per round)."""
    stores = []
    for label, n in (("small", 1000), ("large", args.sessions)):
        p, cfg, plain, _ = start_tether(args, work, label, "sticky", ports)
        log(f"1M: filling the {label} store with {n} sessions")
        base = ["taskset", "-c", LOAD_CORE, args.session_load, "--config", cfg,
                "--target", f"127.0.0.1:{plain}", "--sessions", str(n),
                "--issued-ms", str(int(time.time() * 1000))]
        fillr = subprocess.run(["timeout", "--kill-after=10", "900"] + base + ["--fill"],
                               capture_output=True, text=True, check=True)
        filled = json.loads(fillr.stdout)
        log(f"  filled {filled['filled']} in {filled['fill_seconds']:.1f} s ({filled['fill_errors']} errors)")
        stores.append({"label": label, "n": n, "p": p, "base": base, "rows": []})
    for rep in range(args.repeat):
        for st in (stores if rep % 2 == 0 else stores[::-1]):
            load = loadavg()
            cpu0 = cpu_seconds(tree(st["p"].pid))
            r = subprocess.run(
                ["timeout", "--kill-after=10", str(args.duration + 120)] + st["base"]
                + ["--connections", str(args.connections), "--measure", f"{args.duration}s"],
                capture_output=True, text=True, check=True)
            cpu1 = cpu_seconds(tree(st["p"].pid))
            m = json.loads(r.stdout)["measure"]
            per = (cpu1 - cpu0) / m["requests"] * 1e6
            st["rows"].append({"rps": m["rps"], "errors": m["errors"], "cpu_us": per, "loadavg": load})
            log(f"  {st['label']} store ({st['n']}): {m['rps']:.0f} req/s err {m['errors']} "
                f"cpu {per:.1f} us/req (loadavg {load})")
    out = {}
    for st in stores:
        rows = st["rows"]
        out[st["label"]] = {
            "sessions": st["n"],
            "rps": statistics.median(r["rps"] for r in rows),
            "cpu_us": statistics.median(r["cpu_us"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            "rss_mib": rss_mib(tree(st["p"].pid)),
            "runs": rows,
        }
        stop(st["p"])
    results["million"] = out


# ---- bookkeeping and the table ------------------------------------------------


def want(args, proxy, key):
    return not args.only or re.search(args.only, f"{proxy}:{key}")


def record(results, proxy, key, rep, res):
    results["runs"].setdefault(f"{proxy}|{key}", []).append(res)


def med(runs, field):
    vals = [r[field] for r in runs if r.get(field) is not None]
    return statistics.median(vals) if vals else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(results, meta):
    runs = results["runs"]
    lines = [
        "| scenario | proxy | req/s | p50 ms | p99 ms | errors | CPU us/req | req/s vs HAProxy | CPU vs HAProxy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    d = runs.get(f"{DIRECT}|plain-cookie")
    if d:
        lines.append(f"| plain (ceiling) | {DIRECT} | {med(d, 'rps'):.0f} | {med(d, 'p50_ms'):.2f} | "
                     f"{med(d, 'p99_ms'):.2f} | {sum(r['errors'] for r in d)} | - | - | - |")
    for key, label in SCENARIOS:
        ref = runs.get(f"haproxy-cookie|{key}")
        ref_rps, ref_cpu = (med(ref, "rps"), med(ref, "cpu_us")) if ref else (None, None)
        for proxy in PROXIES:
            rs = runs.get(f"{proxy}|{key}")
            if not rs:
                continue
            rps, cpu = med(rs, "rps"), med(rs, "cpu_us")
            ratio_rps = f"{rps / ref_rps:.2f}" if ref_rps else "-"
            ratio_cpu = f"{cpu / ref_cpu:.2f}" if ref_cpu and cpu else "-"
            lines.append(
                f"| {label} | {proxy} | {rps:.0f} | {fmt(med(rs, 'p50_ms'), '.2f')} | "
                f"{fmt(med(rs, 'p99_ms'), '.2f')} | {sum(r['errors'] for r in rs)} | "
                f"{fmt(cpu, '.1f')} | {ratio_rps} | {ratio_cpu} |")
    shares = []
    for proxy in PROXIES:
        rs = [r["resumed_share"] for r in runs.get(f"{proxy}|tls-handshake", []) if r.get("resumed_share") is not None]
        if rs:
            shares.append(f"{proxy} {100 * statistics.median(rs):.1f}%")
    if shares:
        lines += ["", "The handshake rows use examples/handshake_load.rs (one request per connection, "
                  "keeping every TLS 1.3 ticket it is given). Handshakes that resumed in the "
                  "resumption-on row, as the client saw them: " + ", ".join(shares) + "; in the "
                  "resumption-off row none did."]
    opened = []
    for proxy in PROXIES:
        rs = runs.get(f"{proxy}|plain-close", []) or runs.get(f"{proxy}|deferred-close", [])
        per = med(rs, "accepts_per_req")
        if per is not None:
            opened.append(f"{proxy} {per:.3f}")
    if opened:
        lines += ["", "The new-connection row uses `oha --disable-keepalive` (a connection per request, "
                  "`Connection: close`) and HAProxy with `http-reuse always` (benches/load/haproxy-close.cfg.in). "
                  "TCP connections the kernel accepted per successful request in it (backends' accepts "
                  "included; 1 = a new client connection per request, backend connections reused): "
                  + ", ".join(opened) + "."]
    m = results.get("million")
    if m:
        s, l = m["small"], m["large"]
        lines += [
            "",
            "Live sessions in the memory store (tether, plain, each request carries the cookie of a "
            "random session from the store; session_load client):",
            "",
            "| store | req/s | CPU us/req | RSS MiB | errors |",
            "|---|---:|---:|---:|---:|",
            f"| {s['sessions']} sessions | {s['rps']:.0f} | {s['cpu_us']:.1f} | {s['rss_mib']:.0f} | {s['errors']} |",
            f"| {l['sessions']} sessions | {l['rps']:.0f} | {l['cpu_us']:.1f} | {l['rss_mib']:.0f} | {l['errors']} |",
            "",
            f"Throughput with {l['sessions']} sessions: {l['rps'] / s['rps']:.3f} x the small store's "
            f"(loss {100 * (1 - l['rps'] / s['rps']):.1f}%); CPU per request {l['cpu_us'] / s['cpu_us']:.3f} x.",
        ]
    head = [
        f"Machine: {meta['cpu']} ({meta['ncpu']} cores), {meta['kernel']}; {meta['date']}.",
        f"Command: `{meta['command']}` (tether {meta['commit']}, {meta['haproxy']}, {meta['nginx']}, oha {meta['oha']}).",
        f"Each run {meta['duration']} s at {meta['connections']} connections; medians of {meta['repeat']} "
        f"run(s) per cell; every proxy is up at once and each scenario runs on each proxy back to back, the order rotating per round. Proxy pinned to core {PROXY_CORE} with one worker "
        f"thread/process; oha and the three backends on core {LOAD_CORE}. CPU us/req = the proxy's "
        f"utime+stime over successful requests. Load average before the runs: {meta['loadavg']} "
        f"(other work shared the machine; per-run values in load.json).",
        "",
        "HAProxy: `cookie SRV insert indirect nocache` (haproxy-cookie) and `balance hdr(cookie)` + "
        "`hash-type consistent` (haproxy-hash); nginx: `hash $cookie_tether_sid consistent`. "
        "Ratios are against haproxy-cookie in the same scenario. Without a cookie, tether and "
        "haproxy-cookie mint one per request; the hash variants have nothing to mint.",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--no-million", action="store_true", help="skip the live-sessions runs")
    ap.add_argument("--million-only", action="store_true", help="only the live-sessions runs")
    ap.add_argument("--merge", help="start from the runs in this load.json (e.g. to add --million-only)")
    ap.add_argument("--only", default="", help="regex over PROXY:SCENARIO (e.g. 'tether|haproxy-cookie:plain-cookie')")
    ap.add_argument("--tether", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--session-load", required=True)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--handshake-load", required=True)
    ap.add_argument("--out", default=os.path.join(RESULTS, "load"))
    ap.add_argument("--command", default="benches/load.sh")
    args = ap.parse_args()
    # How long any process it starts may live: up to 30 runs of about
    # duration + 3 s in each round, plus start-up and the live-sessions runs.
    per_rep = 30 * (args.duration + 3)
    args.life = per_rep * args.repeat + 900

    work = tempfile.mkdtemp(prefix="tether-load.")
    log(f"work dir (configs, logs, raw oha JSON): {work}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    results = {"runs": {}}
    if args.merge:
        with open(args.merge) as f:
            prev = json.load(f)
        results["runs"] = prev.get("runs", {})
        if "million" in prev:
            results["million"] = prev["million"]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "ncpu": os.cpu_count(),
        "kernel": f"Linux {platform.release()}",
        "loadavg": loadavg(),
        "duration": args.duration,
        "connections": args.connections,
        "repeat": args.repeat,
        "command": args.command,
        "commit": os.environ.get("TETHER_COMMIT", "?"),
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split(" - ")[0],
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", ""),
        "oha": subprocess.run([args.oha, "--version"], capture_output=True, text=True).stdout.split()[-1],
    }
    if not args.million_only:
        check_port_reuse(args)
    try:
        backends, ports = start_backends(args.backend, work, args.life)
        cells = []
        if not args.million_only:
            for setup in (setup_tether, setup_haproxy, setup_nginx):
                cells += setup(args, work, ports)
            time.sleep(0.5)
        for rep in range(0 if args.million_only else args.repeat):
            log(f"round {rep + 1}/{args.repeat}")
            if want(args, DIRECT, "plain-cookie"):
                record(results, DIRECT, "plain-cookie", rep,
                       oha(args, work, f"direct-{rep}", f"http://127.0.0.1:{ports[0]}/", []))
            run_round(args, work, cells, rep, results)
        if cells:
            stop_all_but(backends)
        if args.million_only or (not args.no_million and not args.only):
            run_million(args, work, ports, results)
    finally:
        stop_all()
    md = table(results, meta)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, **results}, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
