#!/usr/bin/env bash
# Applies the new version's migrations while the current version keeps serving, logged in as the migrations' own
# role (lib/compose.sh), which may log in only while they run.
# A version that already ran on this server has its schema already: nothing runs, nothing is pulled.
# A failed migration stops the release; nothing is switched.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
parse_flags migrate.sh "$MIGRATE_FLAGS" "$@"
begin_step
read_settings
version="${FLAGS[version]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"

acquire_update_lock "${FLAGS[release]}" migrate
if applied="$(applied_migrations "$MIGRATE_IMAGE")"; then
  echo "no migration: $version already ran on this server (its migrations were applied by $applied), so its schema is already there; nothing was pulled"
  exit 0
fi
pull_missing "$MIGRATE_IMAGE"
require_database
UNDO=retire_migrations_login
allow_login migrate "$APP_DIR/.env"
if ! compose --profile migrate run --rm --no-deps migrate; then
  die "migrations of $version failed; the live version ($(live VERSION)) keeps serving and nothing was switched"
fi
retire_login migrate
UNDO=""
live_files
printf '%s %s %s\n' "$MIGRATE_IMAGE" "$version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$MIGRATIONS_LOG"
echo "migrations of $version applied"
