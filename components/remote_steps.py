"""Commands over SSH as the Swarm components declare them: a host's connection, `--name value` flags from a
step's inputs, and scripts shipped to a host that holds none of the stage's files.

Each command's line holds only plain values; anything secret travels on its stdin, never in its output.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import pulumi
from pulumi_command import remote
from pydantic import SecretStr

from components import server_files
from components.config import ClusterHost, ServerSettings


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
    """One step: no `delete` (replacing a step never undoes a newer one), nothing from SSH's environment, and its
    output kept out of the log and made secret when it can hold a secret."""
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


def flags(values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[list[str]]:
    """`--name value` for each of `values`, once all are known."""
    return pulumi.Output.all(*values.values()).apply(
        lambda resolved: [
            part for name, value in zip(values, resolved, strict=True) for part in (f"--{name}", str(value))
        ]
    )


def installed(bin_dir: str, script: str, values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    """The command line of a script the files step installed in `bin_dir`."""
    return flags(values).apply(lambda parts: shlex.join(["bash", f"{bin_dir}/{script}", *parts]))


# The scripts (and a secret's file) arrive on stdin (server_files.bundle) into a private folder that is gone when
# the command ends; every file in it is the deploy user's alone (umask 077, not the archive's modes).
_UNPACK = (
    'umask 077 && shipped="$(mktemp -d)" && trap \'rm -rf "$shipped"\' EXIT && '
    'base64 -d | tar -x --no-same-owner --no-same-permissions -f - -C "$shipped" && '
)


def shipped(
    script: str, values: Mapping[str, pulumi.Input[str]], files_flag: tuple[str, str] | None = None
) -> pulumi.Output[str]:
    """The command line that runs `script` from the bundle on stdin. `files_flag` (flag, file) adds `--flag PATH`
    for a file the bundle carries (a secret, which stays off the command line)."""
    extra = f' --{files_flag[0]} "$shipped/{files_flag[1]}"' if files_flag else ""
    return flags(values).apply(lambda parts: f'{_UNPACK}bash "$shipped/bin/{script}" {shlex.join(parts)}{extra}')


def scripts_bundle(files: Mapping[str, str] | None = None) -> str:
    """Every server script (and `files`), for a shipped command's stdin."""
    return server_files.bundle(files or {})


def reported(stdout: str | None, key: str) -> str:
    """The last `key=value` line a step printed."""
    values = [line.partition("=")[2] for line in (stdout or "").splitlines() if line.startswith(f"{key}=")]
    return values[-1] if values else ""
