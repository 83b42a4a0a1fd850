#!/usr/bin/env bash
# Releases the new image: switch.sh starts it beside the live version and moves traffic to it once it
# is healthy. If it never turns healthy, nothing was switched: the live version kept serving, and the
# step fails naming both versions. Then records the release, prunes old images and ends the release.
set -euo pipefail
usage="up.sh APP_DIR PROJECT OWNER STALE_SECONDS VERSION APP_IMAGE MIGRATE_IMAGE COLOUR_URL BLUE_HEALTH_URL GREEN_HEALTH_URL ATTEMPTS INTERVAL_SECONDS DRAIN_SECONDS IMAGES_TO_KEEP"
[[ $# -eq 14 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
owner="$3" stale="$4" version="$5" app_image="$6" migrate_image="$7"
cutover=("${@:8:6}")
keep="${14}"
require_digest_ref APP_IMAGE "$app_image"
require_digest_ref MIGRATE_IMAGE "$migrate_image"
require_number IMAGES_TO_KEEP "$keep" 2 100

acquire_release_lock "$owner" "$stale"
pull_missing "$app_image"
live_image="$(live APP_IMAGE)" live_version="$(live VERSION)"

if [[ "$live_image" == "$app_image" ]]; then
  previous_version="$(live PREVIOUS_VERSION)" previous_image="$(live PREVIOUS_IMAGE)"
  previous_migrate_image="$(live PREVIOUS_MIGRATE_IMAGE)"
else
  previous_version="$live_version" previous_image="$live_image" previous_migrate_image="$(live MIGRATE_IMAGE)"
fi

if ! "$(dirname "$0")/switch.sh" "$APP_DIR" "$PROJECT" "$app_image" "$migrate_image" "${cutover[@]}"; then
  [[ -n "$live_version" ]] || die "release $version was not switched to (see above); no earlier version is recorded, so nothing serves yet"
  die "release $version was not switched to (see above); $live_version ($live_image) keeps serving"
fi
# The stage's cutover and lock settings too: switch-back.sh moves traffic the same way without the stack.
record "VERSION=$version" "APP_IMAGE=$app_image" "MIGRATE_IMAGE=$migrate_image" \
  "PREVIOUS_VERSION=$previous_version" "PREVIOUS_IMAGE=$previous_image" \
  "PREVIOUS_MIGRATE_IMAGE=$previous_migrate_image" "PROJECT=$PROJECT" "CUTOVER=${cutover[*]}" "STALE_SECONDS=$stale"

repository="${app_image%@*}"
mapfile -t images < <(docker image ls --no-trunc --format '{{.Repository}}@{{.Digest}}' "$repository" |
  grep -v '@<none>$' | awk '!seen[$0]++')
# A rollback to the previous version must find both its images here, with the registry down.
for image in "${images[@]:$keep}"; do
  case "$image" in
    "$app_image" | "$migrate_image" | "$previous_image" | "$previous_migrate_image") ;;
    *) docker image rm "$image" >/dev/null 2>&1 || true ;;
  esac
done

release_release_lock
echo "released $version ($app_image)"
echo "previous=$previous_version"
