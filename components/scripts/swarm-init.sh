#!/usr/bin/env bash
# Makes the database host the first manager of the stage's Swarm, unless it is one already, and creates the stage's
# overlay network, where the app's tasks, the proxies and PostgreSQL meet. Then says which node this is and which
# hosts are in the Swarm, by their advertised address: the other hosts join, or leave a Swarm they are wrongly
# in, from that. Prints no join token: the Swarm's own output of `init`, which holds one, goes nowhere.
#   swarm-init.sh --advertise-address 10.0.0.11 --network kametrix_net
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# Rendered by components/shared_facts.py, as lib/facts.sh is.
# shellcheck source=/dev/null
source "$(dirname "$0")/lib/swarm-facts.sh"
parse_flags swarm-init.sh "$SWARM_INIT_FLAGS" "$@"
address="${FLAGS[advertise-address]}" network="${FLAGS[network]}"
require_match advertise-address "$address" "$IPV4_PATTERN" "an IPv4 address"
# The stage's network is named after its compose project (components/swarm_files.py).
require_match network "$network" "$PROJECT_PATTERN" "a network name"

read -r state manager advertised < <(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeAddr}}')
case "$state" in
  inactive)
    docker swarm init --advertise-addr "$address" --listen-addr "$address:2377" >/dev/null
    echo "initialised the Swarm on $address"
    ;;
  active)
    [[ "$manager" == true ]] ||
      die "this host is a worker of a Swarm; the database host runs the release steps and must be its manager: run 'docker swarm leave' on it, or make it a manager, then run the update again"
    [[ "$advertised" == "$address" ]] ||
      die "this host is a manager of a Swarm that knows it at $advertised, not at $address (server.hosts advertiseAddress)"
    echo "already a manager of the Swarm at $address"
    ;;
  *) die "this host's Swarm state is '$state' (docker info): it must be inactive or an active manager" ;;
esac

if ! driver="$(docker network inspect --format '{{.Driver}} {{.Attachable}}' "$network" 2>/dev/null)"; then
  docker network create --driver overlay --attachable "$network" >/dev/null
  echo "created the overlay network $network"
elif [[ "$driver" != "overlay true" ]]; then
  die "the network $network exists as '$driver' (driver, attachable); the stage needs an attachable overlay network of that name"
fi

echo "leader=$(docker info --format '{{.Swarm.NodeID}}')"
mapfile -t nodes < <(docker node ls --quiet)
for node in "${nodes[@]}"; do
  docker node inspect --format 'node={{.Status.Addr}}={{.ID}}' "$node"
done
