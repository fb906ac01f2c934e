#!/usr/bin/env bash
# Memory store vs Redis store, one machine, one run: a sticky workload whose
# every request returns one valid session cookie. tether is pinned to core 0
# with one worker thread; nginx (the backend), redis-server and oha share core 1.
# Prints requests/s, CPU microseconds per request (tether's utime+stime from
# /proc), and Redis commands per proxied request.
# Runs alternate (memory, redis, memory, ...) ROUNDS times so that other load
# on a shared machine hits both alike; compare the medians.
# Usage: benches/load/store.sh [seconds] [connections] [rounds]   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-15}
CONNS=${2:-32}
ROUNDS=${3:-3}
BIN=target/release/tether
OHA=${OHA:-$(command -v oha || echo ~/.cargo/bin/oha)}
WORK=$(mktemp -d)
TPORT=18080 BPORT=18081 RPORT=16379
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK;
  server { listen 127.0.0.1:$BPORT; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
NGX
taskset -c 1 nginx -c "$WORK/nginx.conf" -p "$WORK" & pids+=($!)
taskset -c 1 redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no >/dev/null & pids+=($!)
sleep 0.5

ticks=$(getconf CLK_TCK)
run() { # $1 = memory|redis
  cat >"$WORK/$1.toml" <<TOML
[[listener]]
bind = "127.0.0.1:$TPORT"
tls = false
[session]
secret = "bench-secret-0123456789abcdef"
[store]
kind = "$1"
url = "redis://127.0.0.1:$RPORT/0"
[[backend]]
name = "app1"
address = "127.0.0.1:$BPORT"
[runtime]
worker_threads = 1
[log]
access = false
TOML
  taskset -c 0 "$BIN" run -c "$WORK/$1.toml" 2>"$WORK/$1.log" & local tp=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$TPORT/" && break; sleep 0.1; done
  local cookie
  cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$TPORT/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(tether_sid=[^;]*\).*/\1/p')
  curl -s -o /dev/null -H "Cookie: $cookie" "http://127.0.0.1:$TPORT/"   # the return that stores it
  local c0 r0 c1 r1
  c0=$(awk '{print $14+$15}' /proc/$tp/stat)
  r0=$(redis-cli -p $RPORT info stats | tr -d '\r' | sed -n 's/total_commands_processed://p')
  taskset -c 1 "$OHA" -z "${SECS}s" -c "$CONNS" --no-tui --output-format json -H "Cookie: $cookie" \
    "http://127.0.0.1:$TPORT/" >"$WORK/$1.json"
  c1=$(awk '{print $14+$15}' /proc/$tp/stat)
  r1=$(redis-cli -p $RPORT info stats | tr -d '\r' | sed -n 's/total_commands_processed://p')
  kill "$tp"; wait "$tp" 2>/dev/null || true
  python3 - "$WORK/$1.json" "$1" "$((c1 - c0))" "$ticks" "$((r1 - r0))" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
kind, ticks, hz, cmds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
codes = d.get("statusCodeDistribution", {})
n = sum(int(v) for v in codes.values())
rps = d["summary"]["requestsPerSec"]
print(f"{kind:6} {rps:10.0f} req/s  {ticks / hz * 1e6 / max(n, 1):7.1f} us CPU/req  "
      f"{cmds / max(n, 1):.5f} redis cmds/req  p99 {d['latencyPercentiles']['p99'] * 1000:.2f} ms  statuses {codes}")
PY
}
for _ in $(seq "$ROUNDS"); do
  run memory
  run redis
done
