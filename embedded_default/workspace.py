"""The local stack's folder on this machine, and the engine environment it runs in.

A folder holds what a real stage keeps in the project folder and its backend: a copy of the project's `Pulumi.yaml`,
the stack file `Pulumi.local.yaml` (the committed one, plus what is this machine's: the target's host key, throwaway
secrets and the versions released here), a file backend (`state/`) and the passphrase of its secrets (`passphrase`,
mode 600: the local stack's secrets are throwaway values for a loopback target, never a real stage's).

The committed `Pulumi.local.yaml` stays the source of every setting: each preparation starts from it again and
keeps only what the folder's own stack file says of this machine (`MACHINE_KEYS`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from components.config import APP_SECRET_KEYS, NAMESPACE, REGISTRY_KEY, SSH_KEY
from embedded_default.providers import plugins

PROJECT_DIR = Path(__file__).resolve().parent.parent
COMMITTED_STACK_FILE = PROJECT_DIR / "Pulumi.local.yaml"
STACK_FILE_NAME = "Pulumi.local.yaml"
DEFAULT_DIR = PROJECT_DIR / ".pulumi" / "local"
# The stand-in providers live here, never in a user's ~/.pulumi.
PLUGIN_HOME = PROJECT_DIR / ".pulumi" / "plugins-home"
# Keys of the folder's stack file that are this machine's: what was released here, and who asked.
MACHINE_KEYS = ("version", "image.digests", "release.requestedBy")
OFFLINE = {"PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}


def file_backend_url(folder: Path) -> str:
    """The file backend in `folder`, without the attributes file beside each blob (`metadata=skip`). Its storage
    library rewrites that file in place, empty first, just before it renames the new checkpoint into place, and every
    command reads it: one that came in between (the next command after a runner was killed, say) failed with
    `failed to load checkpoint: ... EOF`. The backend reads nothing from it."""
    return f"file://{folder}?metadata=skip"


def engine_environment(work_dir: Path, cli: Path) -> dict[str, str]:
    """What the engine needs for the local stack in `work_dir`: its file backend and passphrase, offline, with the
    stand-in providers (installed into the plugin home first) and no plugin from PATH."""
    plugins.install(cli, PLUGIN_HOME)
    return {
        "PULUMI_BACKEND_URL": file_backend_url(work_dir / "state"),
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(work_dir / "passphrase"),
        "PULUMI_HOME": str(PLUGIN_HOME),
        "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",
        **OFFLINE,
    }


def prepare(
    work_dir: Path,
    cli: Path,
    host_key: str,
    private_key: str,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Make (or bring up to date) the local stack's folder: the committed stack file with the target's host key,
    `overrides` (dotted keys without the namespace) and what the folder's stack file already says of this
    machine; a throwaway secret for every secret key not set yet, and the target's deploy key."""
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o700)
    (work_dir / "state").mkdir(exist_ok=True)
    shutil.copyfile(PROJECT_DIR / "Pulumi.yaml", work_dir / "Pulumi.yaml")
    passphrase = work_dir / "passphrase"
    if not passphrase.exists():
        _write_private(passphrase, secrets.token_urlsafe(32))

    stack_file = work_dir / STACK_FILE_NAME
    document = _stack_document(stack_file, {"server.hostKey": host_key, **(overrides or {})})
    _write_private(stack_file, yaml.safe_dump(document, sort_keys=False))

    env = {**os.environ, **engine_environment(work_dir, cli)}
    _pulumi(cli, work_dir, env, "stack", "select", "--create", "--secrets-provider", "passphrase", "local")
    config = document["config"]
    for name, value in _throwaway_secrets(private_key).items():
        if name == SSH_KEY or f"{NAMESPACE}:{name}" not in config:
            _pulumi(cli, work_dir, env, "config", "set", "--secret", "--stack", "local", name, stdin=value)


def copy_prepared(source: Path, work_dir: Path, cli: Path, overrides: Mapping[str, Any]) -> None:
    """A new local stack folder from a prepared one: the same secrets and passphrase, a backend of its own holding
    a new empty stack, and `overrides` on its stack file. What a second stage on the same target needs, without
    setting every secret again."""
    work_dir.mkdir(parents=True)
    work_dir.chmod(0o700)
    (work_dir / "state").mkdir()
    for name in ("Pulumi.yaml", "passphrase"):
        shutil.copy2(source / name, work_dir / name)
    document = yaml.safe_load((source / STACK_FILE_NAME).read_text())
    for path, value in overrides.items():
        _set_path(document["config"], path, value)
    _write_private(work_dir / STACK_FILE_NAME, yaml.safe_dump(document, sort_keys=False))
    env = {**os.environ, **engine_environment(work_dir, cli)}
    _pulumi(cli, work_dir, env, "stack", "select", "--create", "--secrets-provider", "passphrase", "local")


def _stack_document(stack_file: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    committed = yaml.safe_load(COMMITTED_STACK_FILE.read_text())
    previous: dict[str, Any] = yaml.safe_load(stack_file.read_text()) if stack_file.exists() else {}
    previous_config = previous.get("config") or {}
    document = dict(committed)
    config = dict(committed["config"])
    for full_key, value in previous_config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[full_key] = value
    for path in MACHINE_KEYS:
        found = _get_path(previous_config, path)
        if found is not None:
            _set_path(config, path, found)
    for path, value in overrides.items():
        _set_path(config, path, value)
    if previous.get("encryptionsalt"):
        document["encryptionsalt"] = previous["encryptionsalt"]
    document["config"] = config
    return document


def _throwaway_secrets(private_key: str) -> dict[str, str]:
    values = {name: secrets.token_urlsafe(24) for name in APP_SECRET_KEYS}
    values["googleEncryptionKey"] = secrets.token_hex(32)
    values[REGISTRY_KEY] = "the-local-registry-asks-for-no-password"
    values[SSH_KEY] = private_key
    return values


def _get_path(config: Mapping[str, Any], path: str) -> Any:
    top, *rest = path.split(".")
    node: Any = config.get(f"{NAMESPACE}:{top}")
    for part in rest:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    top, *rest = path.split(".")
    full_key = f"{NAMESPACE}:{top}"
    if not rest:
        config[full_key] = value
        return
    node = config.setdefault(full_key, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value


def _write_private(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    partial.replace(path)


def _pulumi(cli: Path, work_dir: Path, env: Mapping[str, str], *args: str, stdin: str | None = None) -> None:
    done = subprocess.run(
        [str(cli), *args],
        cwd=work_dir,
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        # The command line names a key at most, never a value: values travel on stdin.
        raise RuntimeError(f"pulumi {' '.join(args)} in {work_dir} failed: {done.stderr.strip()}")
