#!/usr/bin/env bash
# Installs the stage's files (compose file, proxy config, scripts) from FROM, where the files step unpacked
# them, under the release lock: no step of another release runs while they change. Each file is replaced
# whole, so a step that starts later reads either the old or the new file, never a mix.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags files.sh "app-dir project $(release_lock_flag_names) from" "$@"
begin_step
from="${FLAGS[from]}"
[[ "$from" == "$APP_DIR"/.files.* && -d "$from" ]] || die "from: allowed a folder $APP_DIR/.files.*; received '$from'"

acquire_release_lock "${FLAGS[release]}" "${FLAGS[lock-timeout-seconds]}" files
mapfile -d '' -t files < <(cd "$from" && find . -type f -printf '%P\0' | sort -z)
for file in "${files[@]}"; do
  mkdir -p "$(dirname "$APP_DIR/$file")"
  PARTIAL_FILE="$APP_DIR/$file.next"
  cp -p "$from/$file" "$PARTIAL_FILE"
  mv -f "$PARTIAL_FILE" "$APP_DIR/$file"
  PARTIAL_FILE=""
done
PARTIAL_FILE="$APP_DIR/.files-digest.next"
(cd "$from" && find . -type f -printf '%P\0' | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1 >"$PARTIAL_FILE"
mv -f "$PARTIAL_FILE" "$APP_DIR/.files-digest"
PARTIAL_FILE=""
rm -rf "$from"
# What a files step killed outright left unpacked; a day old, so never what another release is unpacking.
find "$APP_DIR" -maxdepth 1 -name '.files.*' -mmin +1440 -exec rm -rf {} +
echo "installed ${#files[@]} files"
