"""The program: everything one release of Kametrix touches, for the stage this stack is.

One function, with two ways in: `__main__.py` (what `pulumi up` runs through the Python language host, as on
a CI runner) and `runner/` (the Automation API's inline program, as on an operator's machine).
"""

import pulumi
import pulumi_command

from components import config, shared_facts
from components.database_image import DatabaseImage, DatabaseImageArgs
from components.image import AppImage, AppImageArgs
from components.server_release import ServerRelease, ServerReleaseArgs
from components.swarm_release import SwarmRelease, swarm_stage


class StackConfigError(config.ConfigError, pulumi.RunError):
    """The stack file's problems as the engine shows a program's own error: the message, without a traceback."""


def program() -> None:
    """Read the stack's config once, declare every component of the stage, export the outputs."""
    try:
        stack = config.load_from_engine()
    except config.ConfigError as error:
        raise StackConfigError(error.stack_file, error.problems) from None
    plain, secrets = stack.plain, stack.secrets

    image = AppImage(
        "image",
        AppImageArgs(
            settings=plain.image,
            version=plain.version,
            commit=plain.commit,
            commit_time=plain.commit_time,
            registry_password=secrets.registry_password,
        ),
    )
    # Backups need pgBackRest in the database's image: the stage runs the one built on app.postgresImage for them.
    database_image = (
        DatabaseImage(
            "database-image",
            DatabaseImageArgs(
                settings=plain.image,
                base_image=plain.app.postgres_image,
                registry_password=secrets.registry_password,
                provider=image.provider,
            ),
        )
        if plain.backup is not None
        else None
    )
    # The provider every step runs on, so that an update starts one command plugin, not this one and a default one.
    # The engine gives it a random ID when it first records it in this stack's state, and keeps it: the release steps
    # name their state by it, so the server tells an update of this state from one of another state of the same stack
    # (lib/lock.sh).
    steps_provider = pulumi_command.Provider(shared_facts.STATE_MARKER)
    on_steps_provider = pulumi.ResourceOptions(providers=[steps_provider])
    state_id = steps_provider.id
    # A stage that lists its hosts runs on Docker Swarm; any other is its one host, as always.
    swarm = swarm_stage(stack, state_id, image, on_steps_provider) if plain.server.hosts else None
    server = swarm or ServerRelease(
        shared_facts.SERVER_RELEASE,
        ServerReleaseArgs.of(
            stack,
            state_id,
            image.app_ref,
            image.migrate_ref,
            database_image.ref if database_image else plain.app.postgres_image,
        ),
        on_steps_provider,
    )

    # Only the stack that administers the repository declares environments: its own, and each other stage's.
    if stack.github is not None:
        _declare_github(stack, stack.github, server)

    pulumi.export("stage", stack.stage)
    pulumi.export("stateId", state_id)
    pulumi.export("version", plain.version)
    pulumi.export("imageRef", image.app_ref)
    pulumi.export("migrateImageRef", image.migrate_ref)
    if database_image is not None:
        pulumi.export("databaseImageRef", database_image.pinned)
    pulumi.export("appUrl", plain.app.url)
    pulumi.export("latestBackup", server.latest_backup)
    pulumi.export("previousVersion", server.previous_version)


def _declare_github(
    stack: config.StackConfig, github: config.GitHubSettings, server: ServerRelease | SwarmRelease
) -> None:
    """The stage's GitHub environment, the other stages' it administers, and the releases it publishes."""
    # Imported only here: the GitHub provider's SDK is the largest import, and most updates (local, staging) never
    # declare a GitHub resource.
    from components.github_environment import GitHubEnvironment, GitHubEnvironmentArgs
    from components.release_record import ReleaseRecord, ReleaseRecordArgs

    plain, secrets = stack.plain, stack.secrets
    environment = GitHubEnvironment(
        "github",
        GitHubEnvironmentArgs(
            settings=github,
            token=secrets.github_token,
            app_private_key=secrets.github_app_private_key,
            secrets=secrets.environment,
            variables={"APP_URL": plain.app.url, "PULUMI_STACK": stack.stage},
        ),
    )
    for other in stack.administered:
        GitHubEnvironment(
            f"github-{other.stage}",
            GitHubEnvironmentArgs(
                settings=other.github,
                token=secrets.github_token,
                app_private_key=secrets.github_app_private_key,
                secrets=other.secrets,
                variables={"APP_URL": other.app_url, "PULUMI_STACK": other.stage},
                provider=environment.provider,
            ),
        )
    if github.releases:
        ReleaseRecord(
            "release",
            ReleaseRecordArgs(
                repository=github.app_repository,
                releases=github.releases,
                provider=environment.provider,
                released_after=server.steps["up"],
            ),
        )
