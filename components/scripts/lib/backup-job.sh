# shellcheck shell=bash
# What the backup scheduler and the restore drill share, inside the scheduler's container (run as root, each
# pgBackRest and PostgreSQL command as the postgres user): the schedule, the live database's socket and the status
# file. Sourcing it only defines functions (and the facts of lib/facts.sh).
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/facts.sh"

# The image's own way to drop to the postgres user: setpriv (Debian), su-exec (Alpine) or gosu.
as_postgres() {
  if command -v setpriv >/dev/null; then
    setpriv --reuid=postgres --regid=postgres --init-groups "$@"
  elif command -v su-exec >/dev/null; then
    su-exec postgres "$@"
  else
    gosu postgres "$@"
  fi
}

# pgBackRest on the stage's stanza (the installed config's one section besides [global]) as the postgres user, for at
# most SECONDS: job_pgbackrest SECONDS OPTION... COMMAND
job_pgbackrest() {
  local seconds="$1" stanza
  stanza="$(sed -n 's/^\[\(.*\)\]$/\1/p' "$BACKUP_CONFIG_DIR/pgbackrest.conf" | grep -v '^global$' | head -n 1)"
  as_postgres timeout "$seconds" pgbackrest --stanza="$stanza" "${@:2}"
}

# psql on the live database, over its socket, as its owner.
live_sql() {
  as_postgres psql -XAtq -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"
}

utc_now() {
  date -u +%Y-%m-%dT%H:%M:%SZ
}

# The schedule the database step installed, as variables of their own names.
schedule() {
  local key value
  for key in $BACKUP_SCHEDULE_KEYS; do
    value="$(sed -n "s/^$key=//p" "$BACKUP_CONFIG_DIR/schedule.env")"
    [[ "$value" =~ ^[0-9]+$ ]] || {
      echo "schedule.env: $key: allowed a number; received '$value'" >&2
      return 1
    }
    printf -v "$key" '%s' "$value"
  done
}

status_value() {
  local file="$BACKUP_STATUS_DIR/status.env"
  [[ -f "$file" ]] || return 0
  sed -n "s/^$1=//p" "$file" | tail -n 1
}

# Sets KEY=VALUE in the status file, replaced whole, under a lock: the scheduler and an operator's backup-status.sh
# may write at once.
set_status() {
  local key="$1" value="${2//$'\n'/ }" file="$BACKUP_STATUS_DIR/status.env"
  mkdir -p "$BACKUP_STATUS_DIR"
  (
    flock 9
    { grep -v "^$key=" "$file" 2>/dev/null || true; printf '%s=%s\n' "$key" "$value"; } >"$file.partial"
    mv -f "$file.partial" "$file"
  ) 9>"$file.lock"
}

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

# Reads the repository into FULL_AT, NEWEST_AT (epochs; 0: none) and the status' NEWEST_BACKUP. Fails when the
# repository does not answer, which is no reason for a backup.
scan() {
  local type label at found
  FULL_AT=0 NEWEST_AT=0
  found="$(backups 2>&1)" || {
    set_status REPOSITORY "not answering at $(utc_now): $(tr '\n' ' ' <<<"$found" | cut -c1-300)"
    return 1
  }
  set_status REPOSITORY "answering at $(utc_now)"
  # None yet (the first full one still running), or none left: the status says none, not a blank.
  [[ -n "$found" ]] || {
    set_status NEWEST_BACKUP ""
    return 0
  }
  # shellcheck disable=SC2034 # FULL_AT and NEWEST_AT are the scheduler's
  while read -r type label at; do
    [[ "$type" != full ]] || FULL_AT="$at"
    NEWEST_AT="$at"
    set_status NEWEST_BACKUP "$label $(date -u -d "@$at" +%Y-%m-%dT%H:%M:%SZ)"
  done <<<"$found"
}

# A base backup of TYPE (full or diff) now, as the schedule or an operator asks: its result goes to the status file
# (LAST_BACKUP, NEWEST_BACKUP) and is said; a failed one fails.
backup() {
  local type="$1" said
  if said="$(job_pgbackrest 21600 --type="$type" backup 2>&1)"; then
    set_status LAST_BACKUP "$type ok at $(utc_now)"
    scan || true
    echo "a $type backup was taken"
  else
    said="$(tr '\n' ' ' <<<"$said" | cut -c1-400)"
    set_status LAST_BACKUP "$type FAILED at $(utc_now): $said"
    scan || true
    echo "the $type backup failed: $said" >&2
    return 1
  fi
}
