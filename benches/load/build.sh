# Sourced by the bench scripts: `build_release EXAMPLE...` builds tether in
# release on its own, as README's commands build it, checks that the profile
# in pgo/ fits it (pgo/check.sh), and then builds the examples.
# Built in one cargo command with an example, tether's dependencies would get
# the dev-dependencies' features too, and with them other symbol names than
# the ones the profile in pgo/ was trained on (see pgo/train.sh).
build_release() {
  cargo build --release --quiet --bin tether
  # A profile that no longer fits (a new dependency changes every symbol)
  # leaves the build without it, a fifth slower, and says nothing.
  rustup component list --installed 2>/dev/null | grep -q '^llvm-tools' ||
    rustup component add llvm-tools >/dev/null 2>&1 || true
  local fits=0
  pgo/check.sh "${CARGO_TARGET_DIR:-target}/release/tether" || fits=$?
  case $fits in
    0) ;;
    1) echo "WARNING: the figures below are of a build without a fitting profile (see above)" >&2 ;;
    *) echo "WARNING: could not check the profile against the build (see above)" >&2 ;;
  esac
  local examples=() e
  for e in "$@"; do examples+=(--example "$e"); done
  cargo build --release --quiet "${examples[@]}"
}
