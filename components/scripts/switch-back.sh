#!/usr/bin/env bash
# Break-glass: with Actions or the state backend down, switches this stage back to the version that served before
# the live one, run on the server itself: `bash <appDir>/bin/switch-back.sh`. The release lock, the switch (health
# gate, drain, undone if it fails) and the live release, with the settings the files step installed last and the
# live colour's own settings; no migration (that version ran here, so its schema is there) and no registry (the
# prune keeps its images). Run again, it goes one release further back. It says how to bring the stack back in
# line afterwards.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
parse_flags switch-back.sh "" "$@"
use_app_dir "$(cd "$(dirname "$0")/.." && pwd)"
[[ -n "$(live VERSION)" ]] || die "no release is recorded in $APP_DIR/release.env: nothing to switch back from"
read_settings
FLAGS[app-dir]="$APP_DIR" FLAGS[project]="$PROJECT"
begin_step
live_version="$(live VERSION)" live_image="$(live APP_IMAGE)"
FLAGS[version]="$(live PREVIOUS_VERSION)" FLAGS[app-image]="$(live PREVIOUS_IMAGE)"
FLAGS[migrate-image]="$(live PREVIOUS_MIGRATE_IMAGE)"
[[ -n "${FLAGS[version]}" && -n "${FLAGS[app-image]}" && -n "${FLAGS[migrate-image]}" ]] ||
  die "no previous version with both its images is recorded in $APP_DIR/release.env; $live_version keeps serving"

acquire_release_lock "$(release_name "${FLAGS[version]}" "${FLAGS[app-image]}")" switch-back
pull_missing "${FLAGS[app-image]}"
mapfile -t switch < <(forward_flags app-dir project version app-image migrate-image)
if ! bash "$(dirname "$0")/switch.sh" "${switch[@]}" --settings live; then
  die "${FLAGS[version]} was not switched back to (see above); $live_version ($live_image) keeps serving"
fi
release_release_lock
echo "switched back to ${FLAGS[version]} (${FLAGS[app-image]}); $live_version no longer serves"
echo "the stack still pins $live_version: bring it in line with pulumi config set version ${FLAGS[version]}, commit the stack file, then pulumi up (it runs no backup and no migration: ${FLAGS[version]} already ran here)"
