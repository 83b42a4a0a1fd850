"""What a version is, for good: its digests (and, where releases are published, its commit), recorded once.

Shared by scripts/record_release.py (workflows and terminals) and the end-to-end tests, so a version is recorded
the same way everywhere. A version already recorded with other digests or another commit is refused: a version
never changes its bytes.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from pydantic import ValidationError

from components.config import NAMESPACE, VERSION_FORMATS, VERSION_PATTERN, VersionDigests


class RecordError(Exception):
    pass


def digest_of(reference: str) -> str:
    """`sha256:<hex>` from a digest or from a reference pinned by one (`repository@sha256:<hex>`)."""
    return reference.rpartition("@")[2]


def version_digests(version: str, app: str, migrate: str) -> VersionDigests:
    if not VERSION_PATTERN.fullmatch(version):
        raise RecordError(f"--version: allowed an exact version ({VERSION_FORMATS}); received {version!r}")
    try:
        return VersionDigests.model_validate({"app": digest_of(app), "migrate": digest_of(migrate)})
    except ValidationError as error:
        problems = "; ".join(
            f"--{d['loc'][0]}-digest: {d['msg'].removeprefix('Value error, ')}" for d in error.errors()
        )
        raise RecordError(problems) from None


def record_digests(digests: MutableMapping[str, Any], version: str, recorded: VersionDigests) -> bool:
    """Add `version` to an `image.digests` mapping; False when it holds exactly these digests already."""
    existing = digests.get(version)
    wanted = recorded.model_dump()
    if existing is None:
        digests[version] = wanted
        return True
    if dict(existing) != wanted:
        raise RecordError(
            f"{NAMESPACE}:image.digests.{version} is recorded as app {existing.get('app')}, migrate "
            f"{existing.get('migrate')}; received app {recorded.app}, migrate {recorded.migrate}. A version never "
            "changes its bytes: release the new build as a new version"
        )
    return False


def record_once(recorded: MutableMapping[str, Any], key: str, value: str, path: str, why: str) -> bool:
    """Add `key: value` to the stack file's mapping at `path`; False when it holds exactly this value already, and
    refused when it holds another (`why` says what never changes)."""
    existing = recorded.get(key)
    if existing is None:
        recorded[key] = value
        return True
    if existing != value:
        raise RecordError(f"{NAMESPACE}:{path}.{key} is recorded as {existing}; received {value}. {why}")
    return False
