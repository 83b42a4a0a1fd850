# shellcheck shell=bash
# What serves on this server, and what served before it:
#   <appDir>/release.env     the live release: VERSION, APP_IMAGE, MIGRATE_IMAGE, LIVE_COLOUR, each colour's image,
#                            the previous release (PREVIOUS_*) and FILES_DIGEST, the files it was switched with
#   <appDir>/releases.log    the releases that served, oldest first, one "VERSION APP_IMAGE MIGRATE_IMAGE" a line:
#                            a new release is added on top; going back to one below removes what is above it, so
#                            "previous" never toggles
#   <appDir>/.env.<colour>   the settings each colour was started with (mode 600)
#   <appDir>/migrations.log  every migrate image whose migrations were applied here: "IMAGE VERSION UTC-TIME"
# Sourcing it only defines functions. Needs lib/step.sh.

live_files() {
  LIVE_RELEASE="$APP_DIR/release.env"
  RELEASE_HISTORY="$APP_DIR/releases.log"
  MIGRATIONS_LOG="$APP_DIR/migrations.log"
}

live() {
  live_files
  value_of "$1" "$LIVE_RELEASE"
}

# A release as the steps name theirs.
release_name() {
  local version="$1" image="${2#*@sha256:}"
  echo "$version@${image:0:12}"
}

live_release() {
  [[ -z "$(live VERSION)" ]] || release_name "$(live VERSION)" "$(live APP_IMAGE)"
}

# Each value the live release may hold, checked before it is written.
require_live_value() {
  local key="$1" value="$2"
  case "$key" in
    VERSION) require_version "$key" "$value" ;;
    PREVIOUS_VERSION) [[ -z "$value" ]] || require_version "$key" "$value" ;;
    APP_IMAGE | MIGRATE_IMAGE | BLUE_IMAGE | GREEN_IMAGE) require_digest_ref "$key" "$value" ;;
    PREVIOUS_IMAGE | PREVIOUS_MIGRATE_IMAGE) [[ -z "$value" ]] || require_digest_ref "$key" "$value" ;;
    LIVE_COLOUR) require_colour "$key" "$value" ;;
    FILES_DIGEST) require_match "$key" "$value" '^([0-9a-f]{64})?$' "a sha256 digest" ;;
    *) die "live release: unknown key '$key'" ;;
  esac
}

# Sets KEY=VALUE lines of the live release and keeps its other known lines; the file is replaced whole.
set_live() {
  local pair key
  live_files
  declare -A values=()
  for key in VERSION APP_IMAGE MIGRATE_IMAGE LIVE_COLOUR BLUE_IMAGE GREEN_IMAGE PREVIOUS_VERSION PREVIOUS_IMAGE \
    PREVIOUS_MIGRATE_IMAGE FILES_DIGEST; do
    values[$key]="$(live "$key")"
  done
  for pair in "$@"; do
    require_live_value "${pair%%=*}" "${pair#*=}"
    values[${pair%%=*}]="${pair#*=}"
  done
  for key in "${!values[@]}"; do
    [[ -z "${values[$key]}" ]] || printf '%s=%s\n' "$key" "${values[$key]}"
  done | sort | replace_file "$LIVE_RELEASE" 644
}

# The releases that served, oldest first; a server released before the history existed starts it from its record.
release_history() {
  live_files
  if [[ -f "$RELEASE_HISTORY" ]]; then
    cat "$RELEASE_HISTORY"
  elif [[ -n "$(live VERSION)" ]]; then
    [[ -z "$(live PREVIOUS_VERSION)" || -z "$(live PREVIOUS_IMAGE)" ]] ||
      echo "$(live PREVIOUS_VERSION) $(live PREVIOUS_IMAGE) $(live PREVIOUS_MIGRATE_IMAGE)"
    echo "$(live VERSION) $(live APP_IMAGE) $(live MIGRATE_IMAGE)"
  fi
}

# The history once VERSION (APP_IMAGE, MIGRATE_IMAGE) serves: on top, and whatever was above it gone.
history_with() {
  local version="$1" app_image="$2" migrate_image="$3"
  release_history | awk -v v="$version" -v a="$app_image" '$1 == v && $2 == a { exit } { print }'
  echo "$version $app_image $migrate_image"
}

# Makes VERSION the live release on COLOUR: history and record together, in the moment traffic moved to it.
make_live() {
  local version="$1" app_image="$2" migrate_image="$3" colour="$4" history previous
  require_version VERSION "$version"
  require_digest_ref APP_IMAGE "$app_image"
  require_digest_ref MIGRATE_IMAGE "$migrate_image"
  require_colour LIVE_COLOUR "$colour"
  history="$(history_with "$version" "$app_image" "$migrate_image")"
  read -r -a previous <<<"$(head -n -1 <<<"$history" | tail -n 1)"
  set_live "VERSION=$version" "APP_IMAGE=$app_image" "MIGRATE_IMAGE=$migrate_image" "LIVE_COLOUR=$colour" \
    "${colour^^}_IMAGE=$app_image" "PREVIOUS_VERSION=${previous[0]:-}" "PREVIOUS_IMAGE=${previous[1]:-}" \
    "PREVIOUS_MIGRATE_IMAGE=${previous[2]:-}"
  replace_file "$RELEASE_HISTORY" 644 <<<"$history"
}

# What files.sh installed last: a digest of every file of the bundle.
installed_files_digest() {
  [[ ! -f "$APP_DIR/.files-digest" ]] || cat "$APP_DIR/.files-digest"
}

# Whether the live colour runs with the stage's current settings (.env).
live_settings_current() {
  local colour
  colour="$(live LIVE_COLOUR)"
  [[ -n "$colour" ]] && cmp -s "$APP_DIR/.env" "$APP_DIR/.env.$colour"
}

# The colour the proxy sends traffic to, as it answers (it names the colour itself, whether that colour runs or not);
# nothing while no proxy runs or answers, or it names no colour (a restore's maintenance; Swarm's proxy has no such
# answer). It is ahead of the record (LIVE_COLOUR) after a switch killed between the proxy's reload and the record.
serving_colour() {
  local answer
  [[ -n "${COLOUR_URL:-}" ]] || return 0
  answer="$(curl --silent --fail --max-time 2 "$COLOUR_URL" || true)"
  [[ -z "$answer" || " $COLOURS " != *" $answer "* ]] || echo "$answer"
}

# Why `up` has work in an update of RELEASE (empty: the live release, whose files, settings and database a stage step
# installs), the first reason found; nothing when it has none: the release is not the live one, the live colour does
# not run the current settings, the installed files are not those `up` switched with last, or the proxy sends
# traffic to another colour than the record says. An update back to the live release after
# one that stopped before `up` has none: its last step gives the lock back.
up_work() {
  local release="${1:-$(live_release)}" served
  if [[ "$release" != "$(live_release)" ]]; then
    echo "$release is not the live release ($(live_release))"
  elif ! live_settings_current; then
    echo "the live colour does not run the current .env"
  elif [[ "$(installed_files_digest)" != "$(live FILES_DIGEST)" ]]; then
    echo "the installed files are not those up switched with"
  else
    served="$(serving_colour)"
    [[ -z "$served" || "$served" == "$(live LIVE_COLOUR)" ]] ||
      echo "the proxy sends traffic to $served, not to the live colour $(live LIVE_COLOUR): a switch did not finish"
  fi
}

up_follows() {
  [[ -n "$(up_work "$RELEASE_LOCK_OWNER")" ]]
}

# Prints which release applied IMAGE's migrations on this server ("VERSION at TIME"); fails if none did.
# A version that ran here has its schema in the database: going back to it needs no migration or backup.
applied_migrations() {
  local image="$1" found=""
  live_files
  if [[ -f "$MIGRATIONS_LOG" ]]; then
    found="$(awk -v image="$image" '$1 == image { print $2 " at " $3 }' "$MIGRATIONS_LOG" | tail -n 1)"
  fi
  # A release recorded before this log existed: its live version's migrations are applied.
  if [[ -z "$found" && "$(live MIGRATE_IMAGE)" == "$image" ]]; then
    found="$(live VERSION) (the live release)"
  fi
  [[ -n "$found" ]] && echo "$found"
}
