"""The release's container images, pinned by digest: built and pushed on a building stage, looked up otherwise."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
from pydantic import SecretStr

from components.config import ImageSettings

MIGRATE_TAG_SUFFIX = "-migrate"


@dataclass(frozen=True)
class AppImageArgs:
    settings: ImageSettings
    version: str
    commit: str | None
    commit_time: str | None
    """Both set when the stage builds (the stack config checks it)."""
    registry_password: SecretStr


class VersionNotInRegistryError(pulumi.RunError):
    pass


class AppImage(pulumi.ComponentResource):
    """`app_ref` and `migrate_ref` are `<registry>/<repository>@sha256:<digest>`.

    Never a tag: the server cannot re-resolve a digest to other bytes.
    """

    app_ref: pulumi.Output[str]
    migrate_ref: pulumi.Output[str]

    def __init__(self, name: str, args: AppImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:image:AppImage", name, None, opts)
        settings = args.settings
        repository = f"{settings.registry}/{settings.repository}"
        password = pulumi.Output.secret(args.registry_password.get_secret_value())
        self.provider = docker.Provider(
            f"{name}-provider",
            registry_auth=[
                docker.ProviderRegistryAuthArgs(
                    address=settings.registry, username=settings.username, password=password
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        tags = {"app": args.version, "migrate": f"{args.version}{MIGRATE_TAG_SUFFIX}"}
        if settings.build is not None:
            build = settings.build
            if args.commit is None or args.commit_time is None:
                raise ValueError("a build needs its commit and commit time; config.load checks both")
            build_args = {
                "BUILD_ID": args.version,
                "GIT_SHA": args.commit,
                "BUILD_TIMESTAMP": args.commit_time,
                "NODE_ENV": "production",
            }
            refs = {
                role: docker.Image(
                    f"{name}-{role}",
                    image_name=f"{repository}:{tag}",
                    build=docker.DockerBuildArgs(
                        context=build.context,
                        dockerfile=f"{build.context}/{build.dockerfile}",
                        target=build.runner_target if role == "app" else build.migrate_target,
                        args=build_args,
                        platform="linux/amd64",
                    ),
                    registry=docker.RegistryArgs(
                        server=settings.registry, username=settings.username, password=password
                    ),
                    opts=child,
                ).repo_digest
                for role, tag in tags.items()
            }
            self.app_ref, self.migrate_ref = refs["app"], refs["migrate"]
        else:
            lookup = pulumi.InvokeOptions(parent=self, provider=self.provider)
            self.app_ref, self.migrate_ref = (
                pulumi.Output.from_input(f"{repository}@{_digest(repository, tag, args.version, lookup)}")
                for tag in tags.values()
            )
        self.register_outputs({"appRef": self.app_ref, "migrateRef": self.migrate_ref})


def _digest(repository: str, tag: str, version: str, lookup: pulumi.InvokeOptions) -> str:
    """Resolve now, so a missing version stops the update before anything is declared on the server."""
    try:
        return docker.get_registry_image(name=f"{repository}:{tag}", opts=lookup).sha256_digest
    except Exception as error:
        raise VersionNotInRegistryError(
            f"version {version!r} is not in the registry: {repository}:{tag} could not be resolved "
            f"({error}). Allowed: a version that was built and pushed (staging builds it); "
            "check kametrix-deploy:version in the stack file."
        ) from None
