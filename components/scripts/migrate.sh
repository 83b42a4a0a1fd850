#!/usr/bin/env bash
# Applies the new version's migrations while the current version keeps serving.
# A version that already ran on this server has its schema already: nothing runs, nothing is pulled.
# A failed migration stops the release; nothing is switched.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags migrate.sh "app-dir project $(release_lock_flag_names) version app-image migrate-image" "$@"
begin_step
version="${FLAGS[version]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"

acquire_release_lock "${FLAGS[release]}" "${FLAGS[lock-timeout-seconds]}" migrate
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
