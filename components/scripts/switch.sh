#!/usr/bin/env bash
# Moves traffic to APP_IMAGE without a gap; the one place that decides how traffic moves.
# Starts the image on the idle colour beside the live one, waits until that colour reports a healthy,
# valid build, points the proxy at it (live.conf, then a graceful reload), lets the old colour finish
# its requests (at most DRAIN_SECONDS) and stops it. A colour that never turns healthy is stopped
# again and never receives a request: the live colour serves throughout.
set -euo pipefail
usage="switch.sh APP_DIR PROJECT APP_IMAGE MIGRATE_IMAGE COLOUR_URL BLUE_HEALTH_URL GREEN_HEALTH_URL ATTEMPTS INTERVAL_SECONDS DRAIN_SECONDS"
[[ $# -eq 10 ]] || { echo "error: usage: $usage (received $# arguments)" >&2; exit 1; }
APP_DIR="$1" PROJECT="$2"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
export APP_IMAGE="$3" MIGRATE_IMAGE="$4"
colour_url="$5" attempts="$8" interval="$9" drain="${10}"
declare -A health_url=([blue]="$6" [green]="$7")
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_number ATTEMPTS "$attempts" 1 600
require_number INTERVAL_SECONDS "$interval" 1 60
require_number DRAIN_SECONDS "$drain" 1 3600

# The colour the proxy sends traffic to; nothing while no proxy runs (first release, old layout).
serving() {
  curl --silent --fail --max-time 2 "$colour_url" || true
}

# The colour taking traffic: as the proxy answers, else as recorded (neither before the first switch).
current="$(serving)"
new=blue old=green
if [[ "${current:-$(live LIVE_COLOUR)}" == blue ]]; then
  new=green old=blue
fi

compose up --detach --no-deps --force-recreate "app-$new"
for ((attempt = 1; ; attempt++)); do
  if body="$(curl --silent --fail --max-time 5 "${health_url[$new]}")" &&
    grep -Eq '"valid"[[:space:]]*:[[:space:]]*true' <<<"$body"; then
    echo "healthy on $new after $attempt attempt(s): $APP_IMAGE"
    break
  fi
  if ((attempt >= attempts)); then
    compose stop "app-$new"
    die "not healthy on $new after $attempts attempts every ${interval}s: $APP_IMAGE (last answer: ${body:-none}); $new is stopped and never received a request"
  fi
  sleep "$interval"
done

install -m 644 "$APP_DIR/proxy/$new.conf" "$APP_DIR/proxy/live.conf.next"
mv -f "$APP_DIR/proxy/live.conf.next" "$APP_DIR/proxy/live.conf"
# Starts the proxy on the first switch; the single-container layout's app, an orphan now, leaves it its port.
compose up --detach --no-deps --remove-orphans proxy
compose kill --signal HUP proxy
for ((tries = 0; ; tries++)); do
  [[ "$(serving)" == "$new" ]] && break
  if ((tries >= 20)); then
    compose logs --no-log-prefix --tail 5 proxy >&2 || true
    die "the proxy did not switch to $new within 10s; both colours keep running"
  fi
  sleep 0.5
done
record "LIVE_COLOUR=$new" "${new^^}_IMAGE=$APP_IMAGE"

# After the reload, nginx renames each old worker "... is shutting down" until its last request ends.
for ((waited = 0; waited < drain; waited++)); do
  compose exec -T proxy sh -c 'grep -qs "^nginx: worker process is shutting down" /proc/[0-9]*/cmdline' || break
  sleep 1
done
compose stop "app-$old"
echo "switched to $new: $APP_IMAGE"
