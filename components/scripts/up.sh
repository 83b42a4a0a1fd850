#!/usr/bin/env bash
# Releases the new image, with the new settings if env.sh staged any: switch.sh starts it beside the live
# version and moves traffic to it once it is healthy. If it never turns healthy, nothing was switched: the
# live version kept serving, and the step fails naming both versions. Then records the release, prunes old
# images and ends the release. Every update that changes anything on the server ends with this step.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
read -r -a cutover_flags <<<"$(cutover_flag_names)"
parse_flags up.sh "app-dir project $(release_lock_flag_names) version app-image migrate-image images-to-keep \
  ${cutover_flags[*]}" "$@"
begin_step
version="${FLAGS[version]}" app_image="${FLAGS[app-image]}" migrate_image="${FLAGS[migrate-image]}"
keep="${FLAGS[images-to-keep]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$app_image"
require_digest_ref MIGRATE_IMAGE "$migrate_image"
require_number IMAGES_TO_KEEP "$keep" 2 100
require_cutover_flags

acquire_release_lock "${FLAGS[release]}" "${FLAGS[lock-timeout-seconds]}" up
pull_missing "$app_image"
live_image="$(live APP_IMAGE)" live_version="$(live VERSION)"

if [[ "$live_image" == "$app_image" ]]; then
  previous_version="$(live PREVIOUS_VERSION)" previous_image="$(live PREVIOUS_IMAGE)"
  previous_migrate_image="$(live PREVIOUS_MIGRATE_IMAGE)"
else
  previous_version="$live_version" previous_image="$live_image" previous_migrate_image="$(live MIGRATE_IMAGE)"
fi

mapfile -t cutover < <(forward_flags app-dir project app-image migrate-image "${cutover_flags[@]}")
if ! bash "$(dirname "$0")/switch.sh" "${cutover[@]}"; then
  [[ -n "$live_version" ]] || die "release $version was not switched to (see above); no earlier version is recorded, so nothing serves yet"
  die "release $version was not switched to (see above); $live_version ($live_image) keeps serving"
fi
# The stage's project, lock and cutover settings too: switch-back.sh moves traffic the same way without the stack.
switch_settings=()
for name in project lock-timeout-seconds "${cutover_flags[@]}"; do
  switch_settings+=("$(flag_key "$name")=${FLAGS[$name]}")
done
record "VERSION=$version" "APP_IMAGE=$app_image" "MIGRATE_IMAGE=$migrate_image" \
  "PREVIOUS_VERSION=$previous_version" "PREVIOUS_IMAGE=$previous_image" \
  "PREVIOUS_MIGRATE_IMAGE=$previous_migrate_image" "FILES_DIGEST=$(installed_files_digest)" "${switch_settings[@]}"

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
