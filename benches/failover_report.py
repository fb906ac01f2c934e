#!/usr/bin/env python3
"""Turns benches/failover.sh's raw JSON into one side-by-side Markdown table.

Reads $WORK/{tether,haproxy}-sessions.json (sticky_load) and
$WORK/{tether,haproxy}-oha.json (oha), prints the table and writes it to
$RESULTS/failover.md, with the raw JSON in $RESULTS/failover.json.
"""

import datetime
import json
import os

env = os.environ
work, results = env["WORK"], env["RESULTS"]
proxies = [("tether", "tether " + env["TETHER_COMMIT"]), ("haproxy", "HAProxy " + env["HAPROXY_VERSION"])]


def load(name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)


raw = {}
for p, _ in proxies:
    raw[p] = {
        "sessions": load(f"{p}-sessions.json"),
        "oha": load(f"{p}-oha.json"),
        "oha_victim": load(f"{p}-oha-meta.json")["victim"],
    }


def fmt_ms(v):
    return "none" if v is None else f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"


def kinds(d):
    if not d:
        return "-"
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def session_rows(s):
    k = s["kill"]
    per = k["sessions_per_backend_at_kill"]
    return [
        ("requests (req/s)", f"{s['requests']:,} ({s['requests_per_s']:,.0f}/s)"),
        ("failed requests", f"{s['errors']:,}"),
        ("… before the kill", f"{k['errors_before_kill']:,}"),
        ("… after, on the dead backend's sessions", f"{k['errors_after_kill_on_killed_sessions']:,}"),
        ("… after, on live backends' sessions", f"{k['errors_after_kill_on_live_sessions']:,}"),
        ("error kinds", kinds(s["error_kinds"])),
        ("**failover time** (kill → last error)", fmt_ms(k["kill_to_last_error_ms"])),
        ("kill → every dead-backend session answered elsewhere", fmt_ms(k["kill_to_all_dead_sessions_reserved_ms"])),
        ("killed backend (sessions at kill)", f"{k['backend']} ({per.get(k['backend'], 0)}; all: "
         + ", ".join(f"{b}={n}" for b, n in sorted(per.items())) + ")"),
        ("sessions moved from the dead backend (expect all)", f"{k['sessions_moved_from_killed']} / {k['sessions_on_killed']}"),
        ("sessions moved from live backends (must be 0)", f"{k['sessions_moved_from_live']}"),
        ("sessions moved before the kill / more than once", f"{k['sessions_moved_before_kill']} / {s['sessions_moved_more_than_once']}"),
        ("latency p50 / p99 / max", f"{s['latency_ms']['p50']:.2f} / {s['latency_ms']['p99']:.2f} / {s['latency_ms']['max']:.0f} ms"),
    ]


def oha_rows(o, victim):
    codes = {k: v for k, v in (o.get("statusCodeDistribution") or {}).items()}
    # oha cuts the requests still in flight at the deadline ("aborted due to
    # deadline"): one per connection, not failures of the proxy.
    errs = {k: v for k, v in (o.get("errorDistribution") or {}).items() if "deadline" not in k}
    ok = sum(v for c, v in codes.items() if str(c).startswith("2"))
    non2xx = sum(v for c, v in codes.items() if not str(c).startswith("2"))
    transport = sum(errs.values())
    total = ok + non2xx + transport
    rps = o["summary"].get("requestsPerSec") or 0
    failed = {**{f"HTTP {c}": v for c, v in codes.items() if not str(c).startswith("2")}, **errs}
    return [
        ("requests (req/s)", f"{total:,} ({rps:,.0f}/s)"),
        ("failed requests", f"{non2xx + transport:,}"),
        ("error kinds", kinds(failed)),
        ("killed backend (the cookie's)", victim),
    ]


def table(rows_by_proxy):
    header = "| | " + " | ".join(title for _, title in proxies) + " |"
    lines = [header, "|---" * (len(proxies) + 1) + "|"]
    first = rows_by_proxy[proxies[0][0]]
    for i, (label, _) in enumerate(first):
        cells = [rows_by_proxy[p][i][1] for p, _ in proxies]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


d, ka, c = env["DURATION"], env["KILL_AT"], env["CLIENTS"]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = f"""# Failover under load: tether vs HAProxy

`benches/failover.sh{' --quick' if env['MODE'] == 'quick' else ''}` on {now}; machine: {env['NCPU']} cores ({env['CPU_MODEL']}),
proxy, three bench backends and the load client all on it, nothing pinned; oha {env['OHA_VERSION']}.
Each scenario: fresh backends and proxy, {d} s of load, one backend SIGKILLed at {ka} s.
tether: `[health] interval 1s, timeout 500ms, fall 2, rise 2`, worker threads = cores.
HAProxy: `balance roundrobin`, `cookie SRV insert indirect nocache`, `option redispatch`, `retries 1`,
`check inter 1s fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down`, `nbthread` = cores.

{env.get("FAILOVER_NOTE", "")}

Failed requests are the requests that were in flight to the dead backend, or about to reuse a pooled
connection to it, at the instant of the kill: a handful, varying from run to run with that race. Compare
them over several runs, not one. Requests per second are from one unpinned 2-core machine shared by
everything: read them as a rough ratio, not as capacity (benches/load.sh, with the proxy pinned, measures that).

## Sessions: {c} sticky clients (sticky_load)

Load client: `examples/sticky_load.rs`. Each client is one session with its own cookie jar (it follows
Set-Cookie), on one keep-alive connection. At {ka} s it SIGKILLs the backend holding the number of sessions
nearest a third. A "failed request" is a non-2xx answer or a transport error; "moved" means a session
was answered by another backend than before.

{table({p: session_rows(raw[p]['sessions']) for p, _ in proxies})}

## Raw throughput: oha, {c} connections, one cookie

Load client: oha. Every connection sends the same cookie, pinned to the backend that is SIGKILLed at {ka} s;
oha ignores re-issued cookies, so after the kill every request names the dead backend (a client that
never updates its cookie: the worst case). oha gives no per-request times, so no failover time here.

{table({p: oha_rows(raw[p]['oha'], raw[p]['oha_victim']) for p, _ in proxies})}
"""
print(out)
with open(os.path.join(results, "failover.md"), "w") as f:
    f.write(out)
with open(os.path.join(results, "failover.json"), "w") as f:
    json.dump(raw, f, indent=1)
    f.write("\n")
