# shellcheck shell=bash
# The stage's continuous backups (issue 18): pgBackRest in the database's own image, archiving every WAL segment to a
# repository off the server, its config in the `backup-config` volume (installed by the database step), one stanza
# per stage named after the compose project. Every command here runs in a container of the postgres service, as the
# postgres user: the running one, or a one-off one when PostgreSQL is stopped (restore).
#   <appDir>/restore-points.log  every restore point a release marked: "NAME VERSION UTC-TIME"
#   <appDir>/restores.log        every restore: "UTC-TIME TARGET SET ASIDE"
#   <appDir>/postgres.env        the PostgreSQL image the database step runs (POSTGRES_IMAGE=...)
#   <appDir>/.backups-checked    what the database step last checked archiving with (backups_checked_file)
# Sourcing it only defines functions. Needs lib/step.sh and lib/compose.sh.

# pgBackRest in the running database container. A repository that does not answer (a name that does not resolve)
# can keep pgBackRest waiting far longer than its io-timeout: every call is bounded (PGBR_TIMEOUT seconds).
pgbr() {
  compose exec -T --user postgres postgres timeout "${PGBR_TIMEOUT:-120}" pgbackrest --stanza="$PROJECT" "$@"
}

# pgBackRest in a container of its own from the database's image, with the database's volumes: PostgreSQL may be
# stopped, or its data gone. Its options for this run follow `--`.
pgbr_alone() {
  POSTGRES_IMAGE="$(postgres_image)" compose run --rm --no-deps -T --user postgres --entrypoint timeout postgres \
    "${PGBR_TIMEOUT:-120}" pgbackrest --stanza="$PROJECT" "$@"
}

# A shell in such a container, as the postgres user, for work on the data volume while PostgreSQL is stopped.
postgres_shell() {
  POSTGRES_IMAGE="$(postgres_image)" compose run --rm --no-deps -T --user postgres --entrypoint sh postgres -c "$@"
}

postgres_image() {
  local image
  image="$(value_of POSTGRES_IMAGE "$APP_DIR/postgres.env")"
  [[ -n "$image" ]] || die "$APP_DIR/postgres.env names no PostgreSQL image: the database step writes it"
  echo "$image"
}

# Installs the config the database step received on stdin (a base64 tar: pgbackrest.conf, schedule.env, ca.pem)
# into the backup-config volume, through the running database container: each file whole, pgbackrest.conf readable
# by the postgres user only.
install_backup_config() {
  local bundle="$1" staged file mode
  staged="$(mktemp -d)"
  # shellcheck disable=SC2064 # the folder is known now
  trap "rm -rf '$staged'" RETURN
  base64 -d <<<"$bundle" | tar -x --no-same-owner -f - -C "$staged"
  [[ -s "$staged/pgbackrest.conf" && -s "$staged/schedule.env" ]] || die "backups: the config received on stdin is incomplete"
  [[ -f "$staged/ca.pem" ]] || compose exec -T --user root postgres rm -f "$BACKUP_CONFIG_DIR/ca.pem"
  for file in pgbackrest.conf schedule.env ca.pem; do
    [[ -f "$staged/$file" ]] || continue
    mode=644
    [[ "$file" != pgbackrest.conf ]] || mode=600
    # shellcheck disable=SC2016 # expands in the container
    compose exec -T --user root postgres sh -c 'umask 077 && cat >"$1.partial" && chown postgres:postgres "$1.partial" &&
      chmod "$2" "$1.partial" && mv -f "$1.partial" "$1"' sh "$BACKUP_CONFIG_DIR/$file" "$mode" <"$staged/$file"
  done
}

# A value of the schedule the database step installed.
schedule_value() {
  compose exec -T postgres sh -c "sed -n 's/^$1=//p' $BACKUP_CONFIG_DIR/schedule.env"
}

# PostgreSQL's archive_timeout as the installed schedule declares it. ALTER SYSTEM keeps it in the data (a restore
# brings back the backup's: restore.sh sets it again); the reload applies it.
set_archive_timeout() {
  sql -v seconds="$(schedule_value ARCHIVE_TIMEOUT_SECONDS)" >/dev/null <<'SQL'
ALTER SYSTEM SET archive_timeout = :'seconds';
SELECT pg_reload_conf();
SQL
}

# Marks a named restore point and makes sure the WAL up to it is in the repository. One session closes the segment that
# holds the point (pg_switch_wal) and watches PostgreSQL's archiver until that segment's .ready status file is gone
# (archive_command, pgBackRest's archive-push, returned 0: it is in the repository) or the archiver fails. pgBackRest's
# `check` proves the same by listing the repository, a second more; it runs only when the archiver did not confirm in
# time, to say why. Prints what pgBackRest said and fails when the repository cannot take the WAL.
mark_restore_point() {
  local name="$1" seconds=30 said
  sql -v name="$name" -v seconds="$seconds" >/dev/null 2>&1 <<'SQL' && return 0
SELECT pg_create_restore_point(:'name');
SELECT set_config('kametrix.since', clock_timestamp()::text, false),
  set_config('kametrix.deadline', (clock_timestamp() + make_interval(secs => :'seconds'))::text, false);
SELECT set_config('kametrix.segment', pg_walfile_name(pg_switch_wal()), false);
DO $$
DECLARE
  segment text := current_setting('kametrix.segment');
BEGIN
  -- A field of it, not the row: a row IS NOT NULL only when every field is, and `creation` is NULL on Linux.
  WHILE (pg_stat_file('pg_wal/archive_status/' || segment || '.ready', true)).modification IS NOT NULL LOOP
    PERFORM pg_stat_clear_snapshot();
    IF (SELECT last_failed_time >= current_setting('kametrix.since')::timestamptz FROM pg_stat_archiver) THEN
      RAISE EXCEPTION 'the archiver failed to archive WAL segment %', segment;
    END IF;
    IF clock_timestamp() > current_setting('kametrix.deadline')::timestamptz THEN
      RAISE EXCEPTION 'WAL segment % was not archived in time', segment;
    END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
END
$$;
SQL
  said="$(pgbr --io-timeout=10 --archive-timeout="$seconds" check 2>&1)" && return 0
  printf '%s\n' "$said" | grep -v '^$'
  return 1
}

restore_points_log() {
  echo "$APP_DIR/restore-points.log"
}

# What the database step last checked archiving with (a SHA-256; mode 600: the config it hashes holds keys).
backups_checked_file() {
  echo "$APP_DIR/.backups-checked"
}

# Each user table with its row count, "schema.table count" a line, in one snapshot: what restore and the drill print
# and compare.
table_counts() {
  sql <<'SQL'
select format('%s.%s', table_schema, table_name),
  (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', table_schema, table_name),
    false, true, '')))[1]::text
from information_schema.tables
where table_type = 'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema')
order by 1;
SQL
}
