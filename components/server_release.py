"""The release on the server: files, .env, then backup -> migrate -> up, each a command over SSH.

The app runs in two colours behind a proxy: `up` (and `env`, for a settings change) starts the new version on
the idle colour, switches the proxy to it once it is healthy, drains and stops the old one.

Each step is a `remote.Command` whose command line holds only plain values; the `.env` travels on
stdin. No step has a `delete`: replacing a step runs the new one and never undoes a newer release.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_command import remote
from pydantic import SecretStr

from components import server_files
from components.config import AppSettings, ReleaseSettings, ServerSettings

STEP_ORDER = ("files", "env", "backup", "migrate", "up")


@dataclass(frozen=True)
class ServerReleaseArgs:
    server: ServerSettings
    app: AppSettings
    release: ReleaseSettings
    version: str
    app_ref: pulumi.Input[str]
    migrate_ref: pulumi.Input[str]
    ssh_private_key: SecretStr
    app_secrets: Mapping[str, SecretStr]


class ServerRelease(pulumi.ComponentResource):
    steps: dict[str, remote.Command]
    latest_backup: pulumi.Output[str]
    previous_version: pulumi.Output[str]

    def __init__(self, name: str, args: ServerReleaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:server_release:ServerRelease", name, None, opts)
        server, app, release = args.server, args.app, args.release
        connection = remote.ConnectionArgs(
            host=server.host,
            port=server.port,
            user=server.user,
            private_key=pulumi.Output.secret(args.ssh_private_key.get_secret_value()),
            host_key=server.host_key,
            dial_error_limit=5,
            per_dial_timeout=15,
        )
        app_dir = server.app_dir
        bin_dir = f"{app_dir}/bin"
        bundle = server_files.bundle(server_files.stage_files(app, release))
        files_fingerprint = server_files.fingerprint(bundle)
        # What the steps that move traffic need: where the proxy names its live colour, each colour's
        # health endpoint, the health gate and the drain.
        cutover = [
            server_files.colour_url(app),
            *server_files.health_urls(app),
            str(release.health_attempts),
            str(release.health_interval_seconds),
            str(release.drain_seconds),
        ]
        stale = str(release.lock_timeout_minutes * 60)

        def step(script: str, *arguments: pulumi.Input[str]) -> pulumi.Output[str]:
            return pulumi.Output.all(*arguments).apply(
                lambda values: shlex.join(["bash", f"{bin_dir}/{script}", *[str(v) for v in values]])
            )

        def owner_of(app_ref: str) -> str:
            return f"{args.version}@{app_ref.rpartition(':')[2][:12]}"

        owner = pulumi.Output.from_input(args.app_ref).apply(owner_of)
        common = (app_dir, app.compose_project, owner, stale)
        # A settings change is not a release: its lock owner does not name a version, so a release
        # from vA to vB leaves this step untouched.
        settings_owner = (app_dir, app.compose_project, "settings", stale)

        self.steps = {}

        def command(
            step_name: str,
            create: pulumi.Input[str],
            triggers: list[pulumi.Input[str]] | None = None,
            stdin: pulumi.Input[str] | None = None,
            prints_secrets: bool = False,
        ) -> remote.Command:
            resource = remote.Command(
                f"{name}-{step_name}",
                connection=connection,
                create=create,
                stdin=stdin,
                triggers=triggers,
                add_previous_output_in_env=False,
                logging=remote.Logging.NONE if prints_secrets else remote.Logging.STDOUT_AND_STDERR,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # Each step waits for the one declared before it.
                    depends_on=list(self.steps.values())[-1:],
                    additional_secret_outputs=["stdout", "stderr"] if prints_secrets else None,
                ),
            )
            self.steps[step_name] = resource
            return resource

        quoted_dir = shlex.quote(app_dir)
        command(
            "files",
            create=(
                f"umask 022 && mkdir -p {quoted_dir} && base64 -d > {quoted_dir}/.bundle.tar"
                f" && tar -x --no-same-owner -f {quoted_dir}/.bundle.tar -C {quoted_dir}"
                f" && rm -f {quoted_dir}/.bundle.tar"
            ),
            stdin=bundle,
        )
        command(
            "env",
            create=step("env.sh", *settings_owner, *cutover),
            stdin=pulumi.Output.secret(server_files.env_file(app, args.app_secrets)),
            prints_secrets=True,
        )
        refs = (args.app_ref, args.migrate_ref)
        backup_policy = (
            str(release.backups_to_keep),
            release.backup,
            "yes" if release.backup_on_rollback else "no",
        )
        # The backup step takes the release lock that up gives back: whatever re-runs the backup re-runs the rest.
        triggers: list[pulumi.Input[str]] = [*refs, files_fingerprint, server_files.fingerprint(*backup_policy)]
        backup = command(
            "backup",
            create=step("backup.sh", *common, args.version, *backup_policy, *refs),
            triggers=triggers,
        )
        command("migrate", create=step("migrate.sh", *common, args.version, *refs), triggers=triggers)
        up = command(
            "up",
            create=step("up.sh", *common, args.version, *refs, *cutover, str(release.images_to_keep)),
            triggers=triggers,
        )
        self.latest_backup = backup.stdout.apply(lambda out: _reported(out, "backup"))
        self.previous_version = up.stdout.apply(lambda out: _reported(out, "previous"))
        self.register_outputs({"latestBackup": self.latest_backup, "previousVersion": self.previous_version})


def _reported(stdout: str | None, key: str) -> str:
    """The last `key=value` line a step printed."""
    values = [line.partition("=")[2] for line in (stdout or "").splitlines() if line.startswith(f"{key}=")]
    return values[-1] if values else ""
