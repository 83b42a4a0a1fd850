#!/usr/bin/env bash
# Installs the app's .env from stdin (mode 600, never on a command line); if the app is live,
# restarts it on the same image and restores the previous .env when it does not turn healthy.
set -euo pipefail
usage="env.sh APP_DIR PROJECT OWNER STALE_SECONDS HEALTH_URL ATTEMPTS INTERVAL_SECONDS < .env"
[[ $# -eq 7 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
owner="$3" stale="$4" health_url="$5" attempts="$6" interval="$7"

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
if [[ -n "$live_image" ]]; then
  live_migrate="$(live MIGRATE_IMAGE)"
  export APP_IMAGE="$live_image" MIGRATE_IMAGE="$live_migrate"
  if [[ -n "$(compose ps --quiet app)" ]] &&
    ! "$(dirname "$0")/switch.sh" "$APP_DIR" "$PROJECT" "$live_image" "$live_migrate" "$health_url" "$attempts" "$interval"; then
    [[ -f "$APP_DIR/.env.previous" ]] && mv -f "$APP_DIR/.env.previous" "$APP_DIR/.env"
    "$(dirname "$0")/switch.sh" "$APP_DIR" "$PROJECT" "$live_image" "$live_migrate" "$health_url" "$attempts" "$interval" ||
      die "the app did not turn healthy with the new settings, nor after restoring the previous ones"
    die "the app did not turn healthy with the new settings; the previous .env is restored and serving"
  fi
fi
release_release_lock
