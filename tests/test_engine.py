"""The Pulumi CLI that `scripts/install-engine` provides: the version it pins, nothing fetched
from the network, and the stack-file commands the README's set-up relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kit import NAMESPACE, PROJECT_DIR

INSTALL_SCRIPT = PROJECT_DIR / "scripts" / "install-engine"
SECRET = "TESTSECRET-set-through-stdin-5d1e"


@pytest.fixture
def cli() -> str:
    path = os.environ.get("KAMETRIX_PULUMI_CLI")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("KAMETRIX_PULUMI_CLI is unset: scripts/test installs the CLI and sets it")
        pytest.skip("no Pulumi CLI: run `bash scripts/test`, or set KAMETRIX_PULUMI_CLI to scripts/install-engine's")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's Pulumi.yaml and production stack file, with a file backend."""
    for name in ("Pulumi.yaml", "Pulumi.production.yaml"):
        shutil.copy(PROJECT_DIR / name, tmp_path / name)
    (tmp_path / "state").mkdir()
    return tmp_path


def run(cli: str, project: Path, *args: str, stdin: str | None = None) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(project),
        "PULUMI_HOME": str(project / "pulumi-home"),
        "PULUMI_BACKEND_URL": f"file://{project / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": "test-passphrase",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }
    argv = [cli, *args]
    if os.geteuid() == 0:
        # A network namespace of its own with no interface up: any attempt to reach out fails.
        argv = ["unshare", "--net", *argv]
    done = subprocess.run(argv, cwd=project, env=env, input=stdin, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
    return done.stdout


def test_the_cli_reports_the_version_install_engine_pins(cli: str, project: Path) -> None:
    pinned = re.search(r"^readonly CLI_VERSION=(\S+)$", INSTALL_SCRIPT.read_text(), re.MULTILINE)
    assert pinned is not None
    assert run(cli, project, "version").strip() == f"v{pinned.group(1)}"


def test_a_release_is_recorded_in_the_stack_file_by_path_with_no_network(cli: str, project: Path) -> None:
    run(cli, project, "stack", "init", "production", "--secrets-provider", "passphrase")
    commit = "0123456789abcdef0123456789abcdef01234567"
    run(cli, project, "config", "set", "--stack", "production", "--path", 'github.releases["v1.4.3"]', commit)

    assert run(cli, project, "config", "get", "--stack", "production", "--path", 'github.releases["v1.4.3"]') == (
        f"{commit}\n"
    )
    document = yaml.safe_load((project / "Pulumi.production.yaml").read_text())
    assert document["config"][f"{NAMESPACE}:github"]["releases"]["v1.4.3"] == commit
    committed = yaml.safe_load((PROJECT_DIR / "Pulumi.production.yaml").read_text())
    for key, value in committed["config"][f"{NAMESPACE}:github"].items():
        if key != "releases":
            assert document["config"][f"{NAMESPACE}:github"][key] == value, key


def test_a_secret_set_from_stdin_is_stored_encrypted(cli: str, project: Path) -> None:
    run(cli, project, "stack", "init", "production", "--secrets-provider", "passphrase")
    run(cli, project, "config", "set", "--stack", "production", "--secret", "postgresPassword", stdin=SECRET)

    text = (project / "Pulumi.production.yaml").read_text()
    assert SECRET not in text
    assert "secure" in yaml.safe_load(text)["config"][f"{NAMESPACE}:postgresPassword"]
    assert run(cli, project, "config", "get", "--stack", "production", "postgresPassword") == f"{SECRET}\n"
