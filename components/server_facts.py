"""What the server's scripts and the program both know, written once, here: the grammar of each value a step
receives, the ranges of the settings the server reads, the colours, each step's flags and how a release is named.

The scripts get them as `bin/lib/facts.sh`, rendered into every bundle (`server_files.bundle`); they never write a
pattern, range or flag name of their own. The program builds each step's command line from `SCRIPT_FLAGS`, and a
unit test runs those command lines against the scripts.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from pydantic import BaseModel
from pydantic.alias_generators import to_snake

from components.config import ReleaseSettings
from components.config.fields import DATABASE_NAME_PATTERN, REQUESTER_PATTERN, VERSION_FORMATS, VERSION_PATTERN, Rule

COLOURS = ("blue", "green")
# How a release is named: its version and the first hex digits of its app image's digest (v1.2.3@0123456789ab).
RELEASE_DIGEST_LENGTH = 12
DIGEST_REF_PATTERN = r"^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$"
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
    lines = [
        "# shellcheck shell=bash disable=SC2034",
        "# Rendered by components/server_facts.py: what the program and these scripts both know. Do not edit.",
        *(f"{name}={shlex.quote(value)}" for name, value in values.items()),
    ]
    return "\n".join(lines) + "\n"
