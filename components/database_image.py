"""The database's image where the stack declares `backup`: its PostgreSQL with pgBackRest, installed by a release.

The building stage builds `components/database/Dockerfile` on `app.postgresImage` and pushes it beside the app, as
`<image.repository>-postgres:<tag>`; the other stages deploy what it pushed. The tag names the image's inputs (the
base image and the Dockerfile), so every stage that declares the same base runs the image built from it, and the
server keeps running the bytes it holds: a rollback needs no registry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker
from pydantic import SecretStr

from components.config import ImageSettings
from components.image import RegistryError, VersionNotInRegistryError, registry_error

DOCKERFILE_DIR = Path(__file__).parent / "database"
# The build context as the engine records it: relative to the project, like the app's, so that every machine that
# runs the update declares the same build.
BUILD_CONTEXT = "components/database"
TAG_PREFIX = "pgbackrest-"


def database_image_name(app_repository: str, base_image: str) -> str:
    """The image built from `base_image` beside the app's `<registry>/<repository>`: the same inputs, the same tag."""
    inputs = f"{base_image}\n".encode() + (DOCKERFILE_DIR / "Dockerfile").read_bytes()
    return f"{app_repository}-postgres:{TAG_PREFIX}{hashlib.sha256(inputs).hexdigest()[:16]}"


@dataclass(frozen=True)
class DatabaseImageArgs:
    settings: ImageSettings
    base_image: str
    """`app.postgresImage`: the PostgreSQL the image adds pgBackRest to."""
    registry_password: SecretStr
    provider: docker.Provider
    """The app image's provider: the same registry and credentials."""


class DatabaseImage(pulumi.ComponentResource):
    """`ref` is `<registry>/<repository>-postgres:pgbackrest-<inputs>`, known once the image is in the registry."""

    ref: pulumi.Output[str]

    def __init__(self, name: str, args: DatabaseImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:image:DatabaseImage", name, None, opts)
        settings = args.settings
        image_name = database_image_name(f"{settings.registry}/{settings.repository}", args.base_image)
        if settings.build is not None:
            built = docker.Image(
                f"{name}-build",
                image_name=image_name,
                build=docker.DockerBuildArgs(
                    context=BUILD_CONTEXT,
                    dockerfile=f"{BUILD_CONTEXT}/Dockerfile",
                    args={"POSTGRES_IMAGE": args.base_image},
                    platform="linux/amd64",
                ),
                registry=docker.RegistryArgs(
                    server=settings.registry,
                    username=settings.username,
                    password=pulumi.Output.secret(args.registry_password.get_secret_value()),
                ),
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
            )
            # The name, once the push is done: the database step must not ask the server to pull it before.
            self.ref = built.repo_digest.apply(lambda _: image_name)
        else:
            _check_pushed(image_name, args, pulumi.InvokeOptions(parent=self, provider=args.provider), self)
            self.ref = pulumi.Output.from_input(image_name)
        self.register_outputs({"ref": self.ref})


def _check_pushed(
    image_name: str, args: DatabaseImageArgs, lookup: pulumi.InvokeOptions, resource: pulumi.Resource
) -> None:
    """A tag the registry does not hold stops the update before the server is asked to pull it; a registry that
    cannot answer does not (the server may hold the image already)."""
    try:
        docker.get_registry_image(name=image_name, opts=lookup)
    except Exception as error:
        failure = registry_error(str(error), image_name, args.base_image, args.settings)
        if isinstance(failure, VersionNotInRegistryError):
            raise DatabaseImageMissingError(
                f"the database image {image_name} is not in the registry ({error}). Allowed: an app.postgresImage "
                f"that the building stage released with `backup` declared: it builds {image_name} from "
                f"{BUILD_CONTEXT}/Dockerfile on it. Received app.postgresImage {args.base_image!r}. Release it on the "
                "building stage first (staging), or declare the app.postgresImage of the stage that built it."
            ) from None
        pulumi.log.warn(
            f"{failure} Deploying {image_name} without the registry's word: the server pulls it only if it does "
            "not hold it yet.",
            resource,
        )


class DatabaseImageMissingError(RegistryError):
    """The database image for the stack's app.postgresImage was never built: nothing is declared on the server."""
