#!/usr/bin/env bash
# Releases the new image on the stage's Swarm, with the new settings if env.sh staged any: `docker stack deploy`
# replaces the app's tasks one at a time, each new one started beside the old and health-gated before the old one
# stops, on whichever hosts Swarm runs them; the proxy runs on every host. Waits until every task runs the release:
# then records it. If a new task never turns healthy, Swarm rolls the app back by itself: the step then fails
# naming both versions, with the settings that serve put back. The last step of every update of the server.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
parse_flags swarm-up.sh "app-dir project $(release_lock_flag_names) version app-image migrate-image timeout-seconds \
  monitor-seconds" "$@"
begin_step
version="${FLAGS[version]}" app_image="${FLAGS[app-image]}" migrate_image="${FLAGS[migrate-image]}"
timeout="${FLAGS[timeout-seconds]}" monitor="${FLAGS[monitor-seconds]}" release="${FLAGS[release]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$app_image"
require_digest_ref MIGRATE_IMAGE "$migrate_image"
require_number TIMEOUT_SECONDS "$timeout" 10 86400
require_number MONITOR_SECONDS "$monitor" 1 3600
service="${PROJECT}_app" env_file="$APP_DIR/.env" stack_env="$APP_DIR/.env.stack"
# The labels of the app's containers (components/swarm_files.py): the release and the settings a task runs.
release_label=org.kametrix.release settings_label=org.kametrix.settings

acquire_release_lock "$release" "${FLAGS[lock-timeout-seconds]}" up
live_image="$(live APP_IMAGE)" live_version="$(live VERSION)"
if [[ "$live_image" == "$app_image" ]]; then
  previous_version="$(live PREVIOUS_VERSION)" previous_image="$(live PREVIOUS_IMAGE)"
  previous_migrate_image="$(live PREVIOUS_MIGRATE_IMAGE)"
else
  previous_version="$live_version" previous_image="$live_image" previous_migrate_image="$(live MIGRATE_IMAGE)"
fi

# Puts the serving settings back as .env; the new ones stay staged, so the update's next run tries them again.
restore_settings() {
  if [[ -f "$env_file.previous" ]]; then
    [[ ! -f "$env_file" ]] || mv -f "$env_file" "$env_file.next"
    mv -f "$env_file.previous" "$env_file"
  fi
}
undo_deploy() {
  rm -f "$stack_env"
  restore_settings
}
# A step killed outright left .env ahead of what serves: put it back in line first.
restore_settings
UNDO=undo_deploy
if [[ -f "$env_file.next" ]]; then
  mv -f "$env_file" "$env_file.previous"
  mv -f "$env_file.next" "$env_file"
  echo "deploying with the new settings"
fi
# `docker stack deploy` takes an env_file's values literally, quotes included: it reads them unquoted, for the
# deploy only.
(umask 077 && sed -E "s/^([A-Z_][A-Z0-9_]*)='(.*)'$/\1=\2/" "$env_file" >"$stack_env")
export APP_IMAGE="$app_image" MIGRATE_IMAGE="$migrate_image" KAMETRIX_RELEASE="$release"
KAMETRIX_SETTINGS="$(sha256sum <"$env_file" | cut -c1-16)"
export KAMETRIX_SETTINGS
# PostgreSQL is the compose project's own; a one-host layout's app colours and proxy leave it here, before the
# Swarm's proxy takes their port.
compose up --detach --wait --remove-orphans postgres
docker stack deploy --compose-file "$APP_DIR/swarm-stack.yml" --prune --with-registry-auth "$PROJECT"
rm -f "$stack_env"

# What Swarm says of the app: the release and settings of its spec, and its update's state and message.
service_state() {
  docker service inspect --format "{{index .Spec.TaskTemplate.ContainerSpec.Labels \"$release_label\"}}|{{index .Spec.TaskTemplate.ContainerSpec.Labels \"$settings_label\"}}|{{.Spec.Mode.Replicated.Replicas}}|{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.Message}}{{else}}|{{end}}" "$service"
}
# Each task Swarm wants running: its state, and the release and settings it runs.
tasks_of_release() {
  local ids
  mapfile -t ids < <(docker service ps --quiet --filter desired-state=running "$service")
  ((${#ids[@]} > 0)) || return 0
  docker inspect --type task --format "{{.Status.State}}|{{index .Spec.ContainerSpec.Labels \"$release_label\"}}|{{index .Spec.ContainerSpec.Labels \"$settings_label\"}}" "${ids[@]}"
}
# Why the last tasks stopped, as Swarm tells it.
last_failures() {
  docker service ps --no-trunc --filter desired-state=shutdown --format '{{.Node}} {{.CurrentState}}: {{.Error}}' "$service" |
    grep -v ': $' | head -n 3 || true
}
# A task Swarm placed on a host that then went down, before the task started: Swarm's update waits for it to start
# until that host is back (or a day has passed). Prints the host's node ID.
stalled_on() {
  local down ids
  mapfile -t down < <(docker node ls --format '{{.ID}} {{.Status}}' | awk '$2 == "Down" { print $1 }')
  ((${#down[@]} > 0)) || return 1
  mapfile -t ids < <(docker service ps --quiet "$service")
  docker inspect --type task --format '{{.NodeID}} {{.Status.State}}' "${ids[@]}" |
    awk -v down=" ${down[*]} " 'index(down, " " $1 " ") && $2 ~ /^(new|pending|assigned|accepted|preparing|ready|starting)$/ { print $1; exit }' |
    grep .
}
deadline=$((SECONDS + timeout)) all_ours_since="" resumed=0
while true; do
  IFS='|' read -r spec_release spec_settings replicas update message < <(service_state)
  mapfile -t tasks < <(tasks_of_release)
  ours="$(printf '%s\n' "${tasks[@]}" | grep -cxF "running|$release|$KAMETRIX_SETTINGS" || true)"
  if [[ "$spec_release|$spec_settings" == "$release|$KAMETRIX_SETTINGS" ]]; then
    if [[ "$ours" != "$replicas" || "${#tasks[@]}" != "$replicas" ]]; then
      all_ours_since=""
    elif [[ "$update" != updating ]]; then
      break
    elif [[ -z "$all_ours_since" ]]; then
      all_ours_since="$SECONDS"
    elif ((SECONDS - all_ours_since >= monitor)); then
      # Swarm keeps an update open while it cannot hear that an old task stopped on a host that is down; past
      # its monitor, every task it wants running runs the release, so no rollback can follow.
      echo "every task runs $version; Swarm still reports its update in progress (a host it cannot reach?)" >&2
      break
    fi
  elif [[ "$update" == rollback_completed ]]; then
    echo "Swarm rolled the app back: ${message:-no message}" >&2
    last_failures >&2
    [[ -n "$live_version" ]] || die "release $version was rolled back by Swarm (see above); no earlier version is recorded"
    die "release $version never turned healthy and Swarm rolled it back (see above); $live_version ($live_image) keeps serving"
  fi
  if [[ "$update" == updating ]] && ((resumed < 3)) && node="$(stalled_on)"; then
    # A new update replaces the stalled one: Swarm places its tasks on the hosts that are up.
    echo "Swarm's update waits for a task on node $node, which is down; starting it again on the hosts that are up" >&2
    docker service update --detach --force "$service" >/dev/null
    resumed=$((resumed + 1))
  fi
  if [[ "$update" == paused || "$update" == rollback_paused ]]; then
    last_failures >&2
    die "Swarm paused the app's update ($update: ${message:-no message}); see: docker service ps $service"
  fi
  if ((SECONDS >= deadline)); then
    last_failures >&2
    die "release $version did not run on all $replicas tasks within ${timeout}s ($ours do; update: ${update:-none}); see: docker service ps $service"
  fi
  sleep 1
done
rm -f "$env_file.previous"
UNDO=""
record "VERSION=$version" "APP_IMAGE=$app_image" "MIGRATE_IMAGE=$migrate_image" \
  "PREVIOUS_VERSION=$previous_version" "PREVIOUS_IMAGE=$previous_image" \
  "PREVIOUS_MIGRATE_IMAGE=$previous_migrate_image" "FILES_DIGEST=$(installed_files_digest)"
release_release_lock
echo "released $version ($app_image) on $replicas tasks"
echo "previous=$previous_version"
