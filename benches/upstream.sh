#!/usr/bin/env bash
# Backends over HTTP/2 and TLS: gRPC unary calls through tether, nginx
# (grpc_pass) and HAProxy (proto h2) against calling a backend directly, and
# tether's CPU per request to TLS backends against plain ones.
#
#   benches/upstream.sh                # 5 rounds
#   benches/upstream.sh --rounds 9     # more rounds (medians of per-round ratios)
#
# Installs what is missing (oha, haproxy, nginx), builds tether and the
# examples in release, then runs benches/load/upstream.py, which writes
# benches/results/upstream.md and upstream.json. Every process it starts is
# bounded by `timeout` and stopped by PID; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "upstream: $*" >&2; }
source benches/load/needs.sh
needs python3 curl taskset:util-linux haproxy nginx
log "building (release): tether, grpc, bench_backend"
source benches/load/build.sh
build_release grpc bench_backend
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
export TETHER_COMMIT="$COMMIT$DIRTY"
exec python3 "$ROOT/benches/load/upstream.py" \
  --tether "$TARGET/release/tether" \
  --grpc "$TARGET/release/examples/grpc" \
  --backend "$TARGET/release/examples/bench_backend" \
  --oha "$(command -v oha)" \
  --command "benches/upstream.sh${*:+ $*}" "$@"
