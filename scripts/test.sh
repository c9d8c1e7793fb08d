#!/usr/bin/env bash
# The test suite: installs what is missing, builds, lints, and runs every test with node's test
# runner. Ends with a one-line summary "tests: N passed, N failed, N skipped".
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
setup

cd "$OFFMESH_ROOT"
say "lint"
npx eslint .
npx prettier --check . >/dev/null || { npx prettier --check .; die "formatting differs: run npx prettier --write ."; }

say "test"
tap="$(mktemp)"
# Kernel tests name their namespaces omt-<run>-*; whatever a crashed test process left is removed here.
export OFFMESH_TEST_RUN="$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
remove_test_netns() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in "omt-${OFFMESH_TEST_RUN}-"*) ip netns del "$ns" || true ;; esac
  done
}
# The end-to-end suite names its labs omt<first 4 of the run id><file letter>; a crashed test process
# leaves its lab's processes and namespaces, which `lab down` removes.
remove_test_labs() {
  local run="${OFFMESH_TEST_RUN:0:4}" name
  for name in $( { ls /run/offmesh-lab 2>/dev/null; ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^\(omt${run}[a-z0-9]\)-.*/\1/p"; } | grep -E "^omt${run}[a-z0-9]$" | sort -u); do
    "$OFFMESH_ROOT/bin/offmesh" lab down --name "$name" >/dev/null 2>&1 || true
  done
}
trap 'rm -f "$tap"; remove_test_labs; remove_test_netns' EXIT
status=0
node --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" dist/test/ || status=$?
count() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$tap" | tail -1; }
pass="$(count pass)"; fail="$(count fail)"; skipped="$(count skipped)"; cancelled="$(count cancelled)"
fail=$(( ${fail:-0} + ${cancelled:-0} ))
echo "tests: ${pass:-0} passed, ${fail} failed, ${skipped:-0} skipped"
if [ "${pass:-0}" -eq 0 ]; then die "no test ran"; fi
exit "$status"
