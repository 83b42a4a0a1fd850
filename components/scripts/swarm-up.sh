#!/usr/bin/env bash
# Releases the new image on the stage's Swarm, with the stage's current settings and files: `docker stack deploy`
# replaces the app's tasks one at a time, each new one started beside the old and health-gated before the old one
# stops, on whichever hosts Swarm runs them; the proxy runs on every host. The new tasks log in to PostgreSQL as the
# colour's login role the running tasks do not use (lib/compose.sh), made able to log in with the settings' password
# first: so a new password reaches the database before any task uses it, and the running tasks keep theirs until they
# stop. Waits until every task runs the release and the old ones have stopped: then makes it the live release
# (lib/live.sh) and retires the old role. If a new task never turns healthy, Swarm rolls the app back by itself: the
# step then fails naming both versions, and the new role is retired. Already deployed as declared (an update run
# again), nothing is deployed.
# The last step of every update of a stage on Swarm, as up.sh is of one host.
set -euo pipefail
# shellcheck source=lib/step.sh
source "$(dirname "$0")/lib/step.sh"
# shellcheck source=lib/lock.sh
source "$(dirname "$0")/lib/lock.sh"
# shellcheck source=lib/live.sh
source "$(dirname "$0")/lib/live.sh"
# shellcheck source=lib/compose.sh
source "$(dirname "$0")/lib/compose.sh"
# Rendered by components/shared_facts.py, as lib/facts.sh is.
# shellcheck source=/dev/null
source "$(dirname "$0")/lib/swarm-facts.sh"
parse_flags swarm-up.sh "$SWARM_UP_FLAGS" "$@"
begin_step
read_settings
release="${FLAGS[release]}" version="${FLAGS[version]}"
app_image="${FLAGS[app-image]}" migrate_image="${FLAGS[migrate-image]}"
timeout="${FLAGS[timeout-seconds]}" monitor="${FLAGS[monitor-seconds]}"
require_version VERSION "$version"
require_digest_ref APP_IMAGE "$app_image"
require_digest_ref MIGRATE_IMAGE "$migrate_image"
require_in_range TIMEOUT_SECONDS "$timeout"
require_in_range MONITOR_SECONDS "$monitor"
service="${PROJECT}_app" stack_env="$APP_DIR/.env.stack"
settings="$(sha256sum <"$APP_DIR/.env" | cut -c1-16)"

acquire_update_lock "$release" up
live_version="$(live VERSION)" live_image="$(live APP_IMAGE)"

# What Swarm says of the app: the release, settings and colour of its spec, its tasks and its update's state and
# message; nothing before the first deploy.
service_state() {
  local labels='.Spec.TaskTemplate.ContainerSpec.Labels'
  docker service inspect --format "{{index $labels \"$RELEASE_LABEL\"}}|{{index $labels \"$SETTINGS_LABEL\"}}|{{index $labels \"$COLOUR_LABEL\"}}|{{.Spec.Mode.Replicated.Replicas}}|{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.Message}}{{else}}|{{end}}" "$service" 2>/dev/null || true
}
# Each task Swarm wants running: its state, and the release, settings and colour it runs.
tasks_of_release() {
  local ids labels='.Spec.ContainerSpec.Labels'
  mapfile -t ids < <(docker service ps --quiet --filter desired-state=running "$service")
  ((${#ids[@]} > 0)) || return 0
  docker inspect --type task --format "{{.Status.State}}|{{index $labels \"$RELEASE_LABEL\"}}|{{index $labels \"$SETTINGS_LABEL\"}}|{{index $labels \"$COLOUR_LABEL\"}}" "${ids[@]}"
}
# How many tasks Swarm is stopping still run: out of its DNS, yet a proxy may still hold their address for a moment
# (swarm-nginx.conf), so an old task serves until it has stopped.
stopping_tasks() {
  docker service ps --filter desired-state=shutdown --format '{{.CurrentState}}' "$service" | grep -c '^Running' || true
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

# The colour whose login role the app's tasks run as: as Swarm's spec says, else as recorded (neither before the
# first release); the new tasks take the other one.
IFS='|' read -r spec_release spec_settings spec_colour _ <<<"$(service_state)"
[[ " $COLOURS " == *" $spec_colour "* ]] || spec_colour=""
old="${spec_colour:-$(live LIVE_COLOUR)}"
new=blue
[[ "$old" != blue ]] || new=green
# The live release as declared, deployed with the current settings and files: an update run again after its deploy.
already_live() {
  [[ "$(live_release)" == "$release" ]] && live_settings_current &&
    [[ "$(installed_files_digest)" == "$(live FILES_DIGEST)" ]] &&
    [[ "$spec_release|$spec_settings|$spec_colour" == "$release|$settings|$(live LIVE_COLOUR)" ]]
}
undo_deploy() {
  rm -f "$stack_env"
  retire_login "$new"
}
deployed=no
if already_live; then
  new="$old"
  echo "$version is deployed on every host with the current settings and files: nothing to deploy"
else
  UNDO=undo_deploy
  # The new tasks' own copy of the settings, as a colour's on one host: what they were started with.
  replace_file "$APP_DIR/.env.$new" 600 <"$APP_DIR/.env"
  allow_login "$new" "$APP_DIR/.env.$new"
  # A one-host layout's app colours and proxy, orphans of this compose project now, leave before the Swarm's proxy
  # takes their port; PostgreSQL stays as the database step keeps it.
  POSTGRES_IMAGE="$(docker inspect --format '{{.Config.Image}}' "$(database_container)")" \
    compose up --detach --no-deps --no-recreate --remove-orphans postgres
  # `docker stack deploy` takes an env_file's values literally, quotes included: they are written unquoted, for the
  # deploy only, with the new colour's database URL as the app's.
  unquoted="s/^([A-Z_][A-Z0-9_]*)='(.*)'$/\1=\2/"
  sed -E -e "$unquoted" -e "p; s/^DATABASE_URL_${new^^}=/DATABASE_URL=/p; d" "$APP_DIR/.env.$new" |
    replace_file "$stack_env" 600
  export APP_IMAGE="$app_image" MIGRATE_IMAGE="$migrate_image" KAMETRIX_RELEASE="$release"
  export KAMETRIX_SETTINGS="$settings" KAMETRIX_COLOUR="$new"
  docker stack deploy --compose-file "$APP_DIR/swarm-stack.yml" --prune --with-registry-auth "$PROJECT"
  rm -f "$stack_env"
  deployed=yes
fi

deadline=$((SECONDS + timeout)) all_ours_since="" resumed=0
while true; do
  IFS='|' read -r spec_release spec_settings spec_colour replicas update message <<<"$(service_state)"
  mapfile -t tasks < <(tasks_of_release)
  ours="$(printf '%s\n' "${tasks[@]}" | grep -cxF "running|$release|$settings|$new" || true)"
  if [[ "$spec_release|$spec_settings|$spec_colour" == "$release|$settings|$new" ]]; then
    if [[ "$ours" != "$replicas" || "${#tasks[@]}" != "$replicas" ]]; then
      all_ours_since=""
    elif [[ "$update" != updating && "$(stopping_tasks)" == 0 ]]; then
      break
    elif [[ -z "$all_ours_since" ]]; then
      all_ours_since="$SECONDS"
    elif ((SECONDS - all_ours_since >= monitor)); then
      # Swarm keeps an update open, and an old task running, while it cannot hear that the task stopped on a host
      # that is down; past its monitor, every task it wants running runs the release, so no rollback can follow.
      echo "every task runs $version; Swarm still reports its update in progress or an old task running (a host it cannot reach?)" >&2
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
# Every task runs the release: it is live, and the old tasks' role logs in no more.
UNDO=""
[[ "$deployed" == no ]] || make_live "$version" "$app_image" "$migrate_image" "$new"
set_live "FILES_DIGEST=$(installed_files_digest)"
[[ -z "$old" || "$old" == "$new" ]] || retire_login "$old"
release_release_lock
echo "released $version ($app_image) on $replicas tasks"
echo "previous=$(live PREVIOUS_VERSION)"
