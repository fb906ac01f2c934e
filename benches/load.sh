#!/usr/bin/env bash
# Load: tether vs HAProxy vs nginx, same backends, same load, one core each.
#
#   benches/load.sh                 # 10 s per run, 50 connections, + 1M live sessions
#   benches/load.sh --quick         # 3 s per run, 100k sessions (smoke run)
#   benches/load.sh --repeat 3      # 3 rounds (each scenario on each proxy back to back); medians
#   benches/load.sh --only 'tether|haproxy-cookie:plain-cookie'   # a subset (regex over PROXY:SCENARIO)
#   benches/load.sh --only ':plain-close' --repeat 9   # a new TCP connection per request, 9 rounds
#   benches/load.sh --only ':(plain|deferred)-close'   # the same, and with deferred accept
#   benches/load.sh --million-only --merge benches/results/load.json   # add the 1M-sessions rows
#
# Installs what is missing (oha with cargo; haproxy, nginx, curl, python3
# with apt), builds tether and the bench examples in release, then calls
# benches/load/run.py, which starts three bench backends and each proxy
# pinned to core 0 (taskset) with one worker, runs oha pinned to core 1, and
# writes benches/results/load.md (the table) and load.json (every run).
# Configs are the templates in benches/load/. Every process it starts is
# bounded by `timeout` and stopped by PID; all traffic stays on 127.0.0.1.
# Scenarios (SCENARIOS in run.py): plain-new, plain-cookie, plain-rotate,
# plain-close (oha --disable-keepalive: a new TCP connection per request),
# deferred-close (the same with TCP_DEFER_ACCEPT on all three proxies),
# tls-new, tls-cookie, tls-handshake, tls-full. The close rows need the kernel
# to reuse client ports in TIME_WAIT (net.ipv4.tcp_tw_reuse 1 or 2, the
# default, and tcp_timestamps): run.py checks before it starts (see there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ORIG="$*"
ARGS=()
QUICK=0
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --repeat | --only | --duration | --connections | --sessions | --merge) ARGS+=("$1" "$2"); shift ;;
    --no-million | --million-only) ARGS+=("$1") ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--quick] [--repeat N] [--only REGEX] [--duration S] [--connections N] [--sessions N] [--no-million|--million-only] [--merge FILE]" >&2; exit 2 ;;
  esac
  shift
done
((QUICK)) && ARGS=(--duration 3 --sessions 100000 "${ARGS[@]}")

log() { echo "load: $*" >&2; }
source benches/load/needs.sh
needs python3 curl taskset:util-linux ss:iproute2 haproxy nginx
if (($(nproc) < 2)); then
  log "needs 2 cores (proxy on core 0, load on core 1); found $(nproc)"
  exit 1
fi

log "building (release): tether, bench_backend, session_load, handshake_load"
source benches/load/build.sh
build_release bench_backend session_load handshake_load
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
export TETHER_COMMIT="$COMMIT$DIRTY"
exec python3 "$ROOT/benches/load/run.py" \
  --tether "$TARGET/release/tether" \
  --backend "$TARGET/release/examples/bench_backend" \
  --session-load "$TARGET/release/examples/session_load" \
  --handshake-load "$TARGET/release/examples/handshake_load" \
  --oha "$(command -v oha)" \
  --command "benches/load.sh${ORIG:+ $ORIG}" \
  "${ARGS[@]}"
