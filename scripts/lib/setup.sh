# Sourced by scripts/demo.sh and scripts/test.sh: install what is missing, then build.
# Meant for a Debian machine where we are root (or can sudo); does nothing that is already done.
set -euo pipefail

OFFMESH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MIN_NODE_MAJOR=20
MIN_NODE_MINOR=19

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    die "need root to run: $* (run this script as root)"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $*; this is not a Debian system, install them by hand"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_commands "cmd:package" ...: install the Debian package of every missing command.
ensure_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

node_ok() {
  command -v node >/dev/null 2>&1 || return 1
  local v major minor
  v="$(node -p 'process.versions.node')"
  major="${v%%.*}"; minor="$(echo "$v" | cut -d. -f2)"
  [ "$major" -gt "$MIN_NODE_MAJOR" ] || { [ "$major" -eq "$MIN_NODE_MAJOR" ] && [ "$minor" -ge "$MIN_NODE_MINOR" ]; }
}

ensure_node() {
  if ! node_ok; then
    ensure_commands node:nodejs npm:npm
    node_ok || die "Node.js >= ${MIN_NODE_MAJOR}.${MIN_NODE_MINOR} is required, found $(node --version 2>/dev/null || echo none); install a newer Node.js (e.g. from NodeSource) and run again"
  fi
  command -v npm >/dev/null 2>&1 || ensure_commands npm:npm
}

# npm ci when node_modules is missing or older than the lockfile.
ensure_npm_deps() {
  local stamp="$OFFMESH_ROOT/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$OFFMESH_ROOT/package-lock.json" -nt "$stamp" ]; then
    say "npm ci"
    (cd "$OFFMESH_ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# What the agent, the reconciler, the lab and the kernel tests run: iproute2, iptables (nft and
# legacy), ipset, nsenter, the reference CNI plugins, tcpdump (lab verify watches the wire) and
# iperf3 (the ztunnel benchmark).
CNI_PLUGIN_DIR=/usr/lib/cni
ensure_kernel_tools() {
  ensure_commands ip:iproute2 iptables:iptables iptables-legacy:iptables ipset:ipset nsenter:util-linux \
    tcpdump:tcpdump iperf3:iperf3 curl:curl
  [ -x "$CNI_PLUGIN_DIR/ptp" ] || apt_install containernetworking-plugins
}

build() {
  say "build"
  (cd "$OFFMESH_ROOT" && rm -rf dist && npx tsc -p tsconfig.json)
}

setup() {
  ensure_kernel_tools
  ensure_node
  ensure_npm_deps
  build
}
