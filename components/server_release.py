"""The release on the server: files, .env, then backup -> migrate -> up, each a command over SSH.

The app runs in two colours behind a proxy: `up`, the last step of every update that changes anything on the
server, starts the new version with the new settings on the idle colour, switches the proxy to it once it is
healthy, drains and stops the old one: one cutover per update. `env` only stages new settings for it.

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
        env_file = server_files.env_file(app, args.app_secrets)
        # What the steps that move traffic need: where the proxy names its live colour, each colour's
        # health endpoint, the health gate and the drain.
        blue_health_url, green_health_url = server_files.health_urls(app)
        cutover = {
            "colour-url": server_files.colour_url(app),
            "blue-health-url": blue_health_url,
            "green-health-url": green_health_url,
            "health-attempts": str(release.health_attempts),
            "health-interval-seconds": str(release.health_interval_seconds),
            "drain-seconds": str(release.drain_seconds),
        }

        def flags(values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[list[str]]:
            return pulumi.Output.all(*values.values()).apply(
                lambda resolved: [
                    part for name, value in zip(values, resolved, strict=True) for part in (f"--{name}", str(value))
                ]
            )

        def step(script: str, values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
            return flags(values).apply(lambda parts: shlex.join(["bash", f"{bin_dir}/{script}", *parts]))

        def release_of(app_ref: str) -> str:
            return f"{args.version}@{app_ref.rpartition(':')[2][:12]}"

        # Every step of an update names its release: the release lock passes from step to step of one
        # release and refuses the steps of another until `up`, the last step of every update, ends it.
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

        # The bundle is unpacked beside the live files, which only files.sh replaces, under the release lock.
        quoted_dir = shlex.quote(app_dir)
        unpack = (
            f'umask 022 && mkdir -p {quoted_dir} && staged="$(mktemp -d {quoted_dir}/.files.XXXXXX)"'
            """ && trap 'rm -rf "$staged"' EXIT && base64 -d | tar -x --no-same-owner -f - -C "$staged" && """
        )
        command(
            "files",
            create=flags(common).apply(
                lambda parts: f'{unpack}bash "$staged/bin/files.sh" {shlex.join(parts)} --from "$staged"'
            ),
            stdin=bundle,
        )
        command(
            "env",
            create=step("env.sh", common),
            stdin=pulumi.Output.secret(env_file),
            prints_secrets=True,
        )
        release_triggers: list[pulumi.Input[str]] = [args.app_ref, args.migrate_ref, files_fingerprint]
        # The backup policy is only in the backup's flags: a changed policy re-runs the backup alone, which
        # gives the release lock back when `up` has nothing to do (lib.sh, up_follows).
        backup_policy = {
            "backups-to-keep": str(release.backups_to_keep),
            "backup": release.backup,
            "backup-on-rollback": "yes" if release.backup_on_rollback else "no",
        }
        backup = command(
            "backup",
            create=step("backup.sh", {**common, **version, **backup_policy, **refs}),
            triggers=release_triggers,
        )
        command(
            "migrate",
            create=step("migrate.sh", {**common, **version, **refs}),
            triggers=release_triggers,
        )
        # New settings take effect here, at the update's one cutover, with whatever version it starts.
        up = command(
            "up",
            create=step(
                "up.sh", {**common, **version, **refs, "images-to-keep": str(release.images_to_keep), **cutover}
            ),
            triggers=[*release_triggers, pulumi.Output.secret(server_files.fingerprint(env_file))],
        )
        self.latest_backup = backup.stdout.apply(lambda out: _reported(out, "backup"))
        self.previous_version = up.stdout.apply(lambda out: _reported(out, "previous"))
        self.register_outputs({"latestBackup": self.latest_backup, "previousVersion": self.previous_version})


def _reported(stdout: str | None, key: str) -> str:
    """The last `key=value` line a step printed."""
    values = [line.partition("=")[2] for line in (stdout or "").splitlines() if line.startswith(f"{key}=")]
    return values[-1] if values else ""
