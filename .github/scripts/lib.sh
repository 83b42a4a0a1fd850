# shellcheck shell=bash
# Shared by the workflow scripts in .github/scripts: arguments, step outputs, the version grammar
# and the release bot's git. Sourced, never run: it only defines functions and constants.

# What these scripts share with the program (the version, commit and digest grammars, the stages' branches),
# rendered from components/shared_facts.py by scripts/config_reference.py.
# shellcheck source=facts.sh
source "$(dirname "${BASH_SOURCE[0]}")/facts.sh"

# fail MESSAGE: an error annotation on the run, then stop.
fail() {
  printf '::error::%s\n' "$*"
  exit 1
}

# need_value FLAG VALUE: a named flag got its value.
need_value() {
  [[ -n "${2:-}" && "$2" != --* ]] || fail "$(basename "$0"): $1 needs a value"
}

# output NAME VALUE: one step output (read back as steps.<id>.outputs.NAME).
output() {
  printf '%s=%s\n' "$1" "$2" >>"${GITHUB_OUTPUT:?GITHUB_OUTPUT is not set}"
}

# branch_of_stage STAGE: the branch a stage deploys from.
branch_of_stage() {
  local pair stages=()
  for pair in $STAGE_BRANCHES; do
    if [[ "${pair%%=*}" == "$1" ]]; then
      echo "${pair#*=}"
      return 0
    fi
    stages+=("${pair%%=*}")
  done
  fail "stage: allowed ${stages[*]}; received '$1'"
}

# bot_git ARGS...: git as the release bot, authenticated with PUSH_TOKEN (the release App's
# token) through the environment, so the token is never in argv, a remote URL or .git/config.
bot_git() {
  local auth
  auth=$(printf 'x-access-token:%s' "${PUSH_TOKEN:?PUSH_TOKEN is not set}" | base64 -w0)
  echo "::add-mask::$auth"
  GIT_CONFIG_COUNT=3 \
    GIT_CONFIG_KEY_0="http.${GITHUB_SERVER_URL:?}/.extraheader" GIT_CONFIG_VALUE_0="AUTHORIZATION: basic $auth" \
    GIT_CONFIG_KEY_1=user.name GIT_CONFIG_VALUE_1="${RELEASE_BOT:?RELEASE_BOT is not set}" \
    GIT_CONFIG_KEY_2=user.email GIT_CONFIG_VALUE_2="$RELEASE_BOT@users.noreply.github.com" \
    git "$@"
}

# run_url: this workflow run, for commit messages and summaries.
run_url() {
  printf '%s/%s/actions/runs/%s' "${GITHUB_SERVER_URL:?}" "${GITHUB_REPOSITORY:?}" "${GITHUB_RUN_ID:?}"
}

# What deploy-staging attests about each image it built (staging-build), and verify-provenance requires
# before production records a digest: the type of the attestation's predicate, and the predicate.
# shellcheck disable=SC2034  # used by the scripts that source this file
STAGING_BUILD_PREDICATE_TYPE='https://github.com/kametrix-org/kametrix-deploy/blob/main/docs/security.md#staging-build-v1'

# staging_build_predicate ROLE VERSION APP_REPOSITORY COMMIT: the predicate, one line of JSON.
staging_build_predicate() {
  jq -cn --arg role "$1" --arg version "$2" --arg repository "$3" --arg commit "$4" \
    '{role: $role, version: $version, appRepository: $repository, appCommit: $commit, appBranch: "develop"}'
}

# declared_secret ENVIRONMENT NAME: where the secret NAME of a GitHub environment is kept: production's stack
# declares every environment, staging's from its stagingEnvironmentSecrets; previews and drift checks get
# PULUMI_READ_ACCESS_TOKEN as their PULUMI_ACCESS_TOKEN.
declared_secret() {
  local name="$2"
  if [[ "$1" == *-preview || "$1" == *-drift ]] && [[ "$name" == PULUMI_ACCESS_TOKEN ]]; then
    name=PULUMI_READ_ACCESS_TOKEN
  fi
  case "$1" in
    staging | staging-*) printf "the production stack's stagingEnvironmentSecrets.%s" "$name" ;;
    *) printf "the production stack's githubEnvironmentSecrets.%s" "$name" ;;
  esac
}
