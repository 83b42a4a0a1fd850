#!/usr/bin/env bash
# Keeps the Swarm's nodes as the stack declares its hosts, run on the database host once every host has joined:
# each declared host a manager or a worker as declared, active, the database host labelled kametrix.database; a
# node of no declared host drained until its tasks stopped (its app tasks start elsewhere), demoted and removed.
# Refuses to move the database label: PostgreSQL's data stays on its host, and only an operator moves it.
#   swarm-nodes.sh --declared "10.0.0.11=manager+database 10.0.0.12=worker" --drain-timeout-seconds 60
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# Rendered by components/shared_facts.py, as lib/facts.sh is.
# shellcheck source=/dev/null
source "$(dirname "$0")/lib/swarm-facts.sh"
parse_flags swarm-nodes.sh "$SWARM_NODES_FLAGS" "$@"
drain_timeout="${FLAGS[drain-timeout-seconds]}"
require_in_range DRAIN_TIMEOUT_SECONDS "$drain_timeout"
label="$DATABASE_LABEL"
declare -A declared=()
database=""
for entry in ${FLAGS[declared]}; do
  address="${entry%%=*}" role="${entry#*=}"
  [[ "$entry" == *=* && "$address" =~ $IPV4_PATTERN && "$role" =~ ^(manager|worker)(\+database)?$ ]] ||
    die "declared: allowed ADDRESS=manager|worker[+database] entries; received '$entry'"
  declared[$address]="${role%+database}"
  [[ "$role" != *+database ]] || database="$address"
done
[[ -n "$database" ]] || die "declared: allowed exactly one host with +database; received none"
[[ "$(docker info --format '{{.Swarm.NodeAddr}}')" == "$database" ]] || die "runs on the database host $database only"

# Every node: ID, address, role, availability, state and its database label, by ID; a declared host's node by its
# address (a host that joined again leaves its old node behind, down: the ready one is the host's).
declare -A address_of=() role_of=() availability_of=() state_of=() label_of=() node_at=()
mapfile -t nodes < <(docker node ls --quiet)
for node in "${nodes[@]}"; do
  IFS='|' read -r id address role availability state holds < <(docker node inspect --format \
    "{{.ID}}|{{.Status.Addr}}|{{.Spec.Role}}|{{.Spec.Availability}}|{{.Status.State}}|{{with .Spec.Labels}}{{index . \"$label\"}}{{end}}" "$node")
  address_of[$id]="$address" role_of[$id]="$role" availability_of[$id]="$availability" state_of[$id]="$state"
  label_of[$id]="$holds"
  if [[ -v "declared[$address]" && (! -v "node_at[$address]" || "$state" == ready) ]]; then
    node_at[$address]="$id"
  fi
done

for id in "${!label_of[@]}"; do
  if [[ "${label_of[$id]}" == true && "${address_of[$id]}" != "$database" ]]; then
    die "the database is on ${address_of[$id]} (node $id, label $label) and the stack names $database: a release never moves it. Back it up, restore it on $database, then: docker node update --label-rm $label $id"
  fi
done

for address in "${!declared[@]}"; do
  [[ -v "node_at[$address]" ]] || die "no node of the Swarm is at $address: its join step did not join it (see above)"
  id="${node_at[$address]}" want="${declared[$address]}"
  if [[ "${role_of[$id]}" != "$want" ]]; then
    if [[ "$want" == manager ]]; then docker node promote "$id" >/dev/null; else docker node demote "$id" >/dev/null; fi
    echo "$address is a $want now"
  fi
  if [[ "${availability_of[$id]}" != active ]]; then
    docker node update --availability active "$id" >/dev/null
    echo "$address takes tasks again"
  fi
  if [[ "$address" == "$database" && "${label_of[$id]}" != true ]]; then
    docker node update --label-add "$label=true" "$id" >/dev/null
    echo "$address holds the database (label $label)"
  fi
done

# Whether any task still runs on NODE, or is about to.
tasks_left() {
  docker node ps --format '{{.DesiredState}} {{.CurrentState}}' "$1" | grep -Eq '^Running|^[A-Za-z]+ (Running|Starting|Preparing|Assigned)'
}

for id in "${!address_of[@]}"; do
  address="${address_of[$id]}"
  [[ "${node_at[$address]:-}" != "$id" ]] || continue
  if [[ "${state_of[$id]}" == ready ]]; then
    docker node update --availability drain "$id" >/dev/null
    for ((waited = 0; waited < drain_timeout; waited++)); do
      tasks_left "$id" || break
      sleep 1
    done
    if tasks_left "$id"; then
      echo "warning: tasks of $address still ran after ${drain_timeout}s of draining; removing it anyway" >&2
    fi
  fi
  [[ "${role_of[$id]}" != manager ]] || docker node demote "$id" >/dev/null
  docker node rm --force "$id" >/dev/null
  echo "removed $address (node $id, ${state_of[$id]}): no host of the stack is there"
done

for address in $(printf '%s\n' "${!declared[@]}" | sort); do
  echo "node $address ${declared[$address]}$([[ "$address" != "$database" ]] || echo ', database')"
done
