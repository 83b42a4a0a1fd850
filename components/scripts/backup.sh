#!/usr/bin/env bash
# Takes the release lock and, when the release needs one, backs up the stage's database before anything changes
# (lib/dump.sh). No backup for a version that already ran on this server (its schema is already there) unless
# --backup-on-rollback is yes, nor with --backup before-migrations when no migration is pending. An empty database
# has nothing to back up; any other failure stops the release. The step says which it did and why.
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
parse_flags backup.sh "$BACKUP_FLAGS" "$@"
begin_step
read_settings
version="${FLAGS[version]}" keep="${FLAGS[backups-to-keep]}" mode="${FLAGS[backup]}"
on_rollback="${FLAGS[backup-on-rollback]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_in_range BACKUPS_TO_KEEP "$keep"
[[ " $BACKUP_MODES " == *" $mode "* ]] || die "backup: allowed ${BACKUP_MODES// /, }; received '$mode'"
[[ "$on_rollback" == yes || "$on_rollback" == no ]] || die "backup-on-rollback: allowed yes, no; received '$on_rollback'"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"
require_version VERSION "$version"

skip() {
  echo "no backup: $*"
  echo "backup="
  exit 0
}

acquire_release_lock "${FLAGS[release]}" backup
reason=""
if applied="$(applied_migrations "$MIGRATE_IMAGE")"; then
  [[ "$on_rollback" == yes ]] ||
    skip "$version already ran on this server (its migrations were applied by $applied), so no migration runs and its schema is already there; set release.backupOnRollback to take one anyway"
  reason="release.backupOnRollback asks for one, although $version already ran on this server"
fi

require_database
tables="$(sql <<<"select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema');")"
[[ "$tables" != "0" ]] || skip "no tables in the database yet: nothing to back up"

if [[ -z "$reason" && "$mode" == always ]]; then
  reason="release.backup is always"
elif [[ -z "$reason" ]]; then
  pull_missing "$MIGRATE_IMAGE"
  UNDO=retire_migrations_login
  allow_login migrate "$APP_DIR/.env"
  pending=yes
  if compose --profile migrate run --rm --no-deps migrate npx prisma migrate status >/dev/null 2>&1; then
    pending=no
  fi
  retire_login migrate
  UNDO=""
  [[ "$pending" == yes ]] ||
    skip "no migration of $version is pending (prisma migrate status) and release.backup is before-migrations"
  reason="$version has migrations to apply (prisma migrate status)"
fi

echo "backing up: $reason"
dump_database "$(date -u +%Y%m%dT%H%M%SZ)-$version.dump"
prune_backups "$keep"
