#!/usr/bin/env bash
# Moves traffic to APP_IMAGE (VERSION) without a gap; the one place that decides how traffic moves. Run by up.sh
# and switch-back.sh under their release lock.
# Starts the image on the idle colour beside the live one, with a copy of the settings (--settings current: .env,
# what the stack declares; live: the live colour's own copy), waits until that colour reports a healthy, valid
# build, points the proxy at it (live.conf, then a graceful reload) and, the moment the proxy names it, makes it the
# live release (lib/live.sh). Then lets the old colour finish its requests (at most DRAIN_SECONDS) and stops it.
# A switch that fails before the proxy names the new colour is undone: the new colour is stopped and live.conf put
# back, so the proxy, its config, the live release and the running colours all name what kept serving. A failure
# after that point leaves the new release live, as the live release says.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
parse_flags switch.sh "$SWITCH_FLAGS" "$@"
begin_step
read_settings
version="${FLAGS[version]}" settings="${FLAGS[settings]}"
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"
[[ "$settings" == current || "$settings" == live ]] || die "settings: allowed current, live; received '$settings'"
proxy_dir="$APP_DIR/proxy"
declare -A health_url=([blue]="$BLUE_HEALTH_URL" [green]="$GREEN_HEALTH_URL")
# curl's exit statuses for an HTTP error (with --fail) and a timeout: the colour did answer, or hangs.
readonly CURL_HTTP_ERROR=22 CURL_TIMED_OUT=28

# Whether the proxy names COLOUR within 10 s. Asked every 0.1 s: nginx takes up a reload in a few hundredths of a
# second, and the cutover waits for this answer.
proxy_names() {
  local colour="$1" tries
  for ((tries = 0; tries < 100; tries++)); do
    [[ "$(serving_colour)" == "$colour" ]] && return 0
    sleep 0.1
  done
  return 1
}

# Puts back what this switch changed: the live colour served throughout.
undo_switch() {
  echo "undoing the switch to $new: ${old:-nothing} keeps serving" >&2
  if [[ -n "$old" ]]; then
    install -m 644 "$proxy_dir/$old.conf" "$proxy_dir/live.conf"
    reload_proxy
    proxy_names "$old" || echo "warning: the proxy does not name $old; check: docker compose logs proxy" >&2
  else
    # The first switch: no proxy ran before it, and none is left pointing at a colour that is stopped.
    compose stop proxy
    rm -f "$proxy_dir/live.conf"
  fi
  compose stop "app-$new"
  retire_login "$new"
}

# The colour taking traffic: as the proxy answers. A proxy that runs but is slow to answer (busy, reloading) is asked
# again for up to 10 s, since after a switch killed past its reload it serves another colour than the one recorded,
# and recreating that colour would fail every request until it is up. Only a proxy that still does not answer, or
# none running (the first switch), leaves it to the record.
current="$(serving_colour)"
if [[ -z "$current" && -n "$(compose ps --quiet --status running proxy 2>/dev/null)" ]]; then
  for ((tries = 0; tries < 20 && ${#current} == 0; tries++)); do
    sleep 0.5
    current="$(serving_colour)"
  done
fi
old="${current:-$(live LIVE_COLOUR)}"
new=blue
[[ "$old" != blue ]] || new=green
# A switch killed outright (no undo ran) may have left live.conf ahead of what serves: put back in line first.
if [[ -n "$current" ]] && ! cmp -s "$proxy_dir/$current.conf" "$proxy_dir/live.conf"; then
  install -m 644 "$proxy_dir/$current.conf" "$proxy_dir/live.conf"
fi
UNDO=undo_switch

# The new colour's own copy of its settings: what it was started with, whatever .env says later.
source_settings="$APP_DIR/.env"
[[ "$settings" == current ]] || source_settings="$APP_DIR/.env.$old"
[[ -f "$source_settings" ]] || die "$source_settings is missing: no settings to start $new with"
replace_file "$APP_DIR/.env.$new" 600 <"$source_settings"
if [[ -n "$old" ]] && ! cmp -s "$APP_DIR/.env.$new" "$APP_DIR/.env.$old"; then
  echo "starting $new with settings that differ from those $old runs with"
fi
allow_login "$new" "$APP_DIR/.env.$new"
# A switch killed past its reload left the idle colour running, and the proxy's old workers may still hold requests
# on it: they end before it is recreated.
[[ -z "$(service_container "app-$new" 2>/dev/null)" ]] || await_drain
COMPOSE_ENV_FILE="$APP_DIR/.env.$new" compose up --detach --no-deps --force-recreate "app-$new"
# An attempt is an HTTP answer, or a request that timed out. Until the new colour answers at all (it boots), it is
# asked again every 0.1 s, within the time its attempts may take: a release waits for the boot, not a whole interval.
answer_by=$((SECONDS + HEALTH_ATTEMPTS * HEALTH_INTERVAL_SECONDS))
attempt=0
while true; do
  asked=0
  body="$(curl --silent --fail --max-time 5 "${health_url[$new]}")" || asked=$?
  if ((asked != 0 && asked != CURL_HTTP_ERROR && asked != CURL_TIMED_OUT)); then
    ((SECONDS < answer_by)) ||
      die "$new did not answer within $((HEALTH_ATTEMPTS * HEALTH_INTERVAL_SECONDS))s: $APP_IMAGE; $new is stopped and never received a request"
    sleep 0.1
    continue
  fi
  attempt=$((attempt + 1))
  if ((asked == 0)) && grep -Eq '"valid"[[:space:]]*:[[:space:]]*true' <<<"$body"; then
    echo "healthy on $new after $attempt attempt(s): $APP_IMAGE"
    break
  fi
  if ((attempt >= HEALTH_ATTEMPTS)); then
    die "not healthy on $new after $HEALTH_ATTEMPTS attempts every ${HEALTH_INTERVAL_SECONDS}s: $APP_IMAGE (last answer: ${body:-none}); $new is stopped and never received a request"
  fi
  sleep "$HEALTH_INTERVAL_SECONDS"
done

install -m 644 "$proxy_dir/$new.conf" "$proxy_dir/live.conf"
# Starts the proxy on the first switch; the single-container layout's app, an orphan now, leaves it its port.
compose up --detach --no-deps --remove-orphans proxy
reload_proxy
if ! proxy_names "$new"; then
  compose logs --no-log-prefix --tail 5 proxy >&2 || true
  die "the proxy did not switch to $new within 10s; the switch is undone"
fi
# The point of no return: traffic goes to the new colour, and the live release says so at once.
UNDO=""
make_live "$version" "$APP_IMAGE" "$MIGRATE_IMAGE" "$new"
echo "switched to $new: $version ($APP_IMAGE)"

[[ -n "$old" ]] || exit 0
await_drain
compose stop "app-$old"
retire_login "$old"
