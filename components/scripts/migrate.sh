#!/usr/bin/env bash
# Applies the new version's migrations while the current version keeps serving.
# A version that already ran on this server has its schema already: nothing runs, nothing is pulled.
# A failed migration stops the release; nothing is switched.
set -euo pipefail
usage="migrate.sh APP_DIR PROJECT OWNER STALE_SECONDS VERSION APP_IMAGE MIGRATE_IMAGE"
[[ $# -eq 7 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
owner="$3" stale="$4" version="$5"
export APP_IMAGE="$6" MIGRATE_IMAGE="$7"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"

acquire_release_lock "$owner" "$stale"
if applied="$(applied_migrations "$MIGRATE_IMAGE")"; then
  echo "no migration: $version already ran on this server (its migrations were applied by $applied), so its schema is already there; nothing was pulled"
  exit 0
fi
pull_missing "$MIGRATE_IMAGE"
compose up --detach --wait postgres
if ! compose --profile migrate run --rm --no-deps migrate; then
  die "migrations of $version failed; the live version ($(live VERSION)) keeps serving and nothing was switched"
fi
printf '%s %s %s\n' "$MIGRATE_IMAGE" "$version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$MIGRATIONS_LOG"
echo "migrations of $version applied"
