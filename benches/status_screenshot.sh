#!/usr/bin/env bash
# Takes docs/status-page.png: the status page of a tether under load, after a
# backend was killed and started again.
#
#   benches/status_screenshot.sh            # about 2.5 minutes
#
# Starts three bench backends and tether (release builds) on loopback, runs
# sticky_load (40 clients, one session each) for the whole time, kills app2
# at 45 s and starts it again on the same port at 85 s, and at 140 s has
# headless Chromium photograph http://ADMIN/. Everything it starts is stopped
# by PID; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "screenshot: $*" >&2; }
command -v chromium >/dev/null || { log "needs chromium (apt-get install chromium)"; exit 1; }
source benches/load/build.sh
build_release bench_backend sticky_load
T=${CARGO_TARGET_DIR:-$ROOT/target}/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A PORT
BACKENDS=""
for name in app1 app2 app3; do
  PORT[$name]=$(free_port)
  "$T/examples/bench_backend" --name "$name" --port "${PORT[$name]}" --exit-after 300s >"$WORK/$name.out" 2>&1 &
  PIDS+=("$!")
  eval "PID_$name=$!"
  BACKENDS+=$'\n'"[[backend]]"$'\n'"name = \"$name\""$'\n'"address = \"127.0.0.1:${PORT[$name]}\""$'\n'
done
LISTEN=$(free_port)
ADMIN=$(free_port)
cat >"$WORK/tether.toml" <<TOML
[[listener]]
bind = "127.0.0.1:$LISTEN"

[session]
secret = "a secret for the status page screenshot"

[health]
interval = "1s"
timeout = "500ms"

[admin]
bind = "127.0.0.1:$ADMIN"

[log]
access = false
$BACKENDS
TOML
"$T/tether" run -c "$WORK/tether.toml" >"$WORK/tether.log" 2>&1 &
PIDS+=("$!")
sleep 1
log "load for 140 s; app2 killed at 45 s, back at 85 s"
"$T/examples/sticky_load" --target "127.0.0.1:$LISTEN" --clients 40 --duration 140s --threads 1 >"$WORK/load.json" 2>"$WORK/load.err" &
PIDS+=("$!")
sleep 45
kill "$PID_app2"
log "app2 killed"
sleep 40
"$T/examples/bench_backend" --name app2 --port "${PORT[app2]}" --exit-after 300s >"$WORK/app2b.out" 2>&1 &
PIDS+=("$!")
log "app2 started again"
sleep 55
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1220 \
  --screenshot="$ROOT/docs/status-page.png" "http://127.0.0.1:$ADMIN/" 2>/dev/null
log "wrote docs/status-page.png"
