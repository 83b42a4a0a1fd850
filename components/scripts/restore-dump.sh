#!/usr/bin/env bash
# Break-glass restore of the stage's database from one of its pg_dump backups (<appDir>/backups: what a release took
# before it migrated, or the database step before a PostgreSQL change), on the server itself or through
# `python -m runner --stack S restore --dump NAME`:
#   bash <appDir>/bin/restore-dump.sh --dump NAME [--yes] [--plan]
# Under the release lock (in the live release's name): checks the dump with pg_restore --list and stops, changing
# nothing, if it lists no table; prints its plan and asks (--yes: don't ask; --plan: only print it). Then restores
# it, in one transaction, into a new database beside the live one while the app still serves; takes the app out of
# traffic (the proxy answers 503), renames the live database aside (<db>_aside_<time>, never dropped here) and the
# restored one into its place, prints its tables and row counts, lets the live colour log in again and brings the
# app back. A failure before the swap drops the new database and nothing else changed; after it, the live database
# is put back.
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
# shellcheck source=lib/restoring.sh
source "$(dirname "$0")/lib/restoring.sh"

usage="usage: restore-dump.sh --dump NAME [--yes] [--plan]"
name="" CONFIRMED=no PLAN_ONLY=no
while (($# > 0)); do
  case "$1" in
    --dump)
      (($# >= 2)) || die "$usage (--dump has no value)"
      name="$2"
      shift
      ;;
    --yes) CONFIRMED=yes ;;
    --plan) PLAN_ONLY=yes ;;
    *) die "$usage (unknown argument '$1')" ;;
  esac
  shift
done
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
read_settings
declare -gA FLAGS=([app-dir]="$APP_DIR" [project]="$PROJECT")
begin_step
[[ -n "$(live VERSION)" ]] || die "no release is recorded in $APP_DIR/release.env: release the stage first, then restore"
listed="$(find "$(backups_dir)" -maxdepth 1 -name '*.dump' -printf '%f\n' 2>/dev/null | sort | paste -sd ' ')"
require_match dump "$name" "$DUMP_NAME_PATTERN" "one of the dumps in $(backups_dir): ${listed:-none}"
dump="$(backups_dir)/$name"
[[ -f "$dump" ]] || die "dump: allowed one of the dumps in $(backups_dir): ${listed:-none}; received '$name'"

acquire_release_lock "$(live_release)" restore-dump restoring
require_database
tables="$(compose exec -T postgres pg_restore --list <"$dump" | grep -c ' TABLE ' || true)"
((tables > 0)) || die "$dump lists no table (pg_restore --list): it is not a backup of the database; nothing was changed"
# The dump's name starts with the UTC time it was taken: the migrations after it are not in it.
taken="$(sed -E 's/^([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z.*/\1-\2-\3T\4:\5:\6Z/' <<<"$name")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
restored="${DATABASE_NAME}_restore_$stamp" aside="${DATABASE_NAME}_aside_$stamp"
colour="$(live LIVE_COLOUR)"
cat <<PLAN
restore plan for $PROJECT ($APP_DIR):
  restore the database as it was at $taken, from the dump $name ($tables tables)
  into a new database while the app still serves; then the app ($(live VERSION) on $colour) answers 503 while the
  restored database takes the live one's name; it keeps its version
  the current data is kept aside as the database $aside
PLAN
confirm_plan

started="$EPOCHREALTIME"
sql --database postgres -v db="$restored" -v owner="$DATABASE_USER" >/dev/null <<<'CREATE DATABASE :"db" OWNER :"owner";'
UNDO=drop_restored
drop_restored() {
  sql --database postgres -v db="$restored" >/dev/null <<<'DROP DATABASE IF EXISTS :"db";' || true
}
# shellcheck disable=SC2016 # expands in the container
compose exec -T postgres sh -c 'exec pg_restore -U "$POSTGRES_USER" -d "$1" --single-transaction --exit-on-error' \
  pg_restore "$restored" <"$dump"
echo "restored the dump into $restored in $(awk -v from="$started" -v to="$EPOCHREALTIME" 'BEGIN { printf "%.1f", to - from }') s"

# Renames LIVE to ASIDE and NEW to LIVE in one transaction (both or neither) once nothing is connected to either: the
# colour's role logs in no more, and the sessions still open are ended (the app's pool meets a closed connection).
swap_databases() {
  local live_name="$1" new_name="$2" aside_name="$3"
  sql --database postgres -v live="$live_name" -v new="$new_name" -v old="$aside_name" >/dev/null <<'SQL'
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
  WHERE datname IN (:'live', :'new') AND pid <> pg_backend_pid();
BEGIN;
ALTER DATABASE :"live" RENAME TO :"old";
ALTER DATABASE :"new" RENAME TO :"live";
COMMIT;
SQL
}
swapped=no
# Runs with errexit off (lib/step.sh): says only what it did.
put_back() {
  echo "the restore did not finish: putting the database that served back" >&2
  if [[ "$swapped" == yes ]] && ! swap_databases "$DATABASE_NAME" "$aside" "$restored"; then
    echo "the database that served could not be put back: it is $aside; rename it to $DATABASE_NAME by hand" >&2
    return 1
  fi
  drop_restored
  if allow_login "$colour" "$APP_DIR/.env.$colour" && serve_from "$colour"; then
    echo "the database is as it was before the restore, and $colour serves it again" >&2
  else
    echo "the database that served is in place, but $colour could not log in again or the proxy did not take it back: the app may still answer 503" >&2
  fi
}
UNDO=put_back
serve_from maintenance
echo "the app is out of traffic: the proxy answers 503"
down="$EPOCHREALTIME"
retire_login "$colour" >/dev/null
swap_databases "$DATABASE_NAME" "$restored" "$aside"
swapped=yes
echo "the restored database serves as $DATABASE_NAME; the tables it holds, with their rows:"
table_counts | awk -F'|' '{ printf "  %-40s %s\n", $1, $2 }'
ensure_login_roles
allow_login "$colour" "$APP_DIR/.env.$colour"
serve_from "$colour"
UNDO=""
warn_unless_healthy "$colour"
forget_migrations_after "$taken"
record_restore "dump:$name" "$name" "$aside"
release_release_lock
awk -v from="$down" -v to="$EPOCHREALTIME" \
  'BEGIN { printf "restored; the app was out of traffic for %.1f s\n", to - from }'
echo "the data from before the restore is kept as the database $aside: drop it once you are sure (DROP DATABASE $aside)"
