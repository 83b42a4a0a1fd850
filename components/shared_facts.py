"""What the program, the server's scripts and the workflows' scripts all know, written once, here: the grammar of
each value they pass each other, the ranges of the settings the server reads, the colours, each step's flags, how a
release is named and which branch each stage deploys from.

The server's scripts get them as `bin/lib/facts.sh`, rendered into every bundle (`server_files.server_files`), and a
stage on Docker Swarm's scripts what they add as `bin/lib/swarm-facts.sh` (`swarm_facts_sh`); the workflows'
scripts as `.github/scripts/facts.sh`, written by `scripts/config_reference.py` and kept current by a unit test.
Neither writes a pattern, range, flag name or branch of its own. The program builds each step's command line from
`SCRIPT_FLAGS` (and `SWARM_SCRIPT_FLAGS`), and a unit test runs those command lines against the scripts.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from pydantic import BaseModel
from pydantic.alias_generators import to_snake

from components.config import NAMESPACE, ReleaseSettings, ServerSettings
from components.config.fields import (
    COMMIT_PATTERN,
    DATABASE_NAME_PATTERN,
    DIGEST_PATTERN,
    IPV4_PATTERN,
    MIGRATE_TAG_SUFFIX,
    REQUESTER_PATTERN,
    UTC_TIME_PATTERN,
    VERSION_FORMATS,
    VERSION_PATTERN,
    Rule,
)
from components.config.stage_policy import STAGE_BRANCHES

COLOURS = ("blue", "green")
# The program's component for the release on the server, and its last step, which makes a release live.
SERVER_RELEASE = "server"
UP_STEP = f"{SERVER_RELEASE}-up"
DATABASE_STEP = f"{SERVER_RELEASE}-database"
# How a release is named: its version and the first hex digits of its app image's digest (v1.2.3@0123456789ab).
RELEASE_DIGEST_LENGTH = 12
DIGEST_REF_PATTERN = rf"^[a-z0-9][a-z0-9._:/-]*@{DIGEST_PATTERN}$"
RELEASE_PATTERN = rf"^({VERSION_PATTERN.pattern.strip('^$')})@[0-9a-f]{{{RELEASE_DIGEST_LENGTH}}}$"
URL_PATTERN = r"^http://127\.0\.0\.1:[0-9]{1,5}/[A-Za-z0-9._/?=&-]*$"
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
# The stack a release step's update comes from, in the state it is kept in (`stack_name`): Pulumi runs one update
# of a stack's state at a time.
STACK_PATTERN = r"^[a-z0-9][a-z0-9_-]*/[a-z0-9][a-z0-9_-]*@[0-9a-f]{12}$"
# The program's resource whose engine-given ID names its state (components/program.py).
STATE_MARKER = "state"
# How long a step waits for the step that runs before it to end (the release lock's mutex), and the runner for a step
# its stack's last update left running on the server.
STEP_WAIT_SECONDS = 120

# Each script's flags, in the order the program (or up.sh) writes them. Everything else a step needs it reads from the
# settings file the files step installs (SETTINGS), so a change of those settings re-runs the files step alone.
# The stage's steps (files, env, database) do not name the release: a new version runs only the release's steps.
STAGE_FLAGS = ("app-dir", "project")
COMMON_FLAGS = (*STAGE_FLAGS, "release")
RELEASE_FLAGS = ("version", "app-image", "migrate-image")
SCRIPT_FLAGS: Mapping[str, tuple[str, ...]] = {
    "files.sh": (*STAGE_FLAGS, "from"),
    "env.sh": STAGE_FLAGS,
    # `backups`: none, or the fingerprint of how PostgreSQL reaches its backup repository (BACKUP_LABEL).
    "database.sh": (*STAGE_FLAGS, "postgres-image", "backups"),
    "backup.sh": (*COMMON_FLAGS, *RELEASE_FLAGS, "backups-to-keep", "backup", "backup-on-rollback", "backups"),
    "migrate.sh": (*COMMON_FLAGS, *RELEASE_FLAGS),
    "up.sh": (*COMMON_FLAGS, *RELEASE_FLAGS),
    # Run by up.sh and switch-back.sh under their lock; `settings`: current (.env) or live (the live colour's copy).
    "switch.sh": ("app-dir", "project", *RELEASE_FLAGS, "settings"),
}
BACKUP_MODES = ("always", "before-migrations", "restore-point")
# Continuous backups (issue 18): pgBackRest in the database's image, its config installed by the database step into a
# volume the database and its scheduler share; the schedule beside it as comments pgBackRest ignores
# (`# kametrix KEY=VALUE`); the scheduler's record of what it did in a volume of its own.
BACKUP_CONFIG_DIR = "/etc/pgbackrest"
BACKUP_SCHEDULE_KEYS = (
    "ARCHIVE_TIMEOUT_SECONDS",
    "FULL_EVERY_HOURS",
    "DIFF_EVERY_HOURS",
    "DRILL_EVERY_HOURS",
    "STALE_AFTER_HOURS",
)
BACKUP_STATUS_DIR = "/var/lib/kametrix-backup"
SCHEDULER_SERVICE = "backup-scheduler"
# The label that says how the running PostgreSQL reaches its repository: another value means it must be recreated.
BACKUP_LABEL = "org.kametrix.backup-repository"
# What the release marks before it migrates; restore --before-release VERSION goes back to it.
RESTORE_POINT_PREFIX = "kametrix-before-"
# A pg_dump backup in <appDir>/backups: the UTC time it was taken, then what it was taken for (lib/dump.sh), which
# bin/restore-dump.sh restores.
DUMP_NAME_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._+-]+\.dump$"
# The break-glass restore's one target (bin/restore.sh and `python -m runner restore`).
RESTORE_TARGETS = ("latest", "time", "before-release")

# A stage on Docker Swarm (docs/swarm.md): the flags of the scripts its cluster's steps ship to each host, of its
# release's `up` and of the status the runner asks for; the labels the stack file sets and the scripts read; how
# long its steps wait, from the settings that bound them.
SWARM_SCRIPT_FLAGS: Mapping[str, tuple[str, ...]] = {
    "swarm-init.sh": ("advertise-address", "network"),
    "swarm-tokens.sh": ("leader",),
    "swarm-join.sh": ("advertise-address", "manager-address", "node-id", "token-file"),
    "swarm-nodes.sh": ("declared", "drain-timeout-seconds"),
    "swarm-up.sh": (*COMMON_FLAGS, *RELEASE_FLAGS, "timeout-seconds", "monitor-seconds"),
    "swarm-status.sh": ("project",),
}
SWARM_TOKEN_PATTERN = r"^SWMTKN-[0-9]+-[a-z0-9]+-[a-z0-9]+$"
# The host that holds the database (a node label); which release, settings and login role (colour) an app task runs.
DATABASE_LABEL = "kametrix.database"
RELEASE_LABEL = "org.kametrix.release"
SETTINGS_LABEL = "org.kametrix.settings"
COLOUR_LABEL = "org.kametrix.colour"
# Beyond the health checks of every task, what a rolling update may take per task (starting it, Swarm's monitor, the
# two seconds a stopping task stays out of DNS) and once.
SWARM_SECONDS_PER_TASK = 15
SWARM_SECONDS_BEYOND = 60


def swarm_update_timeout(replicas: int, health_attempts: int, health_interval_seconds: int) -> int:
    """How long swarm-up.sh waits for every task to run the release: each health-gated in turn."""
    per_task = health_attempts * health_interval_seconds + SWARM_SECONDS_PER_TASK
    return replicas * per_task + SWARM_SECONDS_BEYOND


def swarm_monitor_seconds(health_interval_seconds: int) -> int:
    """How long Swarm watches a new task once it is healthy: one that fails this soon still rolls the update back."""
    return 3 * health_interval_seconds


def swarm_drain_timeout(drain_seconds: int) -> int:
    """How long swarm-nodes.sh lets a removed host's tasks finish before it leaves regardless."""
    return drain_seconds + 30


# The settings file's keys (`<appDir>/settings.env`, written by the files step), each with the ReleaseSettings field
# whose range bounds it (None: checked by its own grammar), and the scale from the stack's unit to the server's.
SETTINGS: Mapping[str, tuple[str | None, int]] = {
    "STACK": (None, 1),
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


def stack_name(stage: str, state_id: str) -> str:
    """The stack whose updates send a stage's release steps, and its state: `<project>/<stage>@<12 hex>`, from the
    ID the engine gave STATE_MARKER in that state (two states of one stack, as two backends hold, differ)."""
    return f"{NAMESPACE}/{stage}@{state_id.replace('-', '')[:12]}"


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
        "STACK_PATTERN": STACK_PATTERN,
        "STEP_WAIT_SECONDS": str(STEP_WAIT_SECONDS),
        "REQUESTER_PATTERN": f"^{REQUESTER_PATTERN}$",
        "DATABASE_NAME_PATTERN": f"^{DATABASE_NAME_PATTERN}$",
        "COLOURS": " ".join(COLOURS),
        "BACKUP_MODES": " ".join(BACKUP_MODES),
        "BACKUP_CONFIG_DIR": BACKUP_CONFIG_DIR,
        "BACKUP_SCHEDULE_KEYS": " ".join(BACKUP_SCHEDULE_KEYS),
        "BACKUP_STATUS_DIR": BACKUP_STATUS_DIR,
        "SCHEDULER_SERVICE": SCHEDULER_SERVICE,
        "BACKUP_LABEL": BACKUP_LABEL,
        "RESTORE_POINT_PREFIX": RESTORE_POINT_PREFIX,
        "RESTORE_TARGETS": " ".join(RESTORE_TARGETS),
        "DUMP_NAME_PATTERN": DUMP_NAME_PATTERN,
        "UTC_TIME_PATTERN": f"^{UTC_TIME_PATTERN}$",
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


def swarm_facts_sh() -> str:
    """bin/lib/swarm-facts.sh: what a stage on Docker Swarm's scripts add to lib/facts.sh."""
    replicas = range_of(ServerSettings, "replicas")
    attempts = range_of(ReleaseSettings, "health_attempts")
    interval = range_of(ReleaseSettings, "health_interval_seconds")
    drain = range_of(ReleaseSettings, "drain_seconds")
    values: dict[str, str] = {
        "IPV4_PATTERN": f"^{IPV4_PATTERN}$",
        "SWARM_TOKEN_PATTERN": SWARM_TOKEN_PATTERN,
        "DATABASE_LABEL": DATABASE_LABEL,
        "RELEASE_LABEL": RELEASE_LABEL,
        "SETTINGS_LABEL": SETTINGS_LABEL,
        "COLOUR_LABEL": COLOUR_LABEL,
        "TIMEOUT_SECONDS_RANGE": " ".join(
            str(swarm_update_timeout(replicas[end], attempts[end], interval[end])) for end in (0, 1)
        ),
        "MONITOR_SECONDS_RANGE": " ".join(str(swarm_monitor_seconds(seconds)) for seconds in interval),
        "DRAIN_TIMEOUT_SECONDS_RANGE": " ".join(str(swarm_drain_timeout(seconds)) for seconds in drain),
    }
    for script, flags in SWARM_SCRIPT_FLAGS.items():
        values[f"{to_snake(script.removesuffix('.sh')).upper()}_FLAGS"] = " ".join(flags)
    return _shell_variables(values, "what a stage on Docker Swarm's scripts add to lib/facts.sh")


def script_words(script: str, values: Mapping[str, str]) -> list[str]:
    """`--flag value` for exactly the flags `script` takes, in its order; anything else is the program's mistake."""
    names = {**SCRIPT_FLAGS, **SWARM_SCRIPT_FLAGS}[script]
    if tuple(values) != names:
        raise RuntimeError(f"{script} takes {names}; the program gives {tuple(values)}")
    return [part for name, value in values.items() for part in (f"--{name}", value)]


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
