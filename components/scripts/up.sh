#!/usr/bin/env bash
# Switches the app to the new image behind the health gate. On failure the previous image is put
# back and the step fails naming both versions. Then prunes old images and ends the release.
set -euo pipefail
usage="up.sh APP_DIR PROJECT OWNER STALE_SECONDS VERSION APP_IMAGE MIGRATE_IMAGE HEALTH_URL ATTEMPTS INTERVAL_SECONDS IMAGES_TO_KEEP"
[[ $# -eq 11 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
owner="$3" stale="$4" version="$5" app_image="$6" migrate_image="$7"
health=("$8" "$9" "${10}")
keep="${11}"
require_digest_ref APP_IMAGE "$app_image"
require_digest_ref MIGRATE_IMAGE "$migrate_image"
require_number IMAGES_TO_KEEP "$keep" 2 100
switch="$(dirname "$0")/switch.sh"

acquire_release_lock "$owner" "$stale"
docker pull --quiet "$app_image"
live_image="$(live APP_IMAGE)" live_version="$(live VERSION)" live_migrate="$(live MIGRATE_IMAGE)"

if [[ "$live_image" == "$app_image" ]]; then
  previous_version="$(live PREVIOUS_VERSION)" previous_image="$(live PREVIOUS_IMAGE)"
else
  previous_version="$live_version" previous_image="$live_image"
fi

if ! "$switch" "$APP_DIR" "$PROJECT" "$app_image" "$migrate_image" "${health[@]}"; then
  if [[ -z "$live_image" || "$live_image" == "$app_image" ]]; then
    APP_IMAGE="$app_image" MIGRATE_IMAGE="$migrate_image" compose stop app || true
    die "release $version failed its health check and no earlier version is recorded to restore; the app is stopped"
  fi
  "$switch" "$APP_DIR" "$PROJECT" "$live_image" "$live_migrate" "${health[@]}" ||
    die "release $version failed its health check, and restoring $live_version failed too"
  die "release $version failed its health check; restored $live_version ($live_image), which is serving"
fi

record="$(mktemp "$APP_DIR/.release.env.XXXXXX")"
PARTIAL_FILE="$record"
printf '%s\n' "VERSION=$version" "APP_IMAGE=$app_image" "MIGRATE_IMAGE=$migrate_image" \
  "PREVIOUS_VERSION=$previous_version" "PREVIOUS_IMAGE=$previous_image" >"$record"
mv -f "$record" "$LIVE_RELEASE"
PARTIAL_FILE=""

repository="${app_image%@*}"
mapfile -t images < <(docker image ls --no-trunc --format '{{.Repository}}@{{.Digest}}' "$repository" |
  grep -v '@<none>$' | awk '!seen[$0]++')
for image in "${images[@]:$keep}"; do
  if [[ "$image" != "$app_image" && "$image" != "$previous_image" && "$image" != "$migrate_image" ]]; then
    docker image rm "$image" >/dev/null 2>&1 || true
  fi
done

release_release_lock
echo "released $version ($app_image)"
echo "previous=$previous_version"
