"""Records a version in a stack file the way the program reads it: its app and migrate digests under
`image.digests`, and with --commit its commit under `github.releases` (stages that publish releases).

Run once when a version first becomes releasable: after staging's build pushed it, before production's first
update with it. Recording the same values again changes nothing; other values for a recorded version are refused
(exit 1), so a version always means the same bytes. Comments and layout of the stack file are kept.

    python scripts/record_release.py --stack-file Pulumi.production.yaml --version v1.4.3 \\
        --app-digest sha256:<64 hex> --migrate-digest sha256:<64 hex> [--commit <40 hex>]

A digest may also be given as `repository@sha256:<64 hex>`, as `pulumi stack output imageRef` prints it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.config import NAMESPACE
from components.config.fields import COMMIT_PATTERN
from components.recorded_versions import RecordError, record_digests, record_once, version_digests
from runner.stack_file import mapping_at, stack_yaml

COMMIT = re.compile(COMMIT_PATTERN)


def record(stack_file: Path, version: str, app: str, migrate: str, commit: str | None) -> str:
    """Record the version in the file; returns what was done."""
    digests = version_digests(version, app, migrate)
    if commit is not None and not COMMIT.fullmatch(commit):
        raise RecordError(f"--commit: allowed a full 40-character lowercase git SHA; received {commit!r}")
    yaml = stack_yaml()
    document = yaml.load(stack_file.read_text())
    config = mapping_at(document, "config", str(stack_file))
    image = mapping_at(config, f"{NAMESPACE}:image", str(stack_file))
    changed = record_digests(mapping_at(image, "digests", str(stack_file), create=True), version, digests)
    if commit is not None and "build" in image:
        raise RecordError(
            f"--commit: allowed only for a stage that publishes releases; {stack_file} builds its versions "
            f"(image.build) and publishes none; received {commit}"
        )
    if commit is not None:
        github = mapping_at(config, f"{NAMESPACE}:github", str(stack_file))
        releases = mapping_at(github, "releases", str(stack_file), create=True)
        changed |= record_once(
            releases, version, commit, "github.releases",
            "A published version keeps its commit: release the new commit as a new version",
        )  # fmt: skip
    if not changed:
        return f"{stack_file}: {version} is already recorded with these values; nothing changed"
    with stack_file.open("w") as out:
        yaml.dump(document, out)
    return f"{stack_file}: recorded {version}: app {digests.app}, migrate {digests.migrate}" + (
        f", commit {commit}" if commit else ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stack-file", type=Path, required=True, help="e.g. Pulumi.production.yaml")
    parser.add_argument("--version", required=True, help="the exact version, e.g. v1.4.3 or staging-3f9c2a1")
    parser.add_argument("--app-digest", required=True, help="sha256:<64 hex> (or repository@sha256:<64 hex>)")
    parser.add_argument("--migrate-digest", required=True, help="sha256:<64 hex> (or repository@sha256:<64 hex>)")
    parser.add_argument("--commit", help="the app commit; recorded under github.releases (production)")
    args = parser.parse_args(argv)
    try:
        print(record(args.stack_file, args.version, args.app_digest, args.migrate_digest, args.commit))
    except (RecordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
