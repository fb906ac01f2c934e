#!/usr/bin/env bash
# Many tether instances sharing sessions through Redis, on loopback:
#
#   examples/many_instances.sh
#
# Starts redis-server, three backends and two tether instances (A and B, the
# same secret, the same Redis), then shows: a session made on A continues on
# B; a logout on B is honoured on A; with Redis killed, both keep serving
# their sessions. Exits 0 when every step behaved as shown, 1 otherwise.
# Everything it starts is stopped by PID when it exits; all traffic stays on
# 127.0.0.1. Needs redis-server and curl. TETHER_BIN and BACKEND_BIN may name
# prebuilt binaries (the tests do); otherwise it builds them with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }
command -v redis-server >/dev/null || fail "redis-server is not installed (apt-get install redis-server)"
command -v curl >/dev/null || fail "curl is not installed"

if [[ -z "${TETHER_BIN:-}" || -z "${BACKEND_BIN:-}" ]]; then
  cargo build -q --bin tether --example bench_backend
  TETHER_BIN=${TETHER_BIN:-target/debug/tether}
  BACKEND_BIN=${BACKEND_BIN:-target/debug/examples/bench_backend}
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  fail "nothing listens on port $1"
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT"

BACKENDS=""
for name in app1 app2 app3; do
  "$BACKEND_BIN" --name "$name" --port 0 --exit-after 300s >"$WORK/$name.out" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do grep -q listening "$WORK/$name.out" && break; sleep 0.05; done
  addr=$(sed -n 's/^listening //p' "$WORK/$name.out")
  [[ -n "$addr" ]] || fail "backend $name did not start"
  BACKENDS+=$'\n'"[[backend]]"$'\n'"name = \"$name\""$'\n'"address = \"$addr\""$'\n'
done

start_tether() { # NAME PORT
  cat >"$WORK/$1.toml" <<TOML
[[listener]]
bind = "127.0.0.1:$2"

[session]
secret = "one secret shared by every instance"

[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS_PORT/0"
connect_timeout = "200ms"
command_timeout = "200ms"

[log]
access = false
$BACKENDS
TOML
  "$TETHER_BIN" run -c "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PIDS+=("$!")
  wait_port "$2"
}
A_PORT=$(free_port)
B_PORT=$(free_port)
start_tether a "$A_PORT"
start_tether b "$B_PORT"
A="http://127.0.0.1:$A_PORT"
B="http://127.0.0.1:$B_PORT"
say "redis on :$REDIS_PORT, backends app1 app2 app3, tether A on :$A_PORT and B on :$B_PORT"
say

# GET URL [curl args]: prints "backend status"; the cookie jar is $JAR.
get() { curl -s -o /dev/null -D "$WORK/headers" -w '%{http_code}\n' "$@" | {
  read -r code
  printf '%s %s\n' "$(sed -n 's/^x-backend: //Ip' "$WORK/headers" | tr -d '\r')" "$code"
}; }
cookie() { awk '$6 == "tether_sid" { print $7 }' "$1"; }

JAR="$WORK/jar"
read -r home code < <(get "$A/cart" -c "$JAR")
[[ $code == 200 ]] || fail "A answered $code"
say "1. a new session on A:              backend $home"
for i in 1 2 3; do
  read -r on code < <(get "$B/cart" -b "$JAR" -c "$JAR")
  [[ $code == 200 && $on == "$home" ]] || fail "B sent the session to $on ($code), not $home"
done
say "2. the same cookie on B, 3 times:   backend $on every time"
OLD=$(cookie "$JAR")

read -r on code < <(get "$B/logout" -b "$JAR" -c "$JAR")
grep -qi '^set-cookie: tether_sid=;.*Max-Age=0' "$WORK/headers" || fail "B did not clear the cookie on logout"
say "3. logout on B:                     backend $on, cookie cleared"
curl -s -o /dev/null -D "$WORK/headers" -H "Cookie: tether_sid=$OLD" "$A/state"
state=$(sed -n 's/^x-session-state: //Ip' "$WORK/headers" | tr -d '\r')
[[ $state != continued ]] || fail "A continued the logged-out session"
grep -qi '^set-cookie: tether_sid=' "$WORK/headers" || fail "A did not start a new session"
say "4. the old cookie on A:             refused (session state: $state), a new cookie is set"

JAR2="$WORK/jar2"
read -r home2 _ < <(get "$A/" -c "$JAR2")
get "$B/" -b "$JAR2" >/dev/null
kill "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
say "5. redis killed"
for t in "$A" "$B" "$A" "$B"; do
  read -r on code < <(get "$t/cart" -b "$JAR2")
  [[ $code == 200 && $on == "$home2" ]] || fail "without Redis $t answered $code from $on, not $home2"
done
say "6. without Redis, A and B still serve the session on $home2 (4 requests, all 200)"
say
say "ok: sessions are shared, logout is shared, and Redis going away costs nobody their backend"
