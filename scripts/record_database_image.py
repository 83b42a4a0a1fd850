"""Records a database image in a stack file the way the program reads it: its digest under
`image.databaseDigests`, by its tag (a stage that declares `backup` runs it: app.postgresImage with pgBackRest).

Run when the building stage built one for a new app.postgresImage or a changed components/database/Dockerfile,
before production's first update with it, in a reviewed change. Recording the same digest again changes nothing;
another digest for a recorded tag is refused (exit 1). Comments and layout of the stack file are kept.

    python scripts/record_database_image.py --stack-file Pulumi.production.yaml \\
        --image "$(pulumi stack output databaseImageRef -s staging)"

The image is `<registry>/<repository>-postgres:pgbackrest-<16 hex>@sha256:<64 hex>`, as that output prints it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.config import NAMESPACE, ImageSettings
from components.config.fields import DATABASE_TAG_PATTERN, DIGEST_PATTERN
from components.database_tag import database_repository
from components.recorded_versions import RecordError, record_once
from runner.stack_file import mapping_at, stack_yaml

PINNED = re.compile(rf"(?P<repository>[^@\s]+):(?P<tag>{DATABASE_TAG_PATTERN})@(?P<digest>{DIGEST_PATTERN})")


def record(stack_file: Path, image: str) -> str:
    """Record the image in the file; returns what was done."""
    pinned = PINNED.fullmatch(image)
    if pinned is None:
        raise RecordError(
            "--image: allowed <registry>/<repository>-postgres:pgbackrest-<16 hex>@sha256:<64 hex> (pulumi stack "
            f"output databaseImageRef); received {image!r}"
        )
    yaml = stack_yaml()
    document = yaml.load(stack_file.read_text())
    config = mapping_at(document, "config", str(stack_file))
    settings = mapping_at(config, f"{NAMESPACE}:image", str(stack_file))
    registry = settings.get("registry", ImageSettings.model_fields["registry"].default)
    expected = database_repository(f"{registry}/{settings.get('repository')}")
    if pinned["repository"] != expected:
        raise RecordError(
            f"--image: allowed an image of {stack_file}'s database repository {expected} (image.registry and "
            f"image.repository, with -postgres); received {pinned['repository']}"
        )
    digests = mapping_at(settings, "databaseDigests", str(stack_file), create=True)
    why = "A database image's tag names its inputs and keeps its bytes: build the new bytes from changed inputs"
    if not record_once(digests, pinned["tag"], pinned["digest"], "image.databaseDigests", why):
        return f"{stack_file}: {pinned['tag']} is already recorded as {pinned['digest']}; nothing changed"
    with stack_file.open("w") as out:
        yaml.dump(document, out)
    return f"{stack_file}: recorded the database image {pinned['tag']}: {pinned['digest']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stack-file", type=Path, required=True, help="e.g. Pulumi.production.yaml")
    parser.add_argument("--image", required=True, help="<repository>-postgres:pgbackrest-<16 hex>@sha256:<64 hex>")
    args = parser.parse_args(argv)
    try:
        print(record(args.stack_file, args.image))
    except (RecordError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
