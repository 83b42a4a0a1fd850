"""Changing a stack file the way an operator would by hand: the pinned version, and a released version's digests.

Comments and layout are kept (ruamel), so the change reads as a one-line diff in review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from components.config import NAMESPACE, VERSION_FORMATS, VERSION_PATTERN
from components.recorded_versions import RecordError, record_digests, version_digests


def stack_yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def mapping_at(parent: Any, key: str, where: str, create: bool = False) -> CommentedMap:
    """The mapping under `key`, made empty when `create` and it is absent."""
    if create and isinstance(parent, dict) and parent.get(key) is None:
        parent[key] = CommentedMap()
    found = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(found, dict):
        raise RecordError(f"{where}: {key} is missing or not a mapping; allowed: a stack file with that section")
    return found  # type: ignore[return-value]  # ruamel's mappings are dicts


def pin(stack_file: Path, version: str, requested_by: str | None) -> bool:
    """Pin `version` (and who asked for it) in the stack file; False when it was pinned already."""
    if not VERSION_PATTERN.fullmatch(version):
        raise RecordError(f"version: allowed an exact version ({VERSION_FORMATS}); received {version!r}")
    yaml = stack_yaml()
    document = yaml.load(stack_file.read_text())
    config = mapping_at(document, "config", str(stack_file))
    changed: bool = config.get(f"{NAMESPACE}:version") != version
    config[f"{NAMESPACE}:version"] = version
    if requested_by is not None:
        release = mapping_at(config, f"{NAMESPACE}:release", str(stack_file), create=True)
        changed = changed or release.get("requestedBy") != requested_by
        release["requestedBy"] = requested_by
    if changed:
        _write(stack_file, yaml, document)
    return changed


def pinned_version(stack_file: Path) -> str:
    config = mapping_at(stack_yaml().load(stack_file.read_text()), "config", str(stack_file))
    return str(config.get(f"{NAMESPACE}:version", ""))


def recorded_versions(stack_file: Path) -> list[str]:
    config = mapping_at(stack_yaml().load(stack_file.read_text()), "config", str(stack_file))
    image = config.get(f"{NAMESPACE}:image") or {}
    return list((image.get("digests") or {}).keys())


def recorded_app_digests(stack_file: Path) -> list[tuple[str, str]]:
    """(version, app image digest) of every version recorded under `image.digests`."""
    config = mapping_at(stack_yaml().load(stack_file.read_text()), "config", str(stack_file))
    digests = (config.get(f"{NAMESPACE}:image") or {}).get("digests") or {}
    return [(str(version), str(recorded.get("app", ""))) for version, recorded in digests.items()]


def record(stack_file: Path, version: str, app: str, migrate: str) -> bool:
    """Record `version`'s two digests under `image.digests`; False when recorded with exactly these already."""
    digests = version_digests(version, app, migrate)
    yaml = stack_yaml()
    document = yaml.load(stack_file.read_text())
    config = mapping_at(document, "config", str(stack_file))
    image = mapping_at(config, f"{NAMESPACE}:image", str(stack_file))
    changed = record_digests(mapping_at(image, "digests", str(stack_file), create=True), version, digests)
    if changed:
        _write(stack_file, yaml, document)
    return changed


def _write(stack_file: Path, yaml: YAML, document: Any) -> None:
    partial = stack_file.with_name(f".{stack_file.name}.partial")
    with partial.open("w") as handle:
        yaml.dump(document, handle)
    partial.chmod(stack_file.stat().st_mode & 0o777)
    partial.replace(stack_file)
