"""The release of a stage on Docker Swarm: on the database host, files, .env, the database, then backup -> migrate
-> up, each a command over SSH, as on one host (components/remote_steps.py declares both).

The files, env, database, backup and migrate steps are the one-host stage's own scripts: PostgreSQL and migrations
are that host's compose project, on the stage's overlay network, with its login roles. `up` deploys the Swarm stack
instead of switching colours: Swarm replaces the app's tasks one at a time behind their health check, each new task
logging in as the login role the running ones do not use (a colour's, as on one host), and rolls back by itself when
a new task never turns healthy; the step says so and records only what serves. The release lock is the one-host
stage's, on the database host.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components import remote_steps, shared_facts, swarm_files
from components.config import StackConfig
from components.image import AppImage
from components.swarm_cluster import SwarmCluster, SwarmClusterArgs


@dataclass(frozen=True, kw_only=True)
class SwarmReleaseArgs(remote_steps.ReleaseArgs):
    cluster: pulumi.Resource
    """The Swarm's last step (components/swarm_cluster.py): the release waits for the Swarm as declared."""


class SwarmRelease(pulumi.ComponentResource):
    steps: dict[str, remote.Command]
    latest_backup: pulumi.Output[str]
    previous_version: pulumi.Output[str]

    def __init__(self, name: str, args: SwarmReleaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:swarm_release:SwarmRelease", name, None, opts)
        server, release = args.server, args.release
        up_flags: dict[str, pulumi.Input[str]] = {
            "timeout-seconds": str(
                shared_facts.swarm_update_timeout(
                    server.replicas, release.health_attempts, release.health_interval_seconds
                )
            ),
            "monitor-seconds": str(shared_facts.swarm_monitor_seconds(release.health_interval_seconds)),
        }
        files = pulumi.Output.from_input(args.stack_name).apply(
            lambda stack: swarm_files.server_files_of(stack, server, args.app, release)
        )
        self.steps = remote_steps.release_steps(
            self, name, args, files, up=("swarm-up.sh", up_flags), after=[args.cluster]
        )
        self.latest_backup = self.steps["backup"].stdout.apply(lambda out: remote_steps.reported(out, "backup"))
        self.previous_version = self.steps["up"].stdout.apply(lambda out: remote_steps.reported(out, "previous"))
        self.register_outputs({"latestBackup": self.latest_backup, "previousVersion": self.previous_version})


def swarm_stage(
    stack: StackConfig, state_id: pulumi.Input[str], image: AppImage, opts: pulumi.ResourceOptions
) -> SwarmRelease:
    """The stage's Swarm as its hosts are listed, then its release on it (`state_id`: ServerRelease's; `opts`: the
    provider their steps run on)."""
    plain = stack.plain
    cluster = SwarmCluster(
        "cluster",
        SwarmClusterArgs(
            server=plain.server,
            network=swarm_files.network(plain.app),
            drain_timeout_seconds=shared_facts.swarm_drain_timeout(plain.release.drain_seconds),
            ssh_private_key=stack.secrets.ssh_private_key,
        ),
        opts,
    )
    return SwarmRelease(
        shared_facts.SERVER_RELEASE,
        SwarmReleaseArgs.of(
            stack, state_id, image.app_ref, image.migrate_ref, plain.app.postgres_image, cluster=cluster.ready
        ),
        opts,
    )
