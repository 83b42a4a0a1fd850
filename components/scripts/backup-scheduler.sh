#!/usr/bin/env bash
# The stage's backup schedule, run by the backup-scheduler service: a container of its own from the database's image
# (pgBackRest, PostgreSQL's binaries), beside PostgreSQL, with its data volume read-only and its socket. Every minute
# it asks the repository what it holds and, by the schedule the database step installed (schedule.env), takes a full
# or a differential base backup (pgBackRest expires what the retention no longer keeps) and runs the restore drill
# (backup-drill.sh). What it did goes to status.env in its own volume: `bin/backup-status.sh` and the runner's
# `status` read it.
set -euo pipefail
# shellcheck source=lib/backup-job.sh
source "$(dirname "$0")/lib/backup-job.sh"
trap 'exit 0' TERM INT

# Each backup in the repository, oldest first: "TYPE LABEL STOP-EPOCH". Fails when the repository does not answer.
backups() {
  local info
  info="$(job_pgbackrest 120 info)" || return 1
  awk '
    / backup: / { type = $1; label = $NF }
    /timestamp start\/stop/ { print type, label, $(NF - 1) " " $NF }' <<<"$info" |
    while read -r type label day time; do
      echo "$type $label $(date -u -d "$day $time" +%s)"
    done
}

# Reads the repository into FULL_AT, NEWEST_AT (epochs; 0: none) and the status' NEWEST_BACKUP. A repository that
# does not answer is no reason for a backup: the tick is skipped.
scan() {
  local type label at found
  FULL_AT=0 NEWEST_AT=0
  found="$(backups 2>&1)" || {
    set_status REPOSITORY "not answering at $(utc_now): $(tr '\n' ' ' <<<"$found" | cut -c1-300)"
    return 1
  }
  set_status REPOSITORY "answering at $(utc_now)"
  while read -r type label at; do
    [[ "$type" != full ]] || FULL_AT="$at"
    NEWEST_AT="$at"
    set_status NEWEST_BACKUP "$label $(date -u -d "@$at" +%Y-%m-%dT%H:%M:%SZ)"
  done <<<"$found"
}

backup() {
  local type="$1" said
  if said="$(job_pgbackrest 21600 --type="$type" backup 2>&1)"; then
    set_status LAST_BACKUP "$type ok at $(utc_now)"
  else
    set_status LAST_BACKUP "$type FAILED at $(utc_now): $(tr '\n' ' ' <<<"$said" | cut -c1-400)"
  fi
  scan || true
}

tick() {
  local now drill_at
  now="$(date +%s)"
  schedule
  if scan; then
    if ((now - FULL_AT >= FULL_EVERY_HOURS * 3600)); then
      backup full
    elif ((now - NEWEST_AT >= DIFF_EVERY_HOURS * 3600)); then
      backup diff
    fi
  fi
  drill_at="$(status_value LAST_DRILL_EPOCH)"
  if ((NEWEST_AT > 0 && now - ${drill_at:-0} >= DRILL_EVERY_HOURS * 3600)); then
    bash "$(dirname "$0")/backup-drill.sh" || true
  fi
  set_status SCHEDULER_ALIVE "$(utc_now)"
}

while true; do
  tick || true
  sleep 60 &
  wait $!
done
