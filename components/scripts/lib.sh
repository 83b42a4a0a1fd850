# shellcheck shell=bash
# Shared by the release steps: argument checks, the stage's compose invocation, the release lock.
# Callers set APP_DIR and PROJECT, then source this file.

LOCK_HOLDER="$APP_DIR/.release-lock"
LOCK_MUTEX="$APP_DIR/.release-lock.mutex"
LIVE_RELEASE="$APP_DIR/release.env"
# How long one step waits for a step of another release to finish before refusing.
LOCK_WAIT_SECONDS="${LOCK_WAIT_SECONDS:-120}"

die() {
  echo "error: $*" >&2
  exit 1
}

require_args() {
  local expected="$1" got="$2" usage="$3"
  [[ "$got" -eq "$expected" ]] || die "usage: $usage (expected $expected arguments, received $got)"
}

require_number() {
  local name="$1" value="$2" low="$3" high="$4"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < low || value > high)); then
    die "$name: allowed $low-$high; received '$value'"
  fi
}

require_digest_ref() {
  local name="$1" value="$2"
  [[ "$value" =~ ^[^[:space:]@]+@sha256:[0-9a-f]{64}$ ]] ||
    die "$name: allowed an image pinned by digest (repository@sha256:<64 hex>); received '$value'"
}

# The stage's compose project; APP_IMAGE and MIGRATE_IMAGE in the environment pin its images.
compose() {
  docker compose --project-name "$PROJECT" --project-directory "$APP_DIR" \
    --file "$APP_DIR/docker-compose.yml" --env-file "$APP_DIR/.env" "$@"
}

# A value of the live release record (KEY=VALUE lines that only these scripts write).
live() {
  local key="$1"
  [[ -f "$LIVE_RELEASE" ]] || return 0
  sed -n "s/^$key=//p" "$LIVE_RELEASE" | tail -n 1
}

# Sets KEY=VALUE lines of the live release record and keeps its other lines; the record is replaced whole.
record() {
  local pair
  PARTIAL_FILE="$(mktemp "$LIVE_RELEASE.XXXXXX")"
  if [[ -f "$LIVE_RELEASE" ]]; then
    cp "$LIVE_RELEASE" "$PARTIAL_FILE"
  fi
  for pair in "$@"; do
    sed -i "/^${pair%%=*}=/d" "$PARTIAL_FILE"
  done
  printf '%s\n' "$@" >>"$PARTIAL_FILE"
  mv -f "$PARTIAL_FILE" "$LIVE_RELEASE"
  PARTIAL_FILE=""
}

# Pulls an image pinned by digest unless the host has it already: a digest always names the same image.
pull_missing() {
  docker image inspect "$1" >/dev/null 2>&1 || docker pull --quiet "$1"
}

# Holds the release lock for OWNER: one step at a time (flock), and no step of another release
# until OWNER's release ends or its lock is older than STALE_SECONDS.
acquire_release_lock() {
  local owner="$1" stale_seconds="$2" holder since now
  exec 8>"$LOCK_MUTEX"
  flock -w "$LOCK_WAIT_SECONDS" 8 ||
    die "a step of another release of $PROJECT has been running for over ${LOCK_WAIT_SECONDS}s; refusing to start $owner"
  if [[ -f "$LOCK_HOLDER" ]]; then
    read -r holder since <"$LOCK_HOLDER" || true
    now="$(date +%s)"
    if [[ "$holder" != "$owner" && $((now - ${since:-0})) -lt "$stale_seconds" ]]; then
      die "release $holder of $PROJECT is in progress (lock $LOCK_HOLDER, taken $((now - since))s ago); refusing to start $owner. It expires after ${stale_seconds}s; remove the file only if no release is running"
    fi
  fi
  printf '%s %s\n' "$owner" "$(date +%s)" >"$LOCK_HOLDER.tmp"
  mv -f "$LOCK_HOLDER.tmp" "$LOCK_HOLDER"
  RELEASE_LOCK_OWNER="$owner"
}

release_release_lock() {
  local holder=""
  [[ -f "$LOCK_HOLDER" ]] && read -r holder _ <"$LOCK_HOLDER"
  if [[ -n "${RELEASE_LOCK_OWNER:-}" && "$holder" == "$RELEASE_LOCK_OWNER" ]]; then
    rm -f "$LOCK_HOLDER"
  fi
}

# Every step: a failure, or a signal such as a dropped connection's SIGHUP, ends its release.
# It gives the release lock back and removes the step's partial file, if any.
PARTIAL_FILE=""
end_step() {
  local status=$?
  [[ -n "$PARTIAL_FILE" ]] && rm -f "$PARTIAL_FILE"
  ((status == 0)) || release_release_lock
  exit "$status"
}
trap end_step EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# Every migrate image whose migrations were applied on this server: "IMAGE VERSION UTC-TIME" lines.
MIGRATIONS_LOG="$APP_DIR/migrations.log"

# Prints which release applied IMAGE's migrations on this server ("VERSION at TIME"); fails if none did.
# A version that ran here has its schema in the database: going back to it needs no migration or backup.
applied_migrations() {
  local image="$1" found=""
  if [[ -f "$MIGRATIONS_LOG" ]]; then
    found="$(awk -v image="$image" '$1 == image { print $2 " at " $3 }' "$MIGRATIONS_LOG" | tail -n 1)"
  fi
  # A release recorded before this log existed: its live version's migrations are applied.
  if [[ -z "$found" && "$(live MIGRATE_IMAGE)" == "$image" ]]; then
    found="$(live VERSION) (the live release)"
  fi
  [[ -n "$found" ]] && echo "$found"
}
