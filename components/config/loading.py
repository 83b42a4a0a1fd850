"""The one read of a stack's configuration: the engine's raw values in, a StackConfig or every problem out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import SecretStr, ValidationError

from components.config.cluster_policy import backup_policy, cluster_policy
from components.config.models import GitHubSettings, PlainConfig
from components.config.problems import NAMESPACE, ConfigError, Problem, dedupe, from_validation_error, full_key
from components.config.secrets import (
    ENVIRONMENT_SECRETS_KEY,
    GITHUB_ADMINISTRATION_KEYS,
    SECRET_KEYS,
    STAGING_ENVIRONMENT_SECRETS_KEY,
    Secrets,
    read_secrets,
    required_secrets,
)
from components.config.stage_policy import (
    ADMINISTERED_STAGES,
    GITHUB_ADMINISTRATOR,
    STAGES,
    Sections,
    stage_policy,
)

Stage = Literal["staging", "production", "local"]
# Keys the engine hands over as JSON text.
_OBJECT_KEYS = {
    "server",
    "image",
    "app",
    "release",
    "backup",
    "github",
    ENVIRONMENT_SECRETS_KEY,
    STAGING_ENVIRONMENT_SECRETS_KEY,
}
PROJECT_DIR = Path(__file__).resolve().parents[2]
# Keys of an earlier layout, with what took their place.
_REPLACED_KEYS = {
    "app.appPort": "the app is reached through the stage's proxy now: allowed instead app.proxyPort (where the "
    "front proxy points), app.bluePort and app.greenPort (see docs/zero-downtime.md)",
    "app.hostNetwork": "every stage runs the same topology now: a compose network, containers found by service "
    "name, ports published on 127.0.0.1 only; remove the key",
    "app.postgresPort": "PostgreSQL listens on 5432 on the stage's compose network only, where no port can clash "
    "and the live app never loses it; remove the key",
}


@dataclass(frozen=True)
class AdministeredStage:
    """Another stage's GitHub environments, declared by the administering stack as that stage's file describes."""

    stage: str
    github: GitHubSettings
    app_url: str
    secrets: Mapping[str, SecretStr]


@dataclass(frozen=True)
class StackConfig:
    stage: Stage
    stack_file: str
    plain: PlainConfig
    secrets: Secrets
    administered: tuple[AdministeredStage, ...] = field(default=())
    """The other stages whose environments this stack declares (the administrator's only)."""

    @property
    def github(self) -> GitHubSettings | None:
        """The stage's environments, where this stack declares them."""
        return self.plain.github if self.stage == GITHUB_ADMINISTRATOR else None


def load(
    stack: str,
    raw: Mapping[str, Any],
    secret_keys: set[str],
    stack_files: Mapping[str, Mapping[str, Any]] | None = None,
) -> StackConfig:
    """Validate the raw config bag of one stack (full keys `namespace:key` -> engine values). The administering
    stack also reads the `github` section and app URL of each stage it declares environments for, from that
    stage's stack file (`stack_files`: stage -> the file's `config` mapping)."""
    stack_file = f"Pulumi.{stack}.yaml"
    values, problems = _namespace_values(raw)
    if stack not in STAGES:
        problems.append(Problem("stack", f"allowed stacks: {', '.join(STAGES)}; received {stack!r}"))

    plain_values = {k: v for k, v in values.items() if k not in SECRET_KEYS}
    plain: PlainConfig | None = None
    try:
        plain = PlainConfig.model_validate(plain_values)
    except ValidationError as error:
        problems.extend(from_validation_error(error, PlainConfig, SECRET_KEYS, _REPLACED_KEYS))
    if stack in STAGES:
        problems.extend(stage_policy(stack, Sections.of(plain_values)))
    problems.extend(cluster_policy(plain_values.get("server")))
    problems.extend(backup_policy(plain_values.get("server"), plain_values.get("backup")))

    github = plain_values.get("github")
    manages_github = bool(github) and stack == GITHUB_ADMINISTRATOR
    if stack != GITHUB_ADMINISTRATOR:
        problems.extend(
            Problem(
                full_key(name),
                f"allowed only in the {GITHUB_ADMINISTRATOR} stack, which administers the GitHub repository and "
                f"declares {stack}'s environments (docs/security.md); {stack}'s jobs run without an approval, so "
                f"its stack holds no GitHub credential; received a value (not shown): remove it with "
                f"pulumi config rm -s {stack} {name}",
            )
            for name in GITHUB_ADMINISTRATION_KEYS
            if name in values
        )
    # From the raw section: a stack on App authentication is told about its App key even when another key of
    # the section is invalid.
    uses_github_app = isinstance(github, dict) and github.get("app") is not None
    backups = isinstance(plain_values.get("backup"), dict)
    secrets, secret_problems = read_secrets(
        stack,
        values,
        secret_keys,
        required_secrets(manages_github=manages_github, uses_github_app=uses_github_app, backups=backups),
    )
    release = plain_values.get("release")
    if not backups and isinstance(release, dict) and release.get("backup") == "restore-point":
        problems.append(
            Problem(
                full_key("release.backup"),
                "restore-point needs a backup repository; allowed: always, before-migrations, or restore-point "
                "with the backup section declared; received 'restore-point' without it",
            )
        )
    problems.extend(secret_problems)
    administered: list[AdministeredStage] = []
    if manages_github and plain is not None and plain.github is not None and secrets is not None:
        for stage in ADMINISTERED_STAGES:
            found, stage_problems = _administered_stage(stage, plain.github, (stack_files or {}).get(stage), secrets)
            problems.extend(stage_problems)
            administered.extend(found)

    if problems or plain is None or secrets is None:
        raise ConfigError(stack_file, dedupe(problems))
    return StackConfig(
        stage=stack,  # type: ignore[arg-type]  # checked against STAGES above
        stack_file=stack_file,
        plain=plain,
        secrets=secrets,
        administered=tuple(administered),
    )


def _administered_stage(
    stage: str, own: GitHubSettings, config: Mapping[str, Any] | None, secrets: Secrets
) -> tuple[list[AdministeredStage], list[Problem]]:
    """The stage's environments as its stack file declares them (its own stack validates every key of it)."""
    key = f"Pulumi.{stage}.yaml: {NAMESPACE}:github"
    try:
        github = GitHubSettings.model_validate((config or {})[f"{NAMESPACE}:github"])
        app_url = str((config or {})[f"{NAMESPACE}:app"]["url"])
    except (KeyError, TypeError, ValidationError):
        message = (
            f"declares {stage}'s environments, which this stack creates; allowed: a valid section, with app.url "
            f"beside it; received none or an invalid one (`pulumi preview -s {stage}` names every problem)"
        )
        return [], [Problem(key, message)]
    if (github.owner, github.repository) != (own.owner, own.repository):
        message = (
            f"allowed: this stack's repository {own.owner}/{own.repository}; received "
            f"{github.owner}/{github.repository}"
        )
        return [], [Problem(key, message)]
    return [AdministeredStage(stage, github, app_url, secrets.staging_environment)], []


def administered_stack_files() -> dict[str, Mapping[str, Any]]:
    """The `config` of each stage the administrator declares environments for, as committed beside this one."""
    files = {}
    for stage in ADMINISTERED_STAGES:
        path = PROJECT_DIR / f"Pulumi.{stage}.yaml"
        loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
        files[stage] = (loaded or {}).get("config") or {}
    return files


def load_from_engine() -> StackConfig:
    """The entry point's one read of the stack's config, from what the engine handed the program."""
    # Imported here: the rest of the config reads no Pulumi SDK, so the runner's first reads need none.
    import pulumi
    from pulumi.runtime import config as runtime_config

    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env())
    secret_keys |= {k for k in raw if runtime_config.is_config_secret(k)}
    stack = pulumi.get_stack()
    return load(stack, raw, secret_keys, administered_stack_files() if stack == GITHUB_ADMINISTRATOR else None)


def _namespace_values(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The keys of this project's namespace, without it; objects the engine passed as JSON text decoded."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in raw.items():
        namespace, _, name = key.partition(":")
        if namespace != NAMESPACE:
            continue
        if name in _OBJECT_KEYS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                shown = "a value (not shown)" if name in SECRET_KEYS else repr(value)
                problems.append(Problem(key, f"must be an object; received {shown}"))
                continue
        values[name] = value
    return values, problems
