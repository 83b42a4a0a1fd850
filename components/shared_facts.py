"""What the program, the server's scripts and the workflows' scripts all know, written once, here: the grammar of
each value they pass each other, the ranges of the settings the server reads, the colours, each step's flags, how a
release is named and which branch each stage deploys from.

The server's scripts get them as `bin/lib/facts.sh`, rendered into every bundle (`server_files.server_files`); the
workflows' scripts as `.github/scripts/facts.sh`, written by `scripts/config_reference.py` and kept current by a unit
test. Neither writes a pattern, range, flag name or branch of its own. The program builds each step's command line
from `SCRIPT_FLAGS`, and a unit test runs those command lines against the scripts.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from pydantic import BaseModel
from pydantic.alias_generators import to_snake

from components.config import ReleaseSettings
from components.config.fields import (
    COMMIT_PATTERN,
    DATABASE_NAME_PATTERN,
    DIGEST_PATTERN,
    MIGRATE_TAG_SUFFIX,
    REQUESTER_PATTERN,
    VERSION_FORMATS,
    VERSION_PATTERN,
    Rule,
)
from components.config.stage_policy import STAGE_BRANCHES

COLOURS = ("blue", "green")
# The program's component for the release on the server, and its last step, which makes a release live.
SERVER_RELEASE = "server"
UP_STEP = f"{SERVER_RELEASE}-up"
# How a release is named: its version and the first hex digits of its app image's digest (v1.2.3@0123456789ab).
RELEASE_DIGEST_LENGTH = 12
DIGEST_REF_PATTERN = rf"^[a-z0-9][a-z0-9._:/-]*@{DIGEST_PATTERN}$"
RELEASE_PATTERN = rf"^({VERSION_PATTERN.pattern.strip('^$')})@[0-9a-f]{{{RELEASE_DIGEST_LENGTH}}}$"
URL_PATTERN = r"^http://127\.0\.0\.1:[0-9]{1,5}/[A-Za-z0-9._/?=&-]*$"
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"

# Each script's flags, in the order the program (or up.sh) writes them. Everything else a step needs it reads from the
# settings file the files step installs (SETTINGS), so a change of those settings re-runs the files step alone.
COMMON_FLAGS = ("app-dir", "project", "release")
RELEASE_FLAGS = ("version", "app-image", "migrate-image")
SCRIPT_FLAGS: Mapping[str, tuple[str, ...]] = {
    "files.sh": (*COMMON_FLAGS, "from"),
    "env.sh": COMMON_FLAGS,
    "database.sh": (*COMMON_FLAGS, "postgres-image"),
    "backup.sh": (*COMMON_FLAGS, *RELEASE_FLAGS, "backups-to-keep", "backup", "backup-on-rollback"),
    "migrate.sh": (*COMMON_FLAGS, *RELEASE_FLAGS),
    "up.sh": (*COMMON_FLAGS, *RELEASE_FLAGS),
    # Run by up.sh and switch-back.sh under their lock; `settings`: current (.env) or live (the live colour's copy).
    "switch.sh": ("app-dir", "project", *RELEASE_FLAGS, "settings"),
}
BACKUP_MODES = ("always", "before-migrations")

# The settings file's keys (`<appDir>/settings.env`, written by the files step), each with the ReleaseSettings field
# whose range bounds it (None: checked by its own grammar), and the scale from the stack's unit to the server's.
SETTINGS: Mapping[str, tuple[str | None, int]] = {
    "PROJECT": (None, 1),
    "LOCK_TIMEOUT_SECONDS": ("lock_timeout_minutes", 60),
    "IMAGES_TO_KEEP": ("images_to_keep", 1),
    "HEALTH_ATTEMPTS": ("health_attempts", 1),
    "HEALTH_INTERVAL_SECONDS": ("health_interval_seconds", 1),
    "DRAIN_SECONDS": ("drain_seconds", 1),
    "COLOUR_URL": (None, 1),
    "BLUE_HEALTH_URL": (None, 1),
    "GREEN_HEALTH_URL": (None, 1),
    "DATABASE_USER": (None, 1),
    "DATABASE_NAME": (None, 1),
    "REQUESTED_BY": (None, 1),
}
SETTINGS_FILE = "settings.env"


def release_name(version: str, app_ref: str) -> str:
    """The release a step names: `<version>@<first hex digits of the app image's digest>`."""
    return f"{version}@{app_ref.rpartition(':')[2][:RELEASE_DIGEST_LENGTH]}"


def range_of(model: type[BaseModel], field: str) -> tuple[int, int]:
    """The inclusive range a model's integer field allows, as its Rule says it."""
    rule = next(meta for meta in model.model_fields[field].metadata if isinstance(meta, Rule))
    if rule.minimum is None or rule.maximum is None:
        raise ValueError(f"{model.__name__}.{field} has no range")
    return rule.minimum, rule.maximum


def facts_sh() -> str:
    """bin/lib/facts.sh: the shared facts as shell variables (sourcing it defines them, nothing else)."""
    values: dict[str, str] = {
        "VERSION_PATTERN": VERSION_PATTERN.pattern,
        "VERSION_FORMATS": VERSION_FORMATS,
        "RELEASE_PATTERN": RELEASE_PATTERN,
        "DIGEST_REF_PATTERN": DIGEST_REF_PATTERN,
        "URL_PATTERN": URL_PATTERN,
        "PROJECT_PATTERN": PROJECT_PATTERN,
        "REQUESTER_PATTERN": f"^{REQUESTER_PATTERN}$",
        "DATABASE_NAME_PATTERN": f"^{DATABASE_NAME_PATTERN}$",
        "COLOURS": " ".join(COLOURS),
        "BACKUP_MODES": " ".join(BACKUP_MODES),
        "SETTINGS_FILE": SETTINGS_FILE,
        "SETTINGS_KEYS": " ".join(SETTINGS),
    }
    backups_low, backups_high = range_of(ReleaseSettings, "backups_to_keep")
    values["BACKUPS_TO_KEEP_RANGE"] = f"{backups_low} {backups_high}"
    for key, (field, scale) in SETTINGS.items():
        if field is not None:
            low, high = range_of(ReleaseSettings, field)
            values[f"{key}_RANGE"] = f"{low * scale} {high * scale}"
    for script, flags in SCRIPT_FLAGS.items():
        values[f"{to_snake(script.removesuffix('.sh')).upper()}_FLAGS"] = " ".join(flags)
    return _shell_variables(values, "what the program and the server's scripts both know")


def workflow_facts_sh() -> str:
    """.github/scripts/facts.sh: what the workflows' scripts share with the program."""
    return _shell_variables(
        {
            "VERSION_PATTERN": VERSION_PATTERN.pattern,
            "VERSION_FORMATS": VERSION_FORMATS,
            "COMMIT_PATTERN": f"^{COMMIT_PATTERN}$",
            "DIGEST_PATTERN": f"^{DIGEST_PATTERN}$",
            "DIGEST_REF_PATTERN": f"^[^@[:space:]]+@{DIGEST_PATTERN}$",
            "MIGRATE_TAG_SUFFIX": MIGRATE_TAG_SUFFIX,
            "UP_STEP": UP_STEP,
            "STAGE_BRANCHES": " ".join(f"{stage}={branch}" for stage, branch in STAGE_BRANCHES.items()),
        },
        "what the program and the workflows' scripts both know",
    )


def _shell_variables(values: Mapping[str, str], what: str) -> str:
    lines = [
        "# shellcheck shell=bash disable=SC2034",
        f"# Rendered by components/shared_facts.py: {what}. Do not edit.",
        *(f"{name}={shlex.quote(value)}" for name, value in values.items()),
    ]
    return "\n".join(lines) + "\n"
