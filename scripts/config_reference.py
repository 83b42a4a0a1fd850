"""Writes the configuration reference (docs/configuration.md) and the stack file's JSON schema
(docs/stack-file.schema.json) from the config models in components/config/, and the facts the workflows' scripts
share with the program (.github/scripts/facts.sh, from components/shared_facts.py): nothing in them is written by
hand.

    .venv/bin/python scripts/config_reference.py           # write them
    .venv/bin/python scripts/config_reference.py --check   # exit 1, naming the file, when one is stale

tests/test_config_reference.py fails when a committed file differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from components import shared_facts  # noqa: E402  - the project root is on the path only now
from components.config import NAMESPACE, SECRET_KEYS, PlainConfig  # noqa: E402
from components.config.fields import ALLOWED, ENV_FILE_RULE  # noqa: E402
from components.config.secrets import (  # noqa: E402
    APP_SECRET_KEYS,
    ENVIRONMENT_SECRETS_KEY,
    SECRET_FORMATS,
    SECRET_PURPOSES,
    required_secrets,
    set_arguments,
    set_note,
)
from components.config.stage_policy import GITHUB_ADMINISTRATOR, REQUIRED_SECTIONS, STAGE_RULES, STAGES  # noqa: E402

REFERENCE = PROJECT_DIR / "docs" / "configuration.md"
SCHEMA = PROJECT_DIR / "docs" / "stack-file.schema.json"
WORKFLOW_FACTS = PROJECT_DIR / ".github" / "scripts" / "facts.sh"
EVERY_STAGE = "every stage"

INTRO = f"""# Configuration reference

<!-- Written by scripts/config_reference.py from components/config/; do not edit by hand.
     tests/test_config_reference.py fails when this file is stale. -->

Every key lives in the `{NAMESPACE}` namespace of `Pulumi.<stage>.yaml` and is validated once, at start-up,
before anything is declared. A bad stack file fails with every problem at once, each naming the file, the key
(once), what is allowed and what was received (never a secret's value):

```
Pulumi.production.yaml: invalid stack configuration (2 problems):
  - {NAMESPACE}:github.waitTimer: allowed: 0–43200 minutes; received 50000
  - {NAMESPACE}:githbu: unknown key; did you mean 'github'? allowed: app, commit, ...; received 'githbu'
```

Columns: **needed in** is where a key must be set (a key with a default never must), with what a stage's
policy (`components/config/stage_policy.py`) demands of it; **allowed** is what the key's own check accepts.
Values marked `PLACEHOLDER` in the committed stack files are yours to fill in.

An editor that reads JSON schemas checks a stack file as you type with
[`stack-file.schema.json`](stack-file.schema.json), written from the same models; for the YAML language
server, the first line of a stack file: `# yaml-language-server: $schema=docs/stack-file.schema.json`.
"""


def plain_schema() -> dict[str, Any]:
    schema = PlainConfig.model_json_schema(by_alias=True)
    _tidy(schema)
    return schema


def _tidy(node: Any) -> None:
    """Titles repeat the key; a map with patterned keys admits no other keys (as the model does)."""
    if isinstance(node, dict):
        node.pop("title", None)
        if "patternProperties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for value in node:
            _tidy(value)


def stack_file_schema() -> dict[str, Any]:
    plain = plain_schema()
    definitions = plain.pop("$defs")
    definitions["Secure"] = {
        "description": "A Pulumi secret: set it with `pulumi config set --secret`, never by hand.",
        "type": "object",
        "properties": {"secure": {"type": "string"}},
        "required": ["secure"],
        "additionalProperties": False,
    }
    properties = {f"{NAMESPACE}:{key}": value for key, value in plain["properties"].items()}
    for key in SECRET_KEYS:
        if key == ENVIRONMENT_SECRETS_KEY:
            secret: dict[str, Any] = {
                "anyOf": [
                    {"$ref": "#/$defs/Secure"},
                    {"type": "object", "additionalProperties": {"$ref": "#/$defs/Secure"}},
                ]
            }
        else:
            secret = {"$ref": "#/$defs/Secure"}
        properties[f"{NAMESPACE}:{key}"] = {**secret, "description": _secret_purpose(key)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{NAMESPACE} stack file (Pulumi.<stage>.yaml)",
        "description": "Written by scripts/config_reference.py from components/config/; see docs/configuration.md.",
        "type": "object",
        "properties": {
            "secretsprovider": {"type": "string"},
            "encryptionsalt": {"type": "string"},
            "config": {
                "type": "object",
                "properties": properties,
                "required": [f"{NAMESPACE}:{key}" for key in plain["required"]],
                "patternProperties": {f"^(?!{NAMESPACE}:)": {}},
                "additionalProperties": False,
            },
        },
        "required": ["config"],
        "$defs": definitions,
    }


def reference() -> str:
    schema = plain_schema()
    definitions = schema["$defs"]
    sections = [("", schema, ", ".join(STAGES))]
    sections += list(_sections(schema, "", definitions, ", ".join(STAGES)))
    out = [INTRO, "## Plain keys\n"]
    seen: dict[str, list[str]] = {}
    for path, model, _ in sections:
        seen.setdefault(json.dumps(model, sort_keys=True), []).append(path)
    written: set[str] = set()
    for path, model, stages in sections:
        identity = json.dumps(model, sort_keys=True)
        if identity in written:
            continue
        written.add(identity)
        paths = seen[identity]
        title = ", ".join(f"`{p}`" for p in paths) if path else "Top level"
        out.append(f"### {title}\n")
        if model.get("description") and path:
            out.append(f"{_one_line(model['description'])}\n")
        out.append("| key | type | default | allowed | needed in | what |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for alias, field in model["properties"].items():
            key = f"{path}.{alias}" if path else alias
            required = alias in model.get("required", [])
            needed = _needed_in(key, required, stages)
            shown = alias if len(paths) > 1 else key
            out.append(
                f"| `{shown}` | {_type(field)} | {_default(field, required)} | {_allowed(field)} | {needed} | "
                f"{_one_line(field.get('description', ''))} |"
            )
        out.append("")
    out += _secrets_table()
    return "\n".join(out)


def _sections(
    model: dict[str, Any], path: str, definitions: dict[str, Any], stages: str
) -> Iterator[tuple[str, Any, str]]:
    """Every nested model, by its dotted path, with the stages where it is needed."""
    for alias, field in model["properties"].items():
        child_path = f"{path}.{alias}" if path else alias
        reference = _model_ref(field)
        if reference is None:
            reference = _map_value_ref(field)
            child_path += ".<name>"
        if reference is None:
            continue
        child = definitions[reference]
        child_stages = stages
        if child_path in REQUIRED_SECTIONS:
            child_stages = ", ".join(REQUIRED_SECTIONS[child_path][0])
        elif alias not in model.get("required", []):
            child_stages = f"{stages} (where `{child_path}` is set)"
        yield child_path, child, child_stages
        yield from _sections(child, child_path, definitions, child_stages)


def _map_value_ref(field: dict[str, Any]) -> str | None:
    """The model each value of a map with patterned names is (`image.digests.<name>`)."""
    values = list(field.get("patternProperties", {}).values())
    return _model_ref(values[0]) if len(values) == 1 else None


def _model_ref(field: dict[str, Any]) -> str | None:
    for option in [field, *field.get("anyOf", [])]:
        if "$ref" in option:
            return str(option["$ref"]).rpartition("/")[2]
    return None


def _needed_in(key: str, required: bool, stages: str) -> str:
    needed = stages if required else ""
    if key in REQUIRED_SECTIONS:
        needed = ", ".join(REQUIRED_SECTIONS[key][0])
    rule = STAGE_RULES.get(key)
    return "; ".join(part for part in (needed, rule) if part) or "—"


def _type(field: dict[str, Any]) -> str:
    options = [o for o in field.get("anyOf", [field]) if o.get("type") != "null"]
    return " or ".join(_one_type(option) for option in options)


def _one_type(field: dict[str, Any]) -> str:
    if "$ref" in field:
        return "object"
    kind = field.get("type")
    if kind == "array":
        return f"list of {_one_type(field['items'])}"
    if kind == "object" and "patternProperties" in field:
        (value,) = field["patternProperties"].values()
        return f"map of name → {_one_type(value)}"
    return str(kind)


def _default(field: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in field:
        return "its keys' defaults" if _model_ref(field) else "empty"
    default = field["default"]
    if default is None:
        return "absent"
    if default in ([], {}):
        return "empty"
    return f"`{json.dumps(default)}`"


def _allowed(field: dict[str, Any]) -> str:
    words = []
    for option in [field, *field.get("anyOf", [])]:
        for part in (option, option.get("items", {}), option.get("propertyNames", {})):
            if ALLOWED in part:
                words.append(part[ALLOWED])
        for value in option.get("patternProperties", {}).values():
            if ALLOWED in value:
                words.append(f"values: {value[ALLOWED]}")
        if "enum" in option:
            words.append(", ".join(f"`{value}`" for value in option["enum"]))
        if option.get("type") == "boolean":
            words.append("true, false")
        if "maxItems" in option:
            words.append(f"at most {option['maxItems']}")
        if "minItems" in option:
            words.append(f"at least {option['minItems']}")
    return _one_line("; ".join(words)) or "any"


def _secrets_table() -> list[str]:
    always = set(required_secrets(manages_github=False, uses_github_app=False))
    with_token = set(required_secrets(manages_github=True, uses_github_app=False))
    with_app = set(required_secrets(manages_github=True, uses_github_app=True))
    administrator = f"{GITHUB_ADMINISTRATOR}, which administers the repository for every stage"
    lines = [
        "## Secret keys\n",
        "Each is a Pulumi secret, a top-level key of its own, set once per stage; every command prompts for the "
        "value (or reads it from stdin), so no value lands on a command line or in shell history. A secret key "
        "stored without `--secret` is refused, naming the key, never the value.\n",
        "| key | what | needed in | allowed | set it with |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in SECRET_KEYS:
        if key in always:
            needed = EVERY_STAGE
        elif key in with_token & with_app:
            needed = administrator
        elif key in with_token:
            needed = f"{administrator}, without `github.app`"
        else:
            needed = f"{administrator}, with `github.app`"
        allowed = SECRET_FORMATS[key][1] if key in SECRET_FORMATS else "a non-empty string"
        if key in APP_SECRET_KEYS:
            allowed += f"; {ENV_FILE_RULE}"
        note = set_note(key)
        how = f"`pulumi config set --secret -s STAGE {set_arguments(key)}`" + (f" ({note})" if note else "")
        lines.append(f"| `{key}` | {_secret_purpose(key)} | {needed} | {allowed} | {_one_line(how)} |")
    lines.append("")
    return lines


def _secret_purpose(key: str) -> str:
    purposes = [f"`{APP_SECRET_KEYS[key]}` in the server's `.env`"] if key in APP_SECRET_KEYS else []
    if key in SECRET_PURPOSES:
        purposes.append(SECRET_PURPOSES[key])
    return "; ".join(purposes)


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rendered() -> dict[Path, str]:
    return {
        REFERENCE: reference(),
        SCHEMA: json.dumps(stack_file_schema(), indent=2, ensure_ascii=False) + "\n",
        WORKFLOW_FACTS: shared_facts.workflow_facts_sh(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is stale")
    check = parser.parse_args().check
    stale = []
    for path, content in rendered().items():
        if path.exists() and path.read_text() == content:
            continue
        if check:
            stale.append(path.relative_to(PROJECT_DIR))
        else:
            path.write_text(content)
            print(f"wrote {path.relative_to(PROJECT_DIR)}")
    for path in stale:
        print(f"{path} is stale: run .venv/bin/python scripts/config_reference.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
