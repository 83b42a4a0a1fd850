"""The release's container images, pinned by digest.

A version recorded under `image.digests` deploys its recorded digests: the registry is only asked whether its tag
still names them, and an unreachable registry does not stop the update (the server may hold the images). A version
not recorded yet is built and pushed on a building stage, looked up otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker
from pydantic import SecretStr

from components.config import ImageSettings
from components.config.fields import MIGRATE_TAG_SUFFIX


@dataclass(frozen=True)
class AppImageArgs:
    settings: ImageSettings
    version: str
    commit: str | None
    commit_time: str | None
    """Both set when the stage builds (the stack config checks it)."""
    registry_password: SecretStr


class RegistryError(pulumi.RunError):
    """The registry did not give a version's digest: the update stops before anything is declared on the server."""


class VersionNotInRegistryError(RegistryError):
    pass


class RegistryAuthenticationError(RegistryError):
    pass


class RegistryUnreachableError(RegistryError):
    pass


class DigestChangedError(pulumi.RunError):
    """The registry's tag for a recorded version names other bytes than the ones recorded."""


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
        # The provider asks a registry over HTTPS unless its address says `http://`.
        address = f"http://{settings.registry}" if settings.plain_http else settings.registry
        self.provider = docker.Provider(
            f"{name}-provider",
            registry_auth=[
                docker.ProviderRegistryAuthArgs(address=address, username=settings.username, password=password)
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        tags = {"app": args.version, "migrate": f"{args.version}{MIGRATE_TAG_SUFFIX}"}
        recorded = settings.digests.get(args.version)
        lookup = pulumi.InvokeOptions(parent=self, provider=self.provider)
        if recorded is not None:
            self.app_ref, self.migrate_ref = (
                pulumi.Output.from_input(
                    f"{repository}@{_verified(repository, tags[role], args.version, digest, settings, lookup)}"
                )
                for role, digest in (("app", recorded.app), ("migrate", recorded.migrate))
            )
        elif settings.build is not None:
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
            digests = {role: _digest(repository, tag, args.version, settings, lookup) for role, tag in tags.items()}
            pulumi.log.warn(
                f"version {args.version!r} has no digests recorded under image.digests: deploying what the registry "
                f"names now. Record them so that {args.version} always means these bytes: python "
                f"scripts/record_release.py --stack-file STACK_FILE --version {args.version} "
                f"--app-digest {digests['app']} --migrate-digest {digests['migrate']}",
                self,
            )
            self.app_ref, self.migrate_ref = (
                pulumi.Output.from_input(f"{repository}@{digests[role]}") for role in ("app", "migrate")
            )
        self.register_outputs({"appRef": self.app_ref, "migrateRef": self.migrate_ref})


def _digest(repository: str, tag: str, version: str, settings: ImageSettings, lookup: pulumi.InvokeOptions) -> str:
    """Resolve now, so a missing version stops the update before anything is declared on the server."""
    try:
        return docker.get_registry_image(name=f"{repository}:{tag}", opts=lookup).sha256_digest
    except Exception as error:
        raise registry_error(str(error), f"{repository}:{tag}", version, settings) from None


# How the provider words an HTTP answer ("Got bad response from registry: 404 Not Found", "Bad credentials:
# 401 Unauthorized") and a request that got none ("Error during registry request: ... connection refused").
_HTTP_STATUS = re.compile(r"\b([1-5]\d\d) [A-Z]")
_NO_ANSWER = ("registry request", "dial tcp", "no such host", "connection refused", "timeout", "tls:", "eof")


def registry_error(reported: str, reference: str, version: str, settings: ImageSettings) -> RegistryError:
    """The registry's failure told apart: a tag it does not hold, credentials it refuses, or no answer at all."""
    status = int(match[1]) if (match := _HTTP_STATUS.search(reported)) else None
    text = reported.lower()
    registry = settings.registry
    if status == 404 or "manifest unknown" in text:
        return VersionNotInRegistryError(
            f"version {version!r} is not in the registry {registry}: {reference} does not exist ({reported}). "
            "Allowed: a version that was built and pushed (staging builds it); "
            "check kametrix-deploy:version in the stack file."
        )
    if status in (401, 403) or "unauthorized" in text or "denied" in text or "credentials" in text:
        return RegistryAuthenticationError(
            f"the registry {registry} refused the credentials for {reference} ({reported}). "
            f"Check kametrix-deploy:image.username ({settings.username!r}) and the registryPassword secret: "
            "a token that is not expired and may read this repository's packages (write, where the stage builds); "
            "and kametrix-deploy:image.repository: ghcr.io answers so for a repository the token cannot see."
        )
    if (status is not None and status >= 500) or any(sign in text for sign in _NO_ANSWER):
        return RegistryUnreachableError(
            f"the registry {registry} could not be reached for {reference} ({reported}). "
            f"Check kametrix-deploy:image.registry ({registry!r}), and DNS, proxy and firewall of the machine "
            "running the update; then the registry's status page."
        )
    return RegistryError(
        f"the registry {registry} did not resolve {reference} ({reported}). "
        "Check kametrix-deploy:version, image.registry, image.username and the registryPassword secret."
    )


def _verified(
    repository: str, tag: str, version: str, recorded: str, settings: ImageSettings, lookup: pulumi.InvokeOptions
) -> str:
    return recorded_digest(
        recorded,
        lambda: _digest(repository, tag, version, settings, lookup),
        lambda answered: (
            f"version {version!r} is recorded as {repository}@{recorded} (image.digests), but the registry's tag "
            f"{repository}:{tag} now names {answered}: the tag was pushed again with other bytes. The update "
            f"stopped before touching the server. To deploy the recorded bytes, point the tag back at them "
            f"(docker pull {repository}@{recorded}, docker tag it as {repository}:{tag}, docker push); to ship "
            "the new bytes, release them as a new version and record its digests (scripts/record_release.py)."
        ),
        f"{version}'s recorded digest {recorded}",
    )


def recorded_digest(
    recorded: str,
    ask: Callable[[], str],
    changed: Callable[[str], str],
    deploying: str,
    resource: pulumi.Resource | None = None,
) -> str:
    """The recorded digest, unless the registry answers (`ask`) that the tag now names another one (`changed` says
    so). A registry that cannot answer, refuses the credentials or lost the tag is no reason to stop: a rollback must
    work while it is down, and the server pulls nothing it already has. The warning says which failure it was."""
    try:
        answered = ask()
    except RegistryError as failure:
        pulumi.log.warn(f"{failure} Deploying {deploying} without the registry's word.", resource)
        return recorded
    if answered != recorded:
        raise DigestChangedError(changed(answered))
    return recorded
