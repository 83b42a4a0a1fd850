#!/usr/bin/env bash
# Prints the Swarm's join tokens, for a worker and for a manager, as key=value lines that the stack keeps as a
# secret. The update's log never shows this step's output, and nothing but the two lines is ever printed: a
# failure says which token could not be read, never a token.
#   swarm-tokens.sh --leader NODE_ID
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# Rendered by components/shared_facts.py, as lib/facts.sh is.
# shellcheck source=/dev/null
source "$(dirname "$0")/lib/swarm-facts.sh"
parse_flags swarm-tokens.sh "$SWARM_TOKENS_FLAGS" "$@"
[[ "$(docker info --format '{{.Swarm.NodeID}}')" == "${FLAGS[leader]}" ]] ||
  die "this host is not the Swarm's node ${FLAGS[leader]}, whose join tokens were asked for"
for role in worker manager; do
  token="$(docker swarm join-token --quiet "$role" 2>/dev/null)" || die "the $role join token could not be read"
  [[ "$token" =~ $SWARM_TOKEN_PATTERN ]] || die "the $role join token is not a Swarm join token"
  echo "$role=$token"
done
