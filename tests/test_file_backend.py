"""The local stack's file backend, on the real CLI: no command may catch its state half-written.

Seed 30 of the kill-anywhere run once stopped on `failed to load checkpoint: ... EOF` from a `pulumi config` right
after a recovery update. The storage library under the file backend (gocloud's fileblob) keeps an attributes file
beside each blob, rewrites it in place (empty first) before it renames the new checkpoint into place, and every
command reads it first.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from embedded_default.workspace import file_backend_url
from tests.pulumi_cli import offline_env


def pulumi(cli: Path, project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cli), *args], cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def stack_in(cli: Path, tmp_path: Path, backend_url: str) -> tuple[Path, dict[str, str]]:
    """A project with one stack and one setting, its state in `backend_url`."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: backend-check\nruntime: python\n")
    (tmp_path / "state").mkdir()
    env = {**os.environ, **offline_env(tmp_path), "PULUMI_BACKEND_URL": backend_url}
    for args in (("stack", "init", "local", "--secrets-provider", "passphrase"), ("config", "set", "key", "value")):
        done = pulumi(cli, project, env, *args)
        assert done.returncode == 0, done.stderr
    return project, env


def test_the_local_backend_writes_no_attributes_file_a_command_could_catch_empty(
    pulumi_cli: Path, tmp_path: Path
) -> None:
    project, env = stack_in(pulumi_cli, tmp_path, file_backend_url(tmp_path / "state"))
    assert list((tmp_path / "state").rglob("*.json")), "the stack's checkpoint was not written"
    assert list((tmp_path / "state").rglob("*.attrs")) == []
    done = pulumi(pulumi_cli, project, env, "config", "--json")
    assert done.returncode == 0 and '"value"' in done.stdout, done.stderr


def test_without_it_an_emptied_attributes_file_fails_every_command_on_the_stack(
    pulumi_cli: Path, tmp_path: Path
) -> None:
    """What the URL's `metadata=skip` avoids, as a command sees the file while it is being rewritten."""
    project, env = stack_in(pulumi_cli, tmp_path, f"file://{tmp_path / 'state'}")
    attributes = list((tmp_path / "state").rglob("local.json.attrs"))
    assert len(attributes) == 1
    attributes[0].write_text("")
    done = pulumi(pulumi_cli, project, env, "config", "--json")
    assert done.returncode != 0
    assert "failed to load checkpoint" in done.stderr and "EOF" in done.stderr, done.stderr
