# shellcheck shell=bash
# The release lock: from an update's first step to the end of its `up`, no step of anyone else runs.
#   <appDir>/.release-lock        who holds it: RELEASE (empty for a stage step: files, env, database), STACK (the stack whose update sent the step, with its state:
#                                 <project>/<stack>@<id>; empty for a break-glass script), SINCE, STEP, STEP_STATE (running; restoring; or handed-on once
#                                 it ended and the release's next step may come), PID, BY, REQUESTED_BY; its mtime is
#                                 the release's last sign of life
#   <appDir>/.release-lock.mutex  flock held by every running step (and what it starts): one step at a time
# Sourcing it only defines functions. Needs lib/step.sh (and, for the handover, lib/live.sh).

lock_files() {
  LOCK_HOLDER="$APP_DIR/.release-lock"
  LOCK_MUTEX="$APP_DIR/.release-lock.mutex"
}

# Who runs this step: the login and, over SSH, the address it came from.
step_runner() {
  local login
  login="$(id -un)"
  if [[ -n "${SSH_CONNECTION:-}" ]]; then
    echo "$login via ssh from ${SSH_CONNECTION%% *}"
  else
    echo "$login on $(uname -n)"
  fi
}

# One line naming the holder of the release lock, for messages.
describe_lock_holder() {
  local now since active requested sent_by release
  lock_files
  [[ -f "$LOCK_HOLDER" ]] || {
    echo "no release recorded in $LOCK_HOLDER"
    return 0
  }
  now="$(date +%s)" since="$(value_of SINCE "$LOCK_HOLDER")" active="$(stat -c %Y "$LOCK_HOLDER")"
  requested="$(value_of REQUESTED_BY "$LOCK_HOLDER")" sent_by="$(value_of STACK "$LOCK_HOLDER")"
  release="$(value_of RELEASE "$LOCK_HOLDER")"
  release="${release:+release $release}"
  printf '%s%s%s, step %s (pid %s, %s) run by %s, holding the lock since %s (last active %ss ago)' \
    "${release:-the stage steps}" "${sent_by:+ (an update of $sent_by)}" "${requested:+ requested by $requested}" \
    "$(value_of STEP "$LOCK_HOLDER")" "$(value_of PID "$LOCK_HOLDER")" \
    "$(value_of STEP_STATE "$LOCK_HOLDER" | sed 's/^$/handed-on/')" "$(value_of BY "$LOCK_HOLDER")" \
    "$(date -u -d "@${since:-0}" +%Y-%m-%dT%H:%M:%SZ)" "$((now - active))"
}

# Takes the release lock for a step of an update of the stage's stack and state (STACK, from the settings file):
# RELEASE's STEP.
acquire_update_lock() {
  acquire_release_lock "$1" "$2" running "$STACK"
}

# Takes the release lock for STEP, a stage step of an update (files, env, database): it names no release, so that a
# new version runs none of them.
acquire_stage_lock() {
  acquire_release_lock "" "$1" running "$STACK"
}

# Takes the release lock for RELEASE (or continues it) and names STEP as running (STATE: running, or restoring for
# bin/restore.sh; SENT_BY: the stack whose update sent the step, empty for a break-glass script; RELEASE: empty for a
# stage step). A step continues the lock of its own release, and a lock a step of its stack handed on to it: by a
# stage step, or by a step of its release. A step of another release waits up to STEP_WAIT_SECONDS for a running
# step, then takes over a lock whose step died without ending (no step holds the mutex, yet it never ended: killed
# outright or the server restarted), since its update got that step's failure and sends no further step. Any other
# lock handed on is taken over at once by a step from the same stack and state: Pulumi runs one update of a state at
# a time, so the update that handed it on is over (killed between two steps, or it failed where the server could not
# see it). Anyone else is refused while that release shows signs of life within LOCK_TIMEOUT_SECONDS (settings
# file), and takes it over once older. A restore that died without ending may have left the database half-restored:
# only another restore continues it; every release step is refused until an operator frees the lock.
acquire_release_lock() {
  local release="$1" step="$2" state="${3:-running}" sent_by="${4:-}" wait_seconds="${LOCK_WAIT_SECONDS:-$STEP_WAIT_SECONDS}"
  local since held holder_release starting="${1:-the stage step $2}"
  [[ -z "$release" && -n "$sent_by" ]] || require_release "$release"
  lock_files
  exec 8>"$LOCK_MUTEX"
  if ! flock -w "$wait_seconds" 8; then
    die "another step has been running for over ${wait_seconds}s ($(describe_lock_holder)); refusing to start $starting"
  fi
  since="$(date +%s)"
  if [[ -f "$LOCK_HOLDER" ]]; then
    held="$(value_of STEP_STATE "$LOCK_HOLDER")" holder_release="$(value_of RELEASE "$LOCK_HOLDER")"
    if [[ "$held" == restoring && "$state" != restoring ]]; then
      die "$(describe_lock_holder): a restore of $PROJECT did not end, so the database may be half-restored; refusing to start $starting. Run the restore again (bash $APP_DIR/bin/restore.sh), or check the database and free the lock: bash $APP_DIR/bin/release-lock.sh --free"
    elif [[ -n "$release" && "$holder_release" == "$release" ]] ||
      [[ -n "$sent_by" && "$(value_of STACK "$LOCK_HOLDER")" == "$sent_by" && "$held" == handed-on &&
        (-z "$holder_release" || "$holder_release" == "$release") ]]; then
      since="$(value_of SINCE "$LOCK_HOLDER")"
    elif [[ "$held" == running ]]; then
      echo "taking over the release lock of $(describe_lock_holder): that step died without ending, so its update sends no further step" >&2
    elif [[ -n "$sent_by" && "$(value_of STACK "$LOCK_HOLDER")" == "$sent_by" ]]; then
      echo "taking over the release lock of $(describe_lock_holder): this step comes from a later update of $sent_by, so the one that handed it on is over (Pulumi runs one update of a state at a time)" >&2
    elif (($(date +%s) - $(stat -c %Y "$LOCK_HOLDER") < LOCK_TIMEOUT_SECONDS)); then
      die "$(describe_lock_holder) of $PROJECT is in progress; refusing to start $starting. The lock expires after ${LOCK_TIMEOUT_SECONDS}s without a sign of life; to see it or free it once no step of that release runs: bash $APP_DIR/bin/release-lock.sh [--free]"
    else
      echo "taking over the stale release lock of $(describe_lock_holder)" >&2
    fi
  fi
  printf '%s\n' "RELEASE=$release" "STACK=$sent_by" "SINCE=$since" "STEP=$step" "STEP_STATE=$state" "PID=$$" \
    "BY=$(step_runner)" "REQUESTED_BY=$REQUESTED_BY" | replace_file "$LOCK_HOLDER" 644
  RELEASE_LOCK_OWNER="$release" HOLDS_RELEASE_LOCK=yes
}

# At a step's successful end: the lock passes on to the release's next step (marked alive now) if `up` follows (up
# also settles what serves). Otherwise this step ends the update: it stops what an unfinished switch left running
# and gives the lock back. Needs lib/live.sh (up_follows) and lib/compose.sh (stop_stray_colours).
hand_on_release_lock() {
  lock_files
  [[ -n "$HOLDS_RELEASE_LOCK" && -f "$LOCK_HOLDER" ]] || return 0
  if up_follows; then
    { grep -v '^STEP_STATE=' "$LOCK_HOLDER"; echo "STEP_STATE=handed-on"; } | replace_file "$LOCK_HOLDER" 644
  else
    stop_stray_colours
    release_release_lock
  fi
}

# A step of RELEASE (empty: a stage step) that fails before it took the lock ends the lock handed on to it, by its
# release's last step or by a stage step of its stack: the update got this step's failure and sends no further step.
# Never while another step runs (the mutex).
end_handed_on_lock() {
  local release="$1" holder_release
  lock_files
  [[ -f "$LOCK_HOLDER" && "$(value_of STEP_STATE "$LOCK_HOLDER")" == handed-on ]] || return 0
  holder_release="$(value_of RELEASE "$LOCK_HOLDER")"
  if [[ -z "$holder_release" ]]; then
    [[ -n "${STACK:-}" && "$(value_of STACK "$LOCK_HOLDER")" == "$STACK" ]] || return 0
  else
    [[ "$holder_release" == "$release" ]] || return 0
  fi
  exec 8>"$LOCK_MUTEX"
  flock -n 8 || return 0
  rm -f "$LOCK_HOLDER"
}

release_release_lock() {
  lock_files
  if [[ -n "$HOLDS_RELEASE_LOCK" && "$(value_of RELEASE "$LOCK_HOLDER")" == "$RELEASE_LOCK_OWNER" ]]; then
    rm -f "$LOCK_HOLDER"
  fi
  return 0
}
