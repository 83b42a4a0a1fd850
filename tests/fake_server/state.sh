# shellcheck shell=bash
# The fake server's state, for the stand-ins beside this file: one file per fact in $FAKE_SERVER, which a test
# arranges and inspects. Sourcing it only defines functions. Written in bash (no Python start-up): the scripts
# call the stand-ins hundreds of times per test run.

state="$FAKE_SERVER"

# A fact's value, or DEFAULT when there is no such fact (trailing newlines dropped).
fact() {
  if [[ -f "$state/$1" ]]; then
    printf '%s' "$(<"$state/$1")"
  else
    printf '%s' "${2:-}"
  fi
}

set_fact() {
  printf '%s' "$2" >"$state/$1"
}

forget() {
  rm -f "$state/$1"
}

# Whether WORD is one of the lines of FACT.
listed() {
  local line
  [[ -f "$state/$2" ]] || return 1
  while IFS= read -r line; do
    [[ "$line" == "$1" ]] && return 0
  done <"$state/$2"
  return 1
}

# Whether DATABASE_URL_<ROLE> of the settings file SETTINGS names a role that may log in (login_<role>) with its
# password: how the app's colours and the migrations reach the database.
logs_in() {
  local settings="$1" prefix="DATABASE_URL_${2^^}='postgresql://" line url user password
  [[ -f "$settings" ]] || return 1
  while IFS= read -r line; do
    [[ "$line" == "$prefix"* ]] || continue
    url="${line#"$prefix"}"
    user="${url%%:*}" password="${url#*:}"
    password="${password%%@*}"
    [[ -n "$password" && "$(fact "login_$user")" == "$password" ]]
    return
  done <"$settings"
  return 1
}
