#!/usr/bin/env bash
# What the stage's backups hold, for an operator on the server and for the runner's `status`:
#   bash <appDir>/bin/backup-status.sh [--drill | --backup full|diff] [--check]
# KEY=VALUE lines: the newest base backup, how far the WAL is archived (the newest restorable point), the last drill
# and the last good one, the last restore point a release marked and the last restore. --drill runs a restore drill
# now, --backup a base backup now (ASKED=ok or failed says how it went). --check fails (exit 1) when the backups are
# stale or the last drill failed: what the drift check turns into an issue.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
# shellcheck source=lib/pgbackrest.sh
source "$(dirname "$0")/lib/pgbackrest.sh"
action="" check=no
while (($# > 0)); do
  case "$1" in
    --drill) action=drill ;;
    --backup)
      [[ "${2:-}" == full || "${2:-}" == diff ]] || die "--backup: allowed full, diff; received '${2:-}'"
      action="backup ${2}"
      shift
      ;;
    --check) check=yes ;;
    *) die "usage: backup-status.sh [--drill | --backup full|diff] [--check] (received '$1')" ;;
  esac
  shift
done
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
read_settings
# The releases' pg_dump backups on the server stay listed; bin/restore-dump.sh restores one.
dumps=("$APP_DIR"/backups/*.dump)
[[ -e "${dumps[0]}" ]] || dumps=()
echo "DUMPS=${#dumps[@]}${dumps[*]:+ in $APP_DIR/backups, the newest $(basename "${dumps[-1]}")}"
echo "DUMP_NAMES=$(for dump in "${dumps[@]}"; do basename "$dump"; done | paste -sd ' ')"
[[ -n "$(compose ps --quiet "$SCHEDULER_SERVICE" 2>/dev/null)" ]] || {
  echo "BACKUPS=none (no backup scheduler runs: the stack declares no backup section, or the database step has not run)"
  [[ "$check" == no ]] || exit 1
  exit 0
}
in_scheduler() {
  compose exec -T "$SCHEDULER_SERVICE" bash "/kametrix/bin/$1" "${@:2}"
}
# What was asked runs first; its failure is told (ASKED=failed), and the status below says what it left.
asked_backup() {
  # shellcheck disable=SC2016 # expands in the container
  compose exec -T "$SCHEDULER_SERVICE" bash -c 'source /kametrix/bin/lib/backup-job.sh && backup "$1"' backup "$1"
}
case "$action" in
  drill) asked=(in_scheduler backup-drill.sh) ;;
  "backup "*) asked=(asked_backup "${action#backup }") ;;
  *) asked=() ;;
esac
if ((${#asked[@]} > 0)); then
  if "${asked[@]}"; then echo "ASKED=ok"; else echo "ASKED=failed"; fi
fi
status="$(compose exec -T "$SCHEDULER_SERVICE" cat "$BACKUP_STATUS_DIR/status.env" 2>/dev/null || true)"
printf '%s\n' "$status"
# The newest restorable point: when PostgreSQL archived its last WAL segment, asked now.
echo "ARCHIVED_UNTIL=$(sql <<<"select coalesce(to_char(last_archived_time at time zone 'utc',
  'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') from pg_stat_archiver;" 2>/dev/null || true)"
[[ ! -f "$(restore_points_log)" ]] || echo "LAST_RESTORE_POINT=$(tail -n 1 "$(restore_points_log)")"
[[ ! -f "$APP_DIR/restores.log" ]] || echo "LAST_RESTORE=$(tail -n 1 "$APP_DIR/restores.log")"
stale="$(compose exec -T postgres sh -c "sed -n 's/^STALE_AFTER_HOURS=//p' $BACKUP_CONFIG_DIR/schedule.env")"
now="$(date +%s)" problems=()
newest="$(sed -n 's/^NEWEST_BACKUP=[^ ]* //p' <<<"$status")"
good="$(sed -n 's/^LAST_GOOD_DRILL=//p' <<<"$status")"
if [[ -z "$newest" ]] || ((now - $(date -u -d "$newest" +%s) > stale * 3600)); then
  problems+=("the newest base backup (${newest:-none}) is older than ${stale} h")
fi
if [[ -z "$good" ]] || ((now - $(date -u -d "$good" +%s) > stale * 3600)); then
  problems+=("the last good restore drill (${good:-none}) is older than ${stale} h")
fi
if grep -q '^LAST_DRILL=FAILED' <<<"$status"; then
  problems+=("the last restore drill failed")
fi
if ((${#problems[@]} > 0)); then
  echo "BACKUPS=stale: $(printf '%s; ' "${problems[@]}")"
  [[ "$check" == no ]] || exit 1
else
  echo "BACKUPS=ok"
fi
