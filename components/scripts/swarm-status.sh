#!/usr/bin/env bash
# What the stage's Swarm runs where, for `python -m runner status`: one line per node (its address, name, role,
# availability, state and whether it holds the database) and one per task Swarm wants running (its service, the
# node's address, its image and its state), fields separated by '|'.
#   bash <appDir>/bin/swarm-status.sh --project kametrix
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# Rendered by components/shared_facts.py, as lib/facts.sh is.
# shellcheck source=/dev/null
source "$(dirname "$0")/lib/swarm-facts.sh"
parse_flags swarm-status.sh "$SWARM_STATUS_FLAGS" "$@"
project="${FLAGS[project]}"
require_match project "$project" "$PROJECT_PATTERN" "a compose project name"

declare -A address_of=()
mapfile -t nodes < <(docker node ls --quiet)
for node in "${nodes[@]}"; do
  line="$(docker node inspect --format \
    "{{.ID}}|{{.Status.Addr}}|{{.Description.Hostname}}|{{.Spec.Role}}|{{.Spec.Availability}}|{{.Status.State}}|{{with .Spec.Labels}}{{index . \"$DATABASE_LABEL\"}}{{end}}" "$node")"
  address_of[${line%%|*}]="$(cut -d'|' -f2 <<<"$line")"
  echo "node|${line#*|}"
done
for service in app proxy; do
  mapfile -t ids < <(docker service ps --quiet --filter desired-state=running "${project}_$service" 2>/dev/null || true)
  ((${#ids[@]} > 0)) || continue
  while IFS='|' read -r node image state; do
    echo "task|$service|${address_of[$node]:-$node}|$image|$state"
  done < <(docker inspect --type task --format '{{.NodeID}}|{{.Spec.ContainerSpec.Image}}|{{.Status.State}}' "${ids[@]}")
done
