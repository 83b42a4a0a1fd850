"""Commands over SSH, as a stage on one host and a stage on Docker Swarm declare them: a host's connection, each
script's command line from exactly the flags it takes (`shared_facts`), scripts shipped to a host that holds none of
the stage's files, and the release's steps on the host that holds the database, which both kinds of stage share.

Each command's line holds only plain values; anything secret travels on its stdin, never in its output. No step has
a `delete`: replacing a step runs the new one and never undoes a newer release.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import pulumi
from pulumi_command import remote
from pydantic import SecretStr

from components import server_files, shared_facts, swarm_files
from components.config import AppSettings, BackupSettings, ClusterHost, ReleaseSettings, ServerSettings, StackConfig


def connection(
    server: ServerSettings, private_key: SecretStr, host: ClusterHost | None = None
) -> remote.ConnectionArgs:
    """How a step reaches `host` (or the stage's release host): its own SSH port and user, else the stage's."""
    target = server.release_host() if host is None else host
    return remote.ConnectionArgs(
        host=target.host,
        port=target.port or server.port,
        user=target.user or server.user,
        private_key=pulumi.Output.secret(private_key.get_secret_value()),
        host_key=target.host_key,
        dial_error_limit=5,
        per_dial_timeout=15,
    )


def command(
    name: str,
    parent: pulumi.Resource,
    connection: remote.ConnectionArgs,
    create: pulumi.Input[str],
    stdin: pulumi.Input[str] | None = None,
    triggers: list[pulumi.Input[str]] | None = None,
    prints_secrets: bool = False,
    after: list[pulumi.Resource] | None = None,
) -> remote.Command:
    """One step: nothing from SSH's environment, and its output kept out of the log and made secret when it can hold
    a secret."""
    return remote.Command(
        name,
        connection=connection,
        create=create,
        stdin=stdin,
        triggers=triggers,
        add_previous_output_in_env=False,
        logging=remote.Logging.NONE if prints_secrets else remote.Logging.STDOUT_AND_STDERR,
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=after,
            additional_secret_outputs=["stdout", "stderr"] if prints_secrets else None,
        ),
    )


def flags(script: str, values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[list[str]]:
    """`--flag value ...` for exactly the flags `script` takes, in its order, once all are known."""
    shared_facts.script_words(script, dict.fromkeys(values, ""))
    return pulumi.Output.all(*values.values()).apply(
        lambda resolved: shared_facts.script_words(
            script, {name: str(value) for name, value in zip(values, resolved, strict=True)}
        )
    )


def installed(bin_dir: str, script: str, values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    """The command line of a script the files step installed in `bin_dir`."""
    return flags(script, values).apply(lambda words: f"bash {shlex.quote(f'{bin_dir}/{script}')} {shlex.join(words)}")


# The scripts (and a secret's file) arrive on stdin (server_files.bundle) into a private folder that is gone when
# the command ends; every file in it is the deploy user's alone (umask 077, not the archive's modes).
_UNPACK = (
    'umask 077 && shipped="$(mktemp -d)" && trap \'rm -rf "$shipped"\' EXIT && '
    'base64 -d | tar -x --no-same-owner --no-same-permissions -f - -C "$shipped" && '
)


def shipped(
    script: str, values: Mapping[str, pulumi.Input[str]], file_flag: tuple[str, str] | None = None
) -> pulumi.Output[str]:
    """The command line that runs `script` from the bundle on stdin (`shipped_bundle`). `file_flag` (flag, file):
    the script's last flag, given the path of a file the bundle carries (a secret, which stays off the command line)."""
    given = {**values, file_flag[0]: "FILE"} if file_flag else values
    path = f' "$shipped/{file_flag[1]}"' if file_flag else ""
    return flags(script, given).apply(
        lambda words: f'{_UNPACK}bash "$shipped/bin/{script}" {shlex.join(words[:-1] if file_flag else words)}{path}'
    )


def shipped_bundle(script: str, files: Mapping[str, str] | None = None) -> str:
    """`script` with what it sources (lib/step.sh, the facts), and `files`, for a shipped command's stdin."""
    scripts = server_files.script_files([script], ["lib/step.sh"], swarm_files.swarm_facts())
    extra = {path: (content.encode(), 0o600) for path, content in (files or {}).items()}
    return server_files.bundle({**scripts, **extra})


def reported(stdout: str | None, key: str) -> str:
    """The last `key=value` line a step printed."""
    values = [line.partition("=")[2] for line in (stdout or "").splitlines() if line.startswith(f"{key}=")]
    return values[-1] if values else ""


@dataclass(frozen=True)
class ReleaseArgs:
    stack_name: pulumi.Input[str]
    """The stack whose updates send these steps, in its state (shared_facts.stack_name)."""
    server: ServerSettings
    app: AppSettings
    release: ReleaseSettings
    version: str
    app_ref: pulumi.Input[str]
    migrate_ref: pulumi.Input[str]
    postgres_image: pulumi.Input[str]
    """What the database runs: `app.postgresImage`, or where `backup` is declared the image built on it with
    pgBackRest (components/database_image.py)."""
    ssh_private_key: SecretStr
    app_secrets: Mapping[str, SecretStr]
    backup: BackupSettings | None = None
    backup_secrets: Mapping[str, SecretStr] | None = None

    @classmethod
    def of(
        cls,
        stack: StackConfig,
        state_id: pulumi.Input[str],
        app_ref: pulumi.Input[str],
        migrate_ref: pulumi.Input[str],
        postgres_image: pulumi.Input[str],
        **more: Any,
    ) -> Self:
        """The release as `stack` declares it, in the state `state_id` names, of the image's two digests and the
        database's image; `more`: a subclass's own fields."""
        plain, secrets = stack.plain, stack.secrets
        return cls(
            stack_name=pulumi.Output.from_input(state_id).apply(
                lambda found: shared_facts.stack_name(stack.stage, found)
            ),
            server=plain.server,
            app=plain.app,
            release=plain.release,
            version=plain.version,
            app_ref=app_ref,
            migrate_ref=migrate_ref,
            postgres_image=postgres_image,
            ssh_private_key=secrets.ssh_private_key,
            app_secrets=secrets.app,
            backup=plain.backup,
            backup_secrets=secrets.backup,
            **more,
        )


def release_steps(
    parent: pulumi.Resource,
    name: str,
    args: ReleaseArgs,
    files: pulumi.Output[server_files.ServerFiles],
    up: tuple[str, Mapping[str, pulumi.Input[str]]],
    after: list[pulumi.Resource] | None = None,
) -> dict[str, remote.Command]:
    """The release's steps on the host that holds the database, each waiting for the one declared before it (the
    first for `after`): files, env, database, backup, migrate, then `up` (its script and the flags it takes beyond
    the release's), by step name.

    The stage's steps (files, env, database) do not name the release, so a new version runs only the release's
    steps (backup, migrate, up), which do. The release lock passes from step to step of an update of the stack and
    refuses the steps of anyone else until `up`, or the last step of an update with no `up`, ends it (lib/lock.sh).
    What a step reads when it runs (timeouts, the health gate, who asked) is in the settings file the files step
    installs, so changing it re-runs nothing else; the `.env` travels on stdin.
    """
    server, app, release = args.server, args.app, args.release
    ssh = connection(server, args.ssh_private_key)
    app_dir = server.app_dir
    bin_dir = f"{app_dir}/bin"
    env_file = server_files.env_file(app, args.app_secrets)
    stage: dict[str, pulumi.Input[str]] = {"app-dir": app_dir, "project": app.compose_project}
    common: dict[str, pulumi.Input[str]] = {
        **stage,
        "release": pulumi.Output.from_input(args.app_ref).apply(
            lambda ref: shared_facts.release_name(args.version, ref)
        ),
    }
    refs: dict[str, pulumi.Input[str]] = {
        "version": args.version,
        "app-image": args.app_ref,
        "migrate-image": args.migrate_ref,
    }
    steps: dict[str, remote.Command] = {}

    def step(
        step_name: str,
        create: pulumi.Input[str],
        triggers: list[pulumi.Input[str]] | None = None,
        stdin: pulumi.Input[str] | None = None,
        prints_secrets: bool = False,
    ) -> remote.Command:
        previous: list[pulumi.Resource] = [*list(steps.values())[-1:]] or after or []
        steps[step_name] = command(
            f"{name}-{step_name}", parent, ssh, create, stdin, triggers, prints_secrets, previous
        )
        return steps[step_name]

    # The bundle is unpacked beside the live files, which only files.sh replaces, under the release lock.
    quoted_dir = shlex.quote(app_dir)
    unpack = (
        f'umask 022 && mkdir -p {quoted_dir} && staged="$(mktemp -d {quoted_dir}/.files.XXXXXX)"'
        """ && trap 'rm -rf "$staged"' EXIT && base64 -d | tar -x --no-same-owner -f - -C "$staged" && """
    )
    step(
        "files",
        create=installed(bin_dir, "files.sh", {**stage, "from": "STAGED"}).apply(
            lambda line: (
                unpack
                + line.replace("--from STAGED", '--from "$staged"').replace(
                    f"bash {shlex.quote(bin_dir + '/files.sh')}", 'bash "$staged/bin/files.sh"'
                )
            )
        ),
        stdin=files.apply(server_files.bundle),
    )
    step("env", create=installed(bin_dir, "env.sh", stage), stdin=pulumi.Output.secret(env_file), prints_secrets=True)
    # With backups, pgBackRest's config (the repository's keys, the cipher pass) travels on stdin, like `.env`.
    backups = server_files.backup_fingerprint(app, args.backup)
    backup_config = (
        pulumi.Output.secret(server_files.backup_config(app, args.backup, args.backup_secrets or {}))
        if args.backup is not None
        else None
    )
    step(
        "database",
        create=installed(bin_dir, "database.sh", {**stage, "postgres-image": args.postgres_image, "backups": backups}),
        stdin=backup_config,
    )
    backup_mode = release.backup or ("restore-point" if args.backup is not None else "before-migrations")
    release_triggers: list[pulumi.Input[str]] = [args.app_ref, args.migrate_ref]
    # The backup policy is only in the backup's flags: a changed policy re-runs the backup alone, which gives the
    # release lock back when `up` has nothing to do (lib/lock.sh).
    step(
        "backup",
        create=installed(
            bin_dir,
            "backup.sh",
            {
                **common,
                **refs,
                "backups-to-keep": str(release.backups_to_keep),
                "backup": backup_mode,
                "backup-on-rollback": "yes" if release.backup_on_rollback else "no",
                "backups": backups,
            },
        ),
        triggers=release_triggers,
    )
    step("migrate", create=installed(bin_dir, "migrate.sh", {**common, **refs}), triggers=release_triggers)
    # New settings and files take effect here, at the update's one cutover, with whatever version it starts.
    up_script, up_flags = up
    step(
        "up",
        create=installed(bin_dir, up_script, {**common, **refs, **up_flags}),
        triggers=[
            *release_triggers,
            files.apply(server_files.switched_with),
            pulumi.Output.secret(server_files.fingerprint(env_file)),
        ],
    )
    return steps
