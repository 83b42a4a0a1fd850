# shellcheck shell=bash
# A backup of the stage's database: pg_dump (custom format), written beside the data's own disk in
# <appDir>/backups (mode 700), checked with pg_restore --list before it counts, the newest kept.
# Sourcing it only defines functions. Needs lib/step.sh and lib/compose.sh.

# Custom format (one file, streamed to the host, that pg_restore checks) at gzip level 1, one job: the fastest of the
# settings measured at the same size (README, "Rollback against release"); uncompressed is faster but much larger
# (bytea dumps as hex), and a directory dump cannot stream to the host while its jobs only split work between tables.
DUMP_OPTIONS=(--format=custom --compress=1)

backups_dir() {
  echo "$APP_DIR/backups"
}

# Dumps the database to <appDir>/backups/NAME and prints what it did; a dump that lists no table never counts.
dump_database() {
  local name="$1" backups final size started entries seconds
  backups="$(backups_dir)"
  mkdir -p "$backups"
  chmod 700 "$backups"
  # A step killed outright leaves its partial dump behind; it is never mistaken for a backup.
  find "$backups" -maxdepth 1 -name '*.partial' -delete
  final="$backups/$name"
  PARTIAL_FILE="$final.partial"
  size="$(sql <<<"select pg_database_size(current_database());")"
  started="$EPOCHREALTIME"
  # shellcheck disable=SC2016 # expands in the container
  (umask 077 && compose exec -T postgres sh -c 'exec pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"' pg_dump \
    "${DUMP_OPTIONS[@]}" >"$PARTIAL_FILE")
  [[ -s "$PARTIAL_FILE" ]] || die "pg_dump wrote an empty backup"
  entries="$(compose exec -T postgres pg_restore --list <"$PARTIAL_FILE" | grep -c ' TABLE ' || true)"
  ((entries > 0)) || die "the backup lists no tables (pg_restore --list)"
  mv -f "$PARTIAL_FILE" "$final"
  PARTIAL_FILE=""
  seconds="$(awk -v from="$started" -v to="$EPOCHREALTIME" 'BEGIN { printf "%.1f", to - from }')"
  awk -v entries="$entries" -v size="$size" -v dump="$(stat -c %s "$final")" -v s="$seconds" \
    'BEGIN { printf "backed up %d tables: %.0f MB database, %.0f MB dump in %.1f s (%.0f MB/s)\n",
      entries, size / 1e6, dump / 1e6, s, size / 1e6 / (s > 0 ? s : 0.1) }'
  echo "backup=$final"
}

# Keeps the newest KEEP dumps.
prune_backups() {
  local keep="$1" backups name
  backups="$(backups_dir)"
  mapfile -t old < <(find "$backups" -maxdepth 1 -name '*.dump' -printf '%f\n' | sort -r | tail -n "+$((keep + 1))")
  for name in "${old[@]}"; do
    rm -f "$backups/$name"
  done
}
