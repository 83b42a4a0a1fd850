#!/usr/bin/env bash
# Break-glass restore of the stage's database from its backup repository (pgBackRest), on the server itself or
# through `python -m runner --stack S restore`:
#   bash <appDir>/bin/restore.sh (--latest | --time 2026-12-02T03:00:00Z | --before-release v1.4.3) [--yes] [--plan]
# Under the release lock (in the live release's name): reads the repository first and stops, changing nothing, if it
# cannot (unreachable, wrong key, no backup before the target); prints its plan and asks (--yes: don't ask; --plan:
# only print it). Then restores into a folder of the data volume while PostgreSQL still runs, takes the app out of
# traffic (the proxy answers 503 from proxy/maintenance.conf), stops PostgreSQL, sets the current data aside in the
# volume (.kametrix/aside-<time>, never deleted here, never in a backup), puts the restored data in its place and
# starts PostgreSQL, which replays the WAL up to the target and promotes. It checks the result (tables and row
# counts), lets the live colour log in again and brings the app back. Any failure before that puts everything back.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
# shellcheck source=lib/pgbackrest.sh
source "$(dirname "$0")/lib/pgbackrest.sh"
# shellcheck source=lib/restoring.sh
source "$(dirname "$0")/lib/restoring.sh"

usage="usage: restore.sh (--latest | --time YYYY-MM-DDTHH:MM:SSZ | --before-release VERSION) [--yes] [--plan]"
target="" value="" CONFIRMED=no PLAN_ONLY=no
while (($# > 0)); do
  case "$1" in
    --latest) target=${target:+twice} target=${target:-latest} ;;
    --time | --before-release)
      (($# >= 2)) || die "$usage ($1 has no value)"
      target=${target:+twice} target=${target:-${1#--}} value="$2"
      shift
      ;;
    --yes) CONFIRMED=yes ;;
    --plan) PLAN_ONLY=yes ;;
    *) die "$usage (unknown argument '$1')" ;;
  esac
  shift
done
[[ -n "$target" && "$target" != twice ]] || die "$usage (name exactly one of ${RESTORE_TARGETS// /, })"
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
read_settings
declare -gA FLAGS=([app-dir]="$APP_DIR" [project]="$PROJECT")
begin_step
[[ -n "$(live VERSION)" ]] || die "no release is recorded in $APP_DIR/release.env: release the stage first, then restore"

# What pgBackRest is told, and the time the target stands for (empty: the end of the archive, where PostgreSQL
# promotes by itself; a target of a type needs --target-action).
restore_options=()
until=""
case "$target" in
  latest) described="the latest: every transaction the repository holds" ;;
  time)
    require_match time "$value" "$UTC_TIME_PATTERN" "a UTC time like 2026-12-02T03:00:00Z"
    until="$value"
    # pgBackRest 2.45 reads the zone from the time itself (no --target-timezone yet).
    at="${value/T/ }"
    restore_options+=(--type=time "--target=${at%Z}+00" --target-action=promote)
    described="as it was at $value"
    ;;
  before-release)
    require_version before-release "$value"
    read -r point _ until < <(awk -v v="$value" '$2 == v' "$(restore_points_log)" 2>/dev/null | tail -n 1) || true
    [[ -n "${point:-}" ]] ||
      die "no restore point of $value is recorded in $(restore_points_log); restore to a time instead (--time)"
    restore_options+=(--type=name "--target=$point" --target-action=promote)
    described="just before $value migrated (restore point $point, $until)"
    ;;
esac

acquire_release_lock "$(live_release)" restore restoring
# Nothing changes before the repository has answered with a backup to start from.
if ! info="$(pgbr_alone --io-timeout=10 info 2>&1)" || ! grep -q '^ *status: ok' <<<"$info"; then
  die "the backup repository cannot be read, so nothing was restored and nothing on the server changed: $(grep -E 'status|ERROR|Error' <<<"$info" | tr -s ' ' | paste -sd ' ')"
fi
# The newest backup that ended before the target: "LABEL STOP-TIME" (pgBackRest's text info, oldest first).
backup_set="$(awk -v until="${until/T/ }" '
  / backup: / { label = $NF }
  /timestamp start\/stop/ { stop = $(NF - 1) " " $NF; if (until == "" || stop < until) { found = label " " stop } }
  END { print found }' <<<"$info")"
[[ -n "$backup_set" ]] || die "the repository holds no backup that ended before $until; nothing was changed"
[[ "$target" != before-release ]] || restore_options+=("--set=${backup_set%% *}")

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
data=/var/lib/postgresql/data
restored="$data/.kametrix/restore-$stamp" aside="$data/.kametrix/aside-$stamp"
colour="$(live LIVE_COLOUR)"
cat <<PLAN
restore plan for $PROJECT ($APP_DIR):
  restore the database $described
  from backup ${backup_set%% *} (ended ${backup_set#* } UTC) and the WAL after it, in the repository of stanza $PROJECT
  the app ($(live VERSION) on $colour) answers 503 while PostgreSQL is replaced; it keeps its version
  the current data is kept aside in the data volume: ${aside#"$data/"}
PLAN
confirm_plan

# The restored data, next to the live data, in the same volume: PostgreSQL still serves while it is fetched.
started="$EPOCHREALTIME"
postgres_shell "mkdir -p -m 700 '$data/.kametrix' '$restored'"
UNDO=remove_restored
remove_restored() {
  postgres_shell "rm -rf '$restored'" || true
}
# pgBackRest writes its own restore_command naming the folder it restored into; the restored data moves.
PGBR_TIMEOUT=21600 pgbr_alone --pg1-path="$restored" "--recovery-option=restore_command=pgbackrest --stanza=$PROJECT archive-get %f \"%p\"" \
  "${restore_options[@]}" restore
echo "fetched the backup and set it up for recovery in $(awk -v from="$started" -v to="$EPOCHREALTIME" 'BEGIN { printf "%.1f", to - from }') s"

swapped=no
# Runs with errexit off (lib/step.sh): says only what it did.
put_back() {
  echo "the restore did not finish: putting the data that served back" >&2
  compose stop "$SCHEDULER_SERVICE" postgres >/dev/null 2>&1
  if [[ "$swapped" == yes ]] && ! postgres_shell "cd '$data' && find . -mindepth 1 -maxdepth 1 ! -name .kametrix \
    -exec rm -rf {} + && find '$aside' -mindepth 1 -maxdepth 1 -exec mv {} . \; && rmdir '$aside'"; then
    echo "the data that served could not be put back: it is in the data volume at ${aside#"$data/"}; move it to the volume's top by hand, then start PostgreSQL" >&2
    return 1
  fi
  remove_restored
  if POSTGRES_IMAGE="$(postgres_image)" compose up --detach --no-deps --wait --wait-timeout 120 postgres \
    "$SCHEDULER_SERVICE" && serve_from "$colour"; then
    echo "the data is as it was before the restore, and $colour serves it again" >&2
  else
    echo "the data that served is in place, but PostgreSQL or the proxy did not start again (docker compose ps): the app may still answer 503" >&2
  fi
}
UNDO=put_back
serve_from maintenance
echo "the app is out of traffic: the proxy answers 503"
down="$EPOCHREALTIME"
# Nothing writes now: the WAL up to this moment goes to the repository, so the latest restore loses nothing of it.
if [[ -n "$(compose ps --quiet postgres 2>/dev/null)" ]]; then
  if pgbr --archive-timeout=60 check >/dev/null 2>&1; then
    echo "the WAL up to this moment is archived"
  else
    echo "warning: the WAL written last could not be archived: the restore ends at what the repository holds" >&2
  fi
fi
compose stop "$SCHEDULER_SERVICE" postgres >/dev/null 2>&1
swapped=yes
postgres_shell "cd '$data' && mkdir -m 700 '$aside' &&
  find . -mindepth 1 -maxdepth 1 ! -name .kametrix -exec mv {} '$aside' \; &&
  find '$restored' -mindepth 1 -maxdepth 1 -exec mv {} . \; && rmdir '$restored'"
POSTGRES_IMAGE="$(postgres_image)" compose up --detach --no-deps --wait --wait-timeout 600 postgres >/dev/null 2>&1
for ((waited = 0; ; waited++)); do
  [[ "$(sql <<<'select pg_is_in_recovery();' 2>/dev/null || true)" != f ]] || break
  ((waited < 600)) || die "PostgreSQL did not finish its recovery within 600 s (docker compose logs postgres)"
  sleep 1
done
echo "PostgreSQL recovered and promoted; the tables it holds, with their rows:"
table_counts | awk -F'|' '{ printf "  %-40s %s\n", $1, $2 }'
ensure_login_roles
allow_login "$colour" "$APP_DIR/.env.$colour"
POSTGRES_IMAGE="$(postgres_image)" compose up --detach --no-deps "$SCHEDULER_SERVICE" >/dev/null 2>&1 || true
serve_from "$colour"
UNDO=""
warn_unless_healthy "$colour"
# The restored data holds the backup's postgresql.auto.conf, and its WAL goes on from a new timeline.
set_archive_timeout
if pgbr --io-timeout=10 --archive-timeout=30 check >/dev/null 2>&1; then
  echo "the restored database archives its WAL to the repository again"
else
  echo "warning: the restored database's WAL does not reach the repository (pgbackrest check): the next release says why" >&2
fi
# What the restored database holds of the migrations: a release migrated after the target runs them again.
forget_migrations_after "$until"
record_restore "$target${value:+:$value}" "${backup_set%% *}" "${aside#"$data/"}"
release_release_lock
awk -v from="$down" -v to="$EPOCHREALTIME" \
  'BEGIN { printf "restored; the app was out of traffic for %.1f s\n", to - from }'
echo "the data from before the restore is kept in the data volume at ${aside#"$data/"}: remove it once you are sure"
