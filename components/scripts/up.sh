#!/usr/bin/env bash
# Makes the release live, with the stage's current settings and files: switch.sh starts it beside the live version
# and moves traffic to it once it is healthy. Already live as declared (an update run again after it switched),
# there is nothing to switch. Then prunes old images and ends the release. Every update that changes what serves
# ends with this step.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
parse_flags up.sh "$UP_FLAGS" "$@"
begin_step
read_settings
release="${FLAGS[release]}" version="${FLAGS[version]}"
app_image="${FLAGS[app-image]}" migrate_image="${FLAGS[migrate-image]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$app_image"
require_digest_ref MIGRATE_IMAGE "$migrate_image"

acquire_update_lock "$release" up
pull_missing "$app_image"
was_live="$(live VERSION)" was_colour="$(live LIVE_COLOUR)"
# The live release as declared (no work for `up`), its colour running and the proxy naming it: an update run again
# after its switch.
already_live() {
  local colour
  colour="$(live LIVE_COLOUR)"
  [[ -z "$(up_work "$release")" && -n "$(compose ps --quiet --status running "app-$colour")" ]] &&
    [[ "$(serving_colour)" == "$colour" ]]
}
if already_live; then
  echo "$version is live on $(live LIVE_COLOUR) with the current settings and files: nothing to switch"
else
  mapfile -t switch < <(forward_flags app-dir project version app-image migrate-image)
  if ! bash "$(dirname "$0")/switch.sh" "${switch[@]}" --settings current; then
    # Past its point of no return a switch has made its colour live; the release may have been live before it too
    # (switched again for new settings or files).
    if [[ "$(live LIVE_COLOUR)" != "$was_colour" ]]; then
      die "release $version serves, but its switch did not finish (see above): $version ($app_image) is live"
    fi
    [[ -n "$was_live" ]] || die "release $version was not switched to (see above); no earlier version is recorded, so nothing serves yet"
    die "release $version was not switched to (see above); $was_live ($(live APP_IMAGE)) keeps serving"
  fi
fi
set_live "FILES_DIGEST=$(installed_files_digest)"
stop_stray_colours

# Images beyond the newest IMAGES_TO_KEEP go; a rollback to the previous version finds both its images here.
repository="${app_image%@*}"
keep_images=("$app_image" "$migrate_image" "$(live PREVIOUS_IMAGE)" "$(live PREVIOUS_MIGRATE_IMAGE)")
mapfile -t images < <(docker image ls --no-trunc --format '{{.Repository}}@{{.Digest}}' "$repository" |
  grep -v '@<none>$' | awk '!seen[$0]++')
for image in "${images[@]:$IMAGES_TO_KEEP}"; do
  [[ " ${keep_images[*]} " == *" $image "* ]] || docker image rm "$image" >/dev/null 2>&1 || true
done

release_release_lock
echo "released $version ($app_image)"
echo "previous=$(live PREVIOUS_VERSION)"
