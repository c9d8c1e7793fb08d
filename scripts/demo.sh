#!/usr/bin/env bash
# The main job: installs what is missing, builds, then validates the example clusters and renders,
# node by node, what offmesh programs into each node's kernel.
source "$(dirname "${BASH_SOURCE[0]}")/lib/setup.sh"
setup

cd "$OFFMESH_ROOT"
for example in examples/*/; do
  config="${example}cluster-conf.yaml"
  [ -f "$config" ] || continue
  printf '\n######## offmesh validate %s\n' "$config"
  ./bin/offmesh validate "$config"
  for facts in "$example"*.yaml; do
    [ "$facts" = "$config" ] && continue
    node="$(basename "$facts" .yaml)"
    printf '\n######## offmesh render --config %s --facts %s --node %s\n' "$config" "$facts" "$node"
    ./bin/offmesh render --config "$config" --facts "$facts" --node "$node"
  done
done
printf '\ndemo complete: every example cluster validated and every example node rendered\n'
