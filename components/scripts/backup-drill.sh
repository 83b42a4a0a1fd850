#!/usr/bin/env bash
# The restore drill, run in the backup scheduler's container on its schedule (or now: bin/backup-status.sh --drill).
# It marks a restore point on the live database while its tables are locked against writes (SHARE mode: reads go on)
# and counts their rows in the same moment, makes sure the WAL up to it is archived, restores the latest backup and
# that WAL into a scratch folder, starts a PostgreSQL of its own there (another socket, no archiving) and compares
# its tables and row counts with the live ones. Whatever happens, the scratch PostgreSQL and folder are removed; the
# result goes to the status file.
set -euo pipefail
# shellcheck source=lib/backup-job.sh
source "$(dirname "$0")/lib/backup-job.sh"
scratch="$BACKUP_STATUS_DIR/drill" socket=/tmp/kametrix-drill
point="kametrix-drill-$(date -u +%Y%m%dT%H%M%SZ)"
started="$(date +%s)"

cleanup() {
  as_postgres pg_ctl -D "$scratch" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$scratch" "$socket"
}
failed() {
  local why="${1//$'\n'/ }"
  cleanup
  set_status LAST_DRILL "FAILED at $(utc_now): ${why:0:500}"
  set_status LAST_DRILL_EPOCH "$started"
  echo "drill failed: $why" >&2
  exit 1
}
trap 'failed "interrupted or an unexpected error (line $LINENO)"' ERR
cleanup

tables="select format('%I.%I', schemaname, tablename) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')"
counts="select t || '|' || (xpath('/row/c/text()', query_to_xml('select count(*) as c from ' || t, false, true, '')))[1]::text from ($tables) as l(t) order by 1"
# One transaction: no write lands between the counts and the restore point.
live="$(live_sql --file=- <<SQL
BEGIN;
SELECT 'LOCK TABLE ' || string_agg(t, ', ') || ' IN SHARE MODE' FROM ($tables) AS l(t) HAVING count(*) > 0 \gexec
$counts;
SELECT 'restore point ' || pg_create_restore_point('$point');
COMMIT;
SQL
)" || failed "the live database could not be counted: $live"
live="$(grep -v '^restore point ' <<<"$live" || true)"
said="$(job_pgbackrest 120 --archive-timeout=60 check 2>&1)" ||
  failed "the WAL up to $point was not archived: $said"

mkdir -p "$scratch" "$socket"
chown postgres:postgres "$scratch" "$socket"
chmod 700 "$scratch"
said="$(job_pgbackrest 21600 --pg1-path="$scratch" --type=name "--target=$point" \
  --target-action=promote restore 2>&1)" || failed "the latest backup could not be restored: $said"
said="$(as_postgres pg_ctl -D "$scratch" -w -t 600 -l "$scratch/drill.log" -o "-c port=5499 -c listen_addresses='' \
  -c unix_socket_directories=$socket -c archive_mode=off -c shared_buffers=32MB" start 2>&1)" ||
  failed "the restored database did not start: $said $(tail -n 5 "$scratch/drill.log" 2>/dev/null)"
for ((waited = 0; ; waited++)); do
  [[ "$(as_postgres psql -XAtq -h "$socket" -p 5499 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c 'select pg_is_in_recovery()' 2>/dev/null || true)" != f ]] || break
  ((waited < 600)) || failed "the restored database did not finish its recovery within 600 s"
  sleep 1
done
restored="$(as_postgres psql -XAtq -v ON_ERROR_STOP=1 -h "$socket" -p 5499 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$counts" 2>&1)" ||
  failed "the restored database could not be counted: $restored"
[[ "$restored" == "$live" ]] ||
  failed "the restored tables and row counts differ from the live ones: live $(paste -sd, <<<"$live"); restored $(paste -sd, <<<"$restored")"
trap - ERR
cleanup
set_status LAST_DRILL "passed at $(utc_now): $(wc -l <<<"$live") tables, $(awk -F'|' '{ n += $2 } END { print n + 0 }' <<<"$live") rows, restored in $(($(date +%s) - started)) s"
set_status LAST_GOOD_DRILL "$(utc_now)"
set_status LAST_DRILL_EPOCH "$started"
echo "drill passed: $(paste -sd, <<<"$live")"
