#!/usr/bin/env bash
# The release order of the pipeline kametrix-deploy replaced (target-app.md, "What the pipeline it replaces
# does"), on the single-container layout: pull, tag the running image `rollback`, dump the database (failure
# ignored), stop the app, migrate, start the new version, poll its health, on failure restart `rollback`.
# For the tests and the benchmark only (tests/e2e/old_layout.py runs it over SSH).
set -euo pipefail
usage="old_pipeline.sh APP_DIR PROJECT APP_IMAGE MIGRATE_IMAGE HEALTH_URL ATTEMPTS INTERVAL_SECONDS"
[[ $# -eq 7 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
app_dir="$1" project="$2" health_url="$5" attempts="$6" interval="$7"
export APP_IMAGE="$3" MIGRATE_IMAGE="$4"

compose() {
  docker compose --project-name "$project" --project-directory "$app_dir" --file "$app_dir/docker-compose.yml" \
    --env-file "$app_dir/.env" "$@"
}
healthy() {
  local attempt
  for ((attempt = 1; attempt <= attempts; attempt++)); do
    curl --silent --fail --max-time 5 "$health_url" | grep -Eq '"valid"[[:space:]]*:[[:space:]]*true' && return 0
    sleep "$interval"
  done
  return 1
}

docker pull --quiet "$APP_IMAGE"
compose up --detach --wait postgres
running="$(compose ps --quiet app)"
if [[ -n "$running" ]]; then
  docker tag "$(docker inspect --format '{{.Image}}' "$running")" "$project-app:rollback"
fi
# shellcheck disable=SC2016 # the variables expand inside the database's container
compose exec -T postgres sh -c 'pg_dump -U "$POSTGRES_USER" "$POSTGRES_DB"' >"$app_dir/backup-pre.sql" || true
compose stop app
compose --profile migrate run --rm --no-deps migrate
compose up --detach --no-deps app
healthy && exit 0
if [[ -n "$running" ]]; then
  APP_IMAGE="$project-app:rollback" compose up --detach --no-deps app
  healthy
fi
echo "error: the new version did not turn healthy; restarted the one that ran before" >&2
exit 1
