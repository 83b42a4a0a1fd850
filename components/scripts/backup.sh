#!/usr/bin/env bash
# Takes the release lock and, when the release needs one, backs up the stage's database before anything changes
# (lib/dump.sh). No backup for a version that already ran on this server (its schema is already there) unless
# --backup-on-rollback is yes, nor with --backup before-migrations when no migration is pending. An empty database
# has nothing to back up; any other failure stops the release. The step says which it did and why.
# With a backup repository (--backups, lib/pgbackrest.sh), the release first marks a named restore point and makes
# sure the WAL up to it is archived: seconds at any size. --backup restore-point takes no dump at all. A repository
# that cannot be reached stops a release with a pending migration before it migrates; one without goes on, warned.
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
# shellcheck source=lib/pgbackrest.sh
source "$(dirname "$0")/lib/pgbackrest.sh"
parse_flags backup.sh "$BACKUP_FLAGS" "$@"
begin_step
read_settings
version="${FLAGS[version]}" keep="${FLAGS[backups-to-keep]}" mode="${FLAGS[backup]}"
on_rollback="${FLAGS[backup-on-rollback]}" backups="${FLAGS[backups]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_in_range BACKUPS_TO_KEEP "$keep"
[[ " $BACKUP_MODES " == *" $mode "* ]] || die "backup: allowed ${BACKUP_MODES// /, }; received '$mode'"
[[ "$on_rollback" == yes || "$on_rollback" == no ]] || die "backup-on-rollback: allowed yes, no; received '$on_rollback'"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"
require_version VERSION "$version"
[[ "$backups" == none || "$backups" =~ ^[0-9a-f]{16}$ ]] || die "backups: allowed none or a fingerprint; received '$backups'"
[[ "$mode" != restore-point || "$backups" != none ]] || die "backup: restore-point needs a backup repository; none is declared"

skip() {
  echo "no backup: $*"
  echo "backup="
  exit 0
}

acquire_update_lock "${FLAGS[release]}" backup
reason=""
if applied="$(applied_migrations "$MIGRATE_IMAGE")"; then
  [[ "$on_rollback" == yes ]] ||
    skip "$version already ran on this server (its migrations were applied by $applied), so no migration runs and its schema is already there; set release.backupOnRollback to take one anyway"
  reason="release.backupOnRollback asks for one, although $version already ran on this server"
fi

require_database
tables="$(sql <<<"select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema');")"
[[ "$tables" != "0" ]] || skip "no tables in the database yet: nothing to back up"

# Whether the release has a migration to apply (prisma migrate status in its migrate image).
migration_pending() {
  local pending=yes
  pull_missing "$MIGRATE_IMAGE"
  UNDO=retire_migrations_login
  allow_login migrate "$APP_DIR/.env"
  if compose --profile migrate run --rm --no-deps migrate npx prisma migrate status >/dev/null 2>&1; then
    pending=no
  fi
  retire_login migrate
  UNDO=""
  [[ "$pending" == yes ]]
}

if [[ "$backups" != none ]]; then
  point="$RESTORE_POINT_PREFIX$version-$(date -u +%Y%m%dT%H%M%SZ)"
  started="$EPOCHREALTIME"
  if unreachable="$(mark_restore_point "$point")"; then
    printf '%s %s %s\n' "$point" "$version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$(restore_points_log)"
    awk -v point="$point" -v from="$started" -v to="$EPOCHREALTIME" \
      'BEGIN { printf "restore point %s marked and the WAL up to it archived in %.1f s\n", point, to - from }'
    echo "restore-point=$point"
  elif migration_pending; then
    die "the backup repository could not take the WAL up to restore point $point, so $version's migrations do not run and nothing changed; check the repository (backup.repository, its keys) and run the update again. pgBackRest said: $unreachable"
  else
    echo "warning: the backup repository could not take the WAL up to restore point $point; no migration of $version is pending, so the release goes on. pgBackRest said: $unreachable" >&2
  fi
  [[ "$mode" != restore-point ]] || skip "release.backup is restore-point: the repository holds the database"
fi

if [[ -z "$reason" && "$mode" == always ]]; then
  reason="release.backup is always"
elif [[ -z "$reason" ]]; then
  migration_pending ||
    skip "no migration of $version is pending (prisma migrate status) and release.backup is before-migrations"
  reason="$version has migrations to apply (prisma migrate status)"
fi

echo "backing up: $reason"
dump_database "$(date -u +%Y%m%dT%H%M%SZ)-$version.dump"
prune_backups "$keep"
