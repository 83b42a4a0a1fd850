# shellcheck shell=bash
# What every step does: named flags, checks of every value it receives or writes, and its life: a step that fails,
# is killed by a signal it can trap, or loses its connection runs its undo and gives the release lock back.
# Sourcing it only defines functions (and the facts of lib/facts.sh).

# Rendered into every bundle by components/shared_facts.py (tests/test_server_scripts.py checks it with ShellCheck).
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/facts.sh"
# The last command of a pipeline runs in this shell: `... | replace_file` keeps track of its partial file.
shopt -s lastpipe

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

require_match() {
  local name="$1" value="$2" pattern="$3" allowed="$4"
  [[ "$value" =~ $pattern ]] || die "$name: allowed $allowed; received '$value'"
}

# A number within the range named by NAME_RANGE in lib/facts.sh ("low high").
require_in_range() {
  local name="$1" value="$2" range_name="${1}_RANGE" low high
  read -r low high <<<"${!range_name}"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < low || value > high)); then
    die "$name: allowed $low-$high; received '$value'"
  fi
}

require_version() {
  require_match "$1" "$2" "$VERSION_PATTERN" "$VERSION_FORMATS"
}

require_digest_ref() {
  require_match "$1" "$2" "$DIGEST_REF_PATTERN" "an image pinned by digest (repository@sha256:<64 hex>)"
}

require_release() {
  require_match release "$1" "$RELEASE_PATTERN" "<version>@<12 hex of the image digest>"
}

require_colour() {
  [[ " $COLOURS " == *" $2 "* ]] || die "$1: allowed ${COLOURS// /, }; received '$2'"
}

# Checks one value of the settings file by its key.
require_setting() {
  local key="$1" value="$2"
  case "$key" in
    LOCK_TIMEOUT_SECONDS | IMAGES_TO_KEEP | HEALTH_ATTEMPTS | HEALTH_INTERVAL_SECONDS | DRAIN_SECONDS)
      require_in_range "$key" "$value"
      ;;
    COLOUR_URL | BLUE_HEALTH_URL | GREEN_HEALTH_URL) require_match "$key" "$value" "$URL_PATTERN" "an http URL on 127.0.0.1" ;;
    PROJECT) require_match "$key" "$value" "$PROJECT_PATTERN" "a compose project name" ;;
    STACK) require_match "$key" "$value" "$STACK_PATTERN" "<project>/<stack>@<12 hex of its state>, the stack whose updates send the steps" ;;
    DATABASE_USER | DATABASE_NAME) require_match "$key" "$value" "$DATABASE_NAME_PATTERN" "a PostgreSQL name" ;;
    REQUESTED_BY) [[ -z "$value" ]] || require_match "$key" "$value" "$REQUESTER_PATTERN" "a run URL and who started it" ;;
    *) die "$SETTINGS_FILE: unknown key '$key'" ;;
  esac
}

# A value of a KEY=VALUE file that only these scripts (or the files step) write; empty when absent.
value_of() {
  local key="$1" file="$2"
  [[ -f "$file" ]] || return 0
  sed -n "s/^$key=//p" "$file" | tail -n 1
}

# The stage's files on the server, and each setting of the settings file as a checked variable of its own name.
use_app_dir() {
  APP_DIR="$1"
  [[ "$APP_DIR" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "app-dir: allowed an absolute path; received '$APP_DIR'"
  # shellcheck disable=SC2034 # whether this step holds the lock, and for which release: lib/lock.sh
  UNDO="" PARTIAL_FILE="" RELEASE_LOCK_OWNER="" HOLDS_RELEASE_LOCK=""
}

read_settings() {
  local file="${1:-$APP_DIR/$SETTINGS_FILE}" line key
  local -A found=()
  [[ -f "$file" ]] || die "$file is missing: the files step installs it"
  # One read of the file, in bash: every step starts with this, and a process per key costs more than the rest.
  while IFS= read -r line || [[ -n "$line" ]]; do
    key="${line%%=*}"
    if [[ "$line" == *=* && " $SETTINGS_KEYS " == *" $key "* ]]; then
      found[$key]="${line#*=}"
    fi
  done <"$file"
  for key in $SETTINGS_KEYS; do
    require_setting "$key" "${found[$key]:-}"
    printf -v "$key" '%s' "${found[$key]:-}"
  done
}

# Starts a step: checks the common flags, reads the settings, arms the exit trap.
# A dropped SSH session sends no signal at all (there is no terminal, so no SIGHUP): the step only learns of it
# when it next writes. SIGPIPE is ignored so that write fails with EPIPE instead of killing bash outright (which
# would skip the exit trap); under `set -e` the failed write ends the step through end_step, which undoes.
begin_step() {
  PROJECT="${FLAGS[project]}"
  require_match project "$PROJECT" "$PROJECT_PATTERN" "a compose project name"
  use_app_dir "${FLAGS[app-dir]}"
  trap end_step EXIT
  trap '' PIPE
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

end_step() {
  local status=$?
  trap - EXIT HUP INT TERM
  [[ -z "$PARTIAL_FILE" ]] || rm -f "$PARTIAL_FILE"
  if ((status == 0)); then
    # A handover that fails must not keep the lock: the step then ends as a failure. It runs in a subshell of its
    # own with errexit, because on the left of `||` (or in an `if`) bash ignores `set -e` in everything it calls.
    set +e
    (
      set -e
      hand_on_release_lock
    )
    status=$?
    ((status == 0)) || release_release_lock
  else
    # Undoing is best effort: each of its commands is tried even if an earlier one failed, or if nothing reads the
    # step's output any more.
    set +e
    [[ -z "$UNDO" ]] || "$UNDO"
    release_release_lock
    [[ -n "$HOLDS_RELEASE_LOCK" ]] || end_handed_on_lock "${FLAGS[release]:-}"
  fi
  exit "$status"
}

# Replaces FILE whole with STDIN (mode MODE): a reader sees the old file or the new one, never a part.
replace_file() {
  local file="$1" mode="$2"
  PARTIAL_FILE="$(mktemp "$file.partial.XXXXXX")"
  cat >"$PARTIAL_FILE"
  chmod "$mode" "$PARTIAL_FILE"
  mv -f "$PARTIAL_FILE" "$file"
  PARTIAL_FILE=""
}
