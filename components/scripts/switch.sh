#!/usr/bin/env bash
# Moves traffic to APP_IMAGE without a gap; the one place that decides how traffic moves.
# Starts the image on the idle colour beside the live one, with the settings env.sh staged (.env.next) if
# any, waits until that colour reports a healthy, valid build, points the proxy at it (live.conf, then a
# graceful reload), lets the old colour finish its requests (at most DRAIN_SECONDS) and stops it.
# A switch that fails at any point is undone: the new colour is stopped, live.conf and .env are put back
# and the proxy reloaded, so the proxy, its config, the record and the running colours all name the
# version that kept serving, also after a restart of the proxy.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags switch.sh "app-dir project app-image migrate-image $(cutover_flag_names)" "$@"
begin_step
export APP_IMAGE="${FLAGS[app-image]}" MIGRATE_IMAGE="${FLAGS[migrate-image]}"
colour_url="${FLAGS[colour-url]}" attempts="${FLAGS[health-attempts]}"
interval="${FLAGS[health-interval-seconds]}" drain="${FLAGS[drain-seconds]}"
declare -A health_url=([blue]="${FLAGS[blue-health-url]}" [green]="${FLAGS[green-health-url]}")
require_digest_ref APP_IMAGE "$APP_IMAGE"
require_digest_ref MIGRATE_IMAGE "$MIGRATE_IMAGE"
require_cutover_flags
proxy_dir="$APP_DIR/proxy" env_file="$APP_DIR/.env"

# The colour the proxy sends traffic to; nothing while no proxy runs (first release, old layout).
serving() {
  curl --silent --fail --max-time 2 "$colour_url" || true
}

# Whether the proxy names COLOUR within 10 s.
proxy_names() {
  local colour="$1" tries
  for ((tries = 0; tries < 20; tries++)); do
    [[ "$(serving)" == "$colour" ]] && return 0
    sleep 0.5
  done
  return 1
}

# Puts back what this switch changed, newest first. The live colour served throughout.
undo_switch() {
  echo "undoing the switch to $new: $old keeps serving" >&2
  if [[ -f "$proxy_dir/live.conf.previous" ]]; then
    mv -f "$proxy_dir/live.conf.previous" "$proxy_dir/live.conf"
    compose kill --signal HUP proxy
    proxy_names "$old" || echo "warning: the proxy does not name $old; check: compose logs proxy" >&2
  elif [[ -f "$proxy_dir/live.conf" && "$proxy_took_new" == yes ]]; then
    # The first switch: no proxy ran before it, and none is left pointing at a colour that is stopped.
    compose stop proxy
    rm -f "$proxy_dir/live.conf"
  fi
  compose stop "app-$new"
  restore_settings
}

# Puts the live colour's settings back as .env. The new ones stay staged: the stack still declares them, so
# the update's next run tries them again.
restore_settings() {
  if [[ -f "$env_file.previous" ]]; then
    [[ ! -f "$env_file" ]] || mv -f "$env_file" "$env_file.next"
    mv -f "$env_file.previous" "$env_file"
  fi
}

# The colour taking traffic: as the proxy answers, else as recorded (neither before the first switch).
current="$(serving)"
[[ "$current" == blue || "$current" == green ]] || current=""
new=blue old=green
if [[ "${current:-$(live LIVE_COLOUR)}" == blue ]]; then
  new=green old=blue
fi
# A switch killed outright (no undo ran) may have left live.conf or .env ahead of what serves: both are put
# back in line with the proxy before anything else.
if [[ -n "$current" ]] && ! cmp -s "$proxy_dir/$current.conf" "$proxy_dir/live.conf"; then
  install -m 644 "$proxy_dir/$current.conf" "$proxy_dir/live.conf"
fi
rm -f "$proxy_dir/live.conf.previous"
restore_settings
proxy_took_new=no
UNDO=undo_switch

if [[ -f "$env_file.next" ]]; then
  mv -f "$env_file" "$env_file.previous"
  mv -f "$env_file.next" "$env_file"
  echo "starting $new with the new settings"
fi
compose up --detach --no-deps --force-recreate "app-$new"
for ((attempt = 1; ; attempt++)); do
  if body="$(curl --silent --fail --max-time 5 "${health_url[$new]}")" &&
    grep -Eq '"valid"[[:space:]]*:[[:space:]]*true' <<<"$body"; then
    echo "healthy on $new after $attempt attempt(s): $APP_IMAGE"
    break
  fi
  if ((attempt >= attempts)); then
    die "not healthy on $new after $attempts attempts every ${interval}s: $APP_IMAGE (last answer: ${body:-none}); $new is stopped and never received a request"
  fi
  sleep "$interval"
done

[[ ! -f "$proxy_dir/live.conf" ]] || cp -p "$proxy_dir/live.conf" "$proxy_dir/live.conf.previous"
install -m 644 "$proxy_dir/$new.conf" "$proxy_dir/live.conf.next"
mv -f "$proxy_dir/live.conf.next" "$proxy_dir/live.conf"
proxy_took_new=yes
# Starts the proxy on the first switch; the single-container layout's app, an orphan now, leaves it its port.
compose up --detach --no-deps --remove-orphans proxy
compose kill --signal HUP proxy
if ! proxy_names "$new"; then
  compose logs --no-log-prefix --tail 5 proxy >&2 || true
  die "the proxy did not switch to $new within 10s; the switch is undone"
fi
UNDO=""
rm -f "$proxy_dir/live.conf.previous" "$env_file.previous"
record "LIVE_COLOUR=$new" "${new^^}_IMAGE=$APP_IMAGE"

# After the reload, nginx renames each old worker "... is shutting down" until its last request ends.
for ((waited = 0; waited < drain; waited++)); do
  compose exec -T proxy sh -c 'grep -qs "^nginx: worker process is shutting down" /proc/[0-9]*/cmdline' || break
  sleep 1
done
compose stop "app-$old"
echo "switched to $new: $APP_IMAGE"
