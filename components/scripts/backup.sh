#!/usr/bin/env bash
# Takes the release lock and backs up the stage's database before anything changes:
# pg_dump (custom format), verified with pg_restore --list, newest KEEP kept.
# An empty server (no database yet) has nothing to back up; any other failure stops the release.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags backup.sh "app-dir project release lock-timeout-seconds version backups-to-keep app-image migrate-image" "$@"
begin_step
version="${FLAGS[version]}" keep="${FLAGS[backups-to-keep]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_number BACKUPS_TO_KEEP "$keep" 1 1000
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"
require_version VERSION "$version"

acquire_release_lock "${FLAGS[release]}" "${FLAGS[lock-timeout-seconds]}" backup
backups="$APP_DIR/backups"
mkdir -p "$backups"
chmod 700 "$backups"
# A step killed outright leaves its partial dump behind; it is never mistaken for a backup.
find "$backups" -maxdepth 1 -name '*.partial' -delete

compose up --detach --wait postgres
# The database's own credentials stay inside its container: these variables expand there.
# shellcheck disable=SC2016
in_database='exec "$0" -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"'
tables="$(compose exec -T postgres sh -c "$in_database" psql -At \
  <<<"select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema');")"
if [[ "$tables" == "0" ]]; then
  echo "no tables in the database yet: nothing to back up"
  echo "backup="
  exit 0
fi

final="$backups/$(date -u +%Y%m%dT%H%M%SZ)-$version.dump"
PARTIAL_FILE="$final.partial"
(umask 077 && compose exec -T postgres sh -c "$in_database" pg_dump --format=custom >"$PARTIAL_FILE")
[[ -s "$PARTIAL_FILE" ]] || die "pg_dump wrote an empty backup; the release stops before any migration"
entries="$(compose exec -T postgres pg_restore --list <"$PARTIAL_FILE" | grep -c ' TABLE ' || true)"
((entries > 0)) || die "the backup lists no tables (pg_restore --list); the release stops before any migration"
mv -f "$PARTIAL_FILE" "$final"
PARTIAL_FILE=""

mapfile -t old < <(find "$backups" -maxdepth 1 -name '*.dump' -printf '%f\n' | sort -r | tail -n "+$((keep + 1))")
for name in "${old[@]}"; do
  rm -f "$backups/$name"
done
echo "backed up $tables tables ($entries in the dump)"
echo "backup=$final"
