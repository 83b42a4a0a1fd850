# shellcheck shell=bash
# The stage's compose project and its database: the compose invocation, images pinned by digest, and the login roles.
# Each colour of the app and the migrations log in to PostgreSQL as a role of their own (<user>_blue, <user>_green,
# <user>_migrate), each a member of the database's owner <user> acting as it: a colour's role gets the stage's
# password when that colour starts and stops logging in once it stops, so a new password is taken up at a cutover
# and no moment exists where the serving app and the database disagree.
# Sourcing it only defines functions. Needs lib/step.sh and the settings (read_settings).

# The stage's compose project; APP_IMAGE, MIGRATE_IMAGE and POSTGRES_IMAGE in the environment pin the images of the
# services that are started (a command that starts none needs none). Compose reads its variables from
# COMPOSE_ENV_FILE (default: the stage's current settings, .env).
compose() {
  APP_IMAGE="${APP_IMAGE:-none}" MIGRATE_IMAGE="${MIGRATE_IMAGE:-none}" POSTGRES_IMAGE="${POSTGRES_IMAGE:-none}" \
    docker compose --project-name "$PROJECT" --project-directory "$APP_DIR" \
    --file "$APP_DIR/docker-compose.yml" --env-file "${COMPOSE_ENV_FILE:-$APP_DIR/.env}" "$@"
}

# A graceful reload of the proxy: SIGHUP to nginx's master, the container's first process, sent from inside the
# container. Not `docker kill --signal HUP`: dockerd counts any signal it sends as a stop by hand, and a container
# stopped by hand is one `restart: unless-stopped` never starts again after dockerd or the host restarts.
reload_proxy() {
  service_exec proxy sh -c 'kill -HUP 1'
}

# Pulls an image pinned by digest unless the host has it already: a digest always names the same image.
pull_missing() {
  docker image inspect "$1" >/dev/null 2>&1 || docker pull --quiet "$1"
}

# Lets the proxy's old workers finish the requests they hold on the colour a reload moved traffic away from: at most
# DRAIN_SECONDS. After a reload, nginx renames each old worker "... is shutting down" until its last request ends.
await_drain() {
  local waited
  for ((waited = 0; waited < DRAIN_SECONDS; waited++)); do
    service_exec proxy sh -c 'grep -qs "^nginx: worker process is shutting down" /proc/[0-9]*/cmdline' || return 0
    sleep 1
  done
}

# Waits until dockerd answers, for DOCKER_WAIT_SECONDS at most (it restarts in seconds); fails if it does not.
await_docker() {
  local deadline=$((SECONDS + ${DOCKER_WAIT_SECONDS:-60}))
  until docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || {
      echo "dockerd has not answered for ${DOCKER_WAIT_SECONDS:-60}s" >&2
      return 1
    }
    sleep 1
  done
}

# The database's container, running or not; empty when there is none.
database_container() {
  service_container postgres --all 2>/dev/null
}

# The container of SERVICE as compose labelled it, running (or with --all, any): not a one-off one of `compose run`.
# Asked of docker, not of compose, which loads the project first.
service_container() {
  docker ps "${@:2}" --quiet --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --filter label=com.docker.compose.oneoff=False | head -n 1
}

# Runs SQL from stdin as the database's owner, over its local socket inside its container (no password there).
#   sql [--pass VARIABLE] [--database NAME] [psql arguments...]
#   --pass: hand this variable of ours to psql's environment; --database: another database than the stage's
sql() {
  local exec_options=() database=""
  if [[ "${1:-}" == --pass ]]; then
    exec_options=(--env "$2")
    shift 2
  fi
  if [[ "${1:-}" == --database ]]; then
    database="$2"
    shift 2
  fi
  # shellcheck disable=SC2016 # expands in the container
  service_exec postgres "${exec_options[@]}" \
    sh -c 'database="${1:-$POSTGRES_DB}" && shift && exec psql -XAtq -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$database" "$@"' \
    psql "$database" "$@"
}

# Runs COMMAND in the running container of SERVICE, stdin attached: service_exec SERVICE [--env NAME] COMMAND...
# `docker exec` takes half the time of `docker compose exec`, and a release runs a dozen of them.
service_exec() {
  local service="$1" options=() container
  shift
  while [[ "${1:-}" == --env ]]; do
    options+=("$1" "$2")
    shift 2
  done
  container="$(service_container "$service")"
  [[ -n "$container" ]] || {
    echo "service \"$service\" is not running" >&2
    return 1
  }
  docker exec --interactive "${options[@]}" "$container" "$@"
}

# Waits until PostgreSQL accepts connections; it is never created or changed here (database.sh does that).
require_database() {
  local tries
  for ((tries = 0; tries < 60; tries++)); do
    # shellcheck disable=SC2016 # expands in the container
    service_exec postgres sh -c 'pg_isready -q -U "$POSTGRES_USER" -d "$POSTGRES_DB"' 2>/dev/null && return 0
    sleep 1
  done
  die "PostgreSQL of $PROJECT does not accept connections (the database step starts it; check: docker compose logs postgres)"
}

login_role() {
  echo "${DATABASE_USER}_$1"
}

# Creates the login roles that are missing, each unable to log in until a step lets it; one psql for all of them.
ensure_login_roles() {
  local roles=() role
  for role in $COLOURS migrate; do
    roles+=("$(login_role "$role")")
  done
  sql -v roles="${roles[*]}" -v owner="$DATABASE_USER" <<'SQL'
SELECT format('CREATE ROLE %I NOLOGIN IN ROLE %I', name, :'owner')
  FROM unnest(string_to_array(:'roles', ' ')) AS name
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \gexec
SELECT format('ALTER ROLE %I SET role = %I', name, :'owner') FROM unnest(string_to_array(:'roles', ' ')) AS name \gexec
SQL
}

# Lets ROLE log in with the password of the settings file ENV_FILE (.env, or a colour's copy of it). The password
# travels in the environment of the exec, never on a command line, and is never printed.
allow_login() {
  local role="$1" env_file="$2"
  KAMETRIX_LOGIN_PASSWORD="$(sed -n "s/^POSTGRES_PASSWORD='\(.*\)'$/\1/p" "$env_file")" \
    sql --pass KAMETRIX_LOGIN_PASSWORD -v role="$(login_role "$role")" >/dev/null <<'SQL'
\getenv password KAMETRIX_LOGIN_PASSWORD
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SQL
}

retire_login() {
  sql -v role="$(login_role "$1")" <<<'ALTER ROLE :"role" NOLOGIN;'
}

# An UNDO for a step that let the migrations' role log in.
retire_migrations_login() {
  retire_login migrate
}

# Stops every colour but the live one: what a switch killed outright may have left running. Never the colour the
# proxy sends traffic to, whatever the record says: `up` puts the two in line.
stop_stray_colours() {
  local live colour
  live="$(live LIVE_COLOUR)"
  [[ -n "$live" ]] || return 0
  for colour in $COLOURS; do
    [[ "$colour" != "$live" && -n "$(service_container "app-$colour" 2>/dev/null)" ]] || continue
    if [[ "$(serving_colour)" == "$colour" ]]; then
      echo "warning: app-$colour is not the recorded live colour ($live), but the proxy sends traffic to it: left running" >&2
      continue
    fi
    echo "stopping app-$colour: a switch that did not finish left it running" >&2
    compose stop "app-$colour"
    retire_login "$colour"
  done
}
