"""What the server says of its release, asked over SSH the way the release steps reach it: the stack's host, port,
user and deploy key, and its pinned host key (nothing runs if the server answers with another)."""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from components.config import ServerSettings
from components.shared_facts import script_words

# Between the release record and the lock's words in the answer.
_SEPARATOR = "--- release lock"


@dataclass(frozen=True)
class ServerState:
    record: dict[str, str]
    """The live release record (`<appDir>/release.env`): VERSION, PREVIOUS_VERSION, LIVE_COLOUR, images."""
    lock: str
    """What `release-lock.sh` says: free, or who holds it, since when, and whether a step runs."""


class ServerUnreachableError(Exception):
    pass


@contextlib.contextmanager
def _ssh_argv(server: ServerSettings, private_key: SecretStr, command: str) -> Iterator[list[str]]:
    """The ssh command line that runs `command` on the server; the key lives in a private temporary file meanwhile."""
    with tempfile.TemporaryDirectory(prefix="kametrix-runner-") as folder:
        key = Path(folder, "key")
        key.touch(mode=0o600)
        # OpenSSH reads a key file only up to a final line break, which a secret set from stdin may lack.
        key.write_text(private_key.get_secret_value().rstrip("\n") + "\n")
        known_hosts = Path(folder, "known_hosts")
        address = server.host if server.port == 22 else f"[{server.host}]:{server.port}"
        known_hosts.write_text(f"{address} {server.host_key}\n")
        argv = [
            "ssh", "-F", "/dev/null", "-T", "-p", str(server.port), "-l", server.user, "-i", str(key),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR", server.host, "--", command,
        ]  # fmt: skip
        yield argv


def ssh(server: ServerSettings, private_key: SecretStr, command: str, timeout: float = 60) -> str:
    """Run `command` on the server; its stdout."""
    with _ssh_argv(server, private_key, command) as argv:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    if done.returncode == 255:
        raise ServerUnreachableError(
            f"{server.user}@{server.host}:{server.port} could not be reached over SSH: {done.stderr.strip()}"
        )
    return done.stdout


def read_state(server: ServerSettings, private_key: SecretStr) -> ServerState:
    app_dir = shlex.quote(server.app_dir)
    answer = ssh(
        server,
        private_key,
        f"cat {app_dir}/release.env 2>/dev/null; echo {shlex.quote(_SEPARATOR)}; "
        f"bash {app_dir}/bin/release-lock.sh 2>&1 || true",
    )
    record_text, _, lock = answer.partition(f"{_SEPARATOR}\n")
    record = dict(line.split("=", 1) for line in record_text.splitlines() if "=" in line)
    return ServerState(record=record, lock=lock.strip() or "no release steps are installed on the server yet")


def read_lock(server: ServerSettings, private_key: SecretStr) -> dict[str, str]:
    """The release lock as `release-lock.sh --fields` gives it: RELEASE, STACK, STEP, STEP_STATE (all empty when it
    is free), STEP_RUNS (yes or no), LIVE_RELEASE (the release that serves) and DATABASE_RUNS (yes, no, or empty
    before the files step installed the settings); nothing before the files step installed the scripts."""
    app_dir = shlex.quote(server.app_dir)
    answer = ssh(
        server, private_key, f"[ ! -f {app_dir}/bin/release-lock.sh ] || bash {app_dir}/bin/release-lock.sh --fields"
    )
    return dict(line.split("=", 1) for line in answer.splitlines() if "=" in line)


def end_update(server: ServerSettings, private_key: SecretStr, stack: str) -> str:
    """Once an update of `stack` is over: the lock it left with no step running is given back
    (`release-lock.sh --end-update`). What the server said (empty when the lock was free or not the stack's)."""
    app_dir = shlex.quote(server.app_dir)
    command = f"bash {app_dir}/bin/release-lock.sh --end-update {shlex.quote(stack)} 2>&1"
    return ssh(server, private_key, f"[ ! -f {app_dir}/bin/release-lock.sh ] || {command}").strip()


@dataclass(frozen=True)
class SwarmNode:
    """A node of a stage's Swarm and the tasks it runs, as `swarm-status.sh` tells them."""

    address: str
    hostname: str
    role: str
    availability: str
    state: str
    database: bool
    tasks: tuple[tuple[str, str, str], ...] = ()
    """(service, image, state) of each task Swarm wants running there."""


def read_swarm(server: ServerSettings, private_key: SecretStr, project: str) -> list[SwarmNode]:
    """Every node of the stage's Swarm with its tasks, asked on the host that runs the release steps."""
    host = server.release_host()
    answer = ssh(
        host,
        private_key,
        shlex.join(
            ["bash", f"{host.app_dir}/bin/swarm-status.sh", *script_words("swarm-status.sh", {"project": project})]
        ),
    )
    rows = [line.split("|") for line in answer.splitlines()]
    tasks: dict[str, list[tuple[str, str, str]]] = {}
    for row in rows:
        if row[0] == "task" and len(row) == 5:
            tasks.setdefault(row[2], []).append((row[1], row[3], row[4]))
    return [
        SwarmNode(row[1], row[2], row[3], row[4], row[5], row[6] == "true", tuple(tasks.get(row[1], [])))
        for row in rows
        if row[0] == "node" and len(row) == 7
    ]


@dataclass(frozen=True)
class BackupStatus:
    values: dict[str, str]
    """`bin/backup-status.sh`'s KEY=VALUE lines: BACKUPS, NEWEST_BACKUP, ARCHIVED_UNTIL, LAST_DRILL, ..."""
    said: list[str]
    """Its other lines: what a drill or a backup it ran said."""


def backup_status(server: ServerSettings, private_key: SecretStr, action: str = "") -> BackupStatus:
    """What `bin/backup-status.sh` says of the stage's backups (`action`: --drill, or --backup full|diff, first)."""
    answer = ssh(server, private_key, f"bash {shlex.quote(server.app_dir)}/bin/backup-status.sh {action} 2>&1", 1800)
    values, said = {}, []
    for line in answer.splitlines():
        key, equals, value = line.partition("=")
        if equals and re.fullmatch(r"[A-Z_]+", key):
            values[key] = value
        elif line.strip():
            said.append(line)
    return BackupStatus(values, said)


def restore(
    server: ServerSettings, private_key: SecretStr, target: list[str], plan_only: bool, echo: Callable[[str], None]
) -> int:
    """Run the break-glass `bin/restore.sh` with `target` (e.g. ["--time", "2026-12-02T03:00:00Z"]), or
    `bin/restore-dump.sh` for ["--dump", NAME]; its output goes to `echo` line by line as it comes. Its exit
    status."""
    words = [*target, "--plan" if plan_only else "--yes"]
    script = "restore-dump.sh" if target[0] == "--dump" else "restore.sh"
    command = f"bash {shlex.quote(server.app_dir)}/bin/{script} {shlex.join(words)} 2>&1"
    with _ssh_argv(server, private_key, command) as argv:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, errors="replace")
        for line in process.stdout or ():
            echo(line.rstrip("\n"))
        returncode = process.wait()
    if returncode == 255:
        raise ServerUnreachableError(f"{server.user}@{server.host}:{server.port} could not be reached over SSH")
    return returncode
