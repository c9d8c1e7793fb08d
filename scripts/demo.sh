#!/usr/bin/env bash
# The main job: installs what is missing, builds, brings up the default lab (the seed CPU/DPU
# cluster plus a single node, in network namespaces on this machine), runs `offmesh lab verify`
# (the packet walks as live checks) and shows the lab's status. The lab is taken down at the end
# unless --keep is given (then: ./bin/offmesh lab down).
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"

keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    *) die "unknown argument $arg (usage: scripts/demo.sh [--keep])" ;;
  esac
done

setup
cd "$OFFMESH_ROOT"
[ "$(id -u)" -eq 0 ] || die "the lab needs root (network namespaces, iptables); run as root"

status=0
printf '\n######## offmesh lab up\n'
./bin/offmesh lab up || status=$?
if [ "$status" -eq 0 ]; then
  printf '\n######## offmesh lab verify\n'
  ./bin/offmesh lab verify || status=$?
  printf '\n######## offmesh lab status\n'
  ./bin/offmesh lab status || true
fi
if [ "$keep" -eq 1 ] && [ "$status" -eq 0 ]; then
  printf '\nthe lab is still up: try ./bin/offmesh lab exec default/client -- sh, lab logs, lab status; remove it with ./bin/offmesh lab down\n'
else
  printf '\n######## offmesh lab down\n'
  ./bin/offmesh lab down
fi
[ "$status" -eq 0 ] && printf '\ndemo complete: the lab came up and every packet walk passed\n'
exit "$status"
