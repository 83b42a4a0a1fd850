#!/usr/bin/env bash
# Keeps the stage's PostgreSQL as the stack declares it, as an operation of its own: never as a side effect of a
# backup or a migration. Starts it when it does not run; when its image changed, backs the database up first,
# replaces the container (the database is down while the new one starts: the step says for how long) and, if the
# new one is not installed (never healthy, or dockerd restarted meanwhile), puts the old one back. Then makes sure
# the app's login roles exist.
# With --backups (how PostgreSQL reaches its repository; `none`: no repository): the image must hold pgBackRest;
# pgBackRest's config arrives on stdin (it holds the repository's keys) and is installed for the database and its
# scheduler (lib/pgbackrest.sh); PostgreSQL archives every WAL segment there, and is recreated (its downtime said)
# when it does not yet reach the repository as declared.
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
parse_flags database.sh "$DATABASE_FLAGS" "$@"
begin_step
read_settings
image="${FLAGS[postgres-image]}" backups="${FLAGS[backups]}"
[[ "$image" =~ ^[a-z0-9][a-z0-9._:/@-]*$ ]] || die "postgres-image: allowed an image reference; received '$image'"
[[ "$backups" == none || "$backups" =~ ^[0-9a-f]{16}$ ]] || die "backups: allowed none or a fingerprint; received '$backups'"
backup_config=""
if [[ "$backups" != none ]]; then
  backup_config="$(cat)"
  [[ -n "$backup_config" ]] || die "backups are declared but no pgBackRest config came on stdin"
fi

# Recreates PostgreSQL with IMAGE and waits until it is healthy; fails if it does not turn healthy.
start_postgres() {
  POSTGRES_IMAGE="$1" compose up --detach --no-deps --force-recreate --wait --wait-timeout 120 postgres
}

# Recreates PostgreSQL with the declared image, puts the running one back if it fails, and says how long the database
# was down.
replace_postgres() {
  local started="$EPOCHREALTIME"
  UNDO=put_back
  start_postgres "$image"
  UNDO=""
  awk -v from="$started" -v to="$EPOCHREALTIME" -v image="$image" \
    'BEGIN { printf "PostgreSQL %s serves; the database was down for %.1f s\n", image, to - from }'
}

# The undo of a replace: the old PostgreSQL back. What failed may be dockerd itself restarting (a host's restart
# does that), which starts again no container it was replacing: wait for it.
put_back() {
  local attempt
  echo "PostgreSQL $image was not installed; putting $running back" >&2
  for attempt in 1 2 3; do
    if await_docker && start_postgres "$running"; then
      echo "PostgreSQL $running serves again; $image was not installed" >&2
      return 0
    fi
    echo "putting PostgreSQL $running back failed (attempt $attempt of 3)" >&2
    sleep 2
  done
  return 1
}

# A PostgreSQL that does not run is started first, so that a backup before a change can be taken: as it is, or, when
# a replace that did not end left it created from another image than the one this step last installed
# (postgres.env), with that one.
start_stopped_postgres() {
  local created installed
  created="$(docker inspect --format '{{.Config.Image}}' "$container")"
  installed="$(value_of POSTGRES_IMAGE "$APP_DIR/postgres.env")"
  if [[ -z "$installed" || "$installed" == "$created" ]]; then
    POSTGRES_IMAGE="$created" compose up --detach --no-deps --no-recreate --wait --wait-timeout 120 postgres >/dev/null
    echo "PostgreSQL $created did not run: started it as it was"
  else
    pull_missing "$installed"
    start_postgres "$installed"
    echo "PostgreSQL did not run, left created from $created by a replace that did not end: started $installed, the image last installed"
  fi
}

acquire_stage_lock database
container="$(database_container)"
if [[ -n "$container" && "$(docker inspect --format '{{.State.Status}}' "$container")" != running ]]; then
  start_stopped_postgres
  container="$(database_container)"
fi
running="$([[ -z "$container" ]] || docker inspect --format '{{.Config.Image}}' "$container")"
pull_missing "$image"
# An image change is other bytes, not another name for the same ones (a tag pinned by its digest, say).
same_bytes=no
[[ -z "$container" || "$(docker inspect --format '{{.Image}}' "$container")" != "$(docker image inspect --format '{{.Id}}' "$image")" ]] ||
  same_bytes=yes
# How the running PostgreSQL reaches its repository ("" before backups, like none).
reaches="$([[ -z "$container" ]] || docker inspect --format "{{index .Config.Labels \"$BACKUP_LABEL\"}}" "$container")"
# A PostgreSQL that already runs these bytes archiving as declared was created by this step, once they passed.
if [[ "$backups" != none && ! ("$same_bytes" == yes && "$reaches" == "$backups") ]] &&
  ! docker run --rm --entrypoint pgbackrest "$image" version >/dev/null 2>&1; then
  die "the PostgreSQL image $image has no pgBackRest, which the stack's backup section needs; allowed: an image with pgbackrest on its PATH, as the program builds from components/database/Dockerfile on app.postgresImage where backup is declared; nothing was changed"
fi
if [[ -z "$running" ]]; then
  POSTGRES_IMAGE="$image" compose up --detach --no-deps --wait --wait-timeout 120 postgres
  echo "PostgreSQL $image started"
elif [[ "$same_bytes" == no ]]; then
  echo "PostgreSQL changes from $running to $image: backing up first"
  dump_database "$(date -u +%Y%m%dT%H%M%SZ)-before-postgres-change.dump"
  replace_postgres
elif [[ "${reaches:-none}" != "$backups" ]]; then
  # archive_mode, the repository's network and name take a new container: the data stays in its volume.
  [[ "$backups" == none ]] || echo "PostgreSQL restarts to archive its WAL to the backup repository as declared"
  replace_postgres
else
  if [[ "$(docker inspect --format '{{.State.Health.Status}}' "$container")" != healthy ]]; then
    POSTGRES_IMAGE="$running" compose up --detach --no-deps --no-recreate --wait --wait-timeout 120 postgres >/dev/null
  fi
  echo "PostgreSQL $image runs"
fi
printf 'POSTGRES_IMAGE=%s\n' "$image" | replace_file "$APP_DIR/postgres.env" 644
ensure_login_roles
[[ "$backups" != none ]] || exit 0

# The running PostgreSQL's backups as last checked: its container, the config received and the compose file (which
# defines the scheduler). The same again needs no install and no check: those cost seconds on every release.
stamped="$(cat "$(backups_checked_file)" 2>/dev/null || true)"
backups_stamp="$({ database_container && printf '%s\n' "$backup_config" && cat "$APP_DIR/docker-compose.yml"; } | sha256sum)"
stamped_as_checked=""
if [[ "$stamped" == "${backups_stamp%% *}" ]]; then
  stamped_as_checked=yes
  echo "backups: PostgreSQL archives with the config last checked (stanza $PROJECT); not checked again"
else
  rm -f "$(backups_checked_file)"
  install_backup_config "$backup_config"
  set_archive_timeout
  # An unreachable repository never stops this step: a release without migrations goes on, the backup step decides.
  if created="$(pgbr --io-timeout=10 stanza-create 2>&1)" && checked="$(pgbr --io-timeout=10 --archive-timeout=30 check 2>&1)"; then
    echo "backups: every WAL segment is archived to the backup repository (stanza $PROJECT checked)"
    printf '%s\n' "${backups_stamp%% *}" | replace_file "$(backups_checked_file)" 600
  else
    echo "warning: the backup repository does not take this database's WAL yet: ${created:-} ${checked:-}" | tr '\n' ' ' >&2
    echo >&2
  fi
fi
# The scheduler takes the first full backup at once, then keeps the schedule (bin/backup-scheduler.sh). Checked as
# above, its definition is the one it runs: it needs starting only when it does not run.
if [[ -z "$stamped_as_checked" || -z "$(service_container "$SCHEDULER_SERVICE")" ]]; then
  POSTGRES_IMAGE="$image" compose up --detach --no-deps "$SCHEDULER_SERVICE" 2>&1 | grep -v '^ *Container .* Running$' >&2 || true
fi
