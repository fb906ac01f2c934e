#!/usr/bin/env bash
# Does the committed profile still fit a release build?   pgo/check.sh [BIN]
#
# The profile names each function by its mangled symbol, and a Rust symbol
# ends in a hash of the crate's metadata, which changes with a new dependency,
# another feature set or another compiler. When it changes, no function of
# tether finds its counts, the build runs without a profile (about a fifth
# more instructions per request), and nothing says so. This looks at tether's
# own functions that are both in the profile and in the binary (BIN, default
# target/release/tether), compared without that hash, and counts how many
# keep the same hash too. All of them, or nearly, when the profile fits.
# Exits 1 below 50%, with what to do: pgo/train.sh, then `cargo clean
# --release` and a new release build. A body changed since the profile keeps
# its name; LLVM drops just that function's counts, which this does not see.
#
# Needs llvm-profdata (`rustup component add llvm-tools`) and nm (binutils).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/tether}
log() { echo "pgo: $*" >&2; }

PROFDATA=$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true)
[ -x "$PROFDATA" ] || { log "llvm-profdata not found: run 'rustup component add llvm-tools'"; exit 2; }
command -v nm >/dev/null || { log "nm not found (binutils)"; exit 2; }
[ -f "$BIN" ] || { log "no binary at $BIN: cargo build --release first"; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Function names in the profile; local ones carry "object;" in front.
"$PROFDATA" show --all-functions "$ROOT/pgo/tether.profdata" |
  sed -n 's/^  \(.*\):$/\1/p' | sed 's/^.*;//' | grep '6tether' | sort -u >"$WORK/profile"
nm "$BIN" | awk '{print $NF}' | grep '^_ZN.*6tether' | sort -u >"$WORK/binary"
unhashed() { sed 's/17h[0-9a-f]\{16\}E$//' "$1" | sort -u; }
both=$(comm -12 <(unhashed "$WORK/profile") <(unhashed "$WORK/binary") | wc -l)
same=$(comm -12 "$WORK/profile" "$WORK/binary" | wc -l)
if ((both == 0)); then
  log "no function of tether's is both in the profile and in $BIN: is it a release build of tether?"
  exit 2
fi
pct=$((100 * same / both))
if ((pct < 50)); then
  log "the profile does not fit $BIN: $same of $both functions keep their symbol ($pct%)."
  log "Retrain it (pgo/train.sh), then cargo clean --release and build again."
  exit 1
fi
log "the profile fits $BIN: $same of $both functions keep their symbol ($pct%)"
