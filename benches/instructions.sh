#!/usr/bin/env bash
# User-space instructions per proxied request (callgrind): tether, HAProxy
# and nginx, plain HTTP with a returning cookie. The steady counterpart of
# benches/load.sh, whose times drift with the machine; use it to see what a
# change to the hot path did.
#
#   benches/instructions.sh                 # 3000 requests per proxy (about 3 minutes)
#   benches/instructions.sh --requests 1000
#   benches/instructions.sh --memory        # cache misses per request at 50 and 400
#                                           # connections (about 8 minutes)
#
# Installs what is missing (valgrind, haproxy, nginx, curl with apt; oha with
# cargo), builds tether and the bench backend in release, then calls
# benches/load/instructions.py, which writes benches/results/instructions.md
# (with --memory, benches/results/cache.md).
# Every process it starts is bounded by `timeout` and stopped by PID; all
# traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ORIG="$*"
ARGS=()
while (($#)); do
  case "$1" in
    --requests) ARGS+=("$1" "$2"); shift ;;
    --memory) ARGS+=("$1") ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--requests N] [--memory]" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "instructions: $*" >&2; }
source benches/load/needs.sh
needs valgrind haproxy nginx curl python3 taskset:util-linux

source benches/load/build.sh
build_release bench_backend
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo "+dirty" || true)
export TETHER_COMMIT="$COMMIT$DIRTY"
exec python3 "$ROOT/benches/load/instructions.py" \
  --tether "$TARGET/release/tether" \
  --backend "$TARGET/release/examples/bench_backend" \
  --command "benches/instructions.sh${ORIG:+ $ORIG}" \
  "${ARGS[@]}"
