# shellcheck shell=bash
# Shared by the release steps: named flags, checks of every value they write, the stage's compose
# invocation, the live release record and the release lock. Sourcing it only defines functions; a step
# calls parse_flags, then begin_step.

die() {
  echo "error: $*" >&2
  exit 1
}

# Reads `--name value` pairs into FLAGS. Every name in NAMES is required, any other flag is refused.
#   parse_flags SCRIPT "name other-name ..." "$@"
parse_flags() {
  local script="$1" names="$2" name usage=""
  shift 2
  for name in $names; do
    usage+=" --$name VALUE"
  done
  usage="usage: $script$usage"
  declare -gA FLAGS=()
  while (($# > 0)); do
    name="${1#--}"
    [[ "$1" == --* && " $names " == *" $name "* ]] || die "$usage (unknown argument '$1')"
    (($# >= 2)) || die "$usage ($1 has no value)"
    FLAGS[$name]="$2"
    shift 2
  done
  for name in $names; do
    [[ -v "FLAGS[$name]" ]] || die "$usage (missing --$name)"
  done
}

# `--name value` for each of NAMES, as received: how a step hands its flags on to another script.
forward_flags() {
  local name
  for name in "$@"; do
    printf '%s\n' "--$name" "${FLAGS[$name]}"
  done
}

require_number() {
  local name="$1" value="$2" low="$3" high="$4"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < low || value > high)); then
    die "$name: allowed $low-$high; received '$value'"
  fi
}

require_digest_ref() {
  local name="$1" value="$2"
  [[ "$value" =~ ^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$ ]] ||
    die "$name: allowed an image pinned by digest (repository@sha256:<64 hex>); received '$value'"
}

# The stack's version formats (components/config/fields.py, VERSION_PATTERN).
require_version() {
  local name="$1" value="$2"
  [[ "$value" =~ ^(v[0-9]+\.[0-9]+\.[0-9]+|v[0-9]{4}\.[0-9]{2}\.[0-9]{2}-[0-9a-f]{7,40}|staging-[0-9a-f]{7,40})$ ]] ||
    die "$name: allowed v1.2.3, vYYYY.MM.DD-<short sha> or staging-<short sha>; received '$value'"
}

# A release: its version and the start of its image's digest, as the program names it (v1.2.3@0123456789ab).
require_release() {
  local value="$1"
  require_version "release version" "${value%@*}"
  [[ "$value" =~ @[0-9a-f]{12}$ ]] || die "release: allowed <version>@<12 hex of the image digest>; received '$value'"
}

require_colour() {
  local name="$1" value="$2"
  [[ "$value" == blue || "$value" == green ]] || die "$name: allowed blue or green; received '$value'"
}

require_url() {
  local name="$1" value="$2"
  [[ "$value" =~ ^http://127\.0\.0\.1:[0-9]{1,5}/[A-Za-z0-9._/?=\&-]*$ ]] ||
    die "$name: allowed an http URL on 127.0.0.1; received '$value'"
}

# The stage's files on the server.
use_app_dir() {
  APP_DIR="$1"
  [[ "$APP_DIR" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "app-dir: allowed an absolute path; received '$APP_DIR'"
  LOCK_HOLDER="$APP_DIR/.release-lock"
  LOCK_MUTEX="$APP_DIR/.release-lock.mutex"
  LIVE_RELEASE="$APP_DIR/release.env"
  # Every migrate image whose migrations were applied on this server: "IMAGE VERSION UTC-TIME" lines.
  MIGRATIONS_LOG="$APP_DIR/migrations.log"
  PARTIAL_FILE="" UNDO="" RELEASE_LOCK_OWNER=""
}

# The flags of every step that takes the release lock: which release, when its lock goes stale, who asked for it.
release_lock_flag_names() {
  echo release lock-timeout-seconds requested-by
}

# Who asked for a release, as the stack records it (components/config/fields.py, REQUESTER_PATTERN); empty: not said.
require_requester() {
  local value="$1"
  [[ -z "$value" || "$value" =~ ^[][A-Za-z0-9\ ._:/@\(\)#+,=-]{1,300}$ ]] ||
    die "requested-by: allowed a run URL and who started it, like 'https://…/runs/42 (alice)'; received '$value'"
}

# The flags of a switch: where the proxy names its colour, each colour's health endpoint, the gate, the drain.
cutover_flag_names() {
  echo colour-url blue-health-url green-health-url health-attempts health-interval-seconds drain-seconds
}

# A flag's key in the live release record: its name in capitals (colour-url: COLOUR_URL).
flag_key() {
  local key="${1^^}"
  echo "${key//-/_}"
}

# Checks a setting a switch runs with, by its record key; fails for any other key. `up` records these
# settings, so that switch-back.sh switches the same way without the stack.
require_switch_setting() {
  local key="$1" value="$2"
  case "$key" in
    PROJECT) [[ "$value" =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "project: allowed a compose project name; received '$value'" ;;
    LOCK_TIMEOUT_SECONDS) require_number "$key" "$value" 60 86400 ;;
    COLOUR_URL | BLUE_HEALTH_URL | GREEN_HEALTH_URL) require_url "$key" "$value" ;;
    HEALTH_ATTEMPTS) require_number "$key" "$value" 1 600 ;;
    HEALTH_INTERVAL_SECONDS) require_number "$key" "$value" 1 60 ;;
    DRAIN_SECONDS) require_number "$key" "$value" 1 3600 ;;
    *) return 1 ;;
  esac
}

require_cutover_flags() {
  local name
  for name in $(cutover_flag_names); do
    require_switch_setting "$(flag_key "$name")" "${FLAGS[$name]}"
  done
}

# Sets the step's paths and cleanup. Every step: a failure, or a signal such as a dropped connection's
# SIGHUP, ends its release: it undoes what the step left half-done (UNDO names a function), gives the
# release lock back and removes the step's partial file.
begin_step() {
  PROJECT="${FLAGS[project]}"
  require_switch_setting PROJECT "$PROJECT"
  use_app_dir "${FLAGS[app-dir]}"
  trap end_step EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

end_step() {
  local status=$?
  trap - EXIT HUP INT TERM
  [[ -n "$PARTIAL_FILE" ]] && rm -f "$PARTIAL_FILE"
  if ((status == 0)); then
    hand_on_release_lock
  else
    # Undoing is best effort: each of its commands is tried even if an earlier one failed, or if the
    # connection that started the step is gone and nothing reads its output any more.
    set +e
    trap '' PIPE
    [[ -z "$UNDO" ]] || "$UNDO"
    release_release_lock
  fi
  exit "$status"
}

# The stage's compose project; APP_IMAGE and MIGRATE_IMAGE in the environment pin its images.
compose() {
  docker compose --project-name "$PROJECT" --project-directory "$APP_DIR" \
    --file "$APP_DIR/docker-compose.yml" --env-file "$APP_DIR/.env" "$@"
}

# A value of a KEY=VALUE file that only these scripts write: the live release record unless FILE is given.
live() {
  local key="$1" file="${2:-$LIVE_RELEASE}"
  [[ -f "$file" ]] || return 0
  sed -n "s/^$key=//p" "$file" | tail -n 1
}

# Each value the live release record may hold, checked before it is written.
require_record_value() {
  local key="$1" value="$2"
  case "$key" in
    VERSION) require_version "$key" "$value" ;;
    PREVIOUS_VERSION) [[ -z "$value" ]] || require_version "$key" "$value" ;;
    APP_IMAGE | MIGRATE_IMAGE | BLUE_IMAGE | GREEN_IMAGE) require_digest_ref "$key" "$value" ;;
    PREVIOUS_IMAGE | PREVIOUS_MIGRATE_IMAGE) [[ -z "$value" ]] || require_digest_ref "$key" "$value" ;;
    LIVE_COLOUR) require_colour "$key" "$value" ;;
    FILES_DIGEST) [[ "$value" =~ ^([0-9a-f]{64})?$ ]] || die "$key: allowed a sha256 digest; received '$value'" ;;
    *) require_switch_setting "$key" "$value" || die "release record: unknown key '$key'" ;;
  esac
}

# Sets KEY=VALUE lines of the live release record and keeps its other lines; the record is replaced whole.
record() {
  local pair
  for pair in "$@"; do
    require_record_value "${pair%%=*}" "${pair#*=}"
  done
  PARTIAL_FILE="$(mktemp "$LIVE_RELEASE.XXXXXX")"
  if [[ -f "$LIVE_RELEASE" ]]; then
    cp "$LIVE_RELEASE" "$PARTIAL_FILE"
  fi
  for pair in "$@"; do
    sed -i "/^${pair%%=*}=/d" "$PARTIAL_FILE"
  done
  printf '%s\n' "$@" >>"$PARTIAL_FILE"
  chmod 644 "$PARTIAL_FILE"
  mv -f "$PARTIAL_FILE" "$LIVE_RELEASE"
  PARTIAL_FILE=""
}

# Pulls an image pinned by digest unless the host has it already: a digest always names the same image.
pull_missing() {
  docker image inspect "$1" >/dev/null 2>&1 || docker pull --quiet "$1"
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

# Writes the lock holder: which release, since when, the step it runs now, that step's process and who runs
# it. Its modification time is the release's last sign of life.
write_lock_holder() {
  local release="$1" since="$2" step="$3"
  PARTIAL_FILE="$(mktemp "$LOCK_HOLDER.XXXXXX")"
  printf '%s\n' "RELEASE=$release" "SINCE=$since" "STEP=$step" "PID=$$" "BY=$(step_runner)" \
    "REQUESTED_BY=${FLAGS[requested-by]:-}" >"$PARTIAL_FILE"
  chmod 644 "$PARTIAL_FILE"
  mv -f "$PARTIAL_FILE" "$LOCK_HOLDER"
  PARTIAL_FILE=""
}

# One line naming the holder of the release lock, for messages.
describe_lock_holder() {
  local now since active requested
  [[ -f "$LOCK_HOLDER" ]] || { echo "no release recorded in $LOCK_HOLDER"; return 0; }
  now="$(date +%s)" since="$(live SINCE "$LOCK_HOLDER")" active="$(stat -c %Y "$LOCK_HOLDER")"
  requested="$(live REQUESTED_BY "$LOCK_HOLDER")"
  printf 'release %s%s, step %s (pid %s) run by %s, holding the lock since %s (last active %ss ago)' \
    "$(live RELEASE "$LOCK_HOLDER")" "${requested:+ requested by $requested}" "$(live STEP "$LOCK_HOLDER")" \
    "$(live PID "$LOCK_HOLDER")" "$(live BY "$LOCK_HOLDER")" "$(date -u -d "@${since:-0}" +%Y-%m-%dT%H:%M:%SZ)" \
    "$((now - active))"
}

# Holds the release lock for RELEASE from its first step to the end of `up`: one step at a time (flock), and
# no step of another release until RELEASE ends or has shown no sign of life for STALE_SECONDS.
acquire_release_lock() {
  local release="$1" stale_seconds="$2" step="$3" wait_seconds="${LOCK_WAIT_SECONDS:-120}" holder="" since
  require_release "$release"
  require_switch_setting LOCK_TIMEOUT_SECONDS "$stale_seconds"
  require_requester "${FLAGS[requested-by]:-}"
  exec 8>"$LOCK_MUTEX"
  if ! flock -w "$wait_seconds" 8; then
    die "another step has been running for over ${wait_seconds}s ($(describe_lock_holder)); refusing to start $release"
  fi
  since="$(date +%s)"
  if [[ -f "$LOCK_HOLDER" ]]; then
    holder="$(live RELEASE "$LOCK_HOLDER")"
    if [[ "$holder" == "$release" ]]; then
      since="$(live SINCE "$LOCK_HOLDER")"
    elif (($(date +%s) - $(stat -c %Y "$LOCK_HOLDER") < stale_seconds)); then
      die "$(describe_lock_holder) of $PROJECT is in progress; refusing to start $release. The lock expires after ${stale_seconds}s without a sign of life; to see it or free it once no step of that release runs: bash $APP_DIR/bin/release-lock.sh [--free]"
    else
      echo "taking over the stale release lock of $(describe_lock_holder)" >&2
    fi
  fi
  write_lock_holder "$release" "$since" "$step"
  RELEASE_LOCK_OWNER="$release"
}

# What files.sh installed last: a digest of every file of the bundle.
installed_files_digest() {
  [[ ! -f "$APP_DIR/.files-digest" ]] || cat "$APP_DIR/.files-digest"
}

# A release as the steps name theirs: its version and the start of its image's digest.
release_name() {
  local version="$1" image="${2#*@sha256:}"
  echo "$version@${image:0:12}"
}

# The release `up` last switched to.
live_release() {
  release_name "$(live VERSION)" "$(live APP_IMAGE)"
}

# Whether `up` runs later in this update: it does when the release is not the live one, when settings are
# staged, or when the installed files are not those `up` last released with. It does not in an update back
# to the live release after one that stopped before `up`: `up` has nothing to do then.
up_follows() {
  [[ "$RELEASE_LOCK_OWNER" != "$(live_release)" || -f "$APP_DIR/.env.next" ]] ||
    [[ "$(installed_files_digest)" != "$(live FILES_DIGEST)" ]]
}

# At the end of a step: the lock passes on to the release's next step (marked alive now) if `up` follows,
# and is given back otherwise.
hand_on_release_lock() {
  [[ -n "$RELEASE_LOCK_OWNER" && -f "$LOCK_HOLDER" ]] || return 0
  if up_follows; then
    touch "$LOCK_HOLDER"
  else
    release_release_lock
  fi
}

release_release_lock() {
  if [[ -n "$RELEASE_LOCK_OWNER" && "$(live RELEASE "$LOCK_HOLDER")" == "$RELEASE_LOCK_OWNER" ]]; then
    rm -f "$LOCK_HOLDER"
  fi
  return 0
}

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
