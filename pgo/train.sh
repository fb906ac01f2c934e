#!/usr/bin/env bash
# Makes pgo/tether.profdata anew: builds an instrumented tether, runs it under
# the load it is optimised for (sticky keep-alive requests plain, over TLS and
# over HTTP/2, new sessions, a connection per request, 400 connections), and
# merges what it counted. Run it after a change to the request path, then
# `cargo clean --release` so that the dependencies are built with it too.
#
# Needs oha (`cargo install oha --locked`) and llvm-profdata (`rustup component
# add llvm-tools`). Uses 127.0.0.1 ports 19301-19306; about two minutes of
# build and 30 s of load.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { echo "pgo: $*" >&2; }

SYSROOT=$(rustc --print sysroot)
PROFDATA=$(ls "$SYSROOT"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true)
[ -x "$PROFDATA" ] || { log "llvm-profdata not found: run 'rustup component add llvm-tools'"; exit 1; }
command -v oha >/dev/null || { log "oha not found: run 'cargo install oha --locked'"; exit 1; }

# Instrumented builds go to their own target directory: the wrapper is off for
# them, and cargo would otherwise reuse their objects for a release build.
TARGET="$ROOT/target/pgo-train"
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

log "building an instrumented tether and bench_backend in $TARGET"
# tether on its own, as `cargo build --release` builds it: built in one go
# with an example, its dependencies would get the dev-dependencies' features
# too, and with them other symbol names, which the release build would not
# find in the profile.
TETHER_PGO=off RUSTFLAGS="-Cprofile-generate=$WORK/ignored" CARGO_TARGET_DIR="$TARGET" \
  cargo build --release --quiet --bin tether
TETHER_PGO=off RUSTFLAGS="-Cprofile-generate=$WORK/ignored" CARGO_TARGET_DIR="$TARGET" \
  cargo build --release --quiet --example bench_backend

B=(19301 19302 19303)
PLAIN=19304 TLS=19305 ADMIN=19306
for i in 0 1 2; do
  LLVM_PROFILE_FILE="$WORK/backend-%p.profraw" "$TARGET/release/examples/bench_backend" \
    --name "b$((i + 1))" --port "${B[$i]}" --exit-after 300s >"$WORK/b$i.log" 2>&1 &
  pids+=($!)
done
sed -e "s|\${PLAIN}|$PLAIN|; s|\${TLS}|$TLS|; s|\${ADMIN}|$ADMIN|; s|\${ROOT}|$ROOT|" \
  -e "s|\${RESUMPTION}|true|; s|\${MODE}|sticky|" \
  -e "s|\${B1}|${B[0]}|; s|\${B2}|${B[1]}|; s|\${B3}|${B[2]}|" \
  benches/load/tether.toml.in >"$WORK/tether.toml"
LLVM_PROFILE_FILE="$WORK/tether-%p.profraw" "$TARGET/release/tether" run -c "$WORK/tether.toml" \
  >"$WORK/tether.log" 2>&1 &
tether=$!
pids+=("$tether")
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PLAIN/" && break
  sleep 0.1
done
cookie=$(curl -si "http://127.0.0.1:$PLAIN/" | grep -i '^set-cookie' | grep -oE 'tether_sid=[^;]*')
[ -n "$cookie" ] || { log "tether did not answer with a cookie; its log:"; cat "$WORK/tether.log" >&2; exit 1; }

run() { # NAME OHA-ARGS...
  local name=$1
  shift
  log "load: $name"
  oha --no-tui "$@" | grep -E 'Success rate' >&2
}
plain="http://127.0.0.1:$PLAIN/"
tls="https://127.0.0.1:$TLS/"
run "plain keep-alive, returning cookie" -z 8s -c 50 -H "Cookie: $cookie" "$plain"
run "TLS keep-alive, returning cookie" -z 5s -c 50 --insecure -H "Cookie: $cookie" "$tls"
run "a new connection per request" -z 5s -c 50 --disable-keepalive -H "Cookie: $cookie" "$plain"
run "new sessions" -z 3s -c 50 "$plain"
run "400 connections" -z 3s -c 400 -H "Cookie: $cookie" "$plain"
run "HTTP/2 over TLS" -z 3s -c 10 -p 10 --http2 --insecure -H "Cookie: $cookie" "$tls"
run "TLS handshakes" -z 3s -c 20 --disable-keepalive --insecure -H "Cookie: $cookie" "$tls"

kill -TERM "$tether"
wait "$tether" || true
"$PROFDATA" merge --sparse -o pgo/tether.profdata "$WORK"/tether-*.profraw
rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' >pgo/llvm-version
log "wrote pgo/tether.profdata ($(wc -c <pgo/tether.profdata) bytes, LLVM $(cat pgo/llvm-version));" \
  "now: cargo clean --release && cargo build --release"
