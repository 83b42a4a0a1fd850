"""The one read of a stack's configuration: the engine's raw values in, a StackConfig or every problem out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
from pydantic import ValidationError

from components.config.models import GitHubSettings, PlainConfig
from components.config.problems import NAMESPACE, ConfigError, Problem, dedupe, from_validation_error
from components.config.secrets import (
    ENVIRONMENT_SECRETS_KEY,
    SECRET_KEYS,
    Secrets,
    read_secrets,
    required_secrets,
)
from components.config.stage_policy import STAGES, Sections, stage_policy

Stage = Literal["staging", "production", "local"]
# Keys the engine hands over as JSON text.
_OBJECT_KEYS = {"server", "image", "app", "release", "github", ENVIRONMENT_SECRETS_KEY}
# Keys of an earlier layout, with what took their place.
_REPLACED_KEYS = {
    "app.appPort": "the app is reached through the stage's proxy now: allowed instead app.proxyPort (where the "
    "front proxy points), app.bluePort and app.greenPort (see docs/zero-downtime.md)",
    "app.hostNetwork": "every stage runs the same topology now: a compose network, containers found by service "
    "name, ports published on 127.0.0.1 only; remove the key",
}


@dataclass(frozen=True)
class StackConfig:
    stage: Stage
    stack_file: str
    plain: PlainConfig
    secrets: Secrets

    @property
    def github(self) -> GitHubSettings | None:
        return self.plain.github


def load(stack: str, raw: Mapping[str, Any], secret_keys: set[str]) -> StackConfig:
    """Validate the raw config bag of one stack (full keys `namespace:key` -> engine values)."""
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

    github = plain_values.get("github")
    # From the raw section: a stack on App authentication is told about its App key even when another key of
    # the section is invalid.
    uses_github_app = isinstance(github, dict) and github.get("app") is not None
    secrets, secret_problems = read_secrets(
        stack, values, secret_keys, required_secrets(manages_github=bool(github), uses_github_app=uses_github_app)
    )
    problems.extend(secret_problems)

    if problems or plain is None or secrets is None:
        raise ConfigError(stack_file, dedupe(problems))
    return StackConfig(
        stage=stack,  # type: ignore[arg-type]  # checked against STAGES above
        stack_file=stack_file,
        plain=plain,
        secrets=secrets,
    )


def load_from_engine() -> StackConfig:
    """The entry point's one read of the stack's config, from what the engine handed the program."""
    from pulumi.runtime import config as runtime_config

    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env())
    secret_keys |= {k for k in raw if runtime_config.is_config_secret(k)}
    return load(pulumi.get_stack(), raw, secret_keys)


def _namespace_values(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The keys of this project's namespace, without it; objects the engine passed as JSON text decoded."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for full_key, value in raw.items():
        namespace, _, name = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if name in _OBJECT_KEYS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                shown = "a value (not shown)" if name in SECRET_KEYS else repr(value)
                problems.append(Problem(full_key, f"must be an object; received {shown}"))
                continue
        values[name] = value
    return values, problems
