# shellcheck shell=bash
# What both restores (bin/restore.sh from the repository, bin/restore-dump.sh from a release's pg_dump) do besides
# the restore itself: ask before changing anything, take the app out of traffic and bring it back, bring the
# migrations log in line with the restored database, and record the restore.
# Sourcing it only defines functions. Needs lib/step.sh, lib/live.sh and lib/compose.sh.

# After the plan was printed: stops there with --plan (PLAN_ONLY=yes), asks on a terminal unless --yes (CONFIRMED=yes).
confirm_plan() {
  [[ "$PLAN_ONLY" == no ]] || exit 0
  [[ "$CONFIRMED" != yes ]] || return 0
  [[ -r /dev/tty ]] || die "not confirmed: pass --yes to restore without asking; nothing was changed"
  read -r -p "restore as planned above? type yes: " answer </dev/tty
  [[ "$answer" == yes ]] || die "not confirmed; nothing was changed"
}

# Points the proxy at CONF (a colour, or `maintenance`: every request answers 503) and reloads it gracefully.
serve_from() {
  install -m 644 "$APP_DIR/proxy/$1.conf" "$APP_DIR/proxy/live.conf"
  reload_proxy >/dev/null
}

# Forgets the migrations applied after UNTIL (a UTC time; empty: keeps them all), since the restored database lacks
# them, and warns when the live version's own are among them: a release migrated after the restored point.
forget_migrations_after() {
  local until="$1"
  live_files
  if [[ -n "$until" && -f "$MIGRATIONS_LOG" ]]; then
    awk -v until="$until" '$3 <= until' "$MIGRATIONS_LOG" | replace_file "$MIGRATIONS_LOG" 644
  fi
  if [[ -z "$(awk -v image="$(live MIGRATE_IMAGE)" '$1 == image' "$MIGRATIONS_LOG" 2>/dev/null)" ]]; then
    echo "warning: $(live VERSION) serves, but its migrations ran after the restored point: roll back to the version before it (python -m runner --stack STACK rollback); releasing $(live VERSION) again later runs its migrations again" >&2
  fi
}

# Appends a line to <appDir>/restores.log: when, the target, what it restored from, where the data before it is.
record_restore() {
  local target="$1" source="$2" aside="$3"
  printf '%s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$target" "$source" "$aside" >>"$APP_DIR/restores.log"
}

# Whether COLOUR says it is healthy; a warning otherwise (the restore itself is done by then).
warn_unless_healthy() {
  local colour="$1" body
  body="$(curl --silent --max-time 5 "$(value_of "${colour^^}_HEALTH_URL" "$APP_DIR/$SETTINGS_FILE")" || true)"
  grep -q '"status" *: *"healthy"' <<<"$body" || echo "warning: $colour does not say it is healthy yet: ${body:-no answer}" >&2
}
