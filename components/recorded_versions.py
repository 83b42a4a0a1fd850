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


def record_commit(releases: MutableMapping[str, Any], version: str, commit: str) -> bool:
    """Add `version` to a `github.releases` mapping; False when it holds exactly this commit already."""
    existing = releases.get(version)
    if existing is None:
        releases[version] = commit
        return True
    if existing != commit:
        raise RecordError(
            f"{NAMESPACE}:github.releases.{version} is recorded with commit {existing}; received {commit}. "
            "A published version keeps its commit: release the new commit as a new version"
        )
    return False


def record_database_digest(digests: MutableMapping[str, Any], tag: str, digest: str) -> bool:
    """Add `tag` to an `image.databaseDigests` mapping; False when it holds exactly this digest already."""
    existing = digests.get(tag)
    if existing is None:
        digests[tag] = digest
        return True
    if existing != digest:
        raise RecordError(
            f"{NAMESPACE}:image.databaseDigests.{tag} is recorded as {existing}; received {digest}. A database "
            "image's tag names its inputs and keeps its bytes: build the new bytes from changed inputs"
        )
    return False
