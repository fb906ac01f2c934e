#!/usr/bin/env bash
# tether's cost as the work grows: CPU per new and per continued request with
# 3, 100 and 1,000 backends, and per request with 1k, 100k and 1M live
# sessions; writes benches/results/scale.md and the plot docs/scale.svg.
#
#   benches/scale.sh                 # 3 rounds of 5 s (about 6 minutes)
#   benches/scale.sh --rounds 5
#
# Every process it starts is bounded by `timeout` and stopped by PID; all
# traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "scale: $*" >&2; }
source benches/load/needs.sh
needs python3 curl taskset:util-linux
source benches/load/build.sh
build_release bench_backend session_load
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
exec python3 "$ROOT/benches/load/scale.py" \
  --tether "$TARGET/release/tether" \
  --backend "$TARGET/release/examples/bench_backend" \
  --session-load "$TARGET/release/examples/session_load" \
  --oha "$(command -v oha)" \
  --command "benches/scale.sh${*:+ $*}" "$@"
