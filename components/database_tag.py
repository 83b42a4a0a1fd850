"""The tag of the database image a stage with `backup` runs: app.postgresImage with pgBackRest added.

Named by its inputs, the base image's name and the Dockerfile, so every stage that declares the same base runs the
image built from it, and a changed Dockerfile is a new image that production records before it runs it. Read by
the stack's config checks and by the component that builds or deploys it (components/database_image.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DOCKERFILE_DIR = Path(__file__).parent / "database"
TAG_PREFIX = "pgbackrest-"


def database_tag(base_image: str) -> str:
    inputs = f"{base_image}\n".encode() + (DOCKERFILE_DIR / "Dockerfile").read_bytes()
    return TAG_PREFIX + hashlib.sha256(inputs).hexdigest()[:16]


def database_repository(app_repository: str) -> str:
    """Beside the app's `<registry>/<repository>`."""
    return f"{app_repository}-postgres"
