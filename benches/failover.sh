#!/usr/bin/env bash
# Failover under load: tether vs HAProxy, same backends, same load, same kill.
#
#   benches/failover.sh            # 30 s runs, a backend SIGKILLed at 10 s
#   benches/failover.sh --quick    # 8 s runs, kill at 3 s (smoke run)
#   FAILOVER_NOTE="..." benches/failover.sh   # a line for the report (e.g. what tether lacks)
#
# For each proxy in turn it starts three fresh bench backends
# (examples/bench_backend.rs) and the proxy in front of them, then runs two
# scenarios:
#
#  1. sessions (examples/sticky_load.rs): 50 clients, each one session with
#     its own cookie jar that follows Set-Cookie, one keep-alive connection
#     each, for the whole run. At the kill time the client SIGKILLs (by PID)
#     the backend holding the number of sessions nearest a third, and reports
#     requests, failed requests, kill-to-last-error, and which sessions moved.
#     This is the per-session view oha cannot give: oha sends the same headers
#     on every connection, so it carries one session at most.
#  2. raw throughput (oha): 50 connections all carrying ONE cookie, pinned to
#     the backend that is then SIGKILLed at the kill time. oha never takes the
#     re-issued cookie, so every request after the kill arrives with a cookie
#     naming the dead backend: the worst case of a client that ignores
#     Set-Cookie. Reports requests, req/s and failed requests only (oha gives
#     no per-request timestamps, so no failover time).
#
# Writes a side-by-side Markdown table to benches/results/failover.md (and
# the raw JSON beside it) and prints it. Installs oha (cargo install) and
# haproxy (apt) when missing. Every process it starts is bounded in time and
# killed by PID on exit; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=30
KILL_AT=10
CLIENTS=50
MODE=full
case "${1:-}" in
  --quick) DURATION=8 KILL_AT=3 MODE=quick ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
# Upper bound on any process this script starts: the whole run plus slack.
LIFE=$((4 * DURATION + 120))

export PATH="$HOME/.cargo/bin:$PATH"
RESULTS=$ROOT/benches/results
mkdir -p "$RESULTS"
WORK=$(mktemp -d /tmp/tether-failover.XXXXXX)

log() { echo "failover: $*" >&2; }

# ---- processes we start, and only those --------------------------------------

PIDS=()

# True when PID is still a child of this shell (so never a recycled PID).
ours() {
  local pid=$1 ppid
  [[ -r /proc/$pid/stat ]] || return 1
  ppid=$(sed -E 's/^[0-9]+ \(.*\) [A-Za-z] ([0-9]+) .*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $ppid == "$$" ]]
}

stop_pid() {
  local pid=$1 i
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
      ours "$pid" && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
      sleep 0.1
    done
    ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools --------------------------------------------------------------------

if ! command -v python3 >/dev/null 2>&1; then
  log "installing python3 (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
fi
if ! command -v haproxy >/dev/null 2>&1; then
  log "installing haproxy (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
if ! command -v oha >/dev/null 2>&1; then
  log "installing oha (cargo install oha --locked; takes several minutes)"
  cargo install oha --locked
fi
command -v curl >/dev/null 2>&1 || {
  log "installing curl (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
}

log "building (release): tether, bench_backend, sticky_load"
source benches/load/build.sh
build_release bench_backend sticky_load
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TETHER=$TARGET/release/tether
BACKEND=$TARGET/release/examples/bench_backend
LOAD=$TARGET/release/examples/sticky_load

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- backends -----------------------------------------------------------------

declare -A BPID BPORT
NAMES=(b1 b2 b3)

start_backends() {
  local name i
  for name in "${NAMES[@]}"; do
    "$BACKEND" --name "$name" --port 0 --exit-after "${LIFE}s" >"$WORK/$name.out" 2>&1 &
    BPID[$name]=$!
    PIDS+=("${BPID[$name]}")
  done
  for name in "${NAMES[@]}"; do
    for i in $(seq 1 100); do
      grep -q '^listening ' "$WORK/$name.out" 2>/dev/null && break
      sleep 0.05
    done
    BPORT[$name]=$(sed -nE 's/^listening 127\.0\.0\.1:([0-9]+)$/\1/p' "$WORK/$name.out")
    [[ -n ${BPORT[$name]} ]] || { log "backend $name did not start"; cat "$WORK/$name.out" >&2; exit 1; }
  done
}

stop_backends() {
  local name
  for name in "${NAMES[@]}"; do stop_pid "${BPID[$name]}"; done
}

# ---- proxies ------------------------------------------------------------------

PROXY_PID=
PROXY_PORT=
SCENARIO=

start_tether() {
  PROXY_PORT=$(free_port)
  local cfg=$WORK/tether-$SCENARIO.toml
  cat >"$cfg" <<EOF
[[listener]]
bind = "127.0.0.1:$PROXY_PORT"
tls = false

[session]
secret = "failover-bench-secret-0123456789"

[[backend]]
name = "b1"
address = "127.0.0.1:${BPORT[b1]}"

[[backend]]
name = "b2"
address = "127.0.0.1:${BPORT[b2]}"

[[backend]]
name = "b3"
address = "127.0.0.1:${BPORT[b3]}"

[health]
path = "/healthz"
interval = "1s"
timeout = "500ms"
fall = 2
rise = 2

[timeouts]
connect = "2s"
response = "30s"
shutdown_grace = "1s"

[log]
access = false
EOF
  timeout --signal=TERM --kill-after=5 "$LIFE" "$TETHER" run -c "$cfg" >"$WORK/tether-$SCENARIO.log" 2>&1 &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_ready tether
}

start_haproxy() {
  PROXY_PORT=$(free_port)
  local cfg=$WORK/haproxy-$SCENARIO.cfg
  # Same pool, same health check (GET /healthz, 1 s, 500 ms, fall 2, rise 2),
  # same connect/response timeouts, one thread per core like tether.
  cat >"$cfg" <<EOF
global
    maxconn 4096
    nbthread $(nproc)

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
    timeout check 500ms
    option redispatch
    retries 1

frontend fe
    bind 127.0.0.1:$PROXY_PORT
    default_backend pool

backend pool
    balance roundrobin
    cookie SRV insert indirect nocache
    option httpchk GET /healthz
    default-server check inter 1s fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down
    server s1 127.0.0.1:${BPORT[b1]} cookie s1
    server s2 127.0.0.1:${BPORT[b2]} cookie s2
    server s3 127.0.0.1:${BPORT[b3]} cookie s3
EOF
  haproxy -c -q -f "$cfg" >/dev/null
  timeout --signal=TERM --kill-after=5 "$LIFE" haproxy -f "$cfg" -db >"$WORK/haproxy-$SCENARIO.log" 2>&1 &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_ready haproxy
}

wait_ready() {
  local i
  for i in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PROXY_PORT/healthz" && return 0
    ours "$PROXY_PID" || break
    sleep 0.1
  done
  log "$1 did not come up"
  cat "$WORK/$1-$SCENARIO.log" >&2
  exit 1
}

stop_proxy() { stop_pid "$PROXY_PID"; }

# ---- scenarios ----------------------------------------------------------------

# sessions PROXY: sticky_load with the kill; JSON to $WORK/PROXY-sessions.json
run_sessions() {
  local proxy=$1
  SCENARIO=sessions
  log "$proxy: sessions scenario (sticky_load, $CLIENTS clients, ${DURATION}s, kill at ${KILL_AT}s)"
  start_backends
  "start_$proxy"
  "$LOAD" --target "127.0.0.1:$PROXY_PORT" --clients "$CLIENTS" \
    --duration "${DURATION}s" --kill-at "${KILL_AT}s" --label "$proxy" \
    --kill "b1=${BPID[b1]}" --kill "b2=${BPID[b2]}" --kill "b3=${BPID[b3]}" \
    >"$WORK/$proxy-sessions.json"
  stop_proxy
  stop_backends
}

# throughput PROXY: oha with one cookie pinned to the backend then killed.
run_throughput() {
  local proxy=$1 head cookie victim
  SCENARIO=oha
  log "$proxy: throughput scenario (oha, $CLIENTS connections, one cookie, ${DURATION}s, kill at ${KILL_AT}s)"
  start_backends
  "start_$proxy"
  head=$(curl -s -D - -o /dev/null --max-time 2 "http://127.0.0.1:$PROXY_PORT/")
  cookie=$(printf '%s\n' "$head" | sed -nE 's/^[Ss]et-[Cc]ookie: *([^;]*).*/\1/p' | head -n1 | tr -d '\r')
  victim=$(printf '%s\n' "$head" | sed -nE 's/^[Xx]-[Bb]ackend: *([A-Za-z0-9]+).*/\1/p' | head -n1)
  [[ -n $cookie && -n $victim ]] || { log "$proxy: no cookie or x-backend in: $head"; exit 1; }
  timeout --signal=INT --kill-after=10 $((DURATION + 20)) \
    oha -z "${DURATION}s" -c "$CLIENTS" --no-tui --output-format json \
    -H "Cookie: $cookie" "http://127.0.0.1:$PROXY_PORT/" >"$WORK/$proxy-oha.json" 2>"$WORK/$proxy-oha.err" &
  local oha_pid=$!
  PIDS+=("$oha_pid")
  sleep "$KILL_AT"
  ours "${BPID[$victim]}" && kill -KILL "${BPID[$victim]}"
  wait "$oha_pid" || { log "$proxy: oha failed"; cat "$WORK/$proxy-oha.err" >&2; exit 1; }
  echo "{\"victim\": \"$victim\"}" >"$WORK/$proxy-oha-meta.json"
  stop_proxy
  stop_backends
}

log "work dir (configs, proxy logs, raw JSON): $WORK"
log "bash reports each SIGKILLed backend as 'Killed': that is the kill under test"
for proxy in tether haproxy; do
  run_sessions "$proxy"
  run_throughput "$proxy"
done

# ---- report -------------------------------------------------------------------

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
export WORK RESULTS MODE DURATION KILL_AT CLIENTS
export TETHER_COMMIT="$COMMIT$DIRTY"
export HAPROXY_VERSION=$(haproxy -v | head -n1 | awk '{print $3}')
export OHA_VERSION=$(oha --version | awk '{print $2}')
export CPU_MODEL=$(sed -nE 's/^model name\s*: //p' /proc/cpuinfo | head -n1)
export NCPU=$(nproc)
python3 "$ROOT/benches/failover_report.py"
