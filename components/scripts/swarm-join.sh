#!/usr/bin/env bash
# Joins this host to the stage's Swarm, as a worker or a manager (the token says which), unless it is in it
# already: as the node the Swarm's manager lists at this host's address. A host in another Swarm, or one the
# Swarm removed, leaves it first. The token is read from a file (mode 600) and sent to the Docker Engine's API on
# stdin: it never reaches a command line, and nothing printed here holds it.
#   swarm-join.sh --advertise-address 10.0.0.12 --manager-address 10.0.0.11 --node-id NODE_ID|'' --token-file FILE
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# Rendered by components/shared_facts.py, as lib/facts.sh is.
# shellcheck source=/dev/null
source "$(dirname "$0")/lib/swarm-facts.sh"
parse_flags swarm-join.sh "$SWARM_JOIN_FLAGS" "$@"
address="${FLAGS[advertise-address]}" manager="${FLAGS[manager-address]}" expected="${FLAGS[node-id]}"
for name in advertise-address manager-address; do
  require_match "$name" "${FLAGS[$name]}" "$IPV4_PATTERN" "an IPv4 address"
done
require_match node-id "$expected" '^[a-z0-9]*$' "a Swarm node ID or nothing"
token="$(cat "${FLAGS[token-file]}")"
[[ "$token" =~ $SWARM_TOKEN_PATTERN ]] || die "token-file: allowed a Swarm join token; received another text (not shown)"

# The Engine's API on its Unix socket, where `docker` would reach it; the request's body comes on stdin.
socket="${DOCKER_HOST:-unix:///var/run/docker.sock}"
[[ "$socket" == unix://* ]] || die "DOCKER_HOST: allowed a unix:// socket; received '$socket'"
engine() {
  local method="$1" path="$2" answer
  answer="$(curl --silent --show-error --unix-socket "${socket#unix://}" --request "$method" \
    --header 'Content-Type: application/json' --data-binary @- --write-out '\n%{http_code}' "http://engine$path")"
  # An error of the Engine may quote what it was sent: a token is never shown.
  [[ "${answer##*$'\n'}" == 200 ]] || die "the Docker Engine refused $method $path: $(sed -E 's/SWMTKN-[A-Za-z0-9-]+/<token>/g' <<<"${answer%$'\n'*}")"
}

read -r state node < <(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}')
if [[ "$state" == active && -n "$expected" && "$node" == "$expected" ]]; then
  echo "already in the Swarm as node $node"
  exit 0
fi
if [[ "$state" != inactive ]]; then
  engine POST '/swarm/leave?force=true' </dev/null
  echo "left the Swarm it was in as node ${node:-?} ($state), which the stage's Swarm does not list at $address"
fi
printf '{"ListenAddr":"%s:2377","AdvertiseAddr":"%s","RemoteAddrs":["%s:2377"],"JoinToken":"%s"}' \
  "$address" "$address" "$manager" "$token" | engine POST /swarm/join
echo "joined the Swarm at $manager as node $(docker info --format '{{.Swarm.NodeID}}')"
