#!/usr/bin/env bash
# Runs the app on one image and waits until it reports a healthy, valid build.
# The one place that decides how traffic moves to a new version.
set -euo pipefail
usage="switch.sh APP_DIR PROJECT APP_IMAGE MIGRATE_IMAGE HEALTH_URL ATTEMPTS INTERVAL_SECONDS"
[[ $# -eq 7 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
export APP_IMAGE="$3" MIGRATE_IMAGE="$4"
health_url="$5" attempts="$6" interval="$7"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_number ATTEMPTS "$attempts" 1 600
require_number INTERVAL_SECONDS "$interval" 1 60

compose up --detach --no-deps --force-recreate app

for ((attempt = 1; attempt <= attempts; attempt++)); do
  if body="$(curl --silent --fail --max-time 5 "$health_url")" &&
    grep -Eq '"valid"[[:space:]]*:[[:space:]]*true' <<<"$body"; then
    echo "healthy after $attempt attempt(s): $APP_IMAGE"
    exit 0
  fi
  sleep "$interval"
done
echo "not healthy after $attempts attempts every ${interval}s: $APP_IMAGE (last answer: ${body:-none})" >&2
exit 1
