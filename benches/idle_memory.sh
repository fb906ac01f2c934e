#!/usr/bin/env bash
# Memory per idle client connection: tether vs HAProxy vs nginx, one core each.
#
#   benches/idle_memory.sh                    # 4,000 connections per cell, plain / TLS / WebSocket
#   benches/idle_memory.sh -n 1000 --repeat 3 # fewer connections, medians of 3
#   benches/idle_memory.sh --only 'tether'    # a subset (regex over PROXY:KIND)
#   benches/idle_memory.sh --tether-env MIMALLOC_PURGE_DELAY=0   # tether's allocator options
#
# Builds tether, bench_backend and idle_clients in release, raises the open
# file limit, then calls benches/load/idle.py: for each proxy and kind it
# starts a fresh proxy pinned to core 0 (the configs of benches/load/), has
# idle_clients (core 1) open N connections that each send one sticky request
# (or a WebSocket upgrade) and then stay idle, and divides the growth of the
# proxy's RSS by N. Writes benches/results/idle-memory.md and .json. Every
# process it starts is bounded by `timeout` and stopped by PID; all traffic
# stays on 127.0.0.1. About a minute per run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ORIG="$*"
ARGS=()
while (($#)); do
  case "$1" in
    -n | --repeat | --only | --warm | --settle | --tether-env | --out) ARGS+=("$1" "$2"); shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-n N] [--repeat N] [--only REGEX] [--warm N] [--settle S] [--tether-env K=V] [--out PATH]" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "idle: $*" >&2; }
source benches/load/needs.sh
needs python3 curl taskset:util-linux haproxy nginx
if (($(nproc) < 2)); then
  log "needs 2 cores (proxy on core 0, clients on core 1); found $(nproc)"
  exit 1
fi
# Each connection is a descriptor on both ends (and a backend one in the proxy).
ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < 9000)); then
  log "the open file limit ($(ulimit -n)) is too low for 4,000 connections through a proxy"
  exit 1
fi

log "building (release): tether, bench_backend, idle_clients"
source benches/load/build.sh
build_release bench_backend idle_clients
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
export TETHER_COMMIT="$COMMIT$DIRTY"
exec python3 "$ROOT/benches/load/idle.py" \
  --tether "$TARGET/release/tether" \
  --backend "$TARGET/release/examples/bench_backend" \
  --clients "$TARGET/release/examples/idle_clients" \
  --command "benches/idle_memory.sh${ORIG:+ $ORIG}" \
  "${ARGS[@]}"
