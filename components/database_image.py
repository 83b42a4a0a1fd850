"""The database's image where the stack declares `backup`: its PostgreSQL with pgBackRest, installed by a release.

The building stage builds `components/database/Dockerfile` on `app.postgresImage` and pushes it beside the app, as
`<image.repository>-postgres:<tag>`, the tag named by its inputs (components/database_tag.py). A stage deploys it
by digest, as it deploys the app: a digest recorded under `image.databaseDigests` without the registry (production
deploys only a recorded one), otherwise the one the registry names now.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
from pydantic import SecretStr

from components.config import ImageSettings
from components.database_tag import DOCKERFILE_DIR, database_repository, database_tag
from components.image import RegistryError, VersionNotInRegistryError, recorded_digest, registry_error

# The build context as the engine records it: relative to the project, like the app's, so that every machine that
# runs the update declares the same build.
BUILD_CONTEXT = DOCKERFILE_DIR.relative_to(DOCKERFILE_DIR.parents[1]).as_posix()


class DatabaseImageMissingError(RegistryError):
    """The registry holds no database image for the stack's app.postgresImage: nothing is declared on the server."""


@dataclass(frozen=True)
class DatabaseImageArgs:
    settings: ImageSettings
    base_image: str
    """`app.postgresImage`: the PostgreSQL the image adds pgBackRest to."""
    registry_password: SecretStr
    provider: docker.Provider
    """The app image's provider: the same registry and credentials."""


class DatabaseImage(pulumi.ComponentResource):
    """`ref` is `<registry>/<repository>-postgres@sha256:<digest>`, what the database step runs; `pinned` is
    `<registry>/<repository>-postgres:<tag>@sha256:<digest>`, what scripts/record_database_image.py records."""

    ref: pulumi.Output[str]
    pinned: pulumi.Output[str]

    def __init__(self, name: str, args: DatabaseImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:image:DatabaseImage", name, None, opts)
        settings = args.settings
        repository = database_repository(f"{settings.registry}/{settings.repository}")
        tag = database_tag(args.base_image)
        tagged = f"{repository}:{tag}"
        lookup = pulumi.InvokeOptions(parent=self, provider=args.provider)
        recorded = settings.database_digests.get(tag)
        digest: pulumi.Output[str]
        if recorded is not None:
            digest = pulumi.Output.from_input(_verified(tagged, recorded, args, lookup, self))
        elif settings.build is not None:
            built = docker.Image(
                f"{name}-build",
                image_name=tagged,
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
            digest = built.repo_digest.apply(lambda pushed: pushed.rpartition("@")[2])
        else:
            found = _registry_digest(tagged, args, lookup)
            pulumi.log.warn(
                f"the database image {tagged} has no digest recorded under image.databaseDigests: deploying what "
                f"the registry names now. Record it so that this stage always runs these bytes: python "
                f"scripts/record_database_image.py --stack-file STACK_FILE --image {tagged}@{found}",
                self,
            )
            digest = pulumi.Output.from_input(found)
        self.ref = digest.apply(lambda pinned: f"{repository}@{pinned}")
        self.pinned = digest.apply(lambda pinned: f"{tagged}@{pinned}")
        self.register_outputs({"ref": self.ref, "pinned": self.pinned})


def _registry_digest(tagged: str, args: DatabaseImageArgs, lookup: pulumi.InvokeOptions) -> str:
    """Asked now, so that an image never built stops the update before anything is declared on the server."""
    try:
        return _asked(tagged, args, lookup)
    except DatabaseImageMissingError as missing:
        raise DatabaseImageMissingError(
            f"{missing}. Allowed: an app.postgresImage that the building stage released with `backup` declared: "
            f"it builds {tagged} from {BUILD_CONTEXT}/Dockerfile on it. Received app.postgresImage "
            f"{args.base_image!r}. Release it on the building stage first (staging), or declare the "
            "app.postgresImage of the stage that built it."
        ) from None


def _asked(tagged: str, args: DatabaseImageArgs, lookup: pulumi.InvokeOptions) -> str:
    """The digest the registry names for the tag; a tag it does not hold, credentials it refuses and no answer at
    all told apart (components/image.registry_error)."""
    try:
        return docker.get_registry_image(name=tagged, opts=lookup).sha256_digest
    except Exception as error:
        failure = registry_error(str(error), tagged, args.base_image, args.settings)
        if isinstance(failure, VersionNotInRegistryError):
            raise DatabaseImageMissingError(f"the database image {tagged} is not in the registry ({error})") from None
        raise failure from None


def _verified(
    tagged: str, recorded: str, args: DatabaseImageArgs, lookup: pulumi.InvokeOptions, resource: pulumi.Resource
) -> str:
    return recorded_digest(
        recorded,
        lambda: _asked(tagged, args, lookup),
        lambda answered: (
            f"the database image {tagged} is recorded as {recorded} (image.databaseDigests), but the registry's tag "
            f"now names {answered}: it was pushed again with other bytes. The update stopped before touching the "
            "server. To run the recorded bytes, point the tag back at them; to run the new ones, record them "
            "instead (scripts/record_database_image.py) in a reviewed change."
        ),
        f"the recorded digest {recorded}",
        resource,
    )
