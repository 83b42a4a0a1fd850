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

tick() {
  local now drill_at
  now="$(date +%s)"
  schedule
  if scan; then
    if ((now - FULL_AT >= FULL_EVERY_HOURS * 3600)); then
      backup full || true
    elif ((now - NEWEST_AT >= DIFF_EVERY_HOURS * 3600)); then
      backup diff || true
    fi
  fi
  drill_at="$(status_value LAST_DRILL_EPOCH)"
  if ((NEWEST_AT > 0 && now - ${drill_at:-0} >= DRILL_EVERY_HOURS * 3600)); then
    bash "$(dirname "$0")/backup-drill.sh" || true
  fi
  set_status SCHEDULER_ALIVE "$(utc_now)"
}

# PostgreSQL's checkpointer honours archive_timeout only from its first wake-up after PostgreSQL started: until then
# it sleeps a whole checkpoint_timeout (5 min by default), and a server lost meanwhile loses that much. A reload wakes
# it, once per start of PostgreSQL (a restart, dockerd's, the host's). Fails while PostgreSQL does not answer.
wake_checkpointer() {
  local started
  started="$(live_sql -c 'select pg_postmaster_start_time()' 2>/dev/null)" || return 1
  [[ "$started" != "$(status_value POSTGRES_STARTED)" ]] || return 0
  live_sql -c 'select pg_reload_conf()' >/dev/null && set_status POSTGRES_STARTED "$started"
}

while true; do
  tick || true
  for ((waited = 0; waited < 60; waited += 5)); do
    wake_checkpointer || true
    sleep 5 &
    wait $!
  done
done
