# Sourced by benches/load.sh and benches/instructions.sh: installs what a
# bench needs when missing. `needs TOOL[:DEBIAN_PACKAGE] ...` uses apt; oha
# comes from cargo. Expects `log` to be defined by the caller.
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin"

needs() {
  local missing=() tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v oha >/dev/null; then
    log "installing oha (cargo install oha --locked; takes several minutes)"
    cargo install oha --locked
  fi
}
