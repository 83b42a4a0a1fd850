"""The configuration reference and the stack file's schema are written from the config models, never by hand:
a stale copy, an undocumented key or a README that keeps its own list of keys fails here."""

from __future__ import annotations

import copy
import importlib.util
import json
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from components.config import SECRET_KEYS, PlainConfig
from tests import kit

PROJECT_DIR = Path(__file__).resolve().parent.parent
README = (PROJECT_DIR / "README.md").read_text()


def config_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", PROJECT_DIR / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    return config_reference()


def test_the_committed_reference_and_schema_are_what_the_models_write(reference: ModuleType) -> None:
    for path, content in reference.rendered().items():
        assert path.read_text() == content, f"{path.name} is stale: run .venv/bin/python scripts/config_reference.py"


def models(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """Every model under `model`, by its dotted path (a model kept in a map by name: `<name>`; in a list: `<n>`)."""
    found = [(path, model)]
    for field in model.model_fields.values():
        child = f"{path}.{field.alias}" if path else str(field.alias)
        if typing.get_origin(field.annotation) is dict:
            child += ".<name>"
        if typing.get_origin(field.annotation) is list:
            child += ".<n>"
        for candidate in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += models(candidate, child)
    return found


def test_every_key_is_described_and_listed_in_the_reference(reference: ModuleType) -> None:
    text = reference.reference()
    for path, model in models(PlainConfig):
        for name, field in model.model_fields.items():
            key = f"{path}.{field.alias}" if path else field.alias
            assert field.description, f"{key} ({model.__name__}.{name}) has no docstring: the reference would be blank"
            assert f"| `{key}` |" in text or f"| `{field.alias}` |" in text, key
    for key in SECRET_KEYS:
        assert f"| `{key}` |" in text, key


def test_the_reference_says_which_stages_need_a_key_and_what_production_demands(reference: ModuleType) -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in reference.reference().splitlines() if "| `" in line}
    assert "| staging, production |" in rows["github"]
    assert "production: exactly [main]" in rows["github.deploymentBranches"]
    assert "| staging, production, local |" in rows["version"]
    assert "| `30` | 1–3600 seconds | — |" in rows["release.drainSeconds"]
    assert "without `github.app`" in rows["githubToken"] and "with `github.app`" in rows["githubAppPrivateKey"]
    for key in ("githubToken", "githubEnvironmentSecrets", "stagingEnvironmentSecrets"):
        assert "| production, which administers the repository for every stage" in rows[key], rows[key]


def schema_problems(document: dict[str, Any]) -> list[str]:
    schema = json.loads((PROJECT_DIR / "docs" / "stack-file.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in leaves(validator, document)]


def leaves(validator: jsonschema.Draft202012Validator, document: Any) -> list[jsonschema.ValidationError]:
    """The errors an editor points at: for an optional section (`X or null`), the ones inside X."""
    found = []
    pending = list(validator.iter_errors(document))
    while pending:
        error = pending.pop()
        if error.context:
            pending.extend(error.context)
        else:
            found.append(error)
    return found


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_an_editor_accepts_every_committed_stack_file_with_the_schema(stack: str) -> None:
    assert schema_problems(kit.stack_file(stack)) == []


def test_an_editor_flags_what_the_program_refuses_with_the_schema() -> None:
    document = copy.deepcopy(kit.stack_file("production"))
    config = document["config"]
    config["kametrix-deploy:github"]["waitTimer"] = 50000
    config["kametrix-deploy:githbu"] = {}
    config["kametrix-deploy:version"] = "latest"
    config["kametrix-deploy:app"]["smtpHost"] = "smtp'.example"
    config["kametrix-deploy:postgresPassword"] = "in plaintext"
    problems = "\n".join(schema_problems(document))
    for flagged in ("github.waitTimer", "githbu", "version", "app.smtpHost", "postgresPassword"):
        assert flagged in problems, f"{flagged} not flagged:\n{problems}"


def test_the_readme_links_to_the_reference_instead_of_listing_keys() -> None:
    assert "(docs/configuration.md)" in README
    own_lists = ("(owner, repository, environment", "hostKey, appDir", "| `postgresPassword` |", "| `smtpPass` |")
    for listed in own_lists:
        assert listed not in README, f"README lists {listed!r} itself; docs/configuration.md is written from the models"
