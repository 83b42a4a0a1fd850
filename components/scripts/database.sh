#!/usr/bin/env bash
# Keeps the stage's PostgreSQL as the stack declares it, as an operation of its own: never as a side effect of a
# backup or a migration. Starts it when it does not run; when its image changed, backs the database up first,
# replaces the container (the database is down while the new one starts: the step says for how long) and, if the
# new one never turns healthy, puts the old one back. Then makes sure the app's login roles exist.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
# shellcheck source=lib/dump.sh
source "$(dirname "$0")/lib/dump.sh"
parse_flags database.sh "$DATABASE_FLAGS" "$@"
begin_step
read_settings
image="${FLAGS[postgres-image]}"
[[ "$image" =~ ^[a-z0-9][a-z0-9._:/@-]*$ ]] || die "postgres-image: allowed an image reference; received '$image'"

# Recreates PostgreSQL with IMAGE and waits until it is healthy; fails if it does not turn healthy.
start_postgres() {
  POSTGRES_IMAGE="$1" compose up --detach --no-deps --force-recreate --wait --wait-timeout 120 postgres
}

put_back() {
  echo "PostgreSQL $image did not turn healthy; putting $running back" >&2
  start_postgres "$running"
  echo "PostgreSQL $running serves again; $image was not installed" >&2
}

acquire_release_lock "${FLAGS[release]}" database
container="$(database_container)"
running="$([[ -z "$container" ]] || docker inspect --format '{{.Config.Image}}' "$container")"
# An image change is other bytes, not another name for the same ones (a tag pinned by its digest, say).
pull_missing "$image"
if [[ -z "$running" ]]; then
  POSTGRES_IMAGE="$image" compose up --detach --no-deps --wait --wait-timeout 120 postgres
  echo "PostgreSQL $image started"
elif [[ "$(docker inspect --format '{{.Image}}' "$container")" != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
  echo "PostgreSQL changes from $running to $image: backing up first"
  dump_database "$(date -u +%Y%m%dT%H%M%SZ)-before-postgres-change.dump"
  UNDO=put_back
  started="$EPOCHREALTIME"
  start_postgres "$image"
  UNDO=""
  awk -v from="$started" -v to="$EPOCHREALTIME" -v image="$image" \
    'BEGIN { printf "PostgreSQL %s serves; the database was down for %.1f s\n", image, to - from }'
else
  if [[ "$(docker inspect --format '{{.State.Health.Status}}' "$container")" != healthy ]]; then
    POSTGRES_IMAGE="$running" compose up --detach --no-deps --no-recreate --wait --wait-timeout 120 postgres >/dev/null
  fi
  echo "PostgreSQL $image runs"
fi
ensure_login_roles
