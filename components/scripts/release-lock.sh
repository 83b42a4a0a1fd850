#!/usr/bin/env bash
# The stage's release lock, for an operator on the server and for the runner. Shows which release holds it, since
# when, the step it runs or ran last, who runs it, and whether a step of it still runs. With --free, frees the lock of
# a release that no step runs for any more (its runner was cancelled, or it died between two steps); a lock that a
# running step holds is never freed. A lock whose step died without ending, or that an update of the stage's stack
# handed on, needs no freeing before the next release: its step takes it over (lib/lock.sh).
#   bash <appDir>/bin/release-lock.sh [--free]
# For the runner: --fields prints the lock as KEY=VALUE lines (RELEASE, STACK, STEP, STEP_STATE; STEP_RUNS=yes|no),
# the release that serves (LIVE_RELEASE), and whether the stage's PostgreSQL runs (DATABASE_RUNS=yes|no; empty before
# the first files step), which only the database step starts: a release does not run it;
# --end-update STACK gives back, once an update of STACK is over, a lock that update left with no step running (a
# step killed outright, or a lock handed on to an `up` the update did not run), and says why `up` was awaited.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
usage="usage: release-lock.sh [--free | --fields | --end-update STACK] (received '$*')"
action="${1:-show}" ended=""
case "$action" in
  show | --free | --fields) (($# <= 1)) || die "$usage" ;;
  --end-update)
    (($# == 2)) || die "$usage"
    ended="$2"
    require_match stack "$ended" "$STACK_PATTERN" "<project>/<stack>@<12 hex of its state>"
    ;;
  *) die "$usage" ;;
esac
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
lock_files
# Every step, and any process it started, holds the mutex while it runs: taking it proves that none does.
exec 8>"$LOCK_MUTEX"
step_runs=no
flock -n 8 || step_runs=yes

case "$action" in
  --fields)
    for key in RELEASE STACK STEP STEP_STATE; do
      echo "$key=$(value_of "$key" "$LOCK_HOLDER")"
    done
    echo "STEP_RUNS=$step_runs"
    echo "LIVE_RELEASE=$(live_release)"
    database_runs=""
    if [[ -f "$APP_DIR/$SETTINGS_FILE" ]]; then
      # In a subshell: settings that fail their check leave the answer empty, the lock's fields stay readable.
      database_runs="$(
        read_settings
        if [[ -n "$(service_container postgres)" ]]; then echo yes; else echo no; fi
      )" || database_runs=""
    fi
    echo "DATABASE_RUNS=$database_runs"
    exit 0
    ;;
  --end-update)
    [[ -f "$LOCK_HOLDER" && "$(value_of STACK "$LOCK_HOLDER")" == "$ended" && "$step_runs" == no ]] || exit 0
    held="$(value_of STEP_STATE "$LOCK_HOLDER")"
    [[ "$held" != restoring ]] || exit 0
    echo "the update of $ended is over; giving back the release lock it left: $(describe_lock_holder)"
    if [[ "$held" == handed-on ]]; then
      # The settings (the proxy's address) are read for the reason alone, in its subshell: the lock goes back anyway.
      echo "its last step awaited an up that did not come: $(
        [[ ! -f "$APP_DIR/$SETTINGS_FILE" ]] || read_settings
        up_work "$(value_of RELEASE "$LOCK_HOLDER")"
      )"
    fi
    rm -f "$LOCK_HOLDER"
    exit 0
    ;;
esac

if [[ ! -f "$LOCK_HOLDER" ]]; then
  echo "the release lock of $APP_DIR is free"
  exit 0
fi
echo "the release lock of $APP_DIR is held by $(describe_lock_holder)"
[[ "$step_runs" == no ]] ||
  die "a step runs now ($(value_of STEP "$LOCK_HOLDER"), pid $(value_of PID "$LOCK_HOLDER")); the lock is not freed"
case "$(value_of STEP_STATE "$LOCK_HOLDER")" in
  running) echo "no step of that release runs: its step $(value_of STEP "$LOCK_HOLDER") died without ending, so the next release's step takes the lock over" ;;
  restoring) echo "no restore runs: one died without ending, and the database may be half-restored; run it again, or check the database before --free" ;;
  *)
    stack="$(value_of STACK "$LOCK_HOLDER")"
    echo "no step of that release runs${stack:+: a step of the next update of $stack takes the lock over, since that update begins only once this one is over}"
    ;;
esac
if [[ "$action" == --free ]]; then
  rm -f "$LOCK_HOLDER"
  echo "freed: the next release may start"
fi
