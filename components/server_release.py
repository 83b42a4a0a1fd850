"""The release on the server: files, .env, the database, then backup -> migrate -> up, each a command over SSH.

The app runs in two colours behind a proxy: `up`, the last step of every update that changes what serves, starts
the new version with the stage's current settings on the idle colour, switches the proxy to it once it is healthy,
drains and stops the old one: one cutover per update. `env` only installs the settings for that cutover; `database`
alone starts or replaces PostgreSQL.

The steps, their command lines and their order are components/remote_steps.py's, which a stage on Docker Swarm
shares (components/swarm_release.py).
"""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from components import remote_steps, server_files

ServerReleaseArgs = remote_steps.ReleaseArgs


class ServerRelease(pulumi.ComponentResource):
    steps: dict[str, remote.Command]
    latest_backup: pulumi.Output[str]
    previous_version: pulumi.Output[str]

    def __init__(self, name: str, args: ServerReleaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:server_release:ServerRelease", name, None, opts)
        files = pulumi.Output.from_input(args.stack_name).apply(
            lambda stack: server_files.server_files(stack, args.app, args.release, args.backup)
        )
        self.steps = remote_steps.release_steps(self, name, args, files, up=("up.sh", {}))
        self.latest_backup = self.steps["backup"].stdout.apply(lambda out: remote_steps.reported(out, "backup"))
        self.previous_version = self.steps["up"].stdout.apply(lambda out: remote_steps.reported(out, "previous"))
        self.register_outputs({"latestBackup": self.latest_backup, "previousVersion": self.previous_version})
