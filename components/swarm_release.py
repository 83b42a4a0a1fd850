"""The release of a stage on Docker Swarm: on the database host, files, .env, then backup -> migrate -> up, each a
command over SSH, as on one host.

The files, env, backup and migrate steps are the one-host stage's own scripts: PostgreSQL and migrations are that
host's compose project, on the stage's overlay network. `up` deploys the Swarm stack instead of switching colours:
Swarm replaces the app's tasks one at a time behind their health check and rolls back by itself when a new task
never turns healthy; the step says so and records only what serves. The release lock is the one-host stage's,
on the database host.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_command import remote
from pydantic import SecretStr

from components import remote_steps, server_files, swarm_files
from components.config import AppSettings, ReleaseSettings, ServerSettings, StackConfig
from components.image import AppImage
from components.swarm_cluster import SwarmCluster, SwarmClusterArgs

# Beyond the health checks of every task, what a rolling update may take: starting a task, Swarm's monitor, and
# the two seconds a stopping task stays out of DNS first.
_SECONDS_PER_TASK = 15
_SECONDS_BEYOND = 60


@dataclass(frozen=True)
class SwarmReleaseArgs:
    server: ServerSettings
    app: AppSettings
    release: ReleaseSettings
    version: str
    app_ref: pulumi.Input[str]
    migrate_ref: pulumi.Input[str]
    ssh_private_key: SecretStr
    app_secrets: Mapping[str, SecretStr]
    cluster: pulumi.Resource
    """The Swarm's last step (components/swarm_cluster.py): the release waits for the Swarm as declared."""


def update_timeout(server: ServerSettings, release: ReleaseSettings) -> int:
    """How long `up` waits for every task to run the release: each health-gated in turn."""
    per_task = release.health_attempts * release.health_interval_seconds + _SECONDS_PER_TASK
    return server.replicas * per_task + _SECONDS_BEYOND


class SwarmRelease(pulumi.ComponentResource):
    steps: dict[str, remote.Command]
    latest_backup: pulumi.Output[str]
    previous_version: pulumi.Output[str]

    def __init__(self, name: str, args: SwarmReleaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:swarm_release:SwarmRelease", name, None, opts)
        server, app, release = args.server, args.app, args.release
        connection = remote_steps.connection(server, args.ssh_private_key)
        app_dir = server.app_dir
        bin_dir = f"{app_dir}/bin"
        bundle = server_files.bundle(swarm_files.stage_files(server, app, release))
        env_file = server_files.env_file(app, args.app_secrets)

        def release_of(app_ref: str) -> str:
            return f"{args.version}@{app_ref.rpartition(':')[2][:12]}"

        common: dict[str, pulumi.Input[str]] = {
            "app-dir": app_dir,
            "project": app.compose_project,
            "release": pulumi.Output.from_input(args.app_ref).apply(release_of),
            "lock-timeout-seconds": str(release.lock_timeout_minutes * 60),
            "requested-by": release.requested_by or "",
        }
        refs: dict[str, pulumi.Input[str]] = {"app-image": args.app_ref, "migrate-image": args.migrate_ref}
        version = {"version": args.version}
        self.steps = {}

        def command(
            step_name: str,
            create: pulumi.Input[str],
            triggers: list[pulumi.Input[str]] | None = None,
            stdin: pulumi.Input[str] | None = None,
            prints_secrets: bool = False,
        ) -> remote.Command:
            # Each step waits for the one declared before it; the first for the Swarm.
            after: list[pulumi.Resource] = [*list(self.steps.values())[-1:]] or [args.cluster]
            resource = remote_steps.command(
                f"{name}-{step_name}", self, connection, create, stdin, triggers, prints_secrets, after
            )
            self.steps[step_name] = resource
            return resource

        # Unpacked beside the live files, which only files.sh replaces, under the release lock (as on one host).
        quoted_dir = shlex.quote(app_dir)
        staged = remote_steps.flags(common).apply(
            lambda parts: (
                f'umask 022 && mkdir -p {quoted_dir} && staged="$(mktemp -d {quoted_dir}/.files.XXXXXX)" && '
                """trap 'rm -rf "$staged"' EXIT && base64 -d | tar -x --no-same-owner -f - -C "$staged" && """
                f'bash "$staged/bin/files.sh" {shlex.join(parts)} --from "$staged"'
            )
        )
        command("files", create=staged, stdin=bundle)
        command(
            "env",
            create=remote_steps.installed(bin_dir, "env.sh", common),
            stdin=pulumi.Output.secret(env_file),
            prints_secrets=True,
        )
        release_triggers: list[pulumi.Input[str]] = [args.app_ref, args.migrate_ref, server_files.fingerprint(bundle)]
        backup_policy = {
            "backups-to-keep": str(release.backups_to_keep),
            "backup": release.backup,
            "backup-on-rollback": "yes" if release.backup_on_rollback else "no",
        }
        backup = command(
            "backup",
            create=remote_steps.installed(bin_dir, "backup.sh", {**common, **version, **backup_policy, **refs}),
            triggers=release_triggers,
        )
        command(
            "migrate",
            create=remote_steps.installed(bin_dir, "migrate.sh", {**common, **version, **refs}),
            triggers=release_triggers,
        )
        up = command(
            "up",
            create=remote_steps.installed(
                bin_dir,
                "swarm-up.sh",
                {
                    **common,
                    **version,
                    **refs,
                    "timeout-seconds": str(update_timeout(server, release)),
                    "monitor-seconds": str(swarm_files.monitor_seconds(release)),
                },
            ),
            triggers=[*release_triggers, pulumi.Output.secret(server_files.fingerprint(env_file))],
        )
        self.latest_backup = backup.stdout.apply(lambda out: remote_steps.reported(out, "backup"))
        self.previous_version = up.stdout.apply(lambda out: remote_steps.reported(out, "previous"))
        self.register_outputs({"latestBackup": self.latest_backup, "previousVersion": self.previous_version})


def swarm_stage(stack: StackConfig, image: AppImage) -> SwarmRelease:
    """The stage's Swarm as its hosts are listed, then its release on it."""
    plain = stack.plain
    cluster = SwarmCluster(
        "cluster",
        SwarmClusterArgs(
            server=plain.server,
            network=swarm_files.network(plain.app),
            drain_seconds=plain.release.drain_seconds,
            ssh_private_key=stack.secrets.ssh_private_key,
        ),
    )
    return SwarmRelease(
        "server",
        SwarmReleaseArgs(
            server=plain.server,
            app=plain.app,
            release=plain.release,
            version=plain.version,
            app_ref=image.app_ref,
            migrate_ref=image.migrate_ref,
            ssh_private_key=stack.secrets.ssh_private_key,
            app_secrets=stack.secrets.app,
            cluster=cluster.ready,
        ),
    )
