# shellcheck shell=bash disable=SC2034
# Rendered by components/shared_facts.py: what the program and the workflows' scripts both know. Do not edit.
VERSION_PATTERN='^(v[0-9]+\.[0-9]+\.[0-9]+|v[0-9]{4}\.[0-9]{2}\.[0-9]{2}-[0-9a-f]{7,40}|staging-[0-9a-f]{7,40})$'
VERSION_FORMATS='v1.2.3, vYYYY.MM.DD-<short sha> or staging-<short sha>'
COMMIT_PATTERN='^[0-9a-f]{40}$'
DIGEST_PATTERN='^sha256:[0-9a-f]{64}$'
DIGEST_REF_PATTERN='^[^@[:space:]]+@sha256:[0-9a-f]{64}$'
MIGRATE_TAG_SUFFIX=-migrate
UP_STEP=server-up
STAGE_BRANCHES='production=main staging=develop'
