#!/usr/bin/env bash
# Receives the stage's settings on stdin (never on a command line) and installs them as .env (mode 600), whole,
# under the release lock. A running colour keeps the settings it was started with (its own .env.<colour>): new
# settings take effect at the update's one cutover (up.sh), with whatever version it starts.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
parse_flags env.sh "$ENV_FLAGS" "$@"
begin_step
read_settings
# The lock first, before the input arrives: a step killed outright while it reads leaves the lock marked running, which
# the next release takes over at once; one that refuses its input ends the release's lock (lib/lock.sh).
acquire_stage_lock env

umask 077
candidate="$(mktemp "$APP_DIR/.env.partial.XXXXXX")"
PARTIAL_FILE="$candidate"
cat >"$candidate"
[[ -s "$candidate" ]] || die "received an empty .env on stdin; nothing was changed"
# Line numbers only: a line of .env may hold a secret.
malformed="$(grep -nvE "^[A-Z_][A-Z0-9_]*='[^']*'$" "$candidate" | cut -d: -f1 | paste -sd, || true)"
[[ -z "$malformed" ]] || die ".env on stdin: allowed KEY='value' lines; received other lines ($malformed); nothing was changed"

if [[ -f "$APP_DIR/.env" ]] && cmp -s "$candidate" "$APP_DIR/.env"; then
  echo ".env unchanged"
else
  mv -f "$candidate" "$APP_DIR/.env"
  echo ".env installed: the next cutover starts the app with it"
fi
PARTIAL_FILE=""
rm -f "$candidate"
# Left by the steps before each colour had its own copy of the settings, which staged them instead.
rm -f "$APP_DIR/.env.next" "$APP_DIR/.env.previous" "$APP_DIR/.env.next.held"
