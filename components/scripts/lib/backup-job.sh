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

# Sets KEY=VALUE in the status file, replaced whole.
set_status() {
  local key="$1" value="${2//$'\n'/ }" file="$BACKUP_STATUS_DIR/status.env"
  mkdir -p "$BACKUP_STATUS_DIR"
  { grep -v "^$key=" "$file" 2>/dev/null || true; printf '%s=%s\n' "$key" "$value"; } >"$file.partial"
  mv -f "$file.partial" "$file"
}
