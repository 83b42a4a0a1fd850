#!/usr/bin/env bash
# Receives the app's .env on stdin (mode 600, never on a command line) under the release lock, and never
# moves traffic itself: while a release is live, changed settings are staged as .env.next and take effect
# at the update's one cutover (up.sh, which runs after every change of settings), with whatever version it
# starts. Before the first release they are installed as .env at once: nothing serves yet.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags env.sh "app-dir project $(release_lock_flag_names)" "$@"
begin_step

umask 077
mkdir -p "$APP_DIR"
candidate="$(mktemp "$APP_DIR/.env.XXXXXX")"
PARTIAL_FILE="$candidate"
cat >"$candidate"
[[ -s "$candidate" ]] || die "received an empty .env on stdin; nothing was changed"
# Line numbers only: a line of .env may hold a secret.
malformed="$(grep -nvE "^[A-Z_][A-Z0-9_]*='[^']*'$" "$candidate" | cut -d: -f1 | paste -sd, || true)"
[[ -z "$malformed" ]] || die ".env on stdin: allowed KEY='value' lines; received other lines ($malformed); nothing was changed"

acquire_release_lock "${FLAGS[release]}" "${FLAGS[lock-timeout-seconds]}" env
if [[ -f "$APP_DIR/.env" ]] && cmp -s "$candidate" "$APP_DIR/.env"; then
  rm -f "$APP_DIR/.env.next"
  echo ".env unchanged"
elif [[ -n "$(live APP_IMAGE)" ]]; then
  mv -f "$candidate" "$APP_DIR/.env.next"
  echo "new settings staged: they take effect when the release switches colours"
else
  mv -f "$candidate" "$APP_DIR/.env"
  echo ".env installed"
fi
