#!/usr/bin/env bash
# Break-glass: with Actions or the state backend down, switches this stage back to the version that served
# before the live one, run on the server itself: `bash <appDir>/bin/switch-back.sh`. Same release lock, health
# gate and drain as a release (switch.sh), no migration (that version ran here, so its schema is there) and no
# registry (the prune keeps its images). It says how to bring the stack back in line afterwards.
set -euo pipefail
[[ $# -eq 0 ]] || { echo "error: usage: switch-back.sh (no arguments; received $# arguments)" >&2; exit 1; }
APP_DIR="$(cd "$(dirname "$0")/.." && pwd)" PROJECT=""
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
[[ -f "$LIVE_RELEASE" ]] || die "no release is recorded in $LIVE_RELEASE: nothing to switch back from"
PROJECT="$(live PROJECT)" stale="$(live STALE_SECONDS)"
live_version="$(live VERSION)" live_image="$(live APP_IMAGE)" live_migrate_image="$(live MIGRATE_IMAGE)"
version="$(live PREVIOUS_VERSION)" app_image="$(live PREVIOUS_IMAGE)" migrate_image="$(live PREVIOUS_MIGRATE_IMAGE)"
read -r -a cutover <<<"$(live CUTOVER)"
[[ -n "$PROJECT" && -n "$stale" && ${#cutover[@]} -eq 6 ]] ||
  die "$LIVE_RELEASE lacks PROJECT, STALE_SECONDS or CUTOVER: run one release with this version of the steps first"
[[ -n "$version" && -n "$app_image" && -n "$migrate_image" ]] ||
  die "no previous version with both its images is recorded in $LIVE_RELEASE; $live_version keeps serving"
require_digest_ref PREVIOUS_IMAGE "$app_image"
require_digest_ref PREVIOUS_MIGRATE_IMAGE "$migrate_image"

acquire_release_lock "switch-back@$(date -u +%Y%m%dT%H%M%SZ)" "$stale"
pull_missing "$app_image"
if ! "$(dirname "$0")/switch.sh" "$APP_DIR" "$PROJECT" "$app_image" "$migrate_image" "${cutover[@]}"; then
  die "$version was not switched back to (see above); $live_version ($live_image) keeps serving"
fi
# The version switched away from becomes the previous one, so running this again switches forward.
record "VERSION=$version" "APP_IMAGE=$app_image" "MIGRATE_IMAGE=$migrate_image" \
  "PREVIOUS_VERSION=$live_version" "PREVIOUS_IMAGE=$live_image" "PREVIOUS_MIGRATE_IMAGE=$live_migrate_image"
release_release_lock
echo "switched back to $version ($app_image); $live_version no longer serves"
echo "the stack still pins $live_version: bring it in line with pulumi config set version $version, commit the stack file, then pulumi up (it runs no backup and no migration: $version already ran here)"
