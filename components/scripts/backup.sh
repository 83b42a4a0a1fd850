#!/usr/bin/env bash
# Takes the release lock and, when the release needs one, backs up the stage's database before anything
# changes: pg_dump (custom format), verified with pg_restore --list, newest --backups-to-keep kept.
# No backup for a version that already ran on this server (its schema is already there) unless
# --backup-on-rollback is yes, nor with --backup before-migrations when no migration is pending. An empty
# server has nothing to back up; any other failure stops the release. The step says which it did and why.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags backup.sh "app-dir project $(release_lock_flag_names) version backups-to-keep backup backup-on-rollback \
  app-image migrate-image" "$@"
begin_step
version="${FLAGS[version]}" keep="${FLAGS[backups-to-keep]}" mode="${FLAGS[backup]}"
on_rollback="${FLAGS[backup-on-rollback]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_number BACKUPS_TO_KEEP "$keep" 1 1000
[[ "$mode" == always || "$mode" == before-migrations ]] ||
  die "backup: allowed always, before-migrations; received '$mode'"
[[ "$on_rollback" == yes || "$on_rollback" == no ]] || die "backup-on-rollback: allowed yes, no; received '$on_rollback'"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"
require_version VERSION "$version"

# Custom format (one file, streamed to the host, that pg_restore checks) at gzip level 1, one job: measured at
# 1.2 GB of incompressible data (scripts/bench_rollback.py, README), 34 MB/s against 15 MB/s at the default level
# and the same size; uncompressed is faster (61 MB/s) but 1.7 times larger (bytea dumps as hex), and a directory
# dump cannot stream to the host while its parallel jobs only split work between tables.
DUMP_OPTIONS=(--format=custom --compress=1)

skip() {
  echo "no backup: $*"
  echo "backup="
  exit 0
}

acquire_release_lock "${FLAGS[release]}" "${FLAGS[lock-timeout-seconds]}" backup
reason=""
if applied="$(applied_migrations "$MIGRATE_IMAGE")"; then
  [[ "$on_rollback" == yes ]] ||
    skip "$version already ran on this server (its migrations were applied by $applied), so no migration runs and its schema is already there; set release.backupOnRollback to take one anyway"
  reason="release.backupOnRollback asks for one, although $version already ran on this server"
fi

backups="$APP_DIR/backups"
mkdir -p "$backups"
chmod 700 "$backups"
# A step killed outright leaves its partial dump behind; it is never mistaken for a backup.
find "$backups" -maxdepth 1 -name '*.partial' -delete

compose up --detach --wait postgres
# The database's own credentials stay inside its container: these variables expand there.
# shellcheck disable=SC2016
in_database='exec "$0" -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"'
query() {
  compose exec -T postgres sh -c "$in_database" psql -At <<<"$1"
}
tables="$(query "select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema');")"
if [[ "$tables" == "0" ]]; then
  echo "no tables in the database yet: nothing to back up"
  echo "backup="
  exit 0
fi

if [[ -z "$reason" && "$mode" == always ]]; then
  reason="release.backup is always"
elif [[ -z "$reason" ]]; then
  pull_missing "$MIGRATE_IMAGE"
  if compose --profile migrate run --rm --no-deps migrate npx prisma migrate status >/dev/null 2>&1; then
    skip "no migration of $version is pending (prisma migrate status) and release.backup is before-migrations"
  fi
  reason="$version has migrations to apply (prisma migrate status)"
fi

echo "backing up: $reason"
final="$backups/$(date -u +%Y%m%dT%H%M%SZ)-$version.dump"
PARTIAL_FILE="$final.partial"
size="$(query "select pg_database_size(current_database());")"
started="$EPOCHREALTIME"
(umask 077 && compose exec -T postgres sh -c "$in_database" pg_dump "${DUMP_OPTIONS[@]}" >"$PARTIAL_FILE")
[[ -s "$PARTIAL_FILE" ]] || die "pg_dump wrote an empty backup; the release stops before any migration"
entries="$(compose exec -T postgres pg_restore --list <"$PARTIAL_FILE" | grep -c ' TABLE ' || true)"
((entries > 0)) || die "the backup lists no tables (pg_restore --list); the release stops before any migration"
mv -f "$PARTIAL_FILE" "$final"
PARTIAL_FILE=""
seconds="$(awk -v from="$started" -v to="$EPOCHREALTIME" 'BEGIN { printf "%.1f", to - from }')"

mapfile -t old < <(find "$backups" -maxdepth 1 -name '*.dump' -printf '%f\n' | sort -r | tail -n "+$((keep + 1))")
for name in "${old[@]}"; do
  rm -f "$backups/$name"
done
awk -v tables="$tables" -v entries="$entries" -v size="$size" -v dump="$(stat -c %s "$final")" -v s="$seconds" \
  'BEGIN { printf "backed up %d tables (%d in the dump): %.0f MB database, %.0f MB dump in %.1f s (%.0f MB/s)\n",
    tables, entries, size / 1e6, dump / 1e6, s, size / 1e6 / (s > 0 ? s : 0.1) }'
echo "backup=$final"
