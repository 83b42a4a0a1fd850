"""How a problem with the stack file is told: the key, once, then what is allowed and what was received.

Every check adds to one list, and the program stops once with all of them (ConfigError), so one run of
`pulumi preview` shows everything to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

NAMESPACE = "kametrix-deploy"


def full_key(path: str) -> str:
    """`github.waitTimer` -> `kametrix-deploy:github.waitTimer`, the key as the stack file names it."""
    return f"{NAMESPACE}:{path}"


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    """What is allowed and what was received; never the key again, never a secret's value."""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    def __init__(self, stack_file: str, problems: list[Problem]) -> None:
        self.stack_file = stack_file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{stack_file}: invalid stack configuration ({len(problems)} problems):\n{lines}")


def from_validation_error(
    error: ValidationError,
    model: type[BaseModel],
    extra_top_level_keys: Iterable[str],
    replaced_keys: Mapping[str, str],
) -> list[Problem]:
    """One problem per pydantic error, keyed by its path; an unknown key gets the closest known key."""
    problems = []
    for detail in error.errors():
        loc = [str(part) for part in detail["loc"]]
        path = ".".join(loc)
        kind = detail["type"]
        if kind == "extra_forbidden" and path in replaced_keys:
            message = f"unknown key; {replaced_keys[path]}; received {loc[-1]!r}"
        elif kind == "extra_forbidden":
            known = aliases_at(model, loc[:-1]) | (set(extra_top_level_keys) if len(loc) == 1 else set())
            message = unknown_key_message(loc[-1], sorted(known))
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(detail["msg"]).removeprefix("Value error, ")
        else:
            allowed = str(detail["msg"]).removeprefix("Input should be ")
            message = f"allowed: {allowed}; received {detail['input']!r}"
        problems.append(Problem(full_key(path), message))
    return problems


def unknown_key_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}allowed: {', '.join(known)}; received {name!r}"


def aliases_at(model: type[BaseModel], loc: list[str]) -> set[str]:
    """The keys the stack file may use at `loc` inside `model` (empty where `loc` leads to no model)."""
    current: Any = model
    for part in loc:
        by_alias = {field.alias or name: field for name, field in current.model_fields.items()}
        if part not in by_alias:
            return set()
        annotation = by_alias[part].annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        current = next((c for c in candidates if issubclass(c, BaseModel)), None)
        if current is None:
            return set()
    return {field.alias or name for name, field in current.model_fields.items()}


def dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for problem in problems:
        if (problem.key, problem.message) not in seen:
            seen.add((problem.key, problem.message))
            unique.append(problem)
    return unique
