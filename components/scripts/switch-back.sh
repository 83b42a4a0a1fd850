#!/usr/bin/env bash
# Break-glass: with Actions or the state backend down, switches this stage back to the version that served
# before the live one, run on the server itself: `bash <appDir>/bin/switch-back.sh`. The release lock, the
# switch (health gate, drain, undone if it fails) and the record of a release, with the project, lock and
# cutover settings the last `up` recorded; no migration (that version ran here, so its schema is there) and
# no registry (the prune keeps its images). It says how to bring the stack back in line afterwards.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags switch-back.sh "" "$@"
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
[[ -f "$LIVE_RELEASE" ]] || die "no release is recorded in $LIVE_RELEASE: nothing to switch back from"
read -r -a cutover_flags <<<"$(cutover_flag_names)"
FLAGS[app-dir]="$APP_DIR"
for name in project lock-timeout-seconds "${cutover_flags[@]}"; do
  FLAGS[$name]="$(live "$(flag_key "$name")")"
  [[ -n "${FLAGS[$name]}" ]] ||
    die "$LIVE_RELEASE lacks $(flag_key "$name"): run one release with this version of the steps first"
done
begin_step
require_cutover_flags
live_version="$(live VERSION)" live_image="$(live APP_IMAGE)" live_migrate_image="$(live MIGRATE_IMAGE)"
version="$(live PREVIOUS_VERSION)"
FLAGS[app-image]="$(live PREVIOUS_IMAGE)" FLAGS[migrate-image]="$(live PREVIOUS_MIGRATE_IMAGE)"
[[ -n "$version" && -n "${FLAGS[app-image]}" && -n "${FLAGS[migrate-image]}" ]] ||
  die "no previous version with both its images is recorded in $LIVE_RELEASE; $live_version keeps serving"
require_version PREVIOUS_VERSION "$version"
require_digest_ref PREVIOUS_IMAGE "${FLAGS[app-image]}"
require_digest_ref PREVIOUS_MIGRATE_IMAGE "${FLAGS[migrate-image]}"

acquire_release_lock "$(release_name "$version" "${FLAGS[app-image]}")" "${FLAGS[lock-timeout-seconds]}" switch-back
pull_missing "${FLAGS[app-image]}"
# Settings an update staged without reaching its cutover stay staged for it: the version switched back to
# starts with the settings that serve now.
staged="$APP_DIR/.env.next" held="$APP_DIR/.env.next.held"
[[ ! -f "$staged" ]] || mv -f "$staged" "$held"
keep_staged_settings() {
  [[ ! -f "$held" ]] || mv -f "$held" "$staged"
}
UNDO=keep_staged_settings
mapfile -t cutover < <(forward_flags app-dir project app-image migrate-image "${cutover_flags[@]}")
if ! bash "$(dirname "$0")/switch.sh" "${cutover[@]}"; then
  die "$version was not switched back to (see above); $live_version ($live_image) keeps serving"
fi
keep_staged_settings
UNDO=""
# The version switched away from becomes the previous one, so running this again switches forward.
record "VERSION=$version" "APP_IMAGE=${FLAGS[app-image]}" "MIGRATE_IMAGE=${FLAGS[migrate-image]}" \
  "PREVIOUS_VERSION=$live_version" "PREVIOUS_IMAGE=$live_image" "PREVIOUS_MIGRATE_IMAGE=$live_migrate_image"
release_release_lock
echo "switched back to $version (${FLAGS[app-image]}); $live_version no longer serves"
echo "the stack still pins $live_version: bring it in line with pulumi config set version $version, commit the stack file, then pulumi up (it runs no backup and no migration: $version already ran here)"
