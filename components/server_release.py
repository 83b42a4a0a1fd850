"""The release on the server: files, .env, the database, then backup -> migrate -> up, each a command over SSH.

The app runs in two colours behind a proxy: `up`, the last step of every update that changes what serves, starts
the new version with the stage's current settings on the idle colour, switches the proxy to it once it is healthy,
drains and stops the old one: one cutover per update. `env` only installs the settings for that cutover; `database`
alone starts or replaces PostgreSQL.

Each step is a `remote.Command` whose command line holds only plain values, built from the flags each script takes
(`shared_facts.SCRIPT_FLAGS`); the `.env` travels on stdin. What a step reads when it runs (timeouts, the health
gate, who asked) is in the settings file the files step installs, so changing it re-runs nothing else. No step has
a `delete`: replacing a step runs the new one and never undoes a newer release.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_command import remote
from pydantic import SecretStr

from components import server_files, shared_facts
from components.config import AppSettings, ReleaseSettings, ServerSettings


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
        files = server_files.server_files(app, release)
        env_file = server_files.env_file(app, args.app_secrets)

        def flags(script: str, values: Mapping[str, pulumi.Input[str]], last: str = "") -> pulumi.Output[str]:
            """`--flag value ...` for exactly the flags the script takes, in its order (`last`, written by the
            command itself, ends them)."""
            names = (*values, *([last] if last else []))
            if names != shared_facts.SCRIPT_FLAGS[script]:
                raise RuntimeError(f"{script} takes {shared_facts.SCRIPT_FLAGS[script]}; the program gives {names}")
            return pulumi.Output.all(*values.values()).apply(
                lambda resolved: shlex.join(
                    part for name, value in zip(values, resolved, strict=True) for part in (f"--{name}", str(value))
                )
            )

        def command_line(script: str, values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
            return flags(script, values).apply(lambda words: f"bash {shlex.quote(f'{bin_dir}/{script}')} {words}")

        # Every step of an update names its release: the release lock passes from step to step of one release and
        # refuses the steps of another until `up`, or the last step of an update with no `up`, ends it.
        common: dict[str, pulumi.Input[str]] = {
            "app-dir": app_dir,
            "project": app.compose_project,
            "release": pulumi.Output.from_input(args.app_ref).apply(
                lambda ref: shared_facts.release_name(args.version, ref)
            ),
        }
        refs: dict[str, pulumi.Input[str]] = {
            "version": args.version,
            "app-image": args.app_ref,
            "migrate-image": args.migrate_ref,
        }

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
            create=command_line("files.sh", {**common, "from": "STAGED"}).apply(
                lambda line: (
                    unpack
                    + line.replace("--from STAGED", '--from "$staged"').replace(
                        f"bash {shlex.quote(bin_dir + '/files.sh')}", 'bash "$staged/bin/files.sh"'
                    )
                )
            ),
            stdin=server_files.bundle(files),
        )
        command(
            "env",
            create=command_line("env.sh", common),
            stdin=pulumi.Output.secret(env_file),
            prints_secrets=True,
        )
        command("database", create=command_line("database.sh", {**common, "postgres-image": app.postgres_image}))
        release_triggers: list[pulumi.Input[str]] = [args.app_ref, args.migrate_ref]
        # The backup policy is only in the backup's flags: a changed policy re-runs the backup alone, which gives the
        # release lock back when `up` has nothing to do (lib/lock.sh).
        backup = command(
            "backup",
            create=command_line(
                "backup.sh",
                {
                    **common,
                    **refs,
                    "backups-to-keep": str(release.backups_to_keep),
                    "backup": release.backup,
                    "backup-on-rollback": "yes" if release.backup_on_rollback else "no",
                },
            ),
            triggers=release_triggers,
        )
        command("migrate", create=command_line("migrate.sh", {**common, **refs}), triggers=release_triggers)
        # New settings and files take effect here, at the update's one cutover, with whatever version it starts.
        up = command(
            "up",
            create=command_line("up.sh", {**common, **refs}),
            triggers=[
                *release_triggers,
                server_files.switched_with(files),
                pulumi.Output.secret(server_files.fingerprint(env_file)),
            ],
        )
        self.latest_backup = backup.stdout.apply(lambda out: _reported(out, "backup"))
        self.previous_version = up.stdout.apply(lambda out: _reported(out, "previous"))
        self.register_outputs({"latestBackup": self.latest_backup, "previousVersion": self.previous_version})


def _reported(stdout: str | None, key: str) -> str:
    """The last `key=value` line a step printed."""
    values = [line.partition("=")[2] for line in (stdout or "").splitlines() if line.startswith(f"{key}=")]
    return values[-1] if values else ""
