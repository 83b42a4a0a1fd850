"""The Pulumi CLI that `scripts/install-engine` provides: the version it pins, and the README's
set-up commands with no network at all (the workflows' own commands: tests/workflows/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kit import NAMESPACE, PROJECT_DIR
from tests.pulumi_cli import offline_env

INSTALL_SCRIPT = PROJECT_DIR / "scripts" / "install-engine"
SECRET = "TESTSECRET-set-through-stdin-5d1e"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's Pulumi.yaml and production stack file, with a file backend."""
    for name in ("Pulumi.yaml", "Pulumi.production.yaml"):
        shutil.copy(PROJECT_DIR / name, tmp_path / name)
    (tmp_path / "state").mkdir()
    return tmp_path


def run(cli: Path, project: Path, *args: str, stdin: str | None = None) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(project), **offline_env(project)}
    argv = [str(cli), *args]
    if os.geteuid() == 0:
        # A network namespace of its own with no interface up: any attempt to reach out fails.
        argv = ["unshare", "--net", *argv]
    done = subprocess.run(argv, cwd=project, env=env, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def test_the_cli_reports_the_version_install_engine_pins(pulumi_cli: Path, project: Path) -> None:
    pinned = re.search(r"^readonly CLI_VERSION=(\S+)$", INSTALL_SCRIPT.read_text(), re.MULTILINE)
    assert pinned is not None
    assert run(pulumi_cli, project, "version").strip() == f"v{pinned.group(1)}"


def test_a_secret_set_from_stdin_is_stored_encrypted(pulumi_cli: Path, project: Path) -> None:
    run(pulumi_cli, project, "stack", "init", "production", "--secrets-provider", "passphrase")
    run(pulumi_cli, project, "config", "set", "--stack", "production", "--secret", "postgresPassword", stdin=SECRET)

    text = (project / "Pulumi.production.yaml").read_text()
    assert SECRET not in text
    assert "secure" in yaml.safe_load(text)["config"][f"{NAMESPACE}:postgresPassword"]
    assert run(pulumi_cli, project, "config", "get", "--stack", "production", "postgresPassword") == f"{SECRET}\n"
