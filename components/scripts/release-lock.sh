#!/usr/bin/env bash
# The stage's release lock, for an operator on the server. Shows which release holds it, since when, the step
# it runs or ran last, who runs it, and whether a step of it still runs. With --free, frees the lock of a
# release that no step runs for any more (its runner was cancelled, or it died between two steps); a lock
# that a running step holds is never freed. A lock whose step died without ending, or that an update of the stage's
# stack handed on, needs no freeing before the next release: its step takes it over (lib/lock.sh).
#   bash <appDir>/bin/release-lock.sh [--free]
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
case "${1:-}" in
  "") free=no ;;
  --free) free=yes ;;
  *) die "usage: release-lock.sh [--free] (received '$*')" ;;
esac
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
lock_files

if [[ ! -f "$LOCK_HOLDER" ]]; then
  echo "the release lock of $APP_DIR is free"
  exit 0
fi
echo "the release lock of $APP_DIR is held by $(describe_lock_holder)"
# Every step, and any process it started, holds the mutex while it runs: taking it proves that none does.
exec 8>"$LOCK_MUTEX"
if ! flock -n 8; then
  die "a step runs now ($(value_of STEP "$LOCK_HOLDER"), pid $(value_of PID "$LOCK_HOLDER")); the lock is not freed"
fi
case "$(value_of STEP_STATE "$LOCK_HOLDER")" in
  running) echo "no step of that release runs: its step $(value_of STEP "$LOCK_HOLDER") died without ending, so the next release's step takes the lock over" ;;
  restoring) echo "no restore runs: one died without ending, and the database may be half-restored; run it again, or check the database before --free" ;;
  *)
    stack="$(value_of STACK "$LOCK_HOLDER")"
    echo "no step of that release runs${stack:+: a step of the next update of $stack takes the lock over, since that update begins only once this one is over}"
    ;;
esac
if [[ "$free" == yes ]]; then
  rm -f "$LOCK_HOLDER"
  echo "freed: the next release may start"
fi
