# Sourced by the bench scripts: `build_release EXAMPLE...` builds tether in
# release on its own, as README's commands build it, and then the examples.
# Built in one cargo command with an example, tether's dependencies would get
# the dev-dependencies' features too, and with them other symbol names than
# the ones the profile in pgo/ was trained on (see pgo/train.sh).
build_release() {
  cargo build --release --quiet --bin tether
  local examples=() e
  for e in "$@"; do examples+=(--example "$e"); done
  cargo build --release --quiet "${examples[@]}"
}
