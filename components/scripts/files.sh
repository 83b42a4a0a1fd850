#!/usr/bin/env bash
# Installs the stage's files (compose file, proxy config, scripts, settings) from FROM, where the files step
# unpacked them, under the release lock: no step of another release runs while they change. Each file is replaced
# whole, so a step that starts later reads either the old or the new file, never a mix.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
parse_flags files.sh "$FILES_FLAGS" "$@"
begin_step
from="${FLAGS[from]}"
[[ "$from" == "$APP_DIR"/.files.* && -d "$from" ]] || die "from: allowed a folder $APP_DIR/.files.*; received '$from'"
# The lock is taken with the settings being installed: their lock timeout and who asked for this release.
read_settings "$from/$SETTINGS_FILE"

acquire_stage_lock files
mapfile -d '' -t files < <(cd "$from" && find . -type f -printf '%P\0' | sort -z)
# Most files of a release are the ones installed already, with their modes: those stay as they are.
declare -A mode=() installed_mode=()
while read -r bits file; do mode["$file"]="$bits"; done < <(cd "$from" && stat -c '%a %n' -- "${files[@]}")
while read -r bits file; do installed_mode["$file"]="$bits"; done < <(cd "$APP_DIR" && stat -c '%a %n' -- "${files[@]}" 2>/dev/null)
replaced=0
for file in "${files[@]}"; do
  [[ "${installed_mode[$file]:-}" != "${mode[$file]}" ]] || ! cmp -s "$from/$file" "$APP_DIR/$file" || continue
  mkdir -p "$(dirname "$APP_DIR/$file")"
  replace_file "$APP_DIR/$file" "${mode[$file]}" <"$from/$file"
  replaced=$((replaced + 1))
done
# The digest of what `up` switches with: every file but the settings, which steps read when they run.
(cd "$from" && find . -type f ! -name "$SETTINGS_FILE" -printf '%P\0' | sort -z | xargs -0 sha256sum) | sha256sum |
  cut -d' ' -f1 | replace_file "$APP_DIR/.files-digest" 644
rm -rf "$from"
# What a files step killed outright left unpacked; a day old, so never what another release is unpacking.
find "$APP_DIR" -maxdepth 1 -name '.files.*' -mmin +1440 -exec rm -rf {} +
# What a step killed outright left half-written: no other step runs now (this one holds the mutex).
find "$APP_DIR" -maxdepth 2 -name '*.partial.*' -delete
echo "installed ${#files[@]} files ($replaced changed)"
