#!/usr/bin/env python3
"""The runner behind benches/scale.sh: tether's cost as the work grows.

1. CPU per request for new sessions (no cookie: ring lookup, bounded load,
   a cookie minted) and for continued ones (a returning cookie) with 3, 100
   and 1,000 backends (names cycling over three bench backends; health
   probes every hour, so they do not count).
2. CPU per request with 1,000, 100,000 and 1,000,000 live sessions in the
   memory store (session_load fills it, then loads random sessions).

tether pinned to core 0 with one worker; oha, session_load and the backends
on core 1. Medians over the rounds. Writes benches/results/scale.md and
.json, and docs/scale.svg (the two curves).
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
import run  # noqa: E402
from run import LOAD_CORE, PROXY_CORE, RESULTS, ROOT, log  # noqa: E402


def start_with_backends(args, work, ports, n):
    """tether with `n` backends over the three bench backends."""
    cfg, plain, _ = run.tether_config(work, f"scale-{n}", "sticky", ports)
    text = open(cfg).read()
    head, tail = text.split("[[backend]]")[0], text[text.index("[health]"):]
    tail = tail.replace('interval = "2s"', 'interval = "1h"')
    backends = "".join(
        f'[[backend]]\nname = "b{i}"\naddress = "127.0.0.1:{ports[i % 3]}"\n\n' for i in range(n))
    with open(cfg, "w") as f:
        f.write(head + backends + tail)
    p = run.start(["taskset", "-c", PROXY_CORE, args.tether, "run", "-c", cfg],
                  os.path.join(work, f"tether-scale-{n}.log"), args.life)
    run.wait_port(plain, p, "tether")
    run.wait_http(f"http://127.0.0.1:{plain}/", "tether")
    return p, cfg, plain


def svg(backends, sessions):
    """Two small line charts side by side, log-scale x, as SVG text."""
    import math
    W, H, L, B, T, R = 340, 230, 52, 40, 28, 16
    out = ['<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 700 240" font-family="sans-serif" font-size="11">',
           '<rect width="700" height="240" fill="#fff"/>']

    def panel(x0, title, xs, series, xlabel):
        ymax = max(v for _, pts, _ in series for v in pts) * 1.15
        ymax = max(1.0, math.ceil(ymax / 5) * 5)
        lx = [math.log10(x) for x in xs]
        sx = lambda v: x0 + L + (W - L - R) * (math.log10(v) - lx[0]) / (lx[-1] - lx[0])
        sy = lambda v: T + (H - T - B) * (1 - v / ymax)
        out.append(f'<text x="{x0 + L}" y="16" font-weight="bold">{title}</text>')
        for frac in (0, 0.5, 1):
            y = sy(ymax * frac)
            out.append(f'<line x1="{x0 + L}" y1="{y:.1f}" x2="{x0 + W - R}" y2="{y:.1f}" stroke="#eaeef2"/>')
            out.append(f'<text x="{x0 + L - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#57606a">{ymax * frac:g}</text>')
        for x in xs:
            out.append(f'<text x="{sx(x):.1f}" y="{H - B + 16}" text-anchor="middle" fill="#57606a">{x:,}</text>')
        out.append(f'<text x="{x0 + (L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle" fill="#57606a">{xlabel}</text>')
        out.append(f'<text x="{x0 + 12}" y="{(T + H - B) / 2:.0f}" transform="rotate(-90 {x0 + 12} {(T + H - B) / 2:.0f})" text-anchor="middle" fill="#57606a">CPU µs per request</text>')
        for i, (label, pts, colour) in enumerate(series):
            path = " ".join(f"{sx(x):.1f},{sy(v):.1f}" for x, v in zip(xs, pts))
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
            for x, v in zip(xs, pts):
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(v):.1f}" r="3" fill="{colour}"/>')
            out.append(f'<text x="{x0 + W - R}" y="{T + 14 * i}" text-anchor="end" fill="{colour}">{label}</text>')

    xs = sorted(backends)
    panel(0, "Backends", xs, [
        ("new session", [backends[n]["new"] for n in xs], "#d55e00"),
        ("continued session", [backends[n]["continued"] for n in xs], "#0072b2"),
    ], "backends (log scale)")
    ss = sorted(sessions)
    panel(350, "Live sessions", ss, [
        ("random live session", [sessions[n] for n in ss], "#009e73"),
    ], "sessions in the store (log scale)")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--tether", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--session-load", required=True)
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--command", default="benches/scale.sh")
    args = ap.parse_args()
    args.life = 3600
    work = tempfile.mkdtemp(prefix="tether-scale.")
    log(f"work dir: {work}")
    backends, sessions = {}, {}
    try:
        _, ports = run.start_backends(args.backend, work, args.life)
        procs = {}
        for n in (3, 100, 1000):
            p, cfg, plain = start_with_backends(args, work, ports, n)
            cookie = "tether_sid=" + run.set_cookie_of(f"http://127.0.0.1:{plain}/", "tether_sid")
            # (oha's first request with it stores the session; the rest continue it.)
            procs[n] = (p, plain, cookie)
        rows = {n: {"new": [], "continued": []} for n in procs}
        for rep in range(args.rounds):
            log(f"backends: round {rep + 1}/{args.rounds}")
            order = list(procs) if rep % 2 == 0 else list(procs)[::-1]
            for n in order:
                p, plain, cookie = procs[n]
                url = f"http://127.0.0.1:{plain}/"
                rows[n]["new"].append(run.oha(args, work, f"new-{n}-{rep}", url, [p.pid])["cpu_us"])
                rows[n]["continued"].append(
                    run.oha(args, work, f"continued-{n}-{rep}", url, [p.pid], cookie)["cpu_us"])
        for n, r in rows.items():
            backends[n] = {k: statistics.median(v) for k, v in r.items()}
        run.stop_all_but([])
        _, ports = run.start_backends(args.backend, work, args.life)
        for n in (1000, 100_000, 1_000_000):
            p, cfg, plain, _ = run.start_tether(args, work, f"sessions-{n}", "sticky", ports)
            base = ["taskset", "-c", LOAD_CORE, args.session_load, "--config", cfg,
                    "--target", f"127.0.0.1:{plain}", "--sessions", str(n),
                    "--issued-ms", str(int(time.time() * 1000))]
            subprocess.run(["timeout", "900"] + base + ["--fill"], capture_output=True, text=True, check=True)
            per = []
            for rep in range(args.rounds):
                cpu0 = run.cpu_seconds(run.tree(p.pid))
                r = subprocess.run(["timeout", str(args.duration + 120)] + base
                                   + ["--connections", str(args.connections), "--measure", f"{args.duration}s"],
                                   capture_output=True, text=True, check=True)
                cpu1 = run.cpu_seconds(run.tree(p.pid))
                m = json.loads(r.stdout)["measure"]
                per.append((cpu1 - cpu0) / m["requests"] * 1e6)
                log(f"  {n} sessions: {m['rps']:.0f} req/s cpu {per[-1]:.1f} us/req")
            sessions[n] = statistics.median(per)
            run.stop(p)
    finally:
        run.stop_all()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# Cost as the work grows ({date})", "",
          f"`{args.command}`, {args.rounds} rounds of {args.duration} s, {args.connections} connections; "
          f"tether on core {PROXY_CORE} with one worker, load and backends on core {LOAD_CORE}. "
          "Medians of rounds. Plotted in docs/scale.svg.", "",
          "| backends | CPU µs per new session | CPU µs per continued request |", "|---:|---:|---:|"]
    md += [f"| {n:,} | {v['new']:.1f} | {v['continued']:.1f} |" for n, v in sorted(backends.items())]
    md += ["", "| live sessions | CPU µs per request (a random live session each) |", "|---:|---:|"]
    md += [f"| {n:,} | {v:.1f} |" for n, v in sorted(sessions.items())]
    text = "\n".join(md) + "\n"
    with open(os.path.join(RESULTS, "scale.md"), "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, "scale.json"), "w") as f:
        json.dump({"backends": backends, "sessions": sessions}, f, indent=1)
    with open(os.path.join(ROOT, "docs", "scale.svg"), "w") as f:
        f.write(svg(backends, sessions))
    print(text)


if __name__ == "__main__":
    main()
