#!/usr/bin/env bash
# Installs the app's .env from stdin (mode 600, never on a command line); if a release is live, starts
# its image with the new settings on the idle colour and switches to it (switch.sh). When that colour
# does not turn healthy, nothing was switched: the previous .env is put back, matching what serves.
set -euo pipefail
usage="env.sh APP_DIR PROJECT OWNER STALE_SECONDS COLOUR_URL BLUE_HEALTH_URL GREEN_HEALTH_URL ATTEMPTS INTERVAL_SECONDS DRAIN_SECONDS < .env"
[[ $# -eq 10 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
owner="$3" stale="$4"
cutover=("${@:5}")

umask 077
mkdir -p "$APP_DIR"
candidate="$(mktemp "$APP_DIR/.env.XXXXXX")"
PARTIAL_FILE="$candidate"
cat >"$candidate"
[[ -s "$candidate" ]] || die "received an empty .env on stdin; nothing was changed"
chmod 600 "$candidate"

acquire_release_lock "$owner" "$stale"
if [[ -f "$APP_DIR/.env" ]] && cmp -s "$candidate" "$APP_DIR/.env"; then
  echo ".env unchanged"
  release_release_lock
  exit 0
fi
[[ -f "$APP_DIR/.env" ]] && cp -p "$APP_DIR/.env" "$APP_DIR/.env.previous"
mv -f "$candidate" "$APP_DIR/.env"
echo ".env installed"

live_image="$(live APP_IMAGE)"
if [[ -n "$live_image" ]] &&
  ! "$(dirname "$0")/switch.sh" "$APP_DIR" "$PROJECT" "$live_image" "$(live MIGRATE_IMAGE)" "${cutover[@]}"; then
  [[ -f "$APP_DIR/.env.previous" ]] && mv -f "$APP_DIR/.env.previous" "$APP_DIR/.env"
  die "the app did not switch to the new settings (see above); the previous .env is restored and $(live VERSION) keeps serving with it"
fi
release_release_lock
